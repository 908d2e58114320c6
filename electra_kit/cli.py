"""The ``electra-kit`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_run(args) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .pretrain import RunError, RunOptions, run
    from .trainer import Interrupted, NonFiniteError

    opts = RunOptions(
        config_files=args.configs, bindings=args.gin or [], run_dir=Path(args.run_dir) if args.run_dir else None,
        resume=args.resume, tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
        experiment=args.experiment,
    )
    try:
        result = run(opts)
    except Interrupted as exc:
        print(f"electra-kit: {exc}. Continue with: electra-kit run {' '.join(args.configs)} "
              f"--run-dir {exc.checkpoint.parent.parent if exc.checkpoint else '<run dir>'} --resume", file=sys.stderr)
        return 128 + exc.signum
    except (ConfigError, RunError, CheckpointError, NonFiniteError, FileNotFoundError, ValueError) as exc:
        print(f"electra-kit: error: {exc}", file=sys.stderr)
        return 2
    print(f"electra-kit: finished {result['step']} steps; model folder: {result['model_dir']}")
    return 0


def _cmd_backbones(_args) -> int:
    from .registry import backbone_entries

    entries = backbone_entries()
    width = max([len(e.name) for e in entries] + [4])
    print(f"{'name':<{width}}  source  ->  builder")
    for e in entries:
        print(f"{e.name:<{width}}  {e.source}  ->  {e.target}")
    return 0


def _cmd_runs(args) -> int:
    from .tracking import format_runs_table, list_runs

    print(format_runs_table(list_runs(tracking_uri=args.tracking_uri, experiment=args.experiment)))
    return 0


def _cmd_ui(args) -> int:
    import os

    from .tracking import ui_command

    argv = ui_command(tracking_uri=args.tracking_uri, port=args.port)
    print("electra-kit: " + " ".join(argv), file=sys.stderr)
    os.execvp(argv[0], argv)
    return 0  # not reached


def _cmd_sync(args) -> int:
    from .tracking import sync_outbox

    result = sync_outbox(Path(args.run_dir), tracking_uri=args.tracking_uri)
    print(f"electra-kit: {result}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra-kit", description="ELECTRA pretraining over pluggable backbones")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="pretrain from gin config files")
    p.add_argument("configs", nargs="+", help="gin files (working directory first, then the packaged configs)")
    p.add_argument("--gin", action="append", metavar="BINDING", help="a gin binding applied after the files")
    p.add_argument("--run-dir", help="where checkpoints, logs and the model folder go (default runs/NAME-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--no-tracking", action="store_true", help="do not record the run in MLflow")
    p.add_argument("--tracking-uri", help="MLflow store or server (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the last gin file's name)")
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser("backbones", help="list the registered backbones and where they come from")
    p.set_defaults(fn=_cmd_backbones)

    p = sub.add_parser("runs", help="table of tracked runs")
    p.add_argument("--experiment")
    p.add_argument("--tracking-uri")
    p.set_defaults(fn=_cmd_runs)

    p = sub.add_parser("ui", help="open the MLflow UI on the store the runs went to")
    p.add_argument("--tracking-uri")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(fn=_cmd_ui)

    p = sub.add_parser("sync", help="deliver tracking records a run kept locally while MLflow was unreachable")
    p.add_argument("run_dir")
    p.add_argument("--tracking-uri")
    p.set_defaults(fn=_cmd_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)
