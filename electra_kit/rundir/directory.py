"""A run directory belongs to one run: claimed, locked while the run lives, never overwritten.

- A new run gets a fresh directory: the default name is created exclusively (``-2``, ``-3`` ...
  when two runs start in the same second), and a named ``--run-dir`` that already holds a run
  (any file a pretraining or fine-tuning run writes, or the marker ``.electra-kit.json`` a run
  directory gets when claimed, so one a killed run left is never taken for a new one) is refused;
  ``--resume`` is the way to continue one. Where it may be at all is guard.py's rule (never in or
  over an input of the command).
- An OS lock (``fcntl.flock`` on ``.electra-kit.lock``) is held for the run's lifetime; the kernel
  drops it when the process dies, however it dies, so a lock file left by a killed run is stale
  and taken over with a note. A second process fails at once, naming the PID that holds it.
- A run that fails before training removes only what it created itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import os
import shutil
import sys
import time
from pathlib import Path

from .guard import MARKER, OutputError, check_output, mark

LOCK_FILE = ".electra-kit.lock"
# what a run writes at the top of its directory (the last one: tracking's)
RUN_FILES = ("checkpoints", "model", "metrics.jsonl", "operative_config.gin", "summary.json", "mlflow_run.json")
# ... and a fine-tuning run's, the log, and the marker every run directory carries (guard.py): any of them
# means the directory holds a run, finished or killed at any instruction
RUN_WRITES = (*RUN_FILES, "results.json", "finetune.json", "seed_*", "run.log", MARKER)


class RunDirError(RuntimeError):
    """The run directory cannot be used; the message names it and says what to do."""


def default_run_dir(config_files: list[str], root: Path = Path("runs"), *, stem: str | None = None) -> Path:
    """``runs/<last config>-<time>``, created here and now so no other run can take the name."""
    stem = stem or (Path(config_files[-1]).stem if config_files else "run")
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"could not find a free run directory name under {root}")


class RunDir:
    """A claimed and locked run directory; ``release()`` on every exit, ``discard()`` on a failed start."""

    def __init__(self, path: Path, *, resume: bool, created: bool = False, inputs=(), claim=()):
        """``inputs``: what the command reads (none may be in the way of what the run writes: guard.py);
        ``claim``: files the run writes on starting, besides the marker (fine-tuning's request), which a failure
        before anything else was written takes away with the marker."""
        self.path = Path(path)
        try:
            check_output(self.path, inputs=inputs, kind="run", writes=RUN_WRITES, option="--run-dir")
        except OutputError as exc:
            if created:  # made empty by default_run_dir a moment ago
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            raise RunDirError(str(exc)) from None
        self.created = created or not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.before = set(os.listdir(self.path))
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(f"run directory {self.path} is not writable ({exc.strerror}); choose another "
                              f"--run-dir") from exc
        self._fd: int | None = None
        self.claim = {MARKER, *claim}
        try:
            self._lock()
        except OSError as exc:  # a directory named like the lock, a filesystem without locks (some NFS) ...
            raise RunDirError(f"run directory {self.path} cannot be locked ({exc.strerror or exc}: "
                              f"{self.path / LOCK_FILE}); choose another --run-dir") from None
        if not resume:
            taken = sorted(n for n in self.before if any(fnmatch.fnmatchcase(n, p) for p in RUN_WRITES))
            if taken:
                self.release()
                raise RunDirError(f"run directory {self.path} already holds a run ({', '.join(taken)}); continue it "
                                  f"with --resume, or choose another --run-dir (nothing was changed)")
            mark(self.path, "run")
        if self.stale:  # said only of a directory this run goes on to use
            print(f"electra-kit: {self.path / LOCK_FILE}: stale lock of PID {self.stale} taken over (that process "
                  f"is gone)", file=sys.stderr)

    # ---- the lock -------------------------------------------------------------------------------

    def _lock(self) -> None:
        lock = self.path / LOCK_FILE
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirError(
                    f"run directory {self.path} is in use by another electra-kit process (PID {holder}); wait for "
                    f"it to finish, stop it, or choose another --run-dir") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and flock: lock the new one
        previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
        self.stale = previous if previous and previous != str(os.getpid()) else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file goes first, while still locked, so no one locks a file being removed)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.path / LOCK_FILE).unlink()
        os.close(self._fd)
        self._fd = None

    def close(self, *, failed: bool) -> None:
        """Release the lock; after a failure that left nothing but what claiming the directory wrote (the marker,
        ``claim``), remove that too, and the directory if this run made it."""
        self.release()
        added = set(os.listdir(self.path)) - self.before if failed and self.path.is_dir() else set()
        if MARKER in added and added <= self.claim:
            for name in added:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        if failed and self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    # ---- a failed start -------------------------------------------------------------------------

    def discard(self) -> None:
        """Remove what this run added, and the directory itself if the run made it and it is now empty."""
        self.release()
        if not self.path.is_dir():
            return
        for name in set(os.listdir(self.path)) - self.before:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        if self.created:
            with contextlib.suppress(OSError):  # not empty: someone put something there meanwhile
                self.path.rmdir()
