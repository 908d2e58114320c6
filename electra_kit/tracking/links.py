"""Links into the MLflow UI that land where a person wants to be.

MLflow 3.17's UI opens an experiment on the page of the browser's workflow type, not of the experiment: the
URL's ``workflowType`` query parameter, else the sidebar switch's last position (browser localStorage), else
"genai", the GenAI overview. The experiment's ``mlflow.experimentKind`` tag is not read for it (bench/ui_check.py
shows both). A link that carries ``workflowType=machine_learning`` lands on the runs in any browser.
"""

from __future__ import annotations


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs page: ``http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning``."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def experiment_links(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(name, runs URL) of each experiment in the store that has runs, newest first; [] if it can't be read."""
    from mlflow import MlflowClient

    from .store import sqlite_path

    if (db := sqlite_path(tracking_uri)) is not None and not db.exists():
        return []
    try:
        client = MlflowClient(tracking_uri)
        experiments = client.search_experiments(order_by=["last_update_time DESC"])
        return [(e.name, runs_url(base, e.experiment_id)) for e in experiments
                if client.search_runs([e.experiment_id], max_results=1)]
    except Exception:  # noqa: BLE001 - links are a convenience; the UI still starts
        return []
