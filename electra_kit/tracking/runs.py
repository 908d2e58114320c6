"""Looking at recorded runs: the ``electra-kit runs`` table, the ``electra-kit ui`` command line, and links that land
on the runs: MLflow 3.17's UI opens an experiment on the page of the browser's workflow type (the URL's
``workflowType``, else the sidebar switch's last position in localStorage, else the GenAI overview), not of the
experiment's ``mlflow.experimentKind`` tag (bench/ui_check.py shows both); ``workflowType=machine_learning`` lands
on the runs in any browser."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .store import TrackingError, describe, http_defaults, resolve_tracking_uri, sqlite_path

_COLUMNS = {"tags.mlflow.runName": "name", "run_id": "run id", "status": "status",
            "params.generator.backbone": "generator", "params.discriminator.backbone": "discriminator",
            "params.train.steps": "steps", "metrics.train/loss": "loss", "metrics.train/gen_loss": "gen loss",
            "metrics.train/disc_loss": "disc loss", "metrics.train/tokens_per_s": "tok/s", "start_time": "started"}


def list_runs(tracking_uri: str | None = None, experiment: str | None = None):
    """Runs of ``experiment`` (default: all experiments), newest first: ``mlflow.search_runs``'s DataFrame.
    Raises TrackingError when the store can't be read (a server that is down)."""
    import mlflow
    import pandas as pd

    http_defaults()  # a dead server answers at once instead of after minutes of retries
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # do not create an empty store just to list it
        return pd.DataFrame()
    mlflow.set_tracking_uri(uri)
    try:
        if experiment is not None and mlflow.get_experiment_by_name(experiment) is None:
            return pd.DataFrame()
        return mlflow.search_runs(experiment_names=[experiment] if experiment else None,
                                  search_all_experiments=experiment is None, order_by=["attributes.start_time DESC"])
    except Exception as exc:  # noqa: BLE001 - one line, not MLflow's traceback
        raise TrackingError(f"cannot read runs from {uri}: {describe(exc)}") from exc


def format_runs_table(runs) -> str:
    """The ``electra-kit runs`` table: name, backbones, steps, losses, tokens/s, start."""
    if runs.empty:
        return "no runs"
    table = runs.reindex(columns=list(_COLUMNS)).rename(columns=_COLUMNS)
    table["started"] = table["started"].dt.strftime("%Y-%m-%d %H:%M")
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}")


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


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs page: ``http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning``."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def experiment_links(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(name, runs URL) of each experiment in the store that has runs, newest first; [] if it can't be read."""
    from mlflow import MlflowClient

    if (db := sqlite_path(tracking_uri)) is not None and not db.exists():
        return []
    try:
        client = MlflowClient(tracking_uri)
        experiments = client.search_experiments(order_by=["last_update_time DESC"])
        return [(e.name, runs_url(base, e.experiment_id)) for e in experiments
                if client.search_runs([e.experiment_id], max_results=1)]
    except Exception:  # noqa: BLE001 - links are a convenience; the UI still starts
        return []
