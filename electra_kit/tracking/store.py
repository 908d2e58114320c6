"""Where a run's records live on disk, and their idempotent delivery to an MLflow store.

A tracked run directory holds everything MLflow should learn about the run, before MLflow hears of it:

- ``metrics.jsonl``: the journal, one line per logged step, ``{"step": 7, "ts": <ms>, "train/loss": 2.3}``;
- ``mlflow_run.json``: the run's uid and (once known) MLflow run id, store, experiment, params, tags,
  artifacts (each with ``done`` once uploaded) and final status.

``deliver`` makes the store agree with those two files and can run any number of times: the run is
found by its id or its ``electra_kit.uid`` tag before one is created, params and tags are idempotent,
a metric is sent only if the store has no value for its (key, step, timestamp), an artifact only until
it is marked done. The live Tracker and ``electra-kit sync`` both use it, so nothing arrives twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("electra_kit.tracking")

JOURNAL = "metrics.jsonl"
STATE = "mlflow_run.json"
LOCK = ".mlflow.lock"
UID_TAG = "electra_kit.uid"
ERROR_TAG = "electra_kit.error"
# The MLflow UI (3.x) shows an experiment of this kind as "Machine learning": runs first, not GenAI traces.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(ValueError):
    """A tracking store or run directory that cannot be used; the message says which and why."""


def now_ms() -> int:
    return int(time.time() * 1000)


def describe(exc: BaseException) -> str:
    """The first line of an error, short enough for a log line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


# ------------------------------------------------------------------------------------- the store


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The argument, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; SQLite paths made absolute
    (so a later ``sync`` from another directory finds the same file)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    m = re.match(r"^sqlite:///(?!/)(.+)$", uri)  # sqlite:///relative.db (four slashes = absolute)
    if m and m.group(1) != ":memory:":
        uri = "sqlite:///" + str(Path.cwd() / m.group(1))
    return uri


def sqlite_path(uri: str) -> Path | None:
    m = re.match(r"^sqlite:///(.+)$", uri)
    return Path(m.group(1)) if m and m.group(1) != ":memory:" else None


def http_defaults() -> None:
    """No retries and a 30 s timeout for HTTP stores (MLflow's 7 retries would keep a dead server's requests
    busy for minutes); the journal and the Tracker's own backoff do the retrying. Process-wide, if unset."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def check_store(uri: str) -> str:
    """Refuse, at once and in one line, a store MLflow will never accept (unknown scheme, the file store
    MLflow 3 refuses) and a SQLite file whose folder can't be created or written; returns ``uri``.
    Reachability is not checked: a server that is down now is the Tracker's business, not an error."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    try:
        builder = _tracking_store_registry.get_store_builder(uri)
        if uri.startswith(("file:", "/", ".", "~")):
            builder(uri)  # a local folder: cheap, and refused by MLflow 3 unless MLFLOW_ALLOW_FILE_STORE=true
    except Exception as exc:  # noqa: BLE001 - MLflow's reason, in one line
        raise TrackingError(f"tracking URI {uri}: {describe(exc).split('. ')[0]}") from exc
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        try:  # a SQLite file in a folder that can't hold it makes MLflow retry for ~100 s, then fail
            db.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=db.parent, prefix=".electra-kit-probe-"):
                pass
        except OSError as exc:
            raise TrackingError(f"tracking URI {uri}: cannot create {db} ({exc.strerror or exc})") from exc
    return uri


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store: <db dir>/mlruns/<experiment>, so artifacts stay beside the store."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "mlruns" / (re.sub(r"[^A-Za-z0-9._-]+", "_", experiment) or "default")).as_uri()


# ------------------------------------------------------------------------------ the run directory


def append_journal(path: Path, step: int, values: dict[str, float]) -> tuple[int, int]:
    """Append one journal line; returns its timestamp (ms, which MLflow receives too) and the journal's size."""
    ts = now_ms()
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "ts": ts, **values}) + "\n")
        return ts, f.tell()


def read_journal(path: Path, start: int = 0, end: int | None = None) -> list[dict]:
    """The journal's records between bytes ``start`` and ``end``; a line torn by a kill is skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
    except FileNotFoundError:
        return []
    records = []
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and isinstance(rec.get("ts"), int):
            records.append(rec)
    return records


def read_state(run_dir: Path) -> dict:
    try:
        state = json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(run_dir: Path, state: dict) -> None:
    """Replace mlflow_run.json atomically (a kill leaves the old or the new one, never half of one)."""
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{STATE}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, Path(run_dir) / STATE)


def lock_run_dir(run_dir: Path):
    """An exclusive flock on run_dir/.mlflow.lock (released when the file closes), or None if held."""
    fh = open(Path(run_dir) / LOCK, "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


# -------------------------------------------------------------------------------------- delivery

_bad_keys: set[str] = set()


def valid_metrics(values: dict) -> dict[str, float]:
    """Numbers under names MLflow accepts; a refused name is reported once per process, then skipped."""
    from mlflow.utils.validation import _validate_metric_name

    out = {}
    for key, value in values.items():
        if key in ("step", "ts") or key in _bad_keys:
            continue
        try:
            _validate_metric_name(key)
        except Exception as exc:  # noqa: BLE001
            _bad_keys.add(key)
            logger.warning("MLflow refuses the metric name %r; it stays in the journal only (%s)", key, describe(exc))
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            pass
    return out


def _run(client, state: dict):
    """The state's MLflow run: by id, else by uid tag, else a new one (in the experiment, created if need be)."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    if state.get("run_id"):
        try:
            return client.get_run(state["run_id"])
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    exp = client.get_experiment_by_name(state["experiment"])
    if exp is None:
        exp_id = client.create_experiment(state["experiment"], state.get("artifact_location"), EXPERIMENT_TAGS)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
        for key, value in EXPERIMENT_TAGS.items():
            if key not in exp.tags:
                client.set_experiment_tag(exp_id, key, value)
    uid = state["uid"]
    found = client.search_runs([exp_id], f"tags.`{UID_TAG}` = '{uid}'", ViewType.ALL, max_results=1)
    if found:
        return found[0]
    return client.create_run(exp_id, start_time=state.get("start_time"), tags={UID_TAG: uid},
                             run_name=state.get("run_name"))


def replay_metrics(client, run_id: str, journal: Path, start: int = 0, end: int | None = None) -> int:
    """Send the journal's values (bytes ``start`` to ``end``) that the run lacks; returns how many were sent."""
    from mlflow.entities import Metric

    records = read_journal(journal, start, end)
    keys = {k for rec in records for k in valid_metrics(rec)}
    have = {k: {(m.step, m.timestamp) for m in client.get_metric_history(run_id, k)} for k in keys}
    missing = [
        Metric(k, v, rec["ts"], rec["step"])
        for rec in records
        for k, v in valid_metrics(rec).items()
        if (rec["step"], rec["ts"]) not in have[k]
    ]
    client.log_batch(run_id, metrics=missing, synchronous=True)  # MLflow splits it into requests within its limits
    return len(missing)


def deliver(client, state: dict, run_dir: Path, *, metrics: bool = True, start: int = 0, end: int | None = None,
            save=None) -> dict:
    """Make the store hold what ``state`` and the journal say; returns counts. ``save(state)`` persists progress
    (the run id once known, artifacts once uploaded). Raises whatever the store raises: call it again later."""
    from mlflow.entities import Param, RunTag

    save = save or (lambda s: write_state(run_dir, s))
    run = _run(client, state)
    run_id = run.info.run_id
    if state.get("run_id") != run_id:
        state["run_id"] = run_id
        save(state)
    have = run.data.params
    params = [Param(k, v) for k, v in state.get("params", {}).items() if k not in have]
    tags = [RunTag(k, v) for k, v in state.get("tags", {}).items() if run.data.tags.get(k) != v]
    client.log_batch(run_id, params=params, tags=tags, synchronous=True)
    sent = replay_metrics(client, run_id, run_dir / JOURNAL, start, end) if metrics else 0
    uploaded = 0
    for art in state.get("artifacts", []):
        if art.get("done"):
            continue
        path = Path(art["path"])
        if art.get("as_text") and path.is_file():
            client.log_text(run_id, path.read_text(), "/".join(p for p in (art.get("artifact_path"), art["as_text"]) if p))
        elif path.is_dir():
            client.log_artifacts(run_id, str(path), "/".join(p for p in (art.get("artifact_path"), path.name) if p))
        elif path.is_file():
            client.log_artifact(run_id, str(path), art.get("artifact_path"))
        else:
            logger.warning("artifact %s no longer exists; not uploaded", path)
        art["done"] = True
        uploaded += 1
        save(state)
    status = state.get("status")
    if status:
        if state.get("error"):
            client.set_tag(run_id, ERROR_TAG, state["error"][-8000:])
        client.set_terminated(run_id, status=status, end_time=state.get("end_time"))
    elif not status and run.info.status != "RUNNING":  # resumed: the run goes on
        client.update_run(run_id, status="RUNNING")
    return {"run_id": run_id, "params": len(params), "metrics": sent, "artifacts": uploaded}


def sync_run(run_dir: str | Path, tracking_uri: str | None = None) -> dict:
    """``electra-kit sync RUN_DIR``: deliver what the run recorded and its store may lack (see ``deliver``).
    ``tracking_uri`` overrides the store the run recorded. Raises TrackingError with the reason."""
    from mlflow import MlflowClient

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrackingError(f"{run_dir}: no such run directory")
    state = read_state(run_dir)
    if not state.get("uid"):
        raise TrackingError(f"{run_dir} has no {STATE}: it is not a tracked run directory")
    lock = lock_run_dir(run_dir)
    if lock is None:
        raise TrackingError(f"{run_dir} is in use by a live run (it holds {run_dir / LOCK}); it delivers its own records")
    try:
        http_defaults()
        uri = check_store(resolve_tracking_uri(tracking_uri or state.get("tracking_uri")))
        if uri != state.get("tracking_uri"):
            state.update(tracking_uri=uri, artifact_location=artifact_location(uri, state["experiment"]))
        try:
            return {"tracking_uri": uri, **deliver(MlflowClient(uri), state, run_dir)}
        except Exception as exc:  # noqa: BLE001 - the store's failure, in one line
            raise TrackingError(f"delivery to {uri} failed: {describe(exc)}; run sync again later") from exc
    finally:
        lock.close()
