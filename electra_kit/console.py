"""What a run says on the console, and what it keeps in ``RUN_DIR/run.log``.

Every phase that can take seconds gets a line when it starts and one with its duration when it ends, so a
first run never sits silent. MLflow's own INFO lines (database set-up, model logging) go to ``run.log`` only;
its warnings and errors still reach the console.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

LOG_FILE = "run.log"
_LOGGERS = ("mlflow", "electra_kit")  # what run.log records, at the levels they log


def say(message: str) -> None:
    """One line for the person at the console (stderr, where the progress bar is too)."""
    print(f"electra-kit: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(what: str, enabled: bool = True, say=say):
    """``electra-kit: building the model ...`` then ``electra-kit: building the model: 2.1 s``. The block may
    set ``note`` in the dict it gets (``with phase(...) as said: said["note"] = "3 batches"``): the closing
    line says it in brackets: ``evaluating at step 50 (3 batches): 1.2 s``."""
    said: dict = {}
    if not enabled:
        yield said
        return
    say(f"{what} ...")
    start = time.monotonic()
    yield said
    note = f" ({said['note']})" if said.get("note") else ""
    say(f"{what}{note}: {time.monotonic() - start:.1f} s")


@contextlib.contextmanager
def run_log(run_dir: Path | None, with_mlflow: bool = True):
    """While the run lives: MLflow's INFO and up, and electra-kit's warnings, appended to ``run_dir/run.log``
    (created at the first record); MLflow's console handler raised to WARNING (it logs INFO lines such as
    "Creating initial MLflow database tables")."""
    if run_dir is None:
        yield
        return
    if with_mlflow:  # MLflow sets its loggers' handlers when imported: first, so that ours are added, not replaced
        import mlflow  # noqa: F401

    handler = logging.FileHandler(Path(run_dir) / LOG_FILE, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    consoles = [h for h in loggers[0].handlers if type(h) is logging.StreamHandler]
    levels = [h.level for h in consoles]
    for h in consoles:
        h.setLevel(max(h.level, logging.WARNING))
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        for h, level in zip(consoles, levels, strict=True):
            h.setLevel(level)
        handler.close()
