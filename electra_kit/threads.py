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
  limits), less the cores other processes keep busy *now* (``/proc/stat`` sampled over 0.2 s), and
  never fewer than one. Not the load average: it trails by a minute, so a run started just after
  another one ended took one thread of two and stepped 1.8x slower alone (bench/concurrent_runs.py).
  The count is fixed for the run: one that starts beside another keeps its share after the other ends.

Everything the user set wins: ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` in the environment, or
``train.threads`` (and ``--threads`` in ``finetune``).
"""

from __future__ import annotations

import os
import sys
import time


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


def busy_cores(interval: float = 0.2) -> float | None:
    """How many of this process's cores other processes kept busy over ``interval`` seconds (this one
    sleeps meanwhile); None where ``/proc/stat`` can't be read."""
    mine = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None

    def times() -> tuple[int, int]:  # (busy, total) jiffies over this process's cores
        busy = total = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu" and (mine is None or name in mine):
                    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                    busy, total = busy + sum(ticks) - ticks[3] - ticks[4], total + sum(ticks)
        return busy, total

    try:
        busy0, total0 = times()
        time.sleep(interval)
        busy1, total1 = times()
    except (OSError, ValueError):
        return None
    cores = len(mine) if mine else os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(total1 - total0, 1)


def default_threads(load: float | None = None) -> int:
    """Cores this process may use, less those other processes keep busy (``load``: that number, else measured
    now; the 1-minute load average where it can't be measured)."""
    cores = available_cores()
    if load is None:
        load = busy_cores()
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
