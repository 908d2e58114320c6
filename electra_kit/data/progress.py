"""How far a pass over the corpus has got: MB done, MB/s and ETA on stderr, as tqdm's bar on a terminal and as a
line now and then in logs and pipes (where a bar's carriage returns would pile up)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

from .corpus import source_bytes


class ProgressLines:
    """The progress a bar would show, as a line on stderr every ``every`` seconds: for logs and pipes, where a
    bar's carriage returns would pile up."""

    def __init__(self, total: int | None, desc: str, every: float = 30.0):
        self.total, self.desc, self.every = total, desc, every
        self.done, self.start = 0, time.monotonic()
        self.last = self.start

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            of = f"/{self.total / 1e6:.0f}" if self.total else ""
            eta = f", ETA {(self.total - self.done) / max(rate, 1e-9):.0f} s" if self.total else ""
            print(f"electra-kit: {self.desc}: {self.done / 1e6:.0f}{of} MB, {rate / 1e6:.1f} MB/s{eta}",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def corpus_progress(files: Sequence[str], desc: str):
    """MB done, MB/s and ETA of a pass over the corpus, on stderr: tqdm's bar on a terminal, else a line now and
    then. Bytes are bytes on disk (compressed ones, for a compressed file)."""
    total = sum(source_bytes(p) for p in files) or None
    if sys.stderr.isatty():
        return tqdm(total=total, unit="B", unit_scale=True, desc=desc, mininterval=1.0)
    return ProgressLines(total, desc)
