"""Non-finite steps: a step whose loss or gradient norm is NaN/inf is skipped, not applied; too many in a row stop
the run with the last good checkpoint named.

With the fused AdamW the skip happens inside the kernel (``found_inf``, the way GradScaler drives it) and the
counts stay on the device: no host sync per step; ``check`` reads them at log and checkpoint time. Other optimizers
decide on the host, one sync per step.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..rundir import checkpoint as ckpt


class NonFiniteError(RuntimeError):
    pass


class BadSteps:
    def __init__(self, max_in_row: int, device: torch.device, ckpt_dir: Path):
        self.max_in_row, self.ckpt_dir = max_in_row, ckpt_dir
        self.in_row = 0  # the host's count (non-fused optimizers), or the device's as last read
        # on the device: [in a row now, worst run in a row, skipped, last bad step]
        self._counts = torch.zeros(4, dtype=torch.long, device=device)
        self._reported = 0  # skipped steps already reported

    def step(self, optimizer, finite: torch.Tensor, *, fused: bool, step: int, loss, grad_norm) -> None:
        """Apply ``optimizer``'s step where ``finite``, skip it elsewhere."""
        if fused:
            self._skip_in_kernel(optimizer, ~finite, step)
        elif bool(finite):  # the step's one host sync
            optimizer.step()
            self.in_row = 0
        else:
            self._skip_on_host(optimizer, step, loss, grad_norm)

    def _skip_in_kernel(self, optimizer, bad: torch.Tensor, step: int) -> None:
        optimizer.found_inf = bad.float()  # the fused kernel skips the whole update (and its step count) here
        optimizer.step()
        b, counts = bad.long(), self._counts
        in_row = (counts[0] + 1) * b
        counts.copy_(torch.stack([in_row, torch.maximum(counts[1], in_row), counts[2] + b,
                                  torch.where(bad, step, counts[3])]))

    def _skip_on_host(self, optimizer, step: int, loss, grad_norm) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.in_row += 1
        warnings.warn(
            f"electra-kit: step {step}: non-finite loss ({float(loss)}) or gradient norm ({float(grad_norm)}); "
            f"update skipped ({self.in_row}/{self.max_in_row} in a row)", RuntimeWarning, stacklevel=3,
        )
        if self.in_row >= self.max_in_row:
            self._stop(self.in_row, step)

    def check(self, step: int) -> None:
        """Report the steps the fused kernel skipped since the last call; stop after too many in a row."""
        in_row, worst, skipped, last = (int(v) for v in self._counts.tolist())  # one sync, at log/save time
        if skipped == self._reported:
            return
        new, self._reported = skipped - self._reported, skipped
        self.in_row = in_row
        warnings.warn(
            f"electra-kit: step {last}: non-finite loss or gradient norm; {new} update(s) skipped since the last "
            f"report ({in_row}/{self.max_in_row} in a row now, {skipped} in this run)", RuntimeWarning, stacklevel=3,
        )
        if worst >= self.max_in_row:
            self._stop(worst, step)

    def _stop(self, in_row: int, step: int) -> None:
        good = ckpt.latest_valid_checkpoint(self.ckpt_dir)
        raise NonFiniteError(
            f"{in_row} non-finite steps in a row at step {step}; stopping. Last good checkpoint: {good or 'none yet'}. "
            "Lower train.lr, check the data, or raise train.max_bad_steps."
        )
