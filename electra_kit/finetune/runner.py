"""Fine-tune a pretrained encoder on text or text-pair classification or regression.

The ELECTRA recipe (Clark et al. 2020, arXiv 2003.10555, appendix, Table 7), defaults for
ELECTRA-Small:

- head on the first token (``[CLS]``): dropout -> dense(d, d) -> GELU -> dropout -> dense(d, k)
  (k classes, or 1 output for regression), cross-entropy or mean squared error;
- AdamW (eps 1e-6, no weight decay), lr 3e-4 (the paper uses 1e-4 for Base, 5e-5 for Large),
  linear warmup over the first 10 % of steps then linear decay to 0, gradients clipped at 1.0;
- layer-wise learning-rate decay 0.8: with L layers, the head trains at lr, layer i (1..L) at
  ``lr * 0.8 ** (L + 2 - i)`` and the embeddings at ``lr * 0.8 ** (L + 2)``, as in ELECTRA's
  ``_get_layer_lrs``. The layers come from ``Backbone.layer_groups()``;
- dropout 0.1 (the backbone is rebuilt with ``dropout=0.1`` when its adapter takes it), batch 32;
  several seeds (``seeds``) with the median reported, as the paper does. The paper trains 3 epochs;
  the default here is up to 20 with the epoch chosen on a validation split: a small pretrained encoder
  on a few thousand examples is still near chance after 3 (bench/RESULTS.md, issue 11 s. 8, issue 29 s. 16).

A text pair is ``[CLS] a [SEP] b [SEP]``, truncated longest-first; the backbones have no segment
embeddings, so the ``[SEP]`` alone marks the boundary. Batches are padded to their longest row.
Epochs are chosen on a validation split, never on the evaluation (test) file: ``val_fraction`` of
the training file (a seeded split, the same for every seed) is held out; ``epochs`` is the most
that is trained, the model is evaluated on the split after every epoch, the best epoch by the
task's primary metric is kept (training stops after ``patience`` epochs without improvement, if
given), and the evaluation file's metrics are those of that epoch. ``val_fraction = 0``: no
selection, the last epoch's metrics. Training runs on the one training loop (trainer.py): bf16
autocast on CUDA, a checkpoint per epoch, the progress bar; every seed's metrics go to the run's one journal,
``run_dir/metrics.jsonl``, as ``seed_N/...`` (``seed_N/val/...`` for the validation split), tracked or not.

Nothing finished is lost: a run records what it was asked (``finetune.json``), each seed its result when done
(``seed_N/result.json``), the kept model is saved whenever a seed beats it, and every epoch's checkpoint carries the
best epoch so far. ``--resume`` keeps the finished seeds and continues an unfinished one from its last checkpoint,
given the same model, files and recipe (more seeds may be asked for).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..console import phase, say
from ..data.batches import split_sequences
from ..data.tokenizer import special_ids
from ..modelfolder.pretrained import load_weights_into, read_config, resolve_model_dir
from ..registry import create_backbone
from ..rundir import checkpoint as ckpt
from ..rundir.atomic import atomic_write
from ..rundir.directory import RunDir, RunDirError, default_run_dir
from ..rundir.journal import JOURNAL, Journal, read_journal
from ..training.settings import TrainConfig, resolve_device
from ..training.trainer import Interrupted, Trainer, step_seed
from .classifier import encode_examples, load_tokenizer
from .config import FinetuneConfig
from .kept import keep_seed, kept_in, kept_model_record, save_kept_model
from .model import LabeledBatches, SequenceModel, eval_batches
from .resume import REQUEST, SEED_RESULT, check_request, fine_tuning_request, finished_seed, nothing_to_resume
from .tasks import TaskError, encode_labels, infer_task, label_set, primary_metric, read_labeled


@dataclass
class TaskSpec:
    train: str
    eval: str
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    format: str = "auto"
    header: bool = True
    task: str = "auto"


# ------------------------------------------------------------------------------------- building
def load_backbone(model_dir: str | Path, *, dropout: float | None, random_init: bool) -> nn.Module:
    """The encoder of a model folder, rebuilt with ``dropout`` where its adapter takes it; with
    ``random_init``, its architecture freshly initialised as the pretraining objectives do."""
    config = read_config(model_dir)
    spec = config["encoder"]
    kwargs = dict(spec["kwargs"])
    backbone = None
    if dropout is not None:
        try:
            backbone = create_backbone(spec["name"], **{**kwargs, "dropout": dropout})
        except TypeError:  # an adapter without a dropout argument: fine-tune without
            backbone = None
    if backbone is None:
        backbone = create_backbone(spec["name"], **kwargs)
    if random_init:  # where pretraining started from: the objective's weight_init, recorded in config.json
        from ..objectives.heads import init_embeddings, init_weights

        if config.get("weight_init") == "electra":
            init_weights(backbone, 0.02)
        else:
            init_embeddings(backbone, 0.02)
    else:
        load_weights_into(backbone, Path(model_dir) / "encoder.safetensors")
    return backbone


# ------------------------------------------------------------------------------------- training
@dataclass
class Prepared:
    task: str
    classes: list[str] | None
    train_rows: list[list[int]]
    eval_rows: list[list[int]]
    y_train: np.ndarray
    y_eval: np.ndarray
    columns: dict
    pad_id: int
    max_seq_len: int
    val_rows: list[list[int]]  # held out from the training file to choose the epoch
    y_val: np.ndarray


def prepare(model_dir, spec: TaskSpec, cfg: FinetuneConfig) -> Prepared:
    """Read both files, check them against each other and tokenize; every error names its file."""
    config = read_config(model_dir)
    tok = load_tokenizer(model_dir)
    train, cols = read_labeled(spec.train, fmt=spec.format, header=spec.header, text=spec.text_column,
                               pair=spec.pair_column, label=spec.label_column)
    evald, _ = read_labeled(spec.eval, fmt=spec.format, header=spec.header, text=cols.text,
                                    pair=cols.pair, label=cols.label)
    task = infer_task(train.labels, spec.task)
    classes = label_set(train.labels) if task == "classification" else None
    if classes is not None and len(classes) < 2:
        raise TaskError(f"{spec.train}: only one label ({classes[0]!r}); classification needs two or more")
    y_train = encode_labels(train, task, classes)
    y_eval = encode_labels(evald, task, classes, train_path=spec.train)
    model_len = config.get("max_seq_len") or config["encoder"]["kwargs"].get("max_seq_len")
    max_len = min(cfg.max_seq_len or model_len, model_len)
    rows = encode_examples(tok, train.texts, train.pairs, max_len)
    train_ids, val_ids = _validation_split(len(rows), cfg, spec.train)
    return Prepared(task, classes, [rows[i] for i in train_ids], encode_examples(tok, evald.texts, evald.pairs, max_len),
                    y_train[train_ids], y_eval, {"text": cols.text, "pair": cols.pair, "label": cols.label},
                    special_ids(tok).pad_id, max_len, [rows[i] for i in val_ids], y_train[val_ids])


def _validation_split(n: int, cfg: FinetuneConfig, path) -> tuple[np.ndarray, np.ndarray]:
    if cfg.val_fraction == 0:
        return np.arange(n), np.arange(0)
    try:
        train_ids, val_ids = split_sequences(n, cfg.val_fraction, 1, cfg.split_seed)
    except ValueError:
        raise TaskError(f"{path}: {n} example(s) are too few to hold out --val-fraction {cfg.val_fraction} "
                        "for validation; add examples or pass --val-fraction 0") from None
    return train_ids.astype(np.int64), val_ids.astype(np.int64)


def _seed_journal(journal: Journal, seed: int):
    """A seed's view of the run's journal: its metrics under ``seed_N/`` (``eval/`` is the validation split)."""
    return journal.prefixed(f"seed_{seed}/", lambda k: "val/" + k[5:] if k.startswith("eval/") else k)


class _BestEpoch:
    """The trainer's ``on_eval``: keeps the weights of the best validation score; says when to stop."""

    def __init__(self, model: nn.Module, key: str, steps_per_epoch: int, patience: int | None):
        self.model, self.key, self.steps_per_epoch, self.patience = model, key, steps_per_epoch, patience
        self.epochs: list[dict] = []
        self.best: dict | None = None
        self.state: dict | None = None

    def state_dict(self) -> dict:
        """What every checkpoint carries: the epochs scored so far and the best one's weights."""
        return {"epochs": json.dumps(self.epochs), "best": -1 if self.best is None else self.epochs.index(self.best),
                "weights": self.state or {}}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = json.loads(state["epochs"])
        self.best = self.epochs[state["best"]] if state["best"] >= 0 else None
        self.state = dict(state["weights"]) if self.best is not None else None

    @property
    def stopped(self) -> bool:
        """Whether patience ran out (a run resumed after stopping early trains no further)."""
        return bool(self.patience) and self.best is not None and self.waited >= self.patience

    def __call__(self, step: int, metrics: dict) -> bool:
        epoch = {"epoch": math.ceil(step / self.steps_per_epoch), "step": step,
                 **{f"val_{k}": v for k, v in metrics.items()}}
        self.epochs.append(epoch)
        if self.best is None or metrics[self.key] > self.best[f"val_{self.key}"]:  # ties keep the earlier epoch
            self.best = epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return self.stopped

    @property
    def waited(self) -> int:
        """Evaluations since the best one."""
        return len(self.epochs) - self.epochs.index(self.best) - 1

    def report(self, seed: int, step: int, max_steps: int) -> str:
        """One line: why training stopped (early, or at the last step) and which epoch is kept."""
        best = f"epoch {self.best['epoch']} (val_{self.key} {self.best[f'val_{self.key}']:.4f})"
        last = math.ceil(step / self.steps_per_epoch)
        if step < max_steps:
            return (f"seed {seed}: stopped early after epoch {last} of {math.ceil(max_steps / self.steps_per_epoch)}: "
                    f"val_{self.key} did not improve for {self.waited} epoch{'' if self.waited == 1 else 's'} "
                    f"(--patience {self.patience}); keeping {best}")
        return f"seed {seed}: trained all {last} epochs; keeping {best}"


def _train_config(cfg: FinetuneConfig, seed: int, n_train: int) -> tuple[TrainConfig, int]:
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    per_epoch = min(steps_per_epoch, total)
    train = TrainConfig(
        steps=total, batch_size=cfg.batch_size, lr=cfg.lr, layer_decay=cfg.layer_decay,
        warmup_steps=round(cfg.warmup_fraction * total), warmup_cap=None, weight_decay=cfg.weight_decay,
        adam_eps=cfg.adam_eps, max_grad_norm=cfg.max_grad_norm, log_every=per_epoch, eval_every=per_epoch,
        checkpoint_every=per_epoch, keep_checkpoints=1, device=cfg.device, seed=seed, progress=cfg.progress,
        threads=cfg.threads, compile=False,  # batches vary in length: every new length would recompile
    )
    return train, steps_per_epoch


def finetune_seed(model_dir, data: Prepared, cfg: FinetuneConfig, seed: int, device, *, run_dir: Path,
                  journal: Journal, resume: bool = False) -> tuple[dict, SequenceModel]:
    """Train one seed on the training loop; returns ``{seed, metrics (evaluation file, selected
    epoch), selected_epoch, epochs: [...], steps, ...}`` and the model with the selected epoch's weights.
    ``resume``: continue from the seed's last checkpoint in ``run_dir``, if it has one."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)
    with phase(f"seed {seed}: {'building a randomly initialised' if cfg.random_init else 'loading the'} encoder "
               f"of {model_dir}"):
        backbone = load_backbone(model_dir, dropout=cfg.dropout, random_init=cfg.random_init)
    n_out = 1 if data.task == "regression" else len(data.classes)
    # what the model folder must say to use the model as it was scored (classifier.py)
    task_config = {"labels": data.classes, "columns": data.columns, "max_seq_len": data.max_seq_len, "seed": seed,
                   "rng_seed": step_seed(seed, 0, 0)}  # Trainer.evaluate's seed
    model = SequenceModel(backbone, n_out, cfg.dropout, data.task, cfg.pooling, task_config=task_config)
    train_cfg, steps_per_epoch = _train_config(cfg, seed, len(data.train_rows))
    batches = LabeledBatches(data.train_rows, data.y_train, cfg.batch_size, seed=seed, pad_id=data.pad_id)

    def split(rows, labels):
        return lambda: eval_batches(rows, labels, cfg.eval_batch_size, data.pad_id, device)

    selecting = len(data.val_rows) > 0
    best = _BestEpoch(model, primary_metric(data.task), steps_per_epoch, cfg.patience)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, train_cfg, train_batches=batches, device=device, run_dir=run_dir,
                      eval_batches=split(data.val_rows, data.y_val) if selecting else None,
                      on_eval=best if selecting else None, progress_desc=f"finetune seed {seed}",
                      journal=_seed_journal(journal, seed), stateful={"best_epoch": best} if selecting else None)
    checkpoint = ckpt.latest_valid_checkpoint(trainer.ckpt_dir) if resume else None
    try:
        if checkpoint is not None:
            trainer.resume(checkpoint)
        # a seed killed after its last epoch (or after patience ran out) trains no further
        done = trainer.step >= train_cfg.steps or best.stopped
        if checkpoint is not None:
            say(f"seed {seed}: its last checkpoint ({checkpoint}) ends its training; nothing is trained again" if done
                else f"seed {seed}: continuing from step {trainer.step} of {train_cfg.steps} ({checkpoint})")
        result = {"step": trainer.step} if done else trainer.fit()
        if selecting:
            model.load_state_dict(best.state)
            say(best.report(seed, result["step"], train_cfg.steps))
        trainer.eval_batches = split(data.eval_rows, data.y_eval)
        chosen_epoch = best.best["epoch"] if best.best else math.ceil(result["step"] / steps_per_epoch)
        with phase(f"seed {seed}: evaluating epoch {chosen_epoch} on {len(data.eval_rows)} examples of the "
                   f"evaluation file") as said:
            metrics = trainer.evaluate()
            said["note"] = f"{trainer.eval_batch_count} batch{'' if trainer.eval_batch_count == 1 else 'es'}"
    finally:
        trainer.release()
    metrics["eval_loss"] = metrics.pop("loss")
    train_losses = _train_losses(journal, seed)
    epochs = best.epochs or [{"epoch": math.ceil(result["step"] / steps_per_epoch), "step": result["step"]}]
    for e in epochs:
        e["train_loss"] = train_losses.get(e["step"])
    chosen = best.best or epochs[-1]
    journal.append(chosen["step"], {f"seed_{seed}/{k}": v for k, v in metrics.items()}, once=True)
    return {"seed": seed, "metrics": metrics, "selected_epoch": chosen["epoch"], "selected_step": chosen["step"],
            "selected_by": f"val_{primary_metric(data.task)}" if selecting else "last epoch (no validation split)",
            "train_loss": chosen["train_loss"], "epochs": epochs, "steps": result["step"],
            "max_steps": train_cfg.steps, "stopped_early": result["step"] < train_cfg.steps,
            "warmup_steps": train_cfg.effective_warmup, "wall_s": time.perf_counter() - start}, model


def _train_losses(journal: Journal, seed: int) -> dict[int, float]:
    """A seed's training loss by step, from the run's journal (a resumed seed logged its first epochs earlier)."""
    key = f"seed_{seed}/train/loss"
    return {r["step"]: r[key] for r in read_journal(journal.path) if key in r} if journal.path.exists() else {}


def median_metrics(per_seed: list[dict]) -> dict[str, float]:
    keys = list(per_seed[0]["metrics"])
    return {k: statistics.median(s["metrics"][k] for s in per_seed) for k in keys}


def finetune(model_dir, spec: TaskSpec, cfg: FinetuneConfig | None = None, *, tracker=None,
             run_dir: str | Path | None = None, keep_model: bool | None = None, resume: bool = False) -> dict:
    """Fine-tune ``cfg.seeds`` times; returns the results (per seed and median) as a dict. Each seed's
    checkpoints go to ``run_dir/seed_N`` (a temporary folder without ``run_dir``), its metrics to the run's
    journal ``run_dir/metrics.jsonl`` under ``seed_N/`` (the medians under ``median/``), its result to
    ``run_dir/seed_N/result.json``. ``keep_model`` (default: when ``run_dir`` is given) saves the model of the seed
    with the best validation score (the last seed without a validation split) as ``run_dir/model`` (see
    :func:`keep_seed`), as soon as a seed beats the one kept before. ``resume``: continue the run in ``run_dir``
    (the same request, :func:`check_request`): finished seeds are kept, an unfinished one continues."""
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="electra-kit-finetune-") as tmp:
            return finetune(model_dir, spec, cfg, tracker=tracker, run_dir=tmp, keep_model=bool(keep_model))
    run_dir = Path(run_dir)
    keep_model = True if keep_model is None else keep_model
    cfg = cfg or FinetuneConfig()
    request = fine_tuning_request(model_dir, spec, cfg)
    if resume:
        check_request(run_dir, request)
    else:
        atomic_write(run_dir / REQUEST, json.dumps(request, indent=2))
    # the run's journal: every seed's metrics, tracked or not (a tracker is its sink)
    journal = tracker.journal if tracker is not None else Journal(run_dir / JOURNAL)
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    with phase(f"reading and tokenizing {spec.train} and {spec.eval}"):
        data = prepare(model_dir, spec, cfg)
    config = read_config(model_dir)
    info = {
        "model": str(Path(model_dir).resolve()), "backbone": config["encoder"]["name"],
        "pretraining": "none (random init)" if cfg.random_init else config.get("objective"),
        "task": {"type": data.task, "labels": data.classes, "train": str(spec.train), "eval": str(spec.eval),
                 "n_train": len(data.train_rows), "n_val": len(data.val_rows), "n_eval": len(data.eval_rows),
                 "columns": data.columns,
                 "max_seq_len": data.max_seq_len},
        "recipe": asdict(cfg), "primary_metric": primary_metric(data.task),
    }
    if tracker is not None:
        params = {"model": info["model"], "backbone": info["backbone"], "pretraining": info["pretraining"],
                  **{f"task.{k}": v for k, v in info["task"].items()}, **{f"finetune.{k}": v for k, v in asdict(cfg).items()}}
        with phase(f"starting the MLflow run at {tracker.tracking_uri}"):
            tracker.start(params=params, tags={"electra_kit.kind": "finetune"}, resume=resume)

    def train(seed: int) -> tuple[dict, SequenceModel]:
        return finetune_seed(model_dir, data, cfg, seed, device, run_dir=run_dir / f"seed_{seed}", journal=journal,
                             resume=resume)

    metric, folder = info["primary_metric"], run_dir / "model"
    per_seed, kept = [], None
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
        result, model = finished_seed(run_dir / f"seed_{seed}") if resume else None, None
        if result is not None:
            say(f"seed {seed}: finished earlier ({run_dir / f'seed_{seed}' / SEED_RESULT}); its result is kept")
        else:
            result, model = train(seed)
            atomic_write(run_dir / f"seed_{seed}" / SEED_RESULT, json.dumps(result, indent=2))
        per_seed.append(result)
        if kept is None or keep_seed(result, kept, metric):
            kept = result
            if keep_model and model is not None:  # at once: a run killed later keeps the best model so far
                with phase(f"seed {seed} is the best so far: saving it to {folder}"):
                    save_kept_model(model_dir, model.cpu(), result, folder)
        del model
    if keep_model and kept_in(folder) != (kept["seed"], kept["selected_epoch"]):
        # the kept seed finished in a run killed before its model was saved: its last checkpoint holds it
        _, model = train(kept["seed"])
        with phase(f"saving the kept model (seed {kept['seed']}) to {folder}"):
            save_kept_model(model_dir, model.cpu(), kept, folder)
    median = median_metrics(per_seed)
    journal.append(per_seed[-1]["steps"], {f"median/{k}": v for k, v in median.items()})
    results = {**info, "seeds": per_seed, "median": median}
    if keep_model:
        results["kept_model"] = kept_model_record(kept, folder, metric)
    return {**results, "wall_s": time.perf_counter() - start}


def run_finetune(model_dir, spec: TaskSpec, cfg: FinetuneConfig, *, run_dir: str | Path | None = None,
                 tracking: bool = True, tracking_uri: str | None = None,
                 experiment: str | None = None, resume: bool = False) -> tuple[dict, Path]:
    """The ``electra-kit finetune`` command: results to ``run_dir/results.json`` and to MLflow. ``resume``:
    continue the run in ``run_dir`` (see :func:`finetune`)."""
    given, model_dir = model_dir, resolve_model_dir(model_dir)
    read_config(model_dir)  # not a model folder: a clear error before a run directory is claimed
    if resume and run_dir is None:
        raise RunDirError("--resume needs --run-dir naming the fine-tuning run to continue")
    if resume and not (Path(run_dir) / REQUEST).is_file():  # said before anything is claimed
        raise RunDirError(nothing_to_resume(Path(run_dir)))
    # claimed and locked like a pretraining run's (one holding another run, even a killed one, is refused
    # unless resumed); a failure leaves no empty directory behind
    owned = RunDir(Path(run_dir) if run_dir else default_run_dir([], stem=f"finetune-{Path(spec.train).stem}"),
                   resume=resume, created=run_dir is None, inputs=[given, model_dir, spec.train, spec.eval],
                   claim=[REQUEST])
    try:
        return _run_finetune(model_dir, spec, cfg, owned.path, tracking, tracking_uri, experiment, resume)
    except Interrupted as exc:
        exc.run_dir = owned.path  # for the "Continue with" line
        raise
    except BaseException as exc:
        owned.close(failed=True)
        if isinstance(exc, KeyboardInterrupt) and (owned.path / REQUEST).is_file():  # Ctrl-C outside training
            exc.run_dir = owned.path
        raise
    finally:
        owned.close(failed=False)


def _run_finetune(model_dir, spec, cfg, run_dir, tracking, tracking_uri, experiment, resume):
    tracker = None
    if tracking:
        from ..tracking import Tracker

        tracker = Tracker(run_dir=run_dir, tracking_uri=tracking_uri, run_name=run_dir.name,
                          experiment=experiment or f"finetune-{Path(spec.train).stem}")
    from ..tracking import finish_when_done

    with finish_when_done(tracker, killed=(Interrupted, KeyboardInterrupt)):
        results = finetune(model_dir, spec, cfg, tracker=tracker, run_dir=run_dir, resume=resume)
        if tracker is not None:
            try:  # mlflow.pyfunc needs pandas, which mlflow-skinny lacks; tracking never fails a finished run
                from ..serving.classifier import log_kept_model
            except ImportError as exc:
                say(f"the kept model is not logged as an MLflow model ({exc}); it is complete in {run_dir / 'model'}")
            else:
                say("logging the kept model to MLflow")
                results["kept_model"]["mlflow_model_id"] = log_kept_model(tracker, results["kept_model"])
        path = atomic_write(run_dir / "results.json", json.dumps(results, indent=2))
        if tracker is not None:
            tracker.log_artifact(path)
        return results, path
