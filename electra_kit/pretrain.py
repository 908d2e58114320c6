"""One pretraining run: config -> model + data -> trainer -> checkpoints -> model folder.

Everything that can be wrong with the inputs is checked before the first step, and each error
names its culprit. The heavy parts are built here and passed into the trainer.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import config as gin_config
from .data import BatchIterator, EvalIterator, build_data
from .distributed import init_from_env
from .objective import pretrain, resolve_objective
from .pretrained import save_pretrained
from .trainer import Interrupted, TrainConfig, Trainer, resolve_device


class RunError(RuntimeError):
    """A run cannot start; the message names what is wrong and what to do."""


@dataclass
class RunOptions:
    config_files: list[str]
    bindings: list[str]
    run_dir: Path | None = None
    resume: bool = False
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str | None = None


def default_run_dir(config_files: list[str]) -> Path:
    stem = Path(config_files[-1]).stem if config_files else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _prepare_run_dir(opts: RunOptions) -> Path:
    run_dir = opts.run_dir or default_run_dir(opts.config_files)
    if opts.resume:
        if opts.run_dir is None:
            raise RunError("--resume needs --run-dir naming the run to continue")
        if ckpt.latest_valid_checkpoint(run_dir / "checkpoints") is None:
            raise RunError(f"--resume: nothing to resume in {run_dir} (no intact checkpoint under {run_dir}/checkpoints)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"run directory {run_dir} is not writable ({exc.strerror}); choose another --run-dir") from exc
    return run_dir


def build_objective(data) -> torch.nn.Module:
    """The configured objective, built from the data's special tokens and checked against the data."""
    try:
        objective = resolve_objective(pretrain())
        model = objective(**objective.special_token_kwargs(_special_ids(data)))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"building the model failed: {exc.args[0] if exc.args else exc}") from exc
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


def _tracker(opts: RunOptions, run_dir: Path, rank: int):
    from .tracking import Tracker, tracking

    configured = tracking()
    if not (opts.tracking and configured["enabled"]):
        return None
    experiment = opts.experiment or configured["experiment"] or Path(opts.config_files[-1]).stem
    return Tracker(run_dir=run_dir, tracking_uri=opts.tracking_uri or configured["uri"], experiment=experiment,
                   run_name=run_dir.name, rank=rank)


def _params(model, operative: str, cfg: TrainConfig) -> dict:
    from .tracking import flatten_gin_config

    params = {**flatten_gin_config(operative), **model.report_params()}
    params["train.effective_warmup_steps"] = cfg.effective_warmup  # warmup_steps, after its cap
    return params


def run(opts: RunOptions) -> dict:
    """Parse, check and build everything, then train; see the module docstring."""
    paths = gin_config.parse(opts.config_files, opts.bindings)
    cfg = TrainConfig()
    device = resolve_device(cfg.device)
    dist = init_from_env(device.type, cfg.strategy)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    fresh_dir = opts.run_dir is None or not opts.run_dir.exists()
    run_dir = None
    try:
        run_dir = _prepare_run_dir(opts) if dist.is_main else (opts.run_dir or Path("."))
        if dist.enabled:  # every rank needs rank 0's run directory (its default name has a timestamp)
            run_dir = Path(dist.broadcast_object(str(run_dir)))
        trainer, data, model, tracker = _setup(opts, cfg, device, dist, run_dir, paths)
    except BaseException:
        # an input error found before training leaves no half-made run directory behind
        if dist.is_main and fresh_dir and run_dir is not None and not opts.resume:
            shutil.rmtree(run_dir, ignore_errors=True)
        dist.close()
        raise
    return _train(trainer, data, model, tracker, dist, device, run_dir)


def _setup(opts, cfg, device, dist, run_dir, paths):
    tracker = _tracker(opts, run_dir, dist.rank)  # a store MLflow refuses fails here, before the data is built
    data = _build_data_once(dist)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
    model = build_objective(data)
    operative = gin_config.operative_config()
    if cfg.batch_size % (dist.world_size * cfg.grad_accum_steps):
        raise RunError(
            f"train.batch_size={cfg.batch_size} is not divisible by world size {dist.world_size} x "
            f"train.grad_accum_steps={cfg.grad_accum_steps}: choose a batch size that is"
        )
    # Each micro-step consumes a "micro batch" of batch_size / grad_accum_steps sequences,
    # split over the ranks: N processes see exactly the sequences one process would.
    micro = cfg.batch_size // cfg.grad_accum_steps
    if len(data.train) < micro:
        raise RunError(
            f"the corpus makes {len(data.train)} training sequences of {data.max_seq_len} tokens, fewer than one "
            f"batch of {micro}: add text, or lower BATCH_SIZE / MAX_SEQ_LEN"
        )
    batches = BatchIterator(data.train, micro, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                            pin_memory=device.type == "cuda", pad_id=data.pad_id)
    evaluator = EvalIterator(data.eval, max(1, min(micro, len(data.eval))), pad_id=data.pad_id)

    def eval_batches():
        for batch in itertools.islice(evaluator, cfg.eval_batches):
            yield {k: v.to(device) for k, v in batch.items()}

    # FSDP's forward is a collective: then every rank evaluates (rank 0 logs)
    evaluating = dist.is_main or dist.sharded
    trainer = Trainer(model, cfg, train_batches=batches, eval_batches=eval_batches if evaluating else None,
                      run_dir=run_dir, device=device, dist=dist, operative_config=operative,
                      extra_state={"config_files": [str(p) for p in paths]})
    if opts.resume:
        trainer.resume(ckpt.latest_valid_checkpoint(run_dir / "checkpoints"))
    trainer.tracker = tracker
    if dist.is_main:
        (run_dir / "operative_config.gin").write_text(operative)
    if tracker is not None:
        tracker.start(params=_params(model, operative, cfg), tags=_tags(model), resume=opts.resume)
        tracker.log_artifact(run_dir / "operative_config.gin")
        tracker.log_artifact(run_dir / "operative_config.gin", as_text="operative_config.gin.txt")  # UI preview
    return trainer, data, model, tracker


def _train(trainer, data, model, tracker, dist, device, run_dir) -> dict:
    from .tracking import finish_when_done

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
                model_dir = save_pretrained(
                    model.cpu() if device.type != "cpu" else model, run_dir / "model", tokenizer=data.tokenizer,
                    special_ids=_special_ids(data), operative_config=trainer.operative_config,
                    max_seq_len=data.max_seq_len,
                )
                (run_dir / "summary.json").write_text(json.dumps(_summary(trainer, result, model_dir), indent=2))
                if tracker is not None:
                    tracker.log_artifact(model_dir)
            return {**result, "model_dir": model_dir, "run_dir": run_dir, "history": trainer.history}
    finally:
        trainer.release()  # DDP's reducer must go before its process group (else gloo can deadlock at exit)
        dist.close()


def _tags(model) -> dict:
    from .tracking import system_tags

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


def _build_data_once(dist):
    """Rank 0 builds the data (training the tokenizer); the others reuse its tokenizer.

    WordPiece training is not bit-reproducible across processes, so ranks that trained their own
    could disagree on the vocabulary; the broadcast makes them share one.
    """
    if not dist.enabled:
        return build_data()
    data = build_data() if dist.is_main else None
    tokenizer_json = dist.broadcast_object(data.tokenizer.to_str() if dist.is_main else None)
    if dist.is_main:
        return data
    from tokenizers import Tokenizer

    return build_data(tokenizer=Tokenizer.from_str(tokenizer_json))


def _special_ids(data) -> dict:
    return {"pad": data.pad_id, "unk": data.unk_id, "mask": data.mask_id, "cls": data.cls_id, "sep": data.sep_id}
