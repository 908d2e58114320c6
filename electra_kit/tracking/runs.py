"""Looking at recorded runs: the ``electra-kit runs`` table and the ``electra-kit ui`` command line."""

from __future__ import annotations

import shutil
import sys
from datetime import datetime
from pathlib import Path

from .store import TrackingError, describe, http_defaults, resolve_tracking_uri, sqlite_path

_COLUMNS = [("run_name", "name"), ("run_id", "run id"), ("status", "status"), ("generator", "generator"),
            ("discriminator", "discriminator"), ("step", "step"), ("loss", "loss"), ("gen_loss", "gen loss"),
            ("disc_loss", "disc loss"), ("tokens_per_s", "tok/s"), ("start_time", "started")]


def list_runs(tracking_uri: str | None = None, experiment: str | None = None) -> list[dict]:
    """Runs of ``experiment`` (default: all experiments), newest first, one dict per run (``mlflow.search_runs``).
    Raises TrackingError when the store can't be read (a server that is down)."""
    import mlflow

    http_defaults()  # a dead server answers at once instead of after minutes of retries
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # do not create an empty store just to list it
        return []
    mlflow.set_tracking_uri(uri)
    try:
        if experiment is not None and mlflow.get_experiment_by_name(experiment) is None:
            return []
        runs = mlflow.search_runs(experiment_names=[experiment] if experiment else None,
                                  search_all_experiments=experiment is None, output_format="list",
                                  order_by=["attributes.start_time DESC"])
    except Exception as exc:  # noqa: BLE001 - one line, not MLflow's traceback
        raise TrackingError(f"cannot read runs from {uri}: {describe(exc)}") from exc
    rows = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        steps = {m.key: m.step for m in getattr(run.data, "_metric_objs", [])}  # each metric's latest step
        step = steps.get("train/loss", max((s for k, s in steps.items() if not k.startswith("system/")), default=None))
        start = run.info.start_time
        rows.append({
            "run_name": run.info.run_name, "run_id": run.info.run_id, "status": run.info.status,
            "generator": params.get("generator.backbone"), "discriminator": params.get("discriminator.backbone"),
            "step": step, "loss": metrics.get("train/loss"), "gen_loss": metrics.get("train/gen_loss"),
            "disc_loss": metrics.get("train/disc_loss"), "tokens_per_s": metrics.get("train/tokens_per_s"),
            "start_time": datetime.fromtimestamp(start / 1000).strftime("%Y-%m-%d %H:%M") if start else None,
        })
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def format_runs_table(rows: list[dict]) -> str:
    if not rows:
        return "no runs"
    cells = [[header for _, header in _COLUMNS]] + [[_fmt(r.get(k)) for k, _ in _COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ui_command(tracking_uri: str | None = None, port: int = 5000) -> list[str]:
    """argv for ``mlflow ui`` on the store the runs went to, lean (one worker, no job runner).

    It starts with ``env VAR=...`` (exec-able as is) to switch MLflow's job runner off, and for a ``file:``
    store to set MLFLOW_ALLOW_FILE_STORE. Raises TrackingError for an HTTP store: that one already has its UI.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise TrackingError(f"runs are on the tracking server {uri}: open it in a browser")
    env = ["env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false"]
    db = sqlite_path(uri)
    if db is not None:
        root = db.parent / "mlruns"
    else:
        env.append("MLFLOW_ALLOW_FILE_STORE=true")
        root = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    return [*env, *([exe] if exe else [sys.executable, "-m", "mlflow"]), "ui", "--backend-store-uri", uri,
            "--default-artifact-root", str(root), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
