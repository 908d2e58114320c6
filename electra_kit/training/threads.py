"""CPU threading that survives a shared machine.

Two facts drive this module (bench/RESULTS.md, bench/concurrent_runs.py):

- OpenMP's default *active* wait makes a thread spin at every barrier while it waits for a
  partner thread. When another process holds the partner's core, the spinner burns the time the
  partner needs: two torch processes on two cores each ran several times slower than alone.
  A *passive* wait (sleep at the barrier) costs little alone and removes that collapse. OpenMP
  reads ``OMP_WAIT_POLICY`` once, when torch loads it, so it must be in the environment before
  ``import torch``: ``electra_kit/__init__`` calls :func:`set_wait_policy` first thing.
- More threads than free cores only adds barriers to wait at. :func:`default_threads` takes the
  cores this process may run on (its affinity mask, which also reflects ``taskset`` and container
  limits), less the load other processes already put on them, and never fewer than one.

Everything the user set wins: ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` in the environment, or
``train.threads`` (and ``--threads`` in ``finetune``).
"""

from __future__ import annotations

import os
import sys


def set_wait_policy() -> bool:
    """Ask OpenMP for a passive wait unless the user chose a policy. True if it will take effect
    (torch not imported yet in this process)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_threads(load: float | None = None) -> int:
    """Cores this process may use, less those other processes keep busy (1-minute load average)."""
    cores = available_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, round(cores - load)))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads`` if given, else ``$OMP_NUM_THREADS`` if set, else
    :func:`default_threads`. Returns the number in force."""
    import torch

    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"train.threads must be a positive integer or None, got {threads!r}")
        chosen = threads
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        chosen = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        chosen = default_threads()
    torch.set_num_threads(chosen)
    return chosen
