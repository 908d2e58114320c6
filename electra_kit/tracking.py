"""MLflow tracking for electra-kit (rank 0 only); never the cause of a lost run.

Where runs go: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` -- the
store MLflow 3.x's own tools (``mlflow ui``, ``mlflow server``, ``MlflowClient()``) open by default,
made absolute here so a background thread or a later ``sync`` from another directory finds the same
file. The experiment's artifacts are kept beside a SQLite store (``<db dir>/mlruns/<experiment>``),
set explicitly when the experiment is created. A ``file:`` store (``./mlruns``) is refused by MLflow
3.17 unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set; MLflow itself only falls back to it when an old
``./mlruns`` store exists, which this module does not do.

The training thread only appends to an in-memory queue (``log_metrics`` copies the dict and the
time, nothing else: 0-d tensors are turned into floats in the background). A background thread
batches the queue into ``MlflowClient.log_batch`` every ``flush_interval`` seconds. When the store
fails, undelivered records go to the on-disk outbox (see :mod:`electra_kit.tracking_outbox`) and are
retried with backoff; ``finish`` drains for at most ``drain_timeout`` seconds and leaves the rest for
``sync_outbox``. While the store answers nothing is written to disk: a process killed then loses at
most the last ``flush_interval`` of metrics.

Each run records: params (the trainer's plus flattened gin config), tags (``system_tags()`` merged
under the trainer's, ``electra_kit.uid``), metrics with their step and wall time, ``system/*``
metrics from MLflow's own CPU/disk/network/GPU monitors (stepped by the latest training step), the
artifacts the trainer hands over, and the final status (``electra_kit.error`` tag on failure).

For HTTP stores this sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=30``
unless already set (process-wide): MLflow's defaults (7 retries, 120 s) would keep a dead server's
requests busy for minutes; the outbox does the retrying instead.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import gin

from .tracking_delivery import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
    UID_TAG,
    Deliverer,
    TransientError,
    now_ms,
    truncate,
)
from .tracking_helpers import (
    SystemMetricsSampler,
    flatten_gin_config,
    format_runs_table,
    list_runs,
    system_tags,
    ui_command,
)
from .tracking_outbox import OUTBOX_DIR, RUN_FILE, Outbox, read_run_file, sync_outbox, write_run_file


@gin.configurable
def tracking(*, uri: str | None = None, experiment: str | None = None, enabled: bool = True) -> dict:
    """Where a run is recorded; ``--tracking-uri`` / ``--experiment`` / ``--no-tracking`` win over these."""
    return {"uri": uri, "experiment": experiment, "enabled": enabled}


__all__ = [
    "Tracker",
    "sync_outbox",
    "resolve_tracking_uri",
    "flatten_gin_config",
    "system_tags",
    "list_runs",
    "format_runs_table",
    "ui_command",
    "DEFAULT_EXPERIMENT",
    "OUTBOX_DIR",
    "RUN_FILE",
]

logger = logging.getLogger("electra_kit.tracking")

DEFAULT_EXPERIMENT = "electra-kit"
# Artifacts up to this size are copied when logged; larger ones are read from their path at upload.
SNAPSHOT_LIMIT = 16 * 2**20
MAX_BACKOFF = 60.0
VALID_STATUSES = ("FINISHED", "FAILED", "KILLED")


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The argument, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; SQLite paths made absolute."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    m = re.match(r"^sqlite:///(?!/)(.+)$", uri)  # sqlite:///relative.db (four slashes = absolute)
    if m and m.group(1) != ":memory:":
        uri = "sqlite:///" + str(Path.cwd() / m.group(1))
    return uri


def sqlite_path(uri: str) -> Path | None:
    m = re.match(r"^sqlite:///(.+)$", uri)
    return Path(m.group(1)) if m and m.group(1) != ":memory:" else None


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store: <db dir>/mlruns/<experiment>, so artifacts stay beside the store."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "mlruns" / (re.sub(r"[^A-Za-z0-9._-]+", "_", experiment) or "default")).as_uri()


def _http_defaults() -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


@contextlib.contextmanager
def finish_when_done(tracker: "Tracker | None", killed: tuple[type[BaseException], ...] = (KeyboardInterrupt,)):
    """Finish ``tracker``'s run as FINISHED, KILLED (on a ``killed`` exception) or FAILED with the error."""
    if tracker is None:
        yield
        return
    try:
        yield
    except killed:
        tracker.finish("KILLED")
        raise
    except BaseException as exc:
        tracker.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    else:
        tracker.finish("FINISHED")


def _chunks(d: dict, n: int) -> list[dict]:
    items = list(d.items())
    return [dict(items[i : i + n]) for i in range(0, len(items), n)] or []


def _size(path: Path, limit: int) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        if p.is_file():
            total += p.stat().st_size
            if total > limit:
                break
    return total


class Tracker:
    """One MLflow run, fed from the training loop without ever blocking or failing it."""

    def __init__(
        self,
        *,
        run_dir: str | Path,
        tracking_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        enabled: bool = True,
        rank: int = 0,
        system_metrics: bool = True,
        drain_timeout: float = 30.0,
        start_timeout: float = 30.0,
        flush_interval: float = 1.0,
        system_metrics_interval: float | None = None,
    ):
        self.active = bool(enabled) and rank == 0
        self._run_id: str | None = None
        self._closed = not self.active
        self._thread: threading.Thread | None = None
        if not self.active:
            return
        self.run_dir = Path(run_dir).resolve()
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.system_metrics = system_metrics
        self.drain_timeout = drain_timeout
        self.start_timeout = start_timeout
        self.flush_interval = flush_interval
        self.system_metrics_interval = system_metrics_interval
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._degraded = False
        self._backoff = 0.5
        self._next_retry = 0.0
        self._deadline = float("inf")
        self._seq = 0
        self._last_step = 0
        self._bad_values: set[str] = set()
        self._outbox: Outbox | None = None
        self._sysmon: SystemMetricsSampler | None = None
        if self.tracking_uri.startswith(("file:", "/", ".", "~")):
            if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
                logger.warning(
                    "MLflow 3.17 refuses the file store %s unless MLFLOW_ALLOW_FILE_STORE=true; "
                    "records will wait in the outbox",
                    self.tracking_uri,
                )

    @property
    def run_id(self) -> str | None:
        return self._run_id

    # ------------------------------------------------------------------------------ public API
    def start(self, *, params: dict[str, object], tags: dict[str, str], resume: bool = False) -> str | None:
        """Create (or, with ``resume``, reopen) the run; returns its id, or None if the store is down."""
        if not self.active or self._thread is not None:
            return self._run_id
        _http_defaults()
        info = read_run_file(self.run_dir) if resume else {}
        if resume and not info.get("uid"):
            logger.warning("resume=True but %s has no %s: starting a new MLflow run", self.run_dir, RUN_FILE)
        uid = info.get("uid") or uuid.uuid4().hex
        self._outbox = Outbox(self.run_dir, uid)
        if not self._outbox.lock():
            logger.warning("outbox %s is held by another process", self._outbox.path)
        self._outbox.load()
        self._run_id = info.get("run_id") or self._outbox.run_id
        self._seq = self._outbox.max_seq + 1
        self._deliverer = Deliverer(self.tracking_uri, uid, self._run_id, on_bind=self._bind)
        self._header = {
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "run_name": self.run_name,
            "artifact_location": artifact_location(self.tracking_uri, self.experiment),
        }
        write_run_file(self.run_dir, {**self._header, "uid": uid, "run_id": self._run_id})
        if self._outbox.pending:
            self._degraded = True
            logger.warning(
                "%d MLflow records from an earlier session wait in %s; delivering them first",
                len(self._outbox.pending),
                self._outbox.path,
            )
        others = [p.name for p in self._outbox.dir.glob("*.jsonl") if p.stem != uid]
        if others:
            logger.warning(
                "undelivered MLflow outboxes of other runs in %s: %s (deliver with sync_outbox)",
                self._outbox.dir,
                ", ".join(others),
            )

        early = list(self._queue)
        self._queue.clear()
        pending_create = any(r["type"] == "create" for r in self._outbox.pending.values())
        if self._run_id or not pending_create:
            kind = "reopen" if self._run_id else "create"
            self._queue.append(("rec", {"type": kind, **self._header, "start_time": now_ms()}))
        flat = {str(k): truncate(str(v), MAX_PARAM_VAL_LENGTH) for k, v in params.items()}
        for chunk in _chunks(flat, MAX_PARAMS_TAGS_PER_BATCH):
            self._queue.append(("rec", {"type": "params", "params": chunk}))
        self._queue.extend(early)
        facts = {} if "electra_kit.version" in tags else system_tags()  # the trainer may have sent them
        self.set_tags({**facts, **tags, UID_TAG: uid})

        self._thread = threading.Thread(target=self._loop, daemon=True, name="electra-kit-mlflow")
        self._thread.start()
        atexit.register(self._atexit)
        self._started.wait(self.start_timeout)
        if self.system_metrics:
            self._sysmon = SystemMetricsSampler.create(self, self.system_metrics_interval)
        return self._run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics (floats or 0-d tensors) for ``step``; returns at once."""
        if self._closed:
            return
        self._queue.append(("metrics", step, now_ms(), dict(metrics)))
        self._last_step = step
        if len(self._queue) > 1000:
            self._wake.set()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder (as ``artifact_path/<folder name>/...``) in the background."""
        if self._closed:
            return
        path = Path(path).resolve()
        if not path.exists():
            logger.warning("log_artifact: %s does not exist", path)
            return
        rec = {"type": "artifact", "path": str(path), "artifact_path": artifact_path, "name": path.name}
        if self._outbox is not None and _size(path, SNAPSHOT_LIMIT) <= SNAPSHOT_LIMIT:
            dest = self._outbox.files_dir / uuid.uuid4().hex[:12] / path.name
            try:  # a copy, so that what is uploaded is the file as it was now
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(path, dest) if path.is_dir() else shutil.copy2(path, dest)
                rec.update(path=str(dest), snapshot=True)
            except OSError as e:
                logger.warning("could not snapshot %s (%s); uploading it from where it is", path, e)
        self._queue.append(("rec", rec))

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._closed:
            return
        flat = {str(k): truncate(str(v), MAX_TAG_VAL_LENGTH) for k, v in tags.items()}
        for chunk in _chunks(flat, MAX_PARAMS_TAGS_PER_BATCH):
            self._queue.append(("rec", {"type": "tags", "tags": chunk}))

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run with FINISHED, FAILED or KILLED; deliver for at most ``drain_timeout`` seconds."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        atexit.unregister(self._atexit)
        if status not in VALID_STATUSES:
            logger.warning("unknown run status %r; using FAILED", status)
            status = "FAILED"
        if self._sysmon is not None:
            self._sysmon.stop()
        self._queue.append(
            ("rec", {"type": "status", "status": status, "end_time": now_ms(), "error": error})
        )
        self._deadline = time.monotonic() + self.drain_timeout
        self._next_retry = 0.0  # retry now, then every second until the deadline
        self._stop.set()
        self._wake.set()
        self._thread.join(self.drain_timeout + 35)  # + one HTTP timeout for a request in flight
        left = len(self._outbox.pending) + len(self._queue)
        if left:
            logger.warning(
                "%d MLflow records were not delivered to %s; they are kept in %s: deliver them later "
                "with `electra-kit sync %s`",
                left,
                self.tracking_uri,
                self._outbox.dir,
                self.run_dir,
            )
        self._outbox.unlock()
        self._outbox.prune()

    # ------------------------------------------------------------------------- background side
    def _atexit(self) -> None:
        self.drain_timeout = min(self.drain_timeout, 5.0)
        self.finish("KILLED", error="process exited without Tracker.finish()")

    def _bind(self, run_id: str) -> None:
        self._run_id = run_id
        self._outbox.bind(run_id)
        write_run_file(self.run_dir, {**self._header, "uid": self._outbox.uid, "run_id": run_id})

    def _take(self) -> list[dict]:
        """Drain the queue into numbered records; tensors become floats here, not in the step."""
        out: list[dict] = []
        while self._queue:
            item = self._queue.popleft()
            if item[0] != "metrics":
                out.append(item[1])
                continue
            _, step, ts, raw = item
            values = {}
            for k, v in raw.items():
                try:
                    values[str(k)] = float(v)
                except (TypeError, ValueError, RuntimeError):
                    if k not in self._bad_values:
                        self._bad_values.add(k)
                        logger.warning("metric %r has a value that is not a number (%r); skipping it", k, v)
            for chunk in _chunks(values, MAX_METRICS_PER_BATCH):
                out.append({"type": "metrics", "step": int(step), "ts": ts, "values": chunk})
        for rec in out:
            rec["seq"] = self._seq
            self._seq += 1
        return out

    def _loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                self._cycle(final=stopping)
            except Exception:  # noqa: BLE001 - the tracker thread must outlive any bug
                logger.exception("MLflow tracking thread error")
            finally:
                self._started.set()
            if stopping and not self._queue and (not self._degraded or time.monotonic() >= self._deadline):
                return
            self._wake.wait(self.flush_interval if not stopping else 0.2)
            self._wake.clear()

    def _cycle(self, final: bool) -> None:
        batch = self._take()
        if self._degraded:
            if batch:
                self._outbox.append(batch, self._header)
            if time.monotonic() >= self._next_retry:
                self._retry(final)
            return
        if not batch:
            return
        acked: set[int] = set()

        def ack(group: list[dict]) -> None:
            acked.update(r["seq"] for r in group)
            for r in group:
                if r.get("snapshot"):
                    shutil.rmtree(Path(r["path"]).parent, ignore_errors=True)

        try:
            self._deliverer.deliver(batch, ack)
        except TransientError as e:
            self._outbox.append([r for r in batch if r["seq"] not in acked], self._header)
            self._failed(e, final)

    def _retry(self, final: bool) -> None:
        n = len(self._outbox.pending)
        try:
            self._deliverer.deliver(self._outbox.ordered(), self._outbox.ack)
        except TransientError as e:
            self._failed(e, final)
            return
        self._outbox.remove()
        self._degraded = False
        self._backoff = 0.5
        logger.warning("MLflow at %s is reachable again: delivered %d buffered records", self.tracking_uri, n)

    def _failed(self, error: TransientError, final: bool) -> None:
        if not self._degraded:
            self._degraded = True
            logger.warning(
                "MLflow at %s failed (%s); training goes on, records are kept in %s and retried",
                self.tracking_uri,
                error,
                self._outbox.path,
            )
        else:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._next_retry = time.monotonic() + (min(self._backoff, 1.0) if final else self._backoff)
