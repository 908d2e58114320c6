"""One pretraining run: config -> model + data -> trainer -> checkpoints -> model folder.

Everything that can be wrong with the inputs is checked before the first step, and each error
names its culprit. The heavy parts are built here and passed into the trainer.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import gin_config
from ..console import phase, run_log, say
from ..data.build import BatchIterator, EvalIterator, build_data
from ..data.tokenizer import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, UNK, SpecialIds
from ..modelfolder.pretrained import save_pretrained
from ..objectives.base import pretrain, resolve_objective
from ..registry import objective_entries
from ..rundir import checkpoint as ckpt
from ..rundir.atomic import atomic_write
from ..rundir.directory import RunDir, default_run_dir
from . import resume
from .distributed import init_from_env
from .progress import duration
from .settings import configured_train, resolve_device
from .trainer import Interrupted, Trainer


class RunError(RuntimeError):
    """A run cannot start; the message names what is wrong and what to do."""


class StoppedBeforeTraining(Exception):
    """SIGTERM/SIGINT arrived while the run was being set up; the message says what was kept."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum, self.kept, self.run_dir = signum, "", None

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} before training began" + (f": {self.kept}" if self.kept else "")


@contextlib.contextmanager
def _stop_on_signals():
    """During set-up (vocabulary training can take minutes) SIGTERM/SIGINT stop the run through
    the normal error path, so the run directory is left as the message says."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise StoppedBeforeTraining(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class RunOptions:
    config_files: list[str]
    bindings: list[str]
    run_dir: Path | None = None
    resume: bool = False
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str | None = None


def register_configurables() -> None:
    """Import every module that defines configurables, so that any gin file can bind them. This runner composes
    a run, so it knows them all (``config`` below imports none): ``build_data.*``, ``train.*`` and ``pretrain.*``
    come with this module's imports; ``tracking.*``, and the objectives (built-in and plugins) through the
    registry, here."""
    from .. import tracking  # noqa: F401  (tracking.*)

    objective_entries()


def parse_config(config_files: list[str], bindings: list[str] = ()) -> list[Path]:
    """``gin_config.parse`` with every configurable registered: what ``electra-kit run`` parses with."""
    register_configurables()
    return gin_config.parse(config_files, bindings)


def _checkpoint_to_resume(opts: RunOptions) -> Path | None:
    """The checkpoint a ``--resume`` continues from; None for a run stopped before its first checkpoint (one rule
    for such a run: it holds its config, so ``--resume`` starts it again from step 0 with that config, and a new
    run into its directory is refused)."""
    if opts.run_dir is None:
        raise RunError("--resume needs --run-dir naming the run to continue")
    found = ckpt.latest_valid_checkpoint(opts.run_dir / "checkpoints")
    if found is None and ckpt.list_checkpoints(opts.run_dir / "checkpoints"):
        raise RunError(f"--resume: nothing to resume in {opts.run_dir} (no intact checkpoint under "
                       f"{opts.run_dir}/checkpoints: each is damaged); remove them to start the run again from step 0, "
                       f"or start a new run in another --run-dir")
    if found is None:
        if not (opts.run_dir / resume.RUN_CONFIG).is_file():
            raise RunError(f"--resume: nothing to resume in {opts.run_dir} (no intact checkpoint under "
                           f"{opts.run_dir}/checkpoints, no {resume.RUN_CONFIG}): start it as a new run, "
                           f"electra-kit run CONFIG --run-dir {opts.run_dir}")
        say(f"--resume: {opts.run_dir} has no checkpoint yet (the run stopped before its first): it starts again "
            f"from step 0 with its own config ({opts.run_dir / resume.RUN_CONFIG})")
    return found


def build_objective(data) -> torch.nn.Module:
    """The configured objective, built from the data's special tokens and checked against the data."""
    return check_fits_data(_build(data.special.by_role()), data)


def _build(special_ids: dict) -> torch.nn.Module:
    try:
        objective = resolve_objective(pretrain())
        return objective(**objective.special_token_kwargs(special_ids))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"building the model failed: {exc.args[0] if exc.args else exc}") from exc


def _kit_special_ids() -> dict:
    """The special ids of every vocabulary the kit trains ([PAD] [UNK] [MASK] [CLS] [SEP] are ids 0..4)."""
    ids = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    return SpecialIds(ids[PAD], ids[UNK], ids[MASK], ids[CLS], ids[SEP]).by_role()


def check_fits_data(model: torch.nn.Module, data) -> torch.nn.Module:
    """``model`` when every backbone holds the data's vocabulary and sequence length; else a RunError."""
    for role, backbone in model.backbones().items():
        if data.vocab_size > backbone.num_tokens:
            raise RunError(
                f"the tokenizer has {data.vocab_size} tokens but the {role} embedding holds {backbone.num_tokens}: "
                f"set backbone.num_tokens (or the VOCAB_SIZE macro) to at least {data.vocab_size}"
            )
        if data.max_seq_len > backbone.max_seq_len:
            raise RunError(
                f"sequence length {data.max_seq_len} (build_data.max_seq_len) exceeds the {role}'s "
                f"max_seq_len={backbone.max_seq_len}: lower MAX_SEQ_LEN or raise backbone.max_seq_len"
            )
    return model


def _tracker(opts: RunOptions, run_dir: Path, dist, paths: list[Path]):
    """The run's Tracker on the rank that tracks (rank 0); None elsewhere and when tracking is off. ``paths``: the
    run's config files (a resume names none: they come from its checkpoint)."""
    from ..tracking import DEFAULT_EXPERIMENT, Tracker, tracking

    configured = tracking()
    if not (opts.tracking and configured["enabled"] and dist.is_main):
        return None
    experiment = opts.experiment or configured["experiment"] or (Path(paths[-1]).stem if paths else DEFAULT_EXPERIMENT)
    return Tracker(run_dir=run_dir, tracking_uri=opts.tracking_uri or configured["uri"], experiment=experiment,
                   run_name=run_dir.name)


def _params(model, operative: str, trainer: Trainer) -> dict:
    cfg = trainer.cfg
    params = {**gin_config.flatten_gin_config(operative), **model.report_params()}
    params["train.effective_warmup_steps"] = cfg.effective_warmup  # warmup_steps, after its cap
    if cfg.precision == "auto":  # what the trainer chose on this machine
        params["train.effective_precision"] = "bf16" if trainer.autocast_dtype is not None else "fp32"
    if cfg.compile == "auto":
        params["train.effective_compile"] = trainer.compiled
    return params


def run(opts: RunOptions) -> dict:
    """Parse, check and build everything, then train; see the module docstring."""
    if not opts.resume and not opts.config_files:
        raise RunError("give at least one gin file (or continue a run with --run-dir DIR --resume)")
    register_configurables()
    resume_from = _checkpoint_to_resume(opts) if opts.resume else None
    if opts.resume:  # the run's own config, plus only what a resume may change
        paths = resume.parse_run_config(opts.run_dir, resume_from, opts.config_files, opts.bindings)
    else:
        paths = gin_config.parse(opts.config_files, opts.bindings)
    cfg = configured_train()
    if resume_from is not None:
        resume.check_steps(resume_from, cfg.steps)
    device = resolve_device(cfg.device)
    dist = init_from_env(device.type, cfg.strategy)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    owned, stack = None, contextlib.ExitStack()
    try:
        if dist.is_main:  # claimed and locked for the run's lifetime
            path = opts.run_dir or default_run_dir(opts.config_files)
            owned = RunDir(path, resume=opts.resume, created=opts.run_dir is None, inputs=opts.config_files)
            run_dir = owned.path
        else:
            run_dir = opts.run_dir or Path(".")
        if dist.enabled:  # every rank needs rank 0's run directory (its default name has a timestamp)
            run_dir = Path(dist.broadcast_object(str(run_dir)))
        stack.enter_context(run_log(run_dir if dist.is_main else None, with_mlflow=opts.tracking))  # MLflow's INFO lines go to run.log
        with _stop_on_signals():
            trainer, data, model, tracker = _setup(opts, cfg, device, dist, run_dir, paths, resume_from)
    except BaseException as exc:
        stack.close()
        if owned is not None:  # an input error found before training removes only what this run made
            owned.discard()
        dist.close()
        if isinstance(exc, StoppedBeforeTraining) and owned is not None:  # gin may have wrapped it: a fresh one
            stopped = StoppedBeforeTraining(exc.signum)
            stopped.kept = (f"the run in {owned.path} is as it was" if opts.resume else
                            f"nothing was trained; what this run had created in {owned.path} was removed")
            stopped.run_dir = owned.path
            raise stopped from None
        raise
    try:
        return _train(trainer, data, model, tracker, dist, device, run_dir)
    except Interrupted as exc:
        exc.run_dir = run_dir  # for the "Continue with" line
        raise
    finally:
        stack.close()
        if owned is not None:
            owned.release()


def _model_and_data(cfg, dist, resume_from):
    """The model first: a backbone that rejects its arguments stops the run before minutes of corpus work. It is
    built for the ids of the kit's own vocabularies and rebuilt only when the data's tokenizer has others."""
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
    with phase("building the model", dist.is_main):
        model = _build(_kit_special_ids())
    with phase("reading the corpus, building the tokenizer and the token shards", dist.is_main):
        data = _build_data_once(dist, resume.checkpoint_tokenizer(resume_from) if resume_from else None)
    if data.special.by_role() != _kit_special_ids():
        torch.manual_seed(cfg.seed)
        with phase("building the model for the tokenizer's special tokens", dist.is_main):
            model = _build(data.special.by_role())
    return check_fits_data(model, data), data


def _micro_batch(cfg, dist, data) -> int:
    """Each micro-step consumes a "micro batch" of batch_size / grad_accum_steps sequences, split over the ranks:
    N processes see exactly the sequences one process would."""
    if cfg.batch_size % (dist.world_size * cfg.grad_accum_steps):
        raise RunError(
            f"train.batch_size={cfg.batch_size} is not divisible by world size {dist.world_size} x "
            f"train.grad_accum_steps={cfg.grad_accum_steps}: choose a batch size that is"
        )
    micro = cfg.batch_size // cfg.grad_accum_steps
    if len(data.train) < micro:
        raise RunError(
            f"the corpus makes {len(data.train)} training sequences of {data.max_seq_len} tokens, fewer than one "
            f"batch of {micro}: add text, or lower BATCH_SIZE / MAX_SEQ_LEN"
        )
    return micro


def _setup(opts, cfg, device, dist, run_dir, paths, resume_from):
    tracker = _tracker(opts, run_dir, dist, paths)  # a store MLflow refuses fails here, before the data is built
    model, data = _model_and_data(cfg, dist, resume_from)
    operative = gin_config.operative_config()
    unread = [] if opts.resume else gin_config.unread_bindings()  # a resume passes the run's tokenizer itself
    if unread:
        raise RunError(f"gin binding {', '.join(unread)}: the run never reads it, as electra-kit passes that parameter "
                       f"itself (special token ids come from the tokenizer); remove it")
    if resume_from is not None:
        resume.check_same_run(resume_from, data, operative)
    micro = _micro_batch(cfg, dist, data)
    batches = BatchIterator(data.train, micro, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                            pin_memory=device.type == "cuda", pad_id=data.special.pad_id)
    evaluator = EvalIterator(data.eval, max(1, min(micro, len(data.eval))), pad_id=data.special.pad_id)

    def eval_batches():
        for batch in itertools.islice(evaluator, cfg.eval_batches):
            yield {k: v.to(device) for k, v in batch.items()}

    # FSDP's forward is a collective: then every rank evaluates (rank 0 logs)
    evaluating = dist.is_main or dist.sharded
    trainer = Trainer(model, cfg, train_batches=batches, eval_batches=eval_batches if evaluating else None,
                      run_dir=run_dir, device=device, dist=dist, operative_config=operative,
                      journal=tracker.journal if tracker is not None else None,
                      extra_state={"config_files": [str(p) for p in paths], "data_identity": resume.data_record(data),
                                   "config_fingerprint": resume.config_fingerprint(operative)},
                      checkpoint_files={ckpt.TOKENIZER_FILE: data.tokenizer.to_str()},
                      pace_advice=_cpu_advice(paths, device))
    if resume_from is not None:
        trainer.resume(resume_from)
    if dist.is_main:
        atomic_write(run_dir / "operative_config.gin", operative)
    if tracker is not None:
        with phase(f"starting the MLflow run at {tracker.tracking_uri}"):
            tracker.start(params=_params(model, operative, trainer), tags=_tags(model), resume=opts.resume)
        tracker.log_artifact(run_dir / "operative_config.gin")
        tracker.log_artifact(run_dir / "operative_config.gin", as_text="operative_config.gin.txt")  # UI preview
    return trainer, data, model, tracker


def _train(trainer, data, model, tracker, dist, device, run_dir) -> dict:
    from ..tracking import finish_when_done

    try:
        with finish_when_done(tracker, killed=(Interrupted, KeyboardInterrupt)):
            result = trainer.fit()
            model_dir = None
            if dist.sharded:  # gather the shards into a plain copy of the model
                state = dist.model_state(model)
                if dist.is_main:
                    model = build_objective(data)
                    model.load_state_dict(state)
            if dist.is_main:
                with phase(f"saving the model folder {run_dir / 'model'}"):
                    model_dir = save_pretrained(
                        model.cpu() if device.type != "cpu" else model, run_dir / "model", tokenizer=data.tokenizer,
                        special_ids=data.special.by_role(), operative_config=trainer.operative_config,
                        max_seq_len=data.max_seq_len,
                    )
                atomic_write(run_dir / "summary.json", json.dumps(_summary(trainer, result, model_dir), indent=2))
                if tracker is not None:
                    tracker.log_artifact(model_dir)
                    with phase("uploading the run's last metrics and artifacts to MLflow"):
                        tracker.finish("FINISHED")
        if model_dir is not None and tracker is not None:
            try:  # mlflow.pyfunc: seconds to import, so only now; and it needs pandas, which mlflow-skinny lacks
                from ..serving.encoder import log_run_encoder
            except ImportError as exc:  # tracking never fails a finished run
                say(f"the encoder is not logged as an MLflow model ({exc}); the run and its model folder are complete")
            else:
                log_run_encoder(tracker, model_dir, result["step"], say=say)
        return {**result, "model_dir": model_dir, "run_dir": run_dir, "history": trainer.history}
    finally:
        trainer.release()  # DDP's reducer must go before its process group (else gloo can deadlock at exit)
        dist.close()


CPU_HOURS = 2.0  # a shipped GPU-sized config that would train longer than this on a CPU gets the CPU recipe's name


def _cpu_advice(paths: list[Path], device: torch.device):
    """The trainer's ``pace_advice``: on a CPU, a shipped ``*_small.gin`` run that would take hours names the
    CPU recipe (gin/electra_cpu.gin) instead."""
    shipped = [p.name for p in paths if p.name.endswith("_small.gin") and p.parent == gin_config.packaged_gin_dir()]

    def advise(seconds_per_step: float, steps_to_go: int) -> str | None:
        if device.type != "cpu" or not shipped or seconds_per_step * steps_to_go < CPU_HOURS * 3600:
            return None
        return (f"{shipped[-1]} is sized for a GPU: on this CPU it would take {duration(seconds_per_step * steps_to_go)}. "
                f"electra_cpu.gin is the recipe sized for a CPU (about an hour on 2 cores): "
                f"electra-kit run electra_cpu.gin; or shorten this run with --gin TRAIN_STEPS=N")

    return advise


def _tags(model) -> dict:
    from ..tracking import system_tags

    tags = system_tags()
    tags["objective"] = type(model).__name__
    return tags


def _summary(trainer: Trainer, result: dict, model_dir) -> dict:
    train = [h for h in trainer.history if "train/loss" in h]
    return {
        "step": result["step"],
        "tokens_seen": result["tokens_seen"],
        "first": train[0] if train else None,
        "last": train[-1] if train else None,
        "eval": next((h for h in reversed(trainer.history) if any(k.startswith("eval/") for k in h)), None),
        "model_dir": str(model_dir),
        "checkpoint": str(result["checkpoint"]),
        "pid": os.getpid(),
    }


def _build_data_once(dist, tokenizer=None):
    """Rank 0 builds the data (training the tokenizer); the others reuse its tokenizer.

    WordPiece training is not bit-reproducible across processes, so ranks that trained their own
    could disagree on the vocabulary; the broadcast makes them share one. A resumed run passes
    the ``tokenizer`` its checkpoint carries.
    """
    if tokenizer is not None:
        return build_data(tokenizer=tokenizer)
    if not dist.enabled:
        return build_data()
    data = build_data() if dist.is_main else None
    tokenizer_json = dist.broadcast_object(data.tokenizer.to_str() if dist.is_main else None)
    if dist.is_main:
        return data
    from tokenizers import Tokenizer

    return build_data(tokenizer=Tokenizer.from_str(tokenizer_json))

