"""A tracked run directory, the durable record, and its idempotent delivery to an MLflow store.

``metrics.jsonl`` (the run's journal, :mod:`electra_kit.rundir.journal`) and ``mlflow_run.json``
(uid, MLflow run id once known, store, experiment, params, tags, artifacts with ``done`` once uploaded, journal
bytes delivered, final status) hold everything MLflow should learn, before it hears of it. ``deliver`` makes the
store agree with them and may run any number of times: the run is found by id or by its ``electra_kit.uid`` tag
before one is created, params and tags are idempotent, an artifact goes until it is done, and a metric sent twice
is kept once: MLflow's SQL store ignores a metric it holds already (same key, step, timestamp and value), so a
delivery cut short is simply sent again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path, PurePosixPath

from ..rundir.atomic import atomic_write
from ..rundir.directory import RunDir, RunDirError
from ..rundir.journal import JOURNAL, read_journal

logger = logging.getLogger("electra_kit.tracking")

STATE = "mlflow_run.json"
UID_TAG, ERROR_TAG = "electra_kit.uid", "electra_kit.error"
# The kind MLflow 3 records for a model-training experiment (3.17's UI lands by the URL instead: runs.py).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(ValueError):
    """A tracking store or run directory that can't be used; the message says which and why."""



def describe(exc: BaseException) -> str:  # one line of at most 300 characters
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300] + "..." * (len(text) > 300)


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The argument, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; SQLite paths made absolute
    (so that a later ``sync`` from another directory finds the same file)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    m = re.match(r"^sqlite:///(?!/)(.+)$", uri)  # sqlite:///relative.db (four slashes = absolute)
    return "sqlite:///" + str(Path.cwd() / m.group(1)) if m and m.group(1) != ":memory:" else uri


def sqlite_path(uri: str) -> Path | None:
    m = re.match(r"^sqlite:///(.+)$", uri)
    return Path(m.group(1)) if m and m.group(1) != ":memory:" else None


def http_defaults() -> None:
    """No retries, 30 s timeout (MLflow's 7 retries keep a dead server's requests busy for minutes; the Tracker
    retries on its own). Process-wide, where unset."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def check_store(uri: str) -> str:
    """Refuse at once a store MLflow will never accept (unknown scheme; a bare word or path, which MLflow takes for
    the file store MLflow 3 refuses) and a SQLite file that can't be created or written (MLflow would retry for
    ~100 s, then fail every second). A server that is down is not an error here: the Tracker waits for it."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry

    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme not in registry._registry:
        known = ", ".join(sorted(s for s in registry._registry if s))
        raise TrackingError(f"tracking URI {uri}: MLflow has no store for '{scheme}:' (it has: {known})")
    try:
        if scheme in ("", "file"):  # a local folder: refused unless MLFLOW_ALLOW_FILE_STORE=true
            registry.get_store_builder(uri)(uri)
    except Exception as exc:  # noqa: BLE001 - MLflow's reason, in one line
        raise TrackingError(f"tracking URI {uri}: {describe(exc).split('. ')[0]} (give sqlite:///PATH.db or "
                            "http://HOST:PORT)") from exc
    if (db := sqlite_path(uri)) is not None:
        _check_sqlite_writable(uri, db)
    return uri


def _check_sqlite_writable(uri: str, db: Path) -> None:
    """The folder can take the file (and SQLite's journal beside it), and an existing file opens for writing."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=db.parent).close()
        if db.exists():
            os.close(os.open(db, os.O_RDWR))  # SQLite would quietly open it read-only and fail at each write
    except OSError as exc:
        raise TrackingError(f"tracking URI {uri}: cannot {'write' if db.exists() else 'create'} {db} "
                            f"({exc.strerror or exc})") from exc


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store: <db dir>/mlruns/<experiment>, so that artifacts stay beside the store."""
    db = sqlite_path(uri)
    name = re.sub(r"[^\w.-]+", "_", experiment)
    return (db.parent / "mlruns" / (name if name not in ("", ".", "..") else "default")).as_uri() if db else None


def retarget(state: dict, uri: str) -> dict:
    """``state`` for the store at ``uri``: as it is for its own store; for another, which has none of it, without the
    run id and the journal bytes delivered, and with every artifact still to upload."""
    if state.get("tracking_uri") == uri:
        return state
    kept = {k: v for k, v in state.items() if k not in ("run_id", "sent")}
    return {**kept, "tracking_uri": uri, "artifact_location": artifact_location(uri, state.get("experiment", "")),
            "artifacts": [{**a, "done": False} for a in state.get("artifacts", [])]}


def read_state(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(run_dir: Path, state: dict) -> None:
    """Replace mlflow_run.json atomically: a kill leaves the old one or the new one, never half of one."""
    atomic_write(Path(run_dir) / STATE, json.dumps(state, indent=1, sort_keys=True))


_refused: set[str] = set()


def valid_entries(values: dict, kind: str = "metric") -> dict:
    """The entries under names MLflow accepts for a ``kind`` ("metric", "param" or "tag"), a refused name reported
    once (it would fail its whole batch, every time). Metrics become floats; ``step``, ``ts`` and non-numbers
    are left out."""
    from mlflow.utils import validation

    out = {}
    for key, value in values.items():
        if (kind == "metric" and key in ("step", "ts")) or key in _refused:
            continue
        try:
            getattr(validation, f"_validate_{kind}_name")(key)
            out[key] = float(value) if kind == "metric" else value
        except (TypeError, ValueError):
            pass
        except Exception as exc:  # noqa: BLE001 - MlflowException: a name MLflow refuses
            _refused.add(key)
            logger.warning("MLflow refuses the %s name %r; it stays in the run directory only (%s)", kind, key,
                           describe(exc))
    return out


def _run(client, state: dict):
    """The state's MLflow run: by id, else by uid tag, else a new one (in its experiment, created if need be)."""
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
        for key, value in EXPERIMENT_TAGS.items():  # an experiment made elsewhere
            if key not in exp.tags:
                client.set_experiment_tag(exp_id, key, value)
    found = client.search_runs([exp_id], f"tags.`{UID_TAG}` = '{state['uid']}'", ViewType.ALL, max_results=1)
    return found[0] if found else client.create_run(
        exp_id, start_time=state.get("start_time"), tags={UID_TAG: state["uid"]}, run_name=state.get("run_name"))


def deliver(client, state: dict, run_dir: Path, *, end: int | None = None, full: bool = True, save=None) -> dict:
    """Make the store hold the journal up to byte ``end`` and, with ``full``, what ``state`` says (params, tags,
    artifacts, status); returns counts. Progress (run id, journal bytes sent, artifacts done) goes to ``state``
    and through ``save(state)``. Raises what the store raises: call again, nothing arrives twice."""
    from mlflow.entities import Metric, Param, RunTag

    save = save or (lambda s: write_state(run_dir, s))
    run = _run(client, state) if full or not state.get("run_id") else None
    run_id = run.info.run_id if run else state["run_id"]
    if state.get("run_id") != run_id:
        state["run_id"] = run_id
        save(state)
    params = [Param(k, v) for k, v in state.get("params", {}).items() if k not in run.data.params] if run else []
    tags = [RunTag(k, v) for k, v in state.get("tags", {}).items() if run.data.tags.get(k) != v] if run else []
    start, journal = state.get("sent", 0), Path(run_dir) / JOURNAL
    end = (journal.stat().st_size if journal.exists() else 0) if end is None else end
    start = start if start <= end else 0  # a journal shorter than what was sent is not the one sent: all of it
    records = read_journal(journal, start, end) if end > start else []
    metrics = [Metric(k, v, r["ts"], r["step"]) for r in records for k, v in valid_entries(r).items()]
    if metrics or params or tags:
        client.log_batch(run_id, metrics, params, tags, synchronous=True)  # MLflow splits it within its limits
    if end != start:
        state["sent"] = end
        save(state)
    counts = {"run_id": run_id, "params": len(params), "metrics": len(metrics), "artifacts": 0}
    if not run:
        return counts
    for art in [a for a in state.get("artifacts", []) if not a.get("done")]:
        path, dest = Path(run_dir) / art["path"], art.get("artifact_path")  # a relative path: in the run directory
        if art.get("as_text") and path.is_file():
            client.log_text(run_id, path.read_text(), "/".join(p for p in (dest, art["as_text"]) if p))
        elif path.is_dir():
            client.log_artifacts(run_id, str(path), "/".join(p for p in (dest, path.name) if p))
        elif path.is_file():
            client.log_artifact(run_id, str(path), dest)
        else:
            logger.warning("artifact %s no longer exists; not uploaded", path)
        art["done"], counts["artifacts"] = True, counts["artifacts"] + 1
        save(state)
    if state.get("status"):
        if state.get("error"):
            client.set_tag(run_id, ERROR_TAG, state["error"])
        client.set_terminated(run_id, status=state["status"], end_time=state.get("end_time"))
    elif run.info.status != "RUNNING":  # resumed: the run goes on
        client.update_run(run_id, status="RUNNING")
    return counts


def _outside(path: Path, root: Path, seen: set[Path]) -> Path | None:
    """The first of ``path`` and (a folder) everything in it that resolves, links followed as an upload follows
    them, outside ``root``; None when all of it is inside."""
    real = path.resolve()
    if not real.is_relative_to(root):
        return path
    if real.is_dir() and real not in seen:
        seen.add(real)
        try:
            children = sorted(path.iterdir())
        except OSError:  # unreadable: nothing in it can be uploaded either
            children = []
        for child in children:
            if (bad := _outside(child, root, seen)) is not None:
                return bad
    return None


def _artifact_name_ok(name) -> bool:
    """An artifact path in the run's artifact root: relative, no ``..``."""
    return name is None or (isinstance(name, str) and "\\" not in name and not PurePosixPath(name).is_absolute()
                            and ".." not in PurePosixPath(name).parts)


def check_run_dir_files(run_dir: Path) -> None:
    """Refuse a journal or state file that resolves (a link) outside the run directory, before either is read."""
    for name in (STATE, JOURNAL):
        if _outside(run_dir / name, run_dir.resolve(), set()) is not None:
            raise TrackingError(f"{run_dir / name} is a link that leads outside the run directory {run_dir}; "
                                "sync refuses it")


def check_run_dir_records(run_dir: Path, state: dict) -> None:
    """Refuse a state whose records lead outside the run directory: an artifact resolving (links too) elsewhere,
    an artifact name climbing out of the run's artifacts, an odd uid. A run directory is data that may come from
    anyone; ``sync`` reads only inside it and sends nothing when this fails."""
    root = run_dir.resolve()
    where = f"{run_dir / STATE}"
    if not isinstance(state.get("uid"), str) or not re.fullmatch(r"[0-9a-f]{32}", state["uid"]):
        raise TrackingError(f"{where}: its uid is not one electra-kit writes (32 hex digits); sync refuses it")
    artifacts = state.get("artifacts", [])
    if not isinstance(artifacts, list) or not all(isinstance(a, dict) and isinstance(a.get("path"), str)
                                                  for a in artifacts):
        raise TrackingError(f"{where}: 'artifacts' is not a list of records with a path; sync refuses it")
    for art in artifacts:
        bad = _outside(run_dir / art["path"], root, set())
        if bad is not None:
            how = "a link that leads" if bad.is_symlink() else "a path"
            raise TrackingError(f"{where} names the artifact {bad}, {how} outside the run directory {run_dir}; "
                                "sync uploads only files inside the run directory: nothing was sent")
        for key in ("artifact_path", "as_text"):
            if not _artifact_name_ok(art.get(key)):
                raise TrackingError(f"{where}: an artifact's {key} {art.get(key)!r} is not a relative path inside "
                                    "the run's artifacts; sync refuses it: nothing was sent")


def sync_store(tracking_uri: str | None, recorded: str | None, run_dir: Path) -> str:
    """Where ``sync`` delivers: ``tracking_uri`` (--tracking-uri), else $MLFLOW_TRACKING_URI, else ./mlflow.db,
    as ``run`` chooses. Never the store mlflow_run.json names: that one is only compared, and when neither the
    command line nor the environment names a store, a run recorded for another store is refused, not sent to
    ./mlflow.db by surprise."""
    named = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    uri = resolve_tracking_uri(named)
    if not named and recorded and recorded != uri:
        raise TrackingError(f"{run_dir} was recorded for the store {recorded}, not {uri}: name the store with "
                            f"--tracking-uri (or $MLFLOW_TRACKING_URI); sync never takes it from the run directory")
    return check_store(uri)


def sync_run(run_dir: str | Path, tracking_uri: str | None = None) -> dict:
    """``electra-kit sync RUN_DIR``: deliver what the run recorded to the store named by ``tracking_uri``,
    $MLFLOW_TRACKING_URI or the default (see :func:`sync_store`; one other than the run recorded gets all of it);
    returns counts. Only files inside the run directory are read (:func:`check_run_dir_records`). Raises
    TrackingError with the reason."""
    from mlflow import MlflowClient

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrackingError(f"{run_dir}: no such run directory")
    try:  # the run directory's own lock: a live run delivers its own records
        owned = RunDir(run_dir, resume=True)
    except RunDirError as exc:
        raise TrackingError(str(exc)) from None
    try:
        check_run_dir_files(run_dir)
        state = read_state(run_dir)
        if not state.get("uid"):
            raise TrackingError(f"{run_dir} has no {STATE}: it is not a tracked run directory")
        check_run_dir_records(run_dir, state)
        http_defaults()
        uri = sync_store(tracking_uri, state.get("tracking_uri"), run_dir)
        # the artifact root follows from the store, never from the file (it would say where artifacts are written)
        state = {**retarget(state, uri), "artifact_location": artifact_location(uri, str(state.get("experiment", "")))}
        try:
            return {"tracking_uri": uri, **deliver(MlflowClient(uri), state, run_dir)}
        except Exception as exc:  # noqa: BLE001 - the store's failure, in one line
            raise TrackingError(f"delivery to {uri} failed: {describe(exc)}; run sync again later") from exc
    finally:
        owned.release()
