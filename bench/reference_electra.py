"""Reference check: does electra-kit learn like Hugging Face's port of Google's ELECTRA?

Two ELECTRA runs side by side, in one process, on exactly the same batches:

- **kit**: the model ``electra-kit run CONFIG --gin ...`` builds (gin parsed by electra_kit.config
  with the shape below plus every ``--kit-gin`` binding), trained as the kit's Trainer trains it
  (the kit's optimizer and schedule, per-step seeds, masking/sampling noise).
- **reference**: ``transformers``' ``ElectraForMaskedLM`` (generator) + ``ElectraForPreTraining``
  (discriminator), built from ``ElectraConfig`` with random weights and wired as Google's ELECTRA
  code wires them (bench/reference_model.py).

Both get the kit's own data (tokenizer, packed sequences, ``BatchIterator`` train batches and
``EvalIterator`` held-out batches, as ``electra-kit run`` builds them), the same learning-rate
schedule, AdamW settings, gradient clipping, masking rate and seed. Every ``--eval-every`` steps
both are evaluated on the same held-out batches with one metric code: generator loss and
accuracy, discriminator loss, ROC AUC, precision, recall (scikit-learn), fraction replaced.

    OMP_NUM_THREADS=1 python bench/reference_electra.py --steps 600 --lr 2e-4 \\
        --kit-gin "Electra.weight_init='electra'" --kit-gin "backbone.pre_norm=False"

Writes ``--json`` (both curves; rewritten after every evaluation, so a stopped run keeps what it
measured), a PNG beside it (one panel per metric, both runs overlaid) and an MLflow run (``--tracking-uri``,
default ``sqlite:///OUT_DIR/mlflow.db``: a parent run with the PNG and JSON, one child run per side
with its metrics by step, so MLflow's charts overlay them). Prints the curves as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (electra_kit/threads.py)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_model import (  # noqa: E402
    METRICS,
    EvalParts,
    KitSide,
    ReferenceSide,
    build_reference,
    eval_metrics,
    make_optimizer,
    make_schedule,
)

REPO = Path(__file__).resolve().parent.parent


def shape_bindings(args) -> list[str]:
    """The shape (and schedule) as gin bindings on the kit's config; ``--kit-gin`` comes after."""
    bindings = [
        f"VOCAB_SIZE = {args.vocab_size}", f"BATCH_SIZE = {args.batch_size}", f"MAX_SEQ_LEN = {args.seq_len}",
        f"TRAIN_STEPS = {args.steps}", f"train.lr = {args.lr}", f"train.seed = {args.seed}",
        f"backbone.emb_dim = {args.emb_dim}", f"backbone.ff_mult = {args.ff_mult}",
        f"discriminator/backbone.dim = {args.disc_dim}", f"discriminator/backbone.depth = {args.disc_depth}",
        f"discriminator/backbone.heads = {args.disc_heads}", f"generator/backbone.dim = {args.gen_dim}",
        f"generator/backbone.depth = {args.gen_depth}", f"generator/backbone.heads = {args.gen_heads}",
    ]
    if args.dropout:
        bindings.append(f"backbone.dropout = {args.dropout}")
    if args.corpus:
        bindings.append(f"build_data.corpus = {str(args.corpus)!r}")
    return bindings + list(args.kit_gin)


def build_kit(args):
    """Config, data and model exactly as ``electra-kit run`` builds them (electra_kit/training/pretrain.py)."""
    from electra_kit.config import gin_config
    from electra_kit.data.build import build_data
    from electra_kit.objectives.electra import Electra
    from electra_kit.training.pretrain import build_objective, parse_config
    from electra_kit.training.settings import configured_train

    bindings = shape_bindings(args)
    try:
        parse_config([args.config], bindings)
        cfg = configured_train()
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"reference_electra: bad --config/--kit-gin: {exc}") from exc
    if cfg.grad_accum_steps != 1:
        raise SystemExit("reference_electra: train.grad_accum_steps must be 1 (both sides step on whole batches)")
    data = build_data()
    torch.manual_seed(cfg.seed)  # as pretrain._setup: the initial weights depend on the seed alone
    model = build_objective(data)
    if not isinstance(model, Electra):
        raise SystemExit(f"reference_electra: pretrain.objective builds {type(model).__name__}, not Electra")
    return cfg, data, model, bindings, gin_config.operative_config()


def kit_batches(cfg, data):
    """The train iterator and the held-out batches of pretrain._setup (one process, no accumulation)."""
    import itertools

    from electra_kit.data.build import BatchIterator, EvalIterator

    train = BatchIterator(data.train, cfg.batch_size, seed=cfg.seed, pad_id=data.special.pad_id)
    evaluator = EvalIterator(data.eval, max(1, min(cfg.batch_size, len(data.eval))), pad_id=data.special.pad_id)
    return train, list(itertools.islice(evaluator, cfg.eval_batches))


class Tracking:
    """MLflow: a parent run (params, PNG, JSON) and one child run per side (metrics by step)."""

    def __init__(self, uri: str, experiment: str, params: dict, sides: list[str]):
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.parent = self.client.create_run(exp_id, run_name="reference_electra").info.run_id
        for key, value in params.items():
            self.client.log_param(self.parent, key, str(value)[:6000])
        self.children = {side: self.client.create_run(exp_id, run_name=side, tags={"mlflow.parentRunId": self.parent,
                                                                                  "side": side}).info.run_id
                         for side in sides}

    def log(self, side: str, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.children[side], metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                                             if v == v])  # NaN (one class absent) is left out

    def finish(self, artifacts: list[Path], status: str) -> None:
        for path in artifacts:
            if path.is_file():
                self.client.log_artifact(self.parent, str(path))
        for run_id in [*self.children.values(), self.parent]:
            self.client.set_terminated(run_id, status)


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file


def plot(path: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["train_loss", *METRICS]
    cols = 4
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for side, style in (("kit", "-o"), ("reference", "--s")):
            points = [] if side not in curves else points_of(curves[side], key)
            if points:
                ax.plot(*zip(*points, strict=True), style, label=side, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[1].legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def points_of(curve: list[dict], key: str) -> list[tuple]:
    return [(r["step"], r[key]) for r in curve if r.get(key) is not None]


def table(curves: dict) -> str:
    cols = ["train_loss", *METRICS]
    lines = ["| step | side | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    by_step = {}
    for side in ("kit", "reference"):
        for r in curves.get(side, []):
            by_step.setdefault(r["step"], []).append((side, r))
    for step in sorted(by_step):
        for side, r in by_step[step]:
            cells = ["-" if r.get(c) is None else f"{r[c]:.4f}" for c in cols]
            lines.append(f"| {step} | {side} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(side, batches, seed: int) -> dict:
    side.model.eval()
    parts = EvalParts()
    noise = torch.Generator().manual_seed(seed)  # the same masks at every evaluation
    with torch.no_grad():
        for batch in batches:
            parts.add(side.eval_step(batch, noise))
    side.model.train()
    return eval_metrics(parts)


def paired_generator_eval(kit_model, ref_model, batches, seed: int) -> dict:
    """Both generators on the *same* masked inputs (the reference's masking, one draw), token by token: each
    side's own evaluation draws its own masks, and over ~3,500 masked tokens the mean NLL of one draw has a
    standard error of ~0.05 nats, the size of the gap being explained. Returns both losses, the mean of the
    per-token difference (kit - reference) and its standard error."""
    import torch.nn.functional as F

    noise = torch.Generator().manual_seed(seed)
    diffs, kit_nll, ref_nll = [], [], []
    for model in (kit_model, ref_model):
        model.eval()
    with torch.no_grad():
        for batch in batches:
            ids, attn = batch["input_ids"], batch["attention_mask"].bool()
            masked, corrupted = ref_model.mask(ids, attn, noise)  # (b, n) bool, (b, n)
            labels = ids[masked]  # (M,)
            gen = ref_model.generator
            hidden = gen.electra(corrupted, attention_mask=attn.long()).last_hidden_state  # (b, n, d_g)
            ref = F.cross_entropy(gen.generator_lm_head(gen.generator_predictions(hidden[masked])).float(), labels,
                                  reduction="none")  # (M,)
            hidden = kit_model.generator(corrupted, attention_mask=kit_model._backbone_mask(attn))  # (b, n, d_g)
            kit = F.cross_entropy(kit_model.generator_head(hidden[masked]).float(), labels, reduction="none")
            kit_nll.append(kit)
            ref_nll.append(ref)
            diffs.append(kit - ref)
    for model in (kit_model, ref_model):
        model.train()
    d = torch.cat(diffs)
    return {"kit_gen_loss": float(torch.cat(kit_nll).mean()), "ref_gen_loss": float(torch.cat(ref_nll).mean()),
            "diff": float(d.mean()), "diff_se": float(d.std() / len(d) ** 0.5), "tokens": len(d),
            "own_draw_se": float(torch.cat(kit_nll).std() / len(d) ** 0.5)}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="transformer_small.gin", help="the kit's gin file")
    p.add_argument("--kit-gin", action="append", default=[], help="gin binding for the kit side (repeatable)")
    p.add_argument("--corpus", type=Path, default=None, help="build_data.corpus (default: the embedded corpus)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--emb-dim", type=int, default=128)
    p.add_argument("--ff-mult", type=int, default=4)
    p.add_argument("--disc-dim", type=int, default=128)
    p.add_argument("--disc-depth", type=int, default=4)
    p.add_argument("--disc-heads", type=int, default=2)
    p.add_argument("--gen-dim", type=int, default=32)
    p.add_argument("--gen-depth", type=int, default=4)
    p.add_argument("--gen-heads", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0,
                   help="both sides (Google's ELECTRA uses 0.1; the kit's transformer backbone defaults to 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sides", default="kit,reference",
                   help="which sides to train (the kit side is deterministic: an earlier run's curve stands)")
    p.add_argument("--reference-bias-free", action="store_true",
                   help="freeze at zero the reference's attention-projection and LayerNorm biases, "
                        "which x-transformers' encoder does not have")
    p.add_argument("--reference-own-emb-norm", action="store_true",
                   help="the discriminator keeps its own embedding LayerNorm, as the kit's backbones do")
    p.add_argument("--paired", action="store_true",
                   help="also evaluate both generators on the same masked inputs (needs both sides)")
    p.add_argument("--out-dir", type=Path, default=REPO / "runs" / "reference_electra")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "reference_electra.json")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default sqlite:///OUT_DIR/mlflow.db)")
    p.add_argument("--experiment", default="reference_electra")
    p.add_argument("--no-tracking", action="store_true")
    args = p.parse_args(argv)
    for name in ("steps", "eval_every", "batch_size", "seq_len", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.corpus is not None and not args.corpus.exists():
        p.error(f"--corpus {args.corpus} does not exist")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from electra_kit.training.trainer import step_seed

    cfg, data, kit_model, bindings, operative = build_kit(args)
    train_batches, eval_batches = kit_batches(cfg, data)
    ref_model = build_reference(kit_model, data, cfg, dropout=args.dropout, bias_free=args.reference_bias_free,
                                own_emb_norm=args.reference_own_emb_norm)
    sides = {"kit": KitSide(kit_model), "reference": ReferenceSide(ref_model)}
    unknown = set(args.sides.split(",")) - set(sides)
    if unknown:
        raise SystemExit(f"reference_electra: unknown --sides {sorted(unknown)}; choose from {sorted(sides)}")
    sides = {name: side for name, side in sides.items() if name in args.sides.split(",")}
    for side in sides.values():  # one optimizer rule and one schedule for both (the kit's TrainConfig)
        side.optimizer = make_optimizer(side.model, cfg)
        side.schedule = make_schedule(side.optimizer, cfg)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    png = args.json.with_suffix(".png")
    info = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "kit_bindings": bindings, "warmup_steps": cfg.effective_warmup, "data": data.describe(),
            "params": {name: sum(p.numel() for p in {id(p): p for p in s.model.parameters()}.values())
                       for name, s in sides.items()}}
    tracking = None
    if not args.no_tracking:
        uri = args.tracking_uri or f"sqlite:///{(args.out_dir / 'mlflow.db').resolve()}"
        tracking = Tracking(uri, args.experiment, {**info["args"], "kit_bindings": bindings,
                                                   "warmup_steps": cfg.effective_warmup}, list(sides))
    (args.out_dir / "kit_operative_config.gin").write_text(operative)
    print(f"data: {data.describe()}\nkit bindings: {bindings}\nparams: {info['params']}, "
          f"warmup {cfg.effective_warmup} steps", flush=True)

    curves = {name: [] for name in sides}
    paired = []
    window = {name: [] for name in sides}
    seconds = {name: 0.0 for name in sides}
    status = "FAILED"
    try:
        for step in range(args.steps + 1):
            if step % args.eval_every == 0 or step == args.steps:
                for name, side in sides.items():
                    record = {"step": step, **evaluate(side, eval_batches, step_seed(cfg.seed, 0, 0)),
                              "train_loss": sum(window[name]) / len(window[name]) if window[name] else None,
                              "s_per_step": seconds[name] / step if step else None}
                    curves[name].append(record)
                    window[name] = []
                    if tracking is not None:
                        tracking.log(name, {k: v for k, v in record.items() if k != "step" and v is not None}, step)
                if args.paired and len(sides) == 2:
                    paired.append({"step": step, **paired_generator_eval(kit_model, ref_model, eval_batches,
                                                                        step_seed(cfg.seed, 0, 0))})
                    print(f"paired generator eval at step {step}: {paired[-1]}", flush=True)
                write_json(args.json, {**info, "curves": curves, **({"paired": paired} if paired else {})})
                plot(png, curves)
                rows = table({k: v[-1:] for k, v in curves.items()}).split("\n")
                print("\n".join(rows if step == 0 else rows[2:]), flush=True)
            if step == args.steps:
                break
            batch = next(train_batches)
            for name, side in sides.items():
                start = time.perf_counter()
                # the kit Trainer's per-step seeds: dropout from torch's global RNG, masking/sampling noise
                torch.manual_seed(step_seed(cfg.seed, step, 0))
                window[name].append(side.train_step(batch, torch.Generator().manual_seed(step_seed(cfg.seed, step, 0)),
                                                    cfg.max_grad_norm))
                seconds[name] += time.perf_counter() - start
        status = "FINISHED"
    finally:
        if tracking is not None:
            tracking.finish([png, args.json], status)
    print(table(curves))
    print(f"wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
