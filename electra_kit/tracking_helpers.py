"""Helpers of :mod:`electra_kit.tracking` (import them from there): gin config -> params, system
facts -> tags, system metrics sampling, the runs table, the ``mlflow ui`` command line."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

from .tracking_delivery import logger

# ------------------------------------------------------------------------------- gin -> params


class _GinRef:
    """Stands for a gin reference or macro inside a parsed value; repr() gives the gin text back."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _gin_delegate():
    from gin import config_parser

    class Delegate(config_parser.ParserDelegate):
        def configurable_reference(self, scoped_name, evaluate):
            return _GinRef(f"@{scoped_name}()" if evaluate else f"@{scoped_name}")

        def macro(self, name):
            return _GinRef(f"%{name}")

    return Delegate()


def flatten_gin_config(operative_config_str: str) -> dict[str, str]:
    """gin's operative config text -> {"scope/Configurable.param": "value"}.

    Values keep gin's syntax (``'reformer'``, ``0.0005``, ``@generator/backbone()``, ``%HIDDEN``,
    containers on one line). Macros are keyed by their name (``HIDDEN``); ``import`` and ``include``
    lines and comments are skipped. Parsed with gin's own ``config_parser.ConfigParser``; text it
    refuses falls back to a line parser.
    """
    try:
        from gin import config_parser

        out: dict[str, str] = {}
        for st in config_parser.ConfigParser(operative_config_str, _gin_delegate()):
            if isinstance(st, config_parser.BindingStatement):
                key = "/".join(p for p in (st.scope, st.selector) if p)
                out[f"{key}.{st.arg_name}" if st.arg_name else key] = repr(st.value)
        return out
    except Exception:  # noqa: BLE001 - never lose the params over a parse error
        return _flatten_lines(operative_config_str)


def _flatten_lines(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    key, parts = None, []

    def close():
        if key is not None:
            out[key] = (
                " ".join(p.strip() for p in parts if p.strip()).replace("\\ ", "").rstrip("\\ ").strip()
            )

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][\w./%-]*)\s*=\s*(.*)$", line)
        if m and not line[0].isspace() and not re.match(r"^(import|from|include)\b", stripped):
            close()
            key, parts = m.group(1), [m.group(2)]
        elif re.match(r"^(import|from|include)\b", stripped) and not line[0].isspace():
            close()
            key, parts = None, []
        elif key is not None:
            parts.append(stripped)
    close()
    return out


# ------------------------------------------------------------------------------ system -> tags


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def system_tags() -> dict[str, str]:
    """Versions, git commit, command line, host and device facts, as MLflow tags."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    tags = {
        "electra_kit.version": pkg("electra-kit"),
        "electra_kit.mlflow_version": pkg("mlflow"),
        "electra_kit.python": platform.python_version(),
        "electra_kit.command": shlex.join(sys.argv),
        "electra_kit.hostname": socket.gethostname(),
        "electra_kit.cpu": _cpu_model(),
        "electra_kit.cpu_count": str(os.cpu_count() or 0),
        "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "python",
    }
    try:
        import getpass

        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        pass
    if shutil.which("git") and (commit := _run(["git", "rev-parse", "HEAD"], cwd=os.getcwd())):
        tags["mlflow.source.git.commit"] = tags["electra_kit.git_commit"] = commit
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=os.getcwd())
        tags["electra_kit.git_dirty"] = str(bool(dirty))
    try:
        import torch

        tags["electra_kit.torch_version"] = torch.__version__
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            tags.update(
                {
                    "electra_kit.device": "cuda",
                    "electra_kit.gpu_name": props.name,
                    "electra_kit.gpu_count": str(torch.cuda.device_count()),
                    "electra_kit.gpu_memory_gb": f"{props.total_memory / 2**30:.1f}",
                    "electra_kit.cuda_version": str(torch.version.cuda),
                }
            )
        else:
            tags["electra_kit.device"] = "cpu"
    except ImportError:
        tags["electra_kit.torch_version"] = "unknown"
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if out:
            tags["electra_kit.driver_version"] = out.splitlines()[0].strip()
    return tags


# ----------------------------------------------------------------------------- system metrics


class SystemMetricsSampler:
    """MLflow's own CPU/disk/network/GPU monitors, sampled in a thread and fed into the tracker's queue
    (so an unreachable store stops nothing: the samples wait in the outbox like every other metric)."""

    def __init__(self, tracker, interval: float, monitors: list):
        self.tracker, self.interval, self.monitors = tracker, interval, monitors
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="electra-kit-system-metrics")
        self._thread.start()

    @classmethod
    def create(cls, tracker, interval: float | None) -> SystemMetricsSampler | None:
        try:
            from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
            from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
            from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
        except ImportError as e:
            logger.warning("system metrics disabled: %s (pip install psutil)", e)
            return None
        monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        for name in ("gpu_monitor.GPUMonitor", "rocm_monitor.ROCMMonitor"):
            module, cls_name = name.split(".")
            try:
                mod = __import__(f"mlflow.system_metrics.metrics.{module}", fromlist=[cls_name])
                monitors.append(getattr(mod, cls_name)())
                break
            except Exception:  # noqa: BLE001 - no GPU, or no pynvml / pyrsmi
                continue
        if interval is None:
            interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10.0)
        return cls(tracker, interval, monitors)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                values: dict[str, float] = {}
                for m in self.monitors:
                    m.collect_metrics()
                    values.update(m.aggregate_metrics())
                    m.clear_metrics()
                self.tracker.log_metrics(
                    {f"system/{k}": v for k, v in values.items()}, self.tracker._last_step
                )
            except Exception as e:  # noqa: BLE001
                logger.warning("system metrics stopped: %s", e)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------------------------- runs table

_COLUMNS = [
    ("run_name", "name"),
    ("run_id", "run id"),
    ("status", "status"),
    ("generator", "generator"),
    ("discriminator", "discriminator"),
    ("step", "step"),
    ("loss", "loss"),
    ("gen_loss", "gen loss"),
    ("disc_loss", "disc loss"),
    ("tokens_per_s", "tok/s"),
    ("start_time", "started"),
]


def list_runs(tracking_uri: str | None = None, experiment: str | None = None) -> list[dict]:
    """Runs of ``experiment`` (default: all experiments), newest first, one dict per run."""
    from .tracking import _http_defaults, resolve_tracking_uri, sqlite_path

    _http_defaults()  # a dead server answers at once instead of after minutes of retries
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # do not create an empty store just to list it
        return []
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    if experiment is None:  # every experiment: runs are named after their config files
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        exp = client.get_experiment_by_name(experiment)
        ids = [exp.experiment_id] if exp is not None else []
    if not ids:
        return []
    rows = []
    for run in client.search_runs(
        ids,
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    ):
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        steps = {m.key: m.step for m in getattr(run.data, "_metric_objs", [])}
        step = steps.get("train/loss")
        if step is None:
            step = max((s for k, s in steps.items() if not k.startswith("system/")), default=None)
        start = run.info.start_time
        rows.append(
            {
                "run_name": run.info.run_name,
                "run_id": run.info.run_id,
                "status": run.info.status,
                "generator": params.get("generator.backbone") or tags.get("generator.backbone"),
                "discriminator": params.get("discriminator.backbone") or tags.get("discriminator.backbone"),
                "step": step,
                "loss": metrics.get("train/loss"),
                "gen_loss": metrics.get("train/gen_loss"),
                "disc_loss": metrics.get("train/disc_loss"),
                "tokens_per_s": metrics.get("train/tokens_per_s"),
                "start_time": datetime.fromtimestamp(start / 1000).strftime("%Y-%m-%d %H:%M")
                if start
                else None,
            }
        )
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


# ------------------------------------------------------------------------------------------ ui


def ui_command(tracking_uri: str | None = None, port: int = 5000) -> list[str]:
    """argv for ``mlflow ui`` on the store the runs went to, lean (one worker, no job runner).

    It starts with ``env VAR=...`` (exec-able as is) to switch MLflow's job runner off, and for a
    ``file:`` store to set MLFLOW_ALLOW_FILE_STORE. Raises ValueError for an HTTP store: that one
    already has its UI at the same address.
    """
    from .tracking import resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise ValueError(f"runs are on the tracking server {uri}: open it in a browser")
    env = ["env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false"]
    db = sqlite_path(uri)
    if db is not None:
        root = db.parent / "mlruns"
    else:
        env.append("MLFLOW_ALLOW_FILE_STORE=true")
        root = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    exe = [mlflow] if mlflow else [sys.executable, "-m", "mlflow"]
    return (
        env
        + exe
        + [
            "ui",
            "--backend-store-uri",
            uri,
            "--default-artifact-root",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
    )
