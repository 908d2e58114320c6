"""The Tracker: one MLflow run fed from the run's journal (rank 0), which it never blocks or fails.

The Tracker is a sink of the run's :class:`~electra_kit.rundir.journal.Journal`: the trainer appends
``metrics.jsonl`` whether or not anything tracks it, and tells the Tracker; one background thread runs
``store.deliver`` for what is new: the journal's new bytes in one ``log_batch``, and the run's params, tags,
artifacts and final status when they change. A failed delivery is tried again every few seconds (what it
delivered in part, the store keeps once). ``finish`` waits ``drain_timeout`` s at most; what is unconfirmed then,
``electra-kit sync`` delivers. Only the process that tracks (rank 0) makes a Tracker: there is no inactive one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import uuid
from pathlib import Path

import gin

from ..rundir.journal import JOURNAL, Journal, now_ms
from . import store
from .facts import system_tags
from .store import logger

DEFAULT_EXPERIMENT = "electra-kit"
RETRY_S = 5.0  # a store that failed is asked again after this, not for every record


@gin.configurable
def tracking(*, uri: str | None = None, experiment: str | None = None, enabled: bool = True) -> dict:
    """Where a run is recorded; ``--tracking-uri`` / ``--experiment`` / ``--no-tracking`` win over these."""
    return {"uri": uri, "experiment": experiment, "enabled": enabled}


def _clip(values: dict, limit: int) -> dict:  # MLflow's limits: params 6000, tags 8000 characters
    values = {str(k): str(v) for k, v in values.items()}
    return {k: v if len(v) <= limit else v[: limit - 14] + "...[truncated]" for k, v in values.items()}


@contextlib.contextmanager
def finish_when_done(tracker: "Tracker | None", killed: tuple[type[BaseException], ...] = (KeyboardInterrupt,)):
    """Finish ``tracker``'s run as FINISHED, KILLED (on a ``killed`` exception) or FAILED with the error."""
    status, error = "FINISHED", None
    try:
        yield
    except killed:
        status = "KILLED"
        raise
    except BaseException as exc:
        status, error = "FAILED", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if tracker is not None:
            tracker.finish(status, error)


def _sampling_interval() -> float:
    """MLflow's $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (default 10 s), refused unless a number >= 0.1."""
    text = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or "10"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0.1 or value == float("inf"):
        raise store.TrackingError(f"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL={text!r}: must be a number of seconds "
                                  ">= 0.1 (MLflow's default is 10)")
    return value


class Tracker:
    """One MLflow run: construction refuses a store MLflow won't accept (TrackingError); ``start``, then
    ``log_metrics`` / ``log_artifact`` / ``set_tags``, then ``finish``. ``journal``: the run directory's journal
    object, where the run already has one (one per file and process); else the Tracker makes it."""

    def __init__(self, *, run_dir: str | Path, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                 run_name: str | None = None, journal: Journal | None = None, system_metrics: bool = True,
                 drain_timeout: float = 30.0, start_timeout: float = 30.0,
                 system_metrics_interval: float | None = None):
        self.run_id: str | None = None  # MLflow's, once the store has the run
        self._closed, self._thread = False, None
        store.http_defaults()
        self.tracking_uri = store.check_store(store.resolve_tracking_uri(tracking_uri))
        self.run_dir, self.experiment, self.run_name = Path(run_dir).resolve(), experiment, run_name
        self.journal = journal or Journal(self.run_dir / JOURNAL)
        if self.journal.path.resolve() != self.run_dir / JOURNAL:
            raise ValueError(f"the journal {self.journal.path} is not {self.run_dir / JOURNAL}")
        self.drain_timeout, self.start_timeout = drain_timeout, start_timeout
        self.sysmon_interval = (system_metrics_interval or _sampling_interval()) if system_metrics else None
        self._lock = threading.Lock()  # the state file and _changed
        self._wake, self._stop, self._attempted = threading.Event(), threading.Event(), threading.Event()
        self._client, self._state = None, {"artifacts": [], "tags": {}}
        self._changed, self._confirmed, self._last_step, self._deadline = True, False, 0, float("inf")

    def start(self, *, params: dict[str, object], tags: dict[str, str], resume: bool = False) -> str | None:
        """Record the run (with ``resume``, the one this run directory recorded before) and connect in the
        background; returns the MLflow run id, or None if the store did not answer within ``start_timeout``."""
        if self._closed or self._thread is not None:
            return self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        old = store.read_state(self.run_dir) if resume else {}
        if resume and not old.get("uid"):
            logger.warning("resume: %s has no %s; starting a new MLflow run", self.run_dir, store.STATE)
        old = store.retarget(old, self.tracking_uri) if old else old
        new, kept = store.valid_entries(_clip(params, 6000), "param"), old.get("params", {})
        changed = [f"{k}={kept[k]} (now {v})" for k, v in new.items() if kept.get(k, v) != v]
        if changed:
            logger.warning("MLflow refuses to change a logged param; the run keeps %s", ", ".join(changed))
        experiment = old.get("experiment", self.experiment)
        facts = {} if "electra_kit.version" in tags else system_tags()  # the caller may have sent them
        self._state = {
            "uid": old.get("uid") or uuid.uuid4().hex, "run_id": old.get("run_id"), "experiment": experiment,
            "tracking_uri": self.tracking_uri, "artifact_location": store.artifact_location(self.tracking_uri, experiment),
            "run_name": old.get("run_name", self.run_name), "start_time": old.get("start_time") or now_ms(),
            "params": {**new, **kept}, "artifacts": old.get("artifacts", []) + self._state["artifacts"],
            "tags": store.valid_entries(_clip({**old.get("tags", {}), **facts, **tags}, 8000), "tag"),
            "sent": old.get("sent", 0), "status": None, "end_time": None, "error": None,
        }
        self.run_id = self._state["run_id"]
        with self._lock:
            store.write_state(self.run_dir, self._state)
        self.journal.add_sink(self)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="electra-kit-mlflow")
        self._thread.start()
        atexit.register(self._atexit)
        if self.sysmon_interval:
            threading.Thread(target=self._sample_system_metrics, daemon=True, name="electra-kit-sysmetrics").start()
        self._attempted.wait(self.start_timeout)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Journal ``metrics`` (numbers or 0-d tensors) for ``step``, as the trainer does; the thread sends them."""
        if self._closed:
            return
        values = {}
        for k, v in metrics.items():
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                values[str(k)] = float(v)
        self.journal.append(step, values)

    def journaled(self, step: int) -> None:
        """The journal's sink: lines up to ``step`` are on disk; the background thread delivers them."""
        self._last_step = step
        self._wake.set()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None, *, as_text: str | None = None) -> None:
        """Upload a file, or a folder as ``artifact_path/<folder name>/...``, in the background. ``as_text``: a text
        file's content under that name instead (the MLflow UI previews ``.txt`` files, not ``.gin``)."""
        path = Path(path).resolve()
        if self._closed or not path.exists():
            return logger.warning("log_artifact: %s does not exist", path) if not self._closed else None
        entry = {"path": str(path), "artifact_path": artifact_path, "as_text": as_text, "done": False}
        same = (str(path), as_text)
        self._update(artifacts=[a for a in self._state["artifacts"] if (a["path"], a.get("as_text")) != same] + [entry])

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self._closed:
            self._update(tags={**self._state["tags"], **store.valid_entries(_clip(tags, 8000), "tag")})

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run with FINISHED, FAILED or KILLED; wait at most ``drain_timeout`` seconds for the store."""
        if self._closed or self._thread is None:
            self._closed = True
            return
        self._closed = True
        atexit.unregister(self._atexit)
        self._deadline = time.monotonic() + self.drain_timeout
        self._update(status=status, end_time=now_ms(), error=error[-8000:] if error else None)
        self._stop.set()
        self._thread.join(self.drain_timeout + 1)
        if not self._confirmed:
            logger.warning("MLflow at %s did not confirm all of this run's records; they are on disk in %s (%s, %s): "
                           "deliver them with `electra-kit sync %s --tracking-uri %s`", self.tracking_uri, self.run_dir,
                           JOURNAL, store.STATE, self.run_dir, self.tracking_uri)

    # ------------------------------------------------------------------------- background side
    def _update(self, **fields) -> None:
        """Change the run's state by replacing values, never mutating them (the delivery reads them unlocked)."""
        with self._lock:
            self._state.update(fields)
            store.write_state(self.run_dir, self._state)
            self._changed = True
        self._wake.set()

    def _save(self, state: dict) -> None:
        with self._lock:
            store.write_state(self.run_dir, state)

    def _atexit(self) -> None:
        self.drain_timeout = min(self.drain_timeout, 5.0)
        self.finish("KILLED", error="process exited without Tracker.finish()")

    def _loop(self) -> None:
        """Deliver what is new until the run is finished and the store has all of it, or ``finish``'s deadline."""
        failing = False
        while not self._confirmed and not (self._stop.is_set() and time.monotonic() >= self._deadline):
            self._wake.clear()  # a record journaled from here on wakes the next round
            end = self.journal.end()
            with self._lock:
                full, final, self._changed = self._changed, self._stop.is_set(), False
            try:
                if self._client is None:
                    from mlflow import MlflowClient

                    self._client = MlflowClient(self.tracking_uri)  # builds the store: may take long, or fail
                self.run_id = store.deliver(self._client, self._state, self.run_dir, end=end, full=full,
                                            save=self._save)["run_id"]
                if failing:
                    logger.warning("MLflow at %s is reachable again: delivered what it missed", self.tracking_uri)
                failing = False
                with self._lock:
                    self._confirmed = final and self.journal.end() == end and not self._changed
            except Exception as exc:  # noqa: BLE001 - never let the store stop training
                if not failing:
                    logger.warning("MLflow at %s failed (%s); training goes on, records are kept in %s and retried",
                                   self.tracking_uri, store.describe(exc), self.run_dir)
                failing = True
                with self._lock:
                    self._changed = self._changed or full
            self._attempted.set()
            if not failing:
                self._wake.wait(RETRY_S)
            elif not final:  # a failed store is not asked again for every record
                self._stop.wait(RETRY_S)
            else:  # finishing: once a second until the deadline
                time.sleep(1.0)

    def _sample_system_metrics(self) -> None:
        """MLflow's own CPU/disk/network/GPU monitors, sampled here so their values go through the journal like
        every other metric (an outage loses none), stepped by the latest training step."""
        try:
            from mlflow.system_metrics.metrics import cpu_monitor, disk_monitor, gpu_monitor, network_monitor

            monitors = [cpu_monitor.CPUMonitor(), disk_monitor.DiskMonitor(), network_monitor.NetworkMonitor()]
        except Exception as exc:  # noqa: BLE001 - psutil missing
            return logger.warning("system metrics disabled: %s", exc)
        with contextlib.suppress(Exception):  # no GPU, or no pynvml
            monitors.append(gpu_monitor.GPUMonitor())
        while not self._stop.wait(self.sysmon_interval) and not self._closed:
            values = {}
            for m in monitors:
                m.collect_metrics()
                values.update(m.aggregate_metrics())
                m.clear_metrics()
            self.log_metrics({f"system/{k}": v for k, v in values.items()}, self._last_step)
