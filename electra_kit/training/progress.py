"""What the training loop shows while it runs: the progress bar with the current step's values, and the run's
expected length once a few steps are timed."""

from __future__ import annotations

import math
import sys
import time
from typing import Callable

SHOW_EVERY_S = 1.0  # the bar shows the current step's values this often at most (each is a host sync)


def duration(seconds: float) -> str:
    """``0.8 s``, ``42 s``, ``12 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class Pace:
    """Times the steps after the first of a fit (which compiles and warms caches): ``add`` says True once,
    when ``STEPS`` of them are timed and steps remain, so that the run can say how long it will take."""

    STEPS = 3

    def __init__(self, step: int, total: int):
        self.step, self.total, self.times, self.told, self.untimed = step, total, [], False, 1

    def add(self, seconds: float) -> bool:
        """One more finished step and its time."""
        self.step += 1
        if self.untimed or self.told:
            self.untimed = 0
            return False
        self.times.append(seconds)
        self.told = len(self.times) == self.STEPS
        return self.told and self.to_go > 0

    @property
    def seconds(self) -> float:
        return sorted(self.times)[len(self.times) // 2]  # the median step

    @property
    def to_go(self) -> int:
        return self.total - self.step


class Progress:
    """The bar (``enabled``: the main rank, unless switched off) and the expected-length lines. ``advice(seconds
    per step, steps to go)`` may add a line (the pretraining runner names the CPU recipe)."""

    def __init__(self, *, step: int, total: int, desc: str, enabled: bool, speaking: bool,
                 advice: Callable[[float, int], str | None] | None = None):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True)
        self.pace, self.speaking, self.advice, self._shown_at = Pace(step, total), speaking, advice, -math.inf

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(f"electra-kit: {line}", file=sys.stderr)
        else:
            print(f"electra-kit: {line}", file=sys.stderr, flush=True)

    def step_done(self, metrics: dict, tokens_per_s: float, seconds: float) -> None:
        """A step ended after ``seconds``: the bar moves (with its values, at most every SHOW_EVERY_S)."""
        if self.bar is not None:
            now = time.perf_counter()
            if now - self._shown_at >= SHOW_EVERY_S:
                self.show({**{k: float(v) for k, v in metrics.items()}, "tokens_per_s": tokens_per_s})
                self._shown_at = now
            self.bar.update(1)
        if self.pace.add(seconds) and self.speaking:
            self._say_pace()

    def show(self, metrics: dict[str, float]) -> None:
        """The bar's numbers: the loss, each ``*_loss`` term the objective reports, tokens per second."""
        if self.bar is None:
            return
        shown = {k: f"{v:.3f}" for k, v in metrics.items() if k.endswith("loss")}
        if "tokens_per_s" in metrics:
            shown["tok_s"] = f"{metrics['tokens_per_s']:.0f}"
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _say_pace(self) -> None:
        pace = self.pace
        self.say(f"expected length: {pace.total} steps x {pace.seconds:.3g} s/step (the median of {len(pace.times)} "
                 f"steps after the first) = about {duration(pace.seconds * pace.total)} of training; "
                 f"{pace.to_go} steps to go, about {duration(pace.seconds * pace.to_go)}")
        advice = self.advice(pace.seconds, pace.to_go) if self.advice is not None else None
        if advice:
            self.say(advice)
