"""The ``electra-kit`` command line."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _cmd_run(args) -> int:
    from .config.gin_config import ConfigError
    from .rundir.checkpoint import CheckpointError
    from .rundir.directory import RunDirError
    from .training.pretrain import RunError, RunOptions, StoppedBeforeTraining, run
    from .training.resume import ResumeError, continue_command
    from .training.trainer import Interrupted, NonFiniteError

    opts = RunOptions(
        config_files=args.configs, bindings=args.gin or [], run_dir=Path(args.run_dir) if args.run_dir else None,
        resume=args.resume, tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
        experiment=args.experiment,
    )
    try:
        result = run(opts)
    except Interrupted as exc:
        run_dir = getattr(exc, "run_dir", None) or (exc.checkpoint.parent.parent if exc.checkpoint else "<run dir>")
        again = continue_command(run_dir, tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
                                 experiment=args.experiment)
        print(f"electra-kit: {exc}. Continue with: {again}", file=sys.stderr)
        return 128 + exc.signum
    except StoppedBeforeTraining as exc:
        again = ""
        if args.resume:
            again = ". Continue with: " + continue_command(exc.run_dir or args.run_dir, tracking=not args.no_tracking,
                                                          tracking_uri=args.tracking_uri, experiment=args.experiment)
        print(f"electra-kit: {_without_gin_context(exc)}{again}", file=sys.stderr)
        return 128 + exc.signum
    except (ConfigError, RunError, RunDirError, ResumeError, CheckpointError, NonFiniteError, FileNotFoundError,
            ValueError) as exc:
        print(f"electra-kit: error: {_without_gin_context(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder made read-only: atomic writes left nothing half-made
        print(f"electra-kit: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    if result["model_dir"] is not None:  # rank 0 of a multi-process run
        print(f"electra-kit: finished {result['step']} steps; model folder: {result['model_dir']}")
    return 0


def _cmd_finetune(args) -> int:
    from .console import say

    say(f"fine-tuning {args.model} on {args.train}, evaluating on {args.eval} ...")  # before seconds of imports
    from .finetune.config import from_flags
    from .finetune.runner import TaskSpec, run_finetune
    from .registry import UnknownBackboneError
    from .rundir.checkpoint import CheckpointError
    from .rundir.directory import RunDirError
    from .training.trainer import Interrupted

    spec = TaskSpec(train=args.train, eval=args.eval, text_column=args.text_column, pair_column=args.pair_column,
                    label_column=args.label_column, format=args.format, header=not args.no_header, task=args.task)
    try:
        cfg = from_flags(args, progress=not args.no_progress)
        results, path = run_finetune(args.model, spec, cfg, run_dir=args.run_dir, tracking=not args.no_tracking,
                                     tracking_uri=args.tracking_uri, experiment=args.experiment, resume=args.resume)
    except Interrupted as exc:
        print(f"electra-kit: {exc}. Continue with: {_continue_finetune(args.argv, exc.run_dir)}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:  # Ctrl-C between epochs' training: loading, evaluating, saving
        run_dir = getattr(exc, "run_dir", None)
        again = f" Continue with: {_continue_finetune(args.argv, run_dir)}" if run_dir else " Nothing was kept."
        print(f"electra-kit: stopped by SIGINT.{again}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, UnknownBackboneError, RunDirError, CheckpointError) as exc:
        print(f"electra-kit: error: {_without_gin_context(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"electra-kit: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    print(format_results(results))
    print(f"electra-kit: {results['task']['type']} on {results['task']['n_train']} examples "
          f"({results['task']['n_val']} held out to choose the epoch), "
          f"{len(results['seeds'])} seed(s); median {results['primary_metric']} "
          f"{results['median'][results['primary_metric']]:.4f}; results: {path}")
    kept = results["kept_model"]
    print(f"electra-kit: kept seed {kept['seed']} (epoch {kept['epoch']}, chosen by {kept['chosen_by']}) as "
          f"{kept['path']}; use it with: electra-kit predict {kept['path']} --input FILE")
    return 0


def _continue_finetune(argv: list[str], run_dir) -> str:
    """The command that was run, into its run directory, with ``--resume``: finished seeds are kept."""
    import shlex

    given = any(a == "--run-dir" or a.startswith("--run-dir=") for a in argv)
    return shlex.join(["electra-kit", *argv, *([] if given else ["--run-dir", str(run_dir)]),
                       *([] if "--resume" in argv else ["--resume"])])


def _cmd_predict(args) -> int:
    from .finetune.predict import predict_file
    from .registry import UnknownBackboneError

    try:
        result = predict_file(args.model, args.input, args.output, text_column=args.text_column,
                              pair_column=args.pair_column, batch_size=args.batch_size, fmt=args.format,
                              header=not args.no_header)
    except (ValueError, OSError, TypeError, UnknownBackboneError) as exc:  # OSError: the output cannot be written
        print(f"electra-kit: error: {exc}", file=sys.stderr)
        return 2
    accuracy = f"; accuracy {result.accuracy:.4f} against the input's labels" if result.accuracy is not None else ""
    print(f"electra-kit: {result.rows} predictions ({', '.join(result.columns)}) -> {result.output}{accuracy}")
    return 0


def _os_error(exc: OSError) -> str:
    """A read or write the OS refused, in one line: the file, what the OS said, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    # gin re-raises an error inside a configurable with its context appended, and with no errno, strerror or filename
    said = re.sub(r"^\[Errno \d+\] ", "", _without_gin_context(exc.strerror or exc).strip())
    return (f"{where}{said}: free space or make it writable, then run the command again (a run with "
            f"a checkpoint continues with --resume)")


def _without_gin_context(exc: BaseException) -> str:
    """gin appends "In call to configurable ..." lines to errors raised inside configurables."""
    lines = str(exc).splitlines()
    return "\n".join(line for line in lines if not line.strip().startswith("In call to configurable"))


def _cmd_backbones(_args) -> int:
    from .registry import backbone_entries

    entries = backbone_entries()
    width = max([len(e.name) for e in entries] + [4])
    print(f"{'name':<{width}}  source  ->  builder")
    for e in entries:
        print(f"{e.name:<{width}}  {e.source}  ->  {e.target}")
    return 0


def _cmd_runs(args) -> int:
    from .tracking import TrackingError, format_runs_table, list_runs

    try:
        print(format_runs_table(list_runs(tracking_uri=args.tracking_uri, experiment=args.experiment)))
    except TrackingError as exc:
        print(f"electra-kit: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_port_free(port: int) -> None:
    """The UI's port, bound and let go: a taken port is said now, not after MLflow has started and died."""
    import socket

    from .tracking import TrackingError

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise TrackingError(f"--port {port}: 127.0.0.1:{port} is in use ({exc.strerror or exc}); choose "
                                "another --port") from None


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1-65535, got {text}")
    return value


def _cmd_ui(args) -> int:
    import os

    from .tracking import TrackingError, ui_command
    from .tracking.runs import experiment_links

    try:
        argv = ui_command(tracking_uri=args.tracking_uri, port=args.port)
        _check_port_free(args.port)
    except TrackingError as exc:
        print(f"electra-kit: {exc}", file=sys.stderr)
        return 2
    print("electra-kit: " + " ".join(argv), file=sys.stderr)
    for name, url in experiment_links(argv[argv.index("--backend-store-uri") + 1], f"http://127.0.0.1:{args.port}"):
        print(f"electra-kit: {name}: {url}", file=sys.stderr)  # lands on the runs (MLflow 3's default is GenAI)
    os.execvp(argv[0], argv)
    return 0  # not reached


def _cmd_sync(args) -> int:
    from .tracking import TrackingError, sync_run

    try:
        r = sync_run(Path(args.run_dir), tracking_uri=args.tracking_uri)
    except TrackingError as exc:
        print(f"electra-kit: error: {exc}", file=sys.stderr)
        return 2
    print(f"electra-kit: {args.run_dir} is in sync with run {r['run_id']} at {r['tracking_uri']}: sent {r['metrics']} "
          f"metric values, {r['params']} params, {r['artifacts']} artifacts")
    return 0


def _cmd_export(args) -> int:
    from .modelfolder.export import EXIT_NOT_HF, export

    try:
        result = export(args.model_dir, args.out_dir, format=args.format, overwrite=args.overwrite)
    except (OSError, ValueError, KeyError) as exc:  # OSError: the folder cannot be written (disk full ...)
        print(f"electra-kit: error: {exc}", file=sys.stderr)
        return 2
    code = EXIT_NOT_HF if args.format == "hf" and result.format != "hf" else 0
    print(result.message, file=sys.stderr if code else sys.stdout)
    return code


def format_results(results: dict) -> str:
    """A small table: one row per seed (with the epoch chosen on validation), then the median."""
    keys = list(results["median"])
    lines = ["seed    epoch  " + "  ".join(f"{k:>9}" for k in keys)]
    for s in results["seeds"]:
        lines.append(f"{s['seed']:<8}{s['selected_epoch']:>5}  " + "  ".join(f"{s['metrics'][k]:>9.4f}" for k in keys))
    lines.append(f"{'median':<15}" + "  ".join(f"{results['median'][k]:>9.4f}" for k in keys))
    return "\n".join(lines)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="pretrain from gin config files")
    p.add_argument("configs", nargs="*", help="gin files (working directory first, then the packaged configs); "
                                              "a --resume takes the run's own config and needs none")
    p.add_argument("--gin", action="append", metavar="BINDING", help="a gin binding applied after the files")
    p.add_argument("--run-dir", help="where checkpoints, logs and the model folder go (default runs/NAME-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint, with its own config "
                        "and tokenizer (--gin may change only steps, logging, eval and checkpoint cadence)")
    p.add_argument("--no-tracking", action="store_true", help="do not record the run in MLflow")
    p.add_argument("--tracking-uri", help="MLflow store or server (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the last gin file's name)")
    p.set_defaults(fn=_cmd_run)


def _add_finetune(sub) -> None:
    from .finetune.config import add_flags

    p = sub.add_parser("finetune", help="fine-tune a model folder on labeled text (JSONL, CSV, TSV); seeds + median")
    p.add_argument("--model", required=True, help="a finished run's model folder (or its run directory)")
    p.add_argument("--train", required=True, help="training file: .jsonl, .csv or .tsv (GLUE's layouts included)")
    p.add_argument("--eval", required=True, help="evaluation file, same layout as --train")
    p.add_argument("--text-column", help="default: sentence1/question1/#1 String/question/text/sentence ...")
    p.add_argument("--pair-column", help="second text of a pair (default: the partner of the text column, if any)")
    p.add_argument("--label-column", help="default: label/gold_label/score/is_duplicate/Quality")
    p.add_argument("--format", choices=["auto", "jsonl", "csv", "tsv"], default="auto", help="default: by suffix")
    p.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row: columns are 0, 1, ...")
    p.add_argument("--task", choices=["auto", "classification", "regression"], default="auto",
                   help="auto: regression when every label is a number and some are written as reals")
    add_flags(p)  # one per FinetuneConfig setting, with its default
    p.add_argument("--run-dir", help="where results.json goes (default runs/finetune-TRAIN-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the fine-tuning in --run-dir, given the same "
                   "arguments: finished seeds are kept, an unfinished one continues from its last checkpoint "
                   "(--seeds may ask for more)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-tracking", action="store_true", help="do not record the run in MLflow")
    p.add_argument("--tracking-uri", help="MLflow store or server (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: finetune-TRAIN)")
    p.set_defaults(fn=_cmd_finetune)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="labels and scores of a fine-tuned model for a file of texts (JSONL, CSV, TSV)")
    p.add_argument("model", help="a fine-tuned model folder (FINETUNE_RUN_DIR/model) or its run directory")
    p.add_argument("--input", required=True, help="texts: .jsonl, .csv or .tsv; every column is kept in the output")
    p.add_argument("--output", help="default: INPUT.predictions.SUFFIX beside the input; same format as the input")
    p.add_argument("--text-column", help="default: the column the model was fine-tuned on, else text/sentence/...")
    p.add_argument("--pair-column", help="second text, for a model fine-tuned on pairs (default: as fine-tuned)")
    p.add_argument("--format", choices=["auto", "jsonl", "csv", "tsv"], default="auto", help="default: by suffix")
    p.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row: columns are 0, 1, ...")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="(128, as finetune evaluates)")
    p.set_defaults(fn=_cmd_predict)


def _add_backbones(sub) -> None:
    p = sub.add_parser("backbones", help="list the registered backbones and where they come from")
    p.set_defaults(fn=_cmd_backbones)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a model folder for other tools (--format hf: transformers)")
    p.add_argument("model_dir", help="a finished model folder (RUN_DIR/model)")
    p.add_argument("--format", choices=("auto", "hf", "portable"), default="auto",
                   help="auto (default): hf where the backbone supports it, else portable, exit 0 and says which; "
                        "hf: a transformers folder, or the portable folder with exit 3; portable: safetensors + "
                        "config + tokenizer (AutoModel loads it with trust_remote_code=True)")
    p.add_argument("out_dir", help="the folder to write (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it holds anything")
    p.set_defaults(fn=_cmd_export)


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="table of tracked runs")
    p.add_argument("--experiment")
    p.add_argument("--tracking-uri")
    p.set_defaults(fn=_cmd_runs)


def _add_ui(sub) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI on the store the runs went to")
    p.add_argument("--tracking-uri")
    p.add_argument("--port", type=_port, default=5000)
    p.set_defaults(fn=_cmd_ui)


def _add_sync(sub) -> None:
    p = sub.add_parser("sync", help="deliver tracking records a run kept locally while MLflow was unreachable")
    p.add_argument("run_dir")
    p.add_argument("--tracking-uri")
    p.set_defaults(fn=_cmd_sync)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra-kit", description="ELECTRA pretraining over pluggable backbones")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_finetune, _add_predict, _add_backbones, _add_export, _add_runs, _add_ui, _add_sync):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for a "Continue with" line that repeats the command
    return args.fn(args)


def entry() -> None:
    """The ``electra-kit`` program (and ``python -m electra_kit``): :func:`main`, then the process's exit."""
    code = main()
    from .data.tokenizer import leave_if_work_abandoned

    leave_if_work_abandoned(code)
    raise SystemExit(code)
