"""MLflow tracking: a thin adapter over MLflow's client, rank 0 only, that never stops a run. The run directory is
the durable record (its journal ``metrics.jsonl``, :mod:`electra_kit.rundir.journal`, and ``mlflow_run.json``); the
Tracker is a sink of the journal and a background thread ships it to MLflow as the run goes, and
``electra-kit sync RUN_DIR`` delivers whatever it missed. Runs go to ``tracking_uri``, else $MLFLOW_TRACKING_URI,
else ``sqlite:///<cwd>/mlflow.db`` (artifacts beside it in ``mlruns/``). Modules import only those listed before
them: ``store`` (records, delivery, sync), ``facts`` (tags), ``tracker`` (the live run), ``runs`` (table, UI, links).
"""

from .facts import system_tags
from .runs import format_runs_table, list_runs, ui_command
from .store import STATE, TrackingError, resolve_tracking_uri, sync_run
from .tracker import DEFAULT_EXPERIMENT, Tracker, finish_when_done, tracking

__all__ = ["DEFAULT_EXPERIMENT", "STATE", "Tracker", "TrackingError", "finish_when_done",
           "format_runs_table", "list_runs", "resolve_tracking_uri", "sync_run", "system_tags",
           "tracking", "ui_command"]
