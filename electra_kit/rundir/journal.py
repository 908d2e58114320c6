"""A run's journal, ``metrics.jsonl``: every value the run logs, one JSON line per logged step
(``{"step": 7, "ts": <ms>, "train/loss": 2.3}``), appended by rank 0 whether or not anything tracks the run.

The journal is the source of truth. Sinks (MLflow's Tracker is the one shipped) subscribe to it, hear that a step
was journaled, and read the new lines from disk at their own pace; a second sink needs no change to the trainer.

A step's value is journaled once. A run killed after logging steps past its last checkpoint redoes those steps when
resumed; appended with ``once=True`` (the trainer's logs), a key that an earlier process journaled at that step or
later is left out, so the journal, and MLflow, which cannot take a point back, hold one value per key and step (the
first: bit for bit the redone one on CPU). System samples and summaries that a resume may revise (fine-tuning's
median over more seeds) are appended as they come.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

JOURNAL = "metrics.jsonl"


class Sink(Protocol):
    def journaled(self, step: int) -> None:
        """Lines up to ``step`` are in the journal; read them from ``Journal.end()`` back to what was read."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Journal:
    """Appends to one ``metrics.jsonl`` (thread-safe: the trainer and a system-metrics sampler share it) and tells
    its sinks. One Journal object per file and process, so ``end()`` is the end of the last complete line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._end: int | None = None  # known after the first append (the file may not exist before)
        self._earlier: dict[str, int] = {}  # per key, the last step earlier processes journaled (read with _end)
        self._sinks: list[Sink] = []

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def append(self, step: int, values: dict[str, float], *, once: bool = False) -> int:
        """Append one line (its timestamp in ms is what a sink receives); returns the journal's end. ``once``: leave
        out the keys an earlier process of the run journaled at ``step`` or later (a resume redoing logged steps)."""
        with self._lock, open(self.path, "ab+") as f:
            if self._end is None:
                self._open(f)
            if once:
                values = {k: v for k, v in values.items() if step > self._earlier.get(k, -1)}
            if not values:
                return self._end
            f.write((json.dumps({"step": step, "ts": now_ms(), **values}) + "\n").encode())
            self._end = end = f.tell()
        for sink in self._sinks:
            sink.journaled(step)
        return end

    def end(self) -> int:
        """The byte offset after the last complete line."""
        with self._lock:
            if self._end is None:
                if not self.path.exists():
                    return 0
                with open(self.path, "ab+") as f:
                    self._open(f)
            return self._end

    def _open(self, f) -> None:
        """This process's first look at the file: close a torn line, note how far each key went before it."""
        self._end = _close_torn_line(f)
        for record in read_journal(self.path, 0, self._end) if self._end else ():
            for key in record.keys() - {"step", "ts"}:
                self._earlier[key] = max(record["step"], self._earlier.get(key, -1))

    def prefixed(self, prefix: str, rename: Callable[[str], str] = lambda k: k) -> "PrefixedJournal":
        """A view that journals ``prefix + rename(key)``: fine-tuning's seeds share their run's journal."""
        return PrefixedJournal(self, prefix, rename)


class PrefixedJournal:
    def __init__(self, journal: Journal, prefix: str, rename: Callable[[str], str]):
        self.journal, self.prefix, self.rename = journal, prefix, rename

    def append(self, step: int, values: dict[str, float], *, once: bool = False) -> int:
        return self.journal.append(step, {self.prefix + self.rename(k): v for k, v in values.items()}, once=once)


def _close_torn_line(f) -> int:
    """End a line torn by a kill, so it cannot swallow the next one; returns the file's end."""
    size = f.seek(0, os.SEEK_END)
    if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
        f.write(b"\n")
    return f.tell()


def read_journal(path: str | Path, start: int = 0, end: int | None = None) -> list[dict]:
    """The journal's records between bytes ``start`` and ``end`` (default: all); a torn line is skipped."""
    with open(path, "rb") as f:
        f.seek(start)
        lines = f.read(-1 if end is None else max(0, end - start)).splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), int) and "ts" in r]
