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
- dropout 0.1 (the backbone is rebuilt with ``dropout=0.1`` when its adapter takes it), batch 32,
  3 epochs; several seeds (``seeds``) with the median reported, as the paper does.

A text pair is ``[CLS] a [SEP] b [SEP]``, truncated longest-first; the backbones have no segment
embeddings, so the ``[SEP]`` alone marks the boundary. Batches are padded to their longest row.
Metrics are those of the final epoch (no selection on the evaluation set).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write
from .pretrained import load_weights_into, read_config
from .registry import create_backbone
from .rundir import RunDir, default_run_dir
from .tasks import TaskError, encode_labels, infer_task, label_set, primary_metric, read_labeled, task_metrics
from .tokenizer import special_ids


@dataclass
class FinetuneConfig:
    lr: float = 3e-4
    layer_decay: float = 0.8
    warmup_fraction: float = 0.1
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 128
    weight_decay: float = 0.0
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0
    dropout: float = 0.1
    max_seq_len: int | None = None  # default: the model's
    seeds: int = 1
    first_seed: int = 0
    random_init: bool = False  # same architecture and tokenizer, fresh weights: the no-pretraining baseline
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        if self.seeds < 1 or self.batch_size < 1 or self.epochs <= 0:
            raise ValueError("seeds and batch size must be >= 1 and epochs > 0")
        if not 0 < self.layer_decay <= 1 or not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"layer decay must lie in (0, 1] and warmup fraction in [0, 1), got "
                             f"{self.layer_decay} and {self.warmup_fraction}")


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


class ClassificationHead(nn.Module):
    """ELECTRA's sequence head on the first token's hidden state."""

    def __init__(self, hidden_dim: int, n_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, n_outputs)
        for layer in (self.dense, self.out):  # BERT's initialisation
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, first: torch.Tensor) -> torch.Tensor:  # (b, d)
        return self.out(self.dropout(F.gelu(self.dense(self.dropout(first)))))  # (b, k)


class SequenceModel(nn.Module):
    def __init__(self, backbone: nn.Module, n_outputs: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.hidden_dim, n_outputs, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids, attention_mask=attention_mask)  # (b, n, d)
        return self.head(hidden[:, 0])  # (b, k)


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
    if random_init:  # where pretraining starts from: ELECTRA's N(0, 0.02) embeddings, the library's init elsewhere
        from .heads import init_embeddings

        init_embeddings(backbone, 0.02)
    else:
        load_weights_into(backbone, Path(model_dir) / "encoder.safetensors")
    return backbone


def load_tokenizer(model_dir: str | Path):
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json: fine-tuning needs the tokenizer the model was trained with")
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def encode_examples(tok, texts: list[str], pairs: list[str] | None, max_seq_len: int) -> list[list[int]]:
    """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` token ids, truncated longest-first."""
    ids = special_ids(tok)
    a_all = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    if pairs is None:
        return [[ids.cls_id, *a[: max_seq_len - 2], ids.sep_id] for a in a_all]
    b_all = [e.ids for e in tok.encode_batch(pairs, add_special_tokens=False)]
    rows = []
    for a, b in zip(a_all, b_all, strict=True):
        a, b = list(a), list(b)
        while len(a) + len(b) > max_seq_len - 3:
            (a if len(a) >= len(b) else b).pop()
        rows.append([ids.cls_id, *a, ids.sep_id, *b, ids.sep_id])
    return rows


def collate(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)  # (b, n)
    mask = torch.zeros((len(rows), n), dtype=torch.bool)  # (b, n)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


def layerwise_param_groups(model: SequenceModel, cfg: FinetuneConfig) -> list[dict]:
    """One AdamW group per layer (and decay / no-decay), the lr scaled as in ELECTRA."""
    groups = [list(g) for g in model.backbone.layer_groups()]
    covered = {id(p) for g in groups for p in g}
    groups[-1] += [p for p in model.backbone.parameters() if id(p) not in covered]
    n_layers = len(groups) - 1
    depths = [*range(len(groups)), n_layers + 2]  # embeddings 0, layer i at i, the head at L + 2
    out = []
    for depth, params in zip(depths, [*groups, list(model.head.parameters())], strict=True):
        scale = cfg.layer_decay ** (n_layers + 2 - depth)
        for decay, chosen in ((cfg.weight_decay, [p for p in params if p.ndim >= 2]),
                              (0.0, [p for p in params if p.ndim < 2])):
            if chosen:
                out.append({"params": chosen, "lr": cfg.lr * scale, "weight_decay": decay, "depth": depth})
    return out


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
    return Prepared(task, classes, encode_examples(tok, train.texts, train.pairs, max_len),
                    encode_examples(tok, evald.texts, evald.pairs, max_len), y_train, y_eval,
                    {"text": cols.text, "pair": cols.pair, "label": cols.label}, special_ids(tok).pad_id, max_len)


def _loss(task: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), y.float())
    return F.cross_entropy(logits.float(), y)


@torch.no_grad()
def evaluate(model: SequenceModel, data: Prepared, cfg: FinetuneConfig, device) -> dict[str, float]:
    model.eval()
    order = np.argsort([len(r) for r in data.eval_rows], kind="stable")  # similar lengths batch together
    preds, losses = np.empty(len(order), dtype=np.float64), []
    for start in range(0, len(order), cfg.eval_batch_size):
        idx = order[start:start + cfg.eval_batch_size]
        ids, mask = collate([data.eval_rows[i] for i in idx], data.pad_id)
        logits = model(ids.to(device), mask.to(device)).float().cpu()  # (b, k)
        y = torch.from_numpy(data.y_eval[idx])
        losses.append(float(_loss(data.task, logits, y)) * len(idx))
        preds[idx] = logits.squeeze(-1).numpy() if data.task == "regression" else logits.argmax(-1).numpy()
    y_pred = preds if data.task == "regression" else preds.astype(np.int64)
    metrics = task_metrics(data.task, data.y_eval, y_pred, len(data.classes or []))
    metrics["eval_loss"] = sum(losses) / len(order)
    return metrics


def finetune_seed(model_dir, data: Prepared, cfg: FinetuneConfig, seed: int, device, on_metrics=None) -> dict:
    """Train one seed; returns ``{seed, metrics (last epoch), epochs: [...], train_loss, wall_s}``."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)
    backbone = load_backbone(model_dir, dropout=cfg.dropout, random_init=cfg.random_init)
    model = SequenceModel(backbone, 1 if data.task == "regression" else len(data.classes), cfg.dropout).to(device)
    groups = layerwise_param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.adam_eps)
    n = len(data.train_rows)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = round(cfg.warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"finetune seed {seed}", unit="step", dynamic_ncols=True)
    generator = torch.Generator().manual_seed(seed)
    y_train = torch.from_numpy(data.y_train)
    step, epochs, running = 0, [], []
    while step < total:
        model.train()
        perm = torch.randperm(n, generator=generator)
        for start_i in range(0, n, cfg.batch_size):
            idx = perm[start_i:start_i + cfg.batch_size]
            ids, mask = collate([data.train_rows[i] for i in idx.tolist()], data.pad_id)
            loss = _loss(data.task, model(ids.to(device), mask.to(device)), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            running.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sum(running[-20:]) / len(running[-20:]):.3f}")
            if step >= total:
                break
        metrics = evaluate(model, data, cfg, device)
        train_loss = sum(running[-steps_per_epoch:]) / len(running[-steps_per_epoch:])
        epochs.append({"epoch": len(epochs) + 1, "step": step, "train_loss": train_loss, **metrics})
        if on_metrics is not None:
            on_metrics(seed, step, {"train_loss": train_loss, **metrics})
        if bar is not None:
            key = primary_metric(data.task)
            bar.set_postfix(loss=f"{train_loss:.3f}", **{key: f"{metrics[key]:.4f}"})
    if bar is not None:
        bar.close()
    final = {k: v for k, v in epochs[-1].items() if k not in ("epoch", "step", "train_loss")}
    return {"seed": seed, "metrics": final, "train_loss": epochs[-1]["train_loss"], "epochs": epochs,
            "steps": total, "warmup_steps": warmup, "wall_s": time.perf_counter() - start}


def median_metrics(per_seed: list[dict]) -> dict[str, float]:
    keys = list(per_seed[0]["metrics"])
    return {k: statistics.median(s["metrics"][k] for s in per_seed) for k in keys}


def finetune(model_dir, spec: TaskSpec, cfg: FinetuneConfig | None = None, *, tracker=None) -> dict:
    """Fine-tune ``cfg.seeds`` times; returns the results (per seed and median) as a dict."""
    from .trainer import resolve_device

    cfg = cfg or FinetuneConfig()
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    data = prepare(model_dir, spec, cfg)
    config = read_config(model_dir)
    info = {
        "model": str(Path(model_dir).resolve()), "backbone": config["encoder"]["name"],
        "pretraining": "none (random init)" if cfg.random_init else config.get("objective"),
        "task": {"type": data.task, "labels": data.classes, "train": str(spec.train), "eval": str(spec.eval),
                 "n_train": len(data.train_rows), "n_eval": len(data.eval_rows), "columns": data.columns,
                 "max_seq_len": data.max_seq_len},
        "recipe": asdict(cfg), "primary_metric": primary_metric(data.task),
    }
    if tracker is not None:
        params = {"model": info["model"], "backbone": info["backbone"], "pretraining": info["pretraining"],
                  **{f"task.{k}": v for k, v in info["task"].items()}, **{f"finetune.{k}": v for k, v in asdict(cfg).items()}}
        tracker.start(params=params, tags={"electra_kit.kind": "finetune"})

    def log(seed, step, metrics):
        if tracker is not None:
            tracker.log_metrics({f"seed_{seed}/{k}": v for k, v in metrics.items()}, step=step)

    per_seed = []
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
        per_seed.append(finetune_seed(model_dir, data, cfg, seed, device, on_metrics=log))
    median = median_metrics(per_seed)
    if tracker is not None:
        tracker.log_metrics({f"median/{k}": v for k, v in median.items()}, step=per_seed[-1]["steps"])
    return {**info, "seeds": per_seed, "median": median, "wall_s": time.perf_counter() - start}


def format_results(results: dict) -> str:
    """A small table: one row per seed, then the median."""
    keys = list(results["median"])
    lines = ["seed    " + "  ".join(f"{k:>9}" for k in keys)]
    for s in results["seeds"]:
        lines.append(f"{s['seed']:<8}" + "  ".join(f"{s['metrics'][k]:>9.4f}" for k in keys))
    lines.append(f"{'median':<8}" + "  ".join(f"{results['median'][k]:>9.4f}" for k in keys))
    return "\n".join(lines)


def write_results(results: dict, path: Path) -> Path:
    return atomic_write(path, json.dumps(results, indent=2))


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, or a run directory holding one in ``model/``."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    read_config(path)  # a clear error when it is neither
    return path


def run_finetune(model_dir, spec: TaskSpec, cfg: FinetuneConfig, *, run_dir: str | Path | None = None,
                 tracking: bool = True, tracking_uri: str | None = None,
                 experiment: str | None = None) -> tuple[dict, Path]:
    """The ``electra-kit finetune`` command: results to ``run_dir/results.json`` and to MLflow."""
    model_dir = resolve_model_dir(model_dir)
    # claimed and locked like a pretraining run's; a failure leaves no empty directory behind
    owned = RunDir(Path(run_dir) if run_dir else default_run_dir([], stem=f"finetune-{Path(spec.train).stem}"),
                   resume=False, created=run_dir is None)
    try:
        return _run_finetune(model_dir, spec, cfg, owned.path, tracking, tracking_uri, experiment)
    except BaseException:
        owned.close(failed=True)
        raise
    finally:
        owned.close(failed=False)


def _run_finetune(model_dir, spec, cfg, run_dir, tracking, tracking_uri, experiment):
    tracker = None
    if tracking:
        from .tracking import Tracker

        tracker = Tracker(run_dir=run_dir, tracking_uri=tracking_uri, run_name=run_dir.name,
                          experiment=experiment or f"finetune-{Path(spec.train).stem}")
    from .tracking import finish_when_done

    with finish_when_done(tracker):
        results = finetune(model_dir, spec, cfg, tracker=tracker)
        path = write_results(results, run_dir / "results.json")
        if tracker is not None:
            tracker.log_artifact(path)
        return results, path
