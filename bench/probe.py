"""Does a pretrained encoder carry a task's signal before any fine-tuning? A frozen-feature linear probe.

Fine-tuning moves every weight, so a pretrained encoder that fine-tunes no better than random init leaves two
readings open: its representation holds nothing for the task, or fine-tuning wastes what it holds. This probe
separates them. Each encoder stays frozen; every text becomes one vector (the last layer at ``[CLS]``, or the mean
over its real tokens); an L2-regularised logistic regression (L-BFGS; C chosen on a seeded 10% of the training
file, then refit on all of it) is scored on the test file. Random-init encoders of the same architecture
(``--random-seeds``) are the bar: a probe is cheap and deterministic, so a small gain is visible where five
fine-tuning seeds would drown it.

    python bench/probe.py --tasks amazon,nyt --random-seeds 0,1,2 \\
        e2000=runs/pretrain_electra_2000/model e8000=runs/pretrain_electra_8000/model

A model is a model folder, or a pretraining checkpoint folder (``checkpoints/step_N``: its discriminator or
encoder weights, the architecture and tokenizer from ``--arch``, a model folder of the same config).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from electra_vs_mlm import TASKS, machine  # noqa: E402  the tasks' files, the machine's description

from electra_kit.finetune.model import POOLINGS  # noqa: E402

C_GRID = (0.01, 0.1, 1.0, 10.0)
ENCODER_PREFIXES = ("discriminator.", "encoder.", "backbone.")  # an ELECTRA, MLM or fine-tuning checkpoint
SHARED_EMBEDDING = "net.token_emb.emb.weight"  # ELECTRA ties it to the generator's


def read_task(data: Path, task: str) -> tuple[list[str], list[int], list[str], list[int]]:
    """Texts and class indices of a task's training and test files, read as ``electra-kit finetune`` reads them."""
    from electra_kit.finetune.tasks import read_labeled

    _, train_file, test_file = TASKS[task]
    train, test = (read_labeled(data / f, text="text", label="label")[0] for f in (train_file, test_file))
    classes = sorted({str(v) for v in train.labels})
    return (train.texts, [classes.index(str(v)) for v in train.labels],
            test.texts, [classes.index(str(v)) for v in test.labels])


def checkpoint_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """The encoder's weights in a pretraining checkpoint, named as a model folder's encoder.safetensors."""
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"))
    prefix = next((p for p in ENCODER_PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise SystemExit(f"{path}: no encoder weights (keys starting {' or '.join(ENCODER_PREFIXES)})")
    encoder = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    tied = next((v for k, v in state.items() if k.endswith(SHARED_EMBEDDING)), None)
    if SHARED_EMBEDDING not in encoder and tied is not None:
        encoder[SHARED_EMBEDDING] = tied
    return encoder


def load_encoder(path: Path, arch: Path | None, random_seed: int | None):
    """(backbone in eval mode, tokenizer) of a model folder, a checkpoint, or ``arch`` freshly initialised."""
    from tokenizers import Tokenizer

    from electra_kit.finetune.runner import load_backbone

    folder = path if (path / "config.json").is_file() else arch
    if folder is None:
        raise SystemExit(f"{path} is a checkpoint, not a model folder: pass --arch, a model folder of its config")
    if random_seed is not None:
        torch.manual_seed(random_seed)
    backbone = load_backbone(folder, dropout=None, random_init=random_seed is not None)
    if random_seed is None and folder is not path:
        missing, unexpected = backbone.load_state_dict(checkpoint_encoder_state(path), strict=False)
        if missing or unexpected:
            raise SystemExit(f"{path} does not fit --arch {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    # a checkpoint carries its run's tokenizer; a model folder holds its own
    tokenizer_file = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else folder / "tokenizer.json"
    return backbone.eval(), Tokenizer.from_file(str(tokenizer_file))


@torch.no_grad()
def features(backbone, tokenizer, texts: list[str], max_seq_len: int, batch: int = 64) -> dict[str, torch.Tensor]:
    """One vector per text and pooling, pooled as ``electra-kit finetune --pooling`` pools."""
    from electra_kit.data.build import encode_texts
    from electra_kit.finetune.model import pool

    out: dict[str, list[torch.Tensor]] = {p: [] for p in POOLINGS}
    for i in range(0, len(texts), batch):
        ids, mask = encode_texts(tokenizer, texts[i:i + batch], max_seq_len)
        hidden = backbone(ids, attention_mask=mask)  # (b, n, d)
        for p in POOLINGS:
            out[p].append(pool(hidden, mask, p))
    return {p: torch.cat(v).float() for p, v in out.items()}


def fit_logistic(x: torch.Tensor, y: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, penalty ||w||^2 / (2 C n) (scikit-learn's C), by L-BFGS."""
    k = int(y.max()) + 1
    w = torch.zeros(x.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + (w ** 2).sum() / (2 * c * len(y))
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def accuracy(x: torch.Tensor, y: torch.Tensor, wb) -> float:
    return ((x @ wb[0] + wb[1]).argmax(1) == y).float().mean().item()


def probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
          seed: int = 0) -> dict:
    """Test accuracy of the probe whose C scored best on a seeded 10% of the training set (ties: smaller C)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))
    val, fit = order[:len(order) // 10], order[len(order) // 10:]
    scores = {c: accuracy(x_train[val], y_train[val], fit_logistic(x_train[fit], y_train[fit], c)) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    return {"accuracy": accuracy(x_test, y_test, fit_logistic(x_train, y_train, best)), "C": best,
            "val_accuracy": scores[best]}


def models_to_probe(args) -> list[tuple[str, Path, int | None]]:
    """(name, path, random seed or None) for each model, then each random-init baseline."""
    named = []
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"model {spec!r}: write it NAME=PATH")
        named.append((name, Path(path), None))
    if args.random_seeds:
        arch = args.arch or next((p for _, p, _ in named if (p / "config.json").is_file()), None)
        if arch is None:
            raise SystemExit("--random-seeds needs --arch or a model folder among the models")
        named += [(f"random init {s}", arch, int(s)) for s in args.random_seeds.split(",")]
    return named


def finished_rows(json_file: Path, tasks: list[str]) -> dict[tuple, dict]:
    """Rows an earlier run wrote to ``json_file`` that probed every task of ``tasks``, by (name, path, seed)."""
    if not json_file.is_file():
        return {}
    rows = json.loads(json_file.read_text())["rows"]
    return {(r["name"], r["path"], r["random_seed"]): r for r in rows if set(tasks) <= set(r["probes"])}


def table(rows: list[dict], tasks: list[str]) -> str:
    head = "| encoder | " + " | ".join(f"{t} {p}" for t in tasks for p in POOLINGS) + " |"
    lines = [head, "|" + " --- |" * (1 + len(tasks) * len(POOLINGS))]
    for row in rows:
        cells = [f"{row['probes'][t][p]['accuracy']:.3f}" for t in tasks for p in POOLINGS]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    randoms = [r for r in rows if r["random_seed"] is not None]
    if len(randoms) > 1:
        medians = [statistics.median(r["probes"][t][p]["accuracy"] for r in randoms) for t in tasks for p in POOLINGS]
        lines.append("| random init, median | " + " | ".join(f"{m:.3f}" for m in medians) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="NAME=PATH: a model folder or a pretraining checkpoint folder")
    parser.add_argument("--arch", type=Path, help="model folder giving a checkpoint's (and random init's) architecture")
    parser.add_argument("--random-seeds", default="0,1,2", help="random-init baselines ('' for none)")
    parser.add_argument("--tasks", default="amazon,nyt", help=f"some of {', '.join(TASKS)}")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "probe.json")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the rows --json already holds for the same model and tasks (a study run in parts)")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
    torch.set_num_threads(1)
    data = {t: read_task(args.data, t) for t in tasks}
    rows, start = [], time.perf_counter()
    done = finished_rows(args.json, tasks) if args.reuse else {}
    for name, path, seed in models_to_probe(args):
        if (name, str(path), seed) in done:
            rows.append(done[name, str(path), seed])
            continue
        backbone, tokenizer = load_encoder(path, args.arch, seed)
        row = {"name": name, "path": str(path), "random_seed": seed, "probes": {}}
        for task, (x_train, y_train, x_test, y_test) in data.items():
            f_train, f_test = (features(backbone, tokenizer, x, args.max_seq_len) for x in (x_train, x_test))
            row["probes"][task] = {p: probe(f_train[p], torch.tensor(y_train), f_test[p], torch.tensor(y_test))
                                   for p in POOLINGS}
        print(name, {t: {p: round(v["accuracy"], 4) for p, v in r.items()} for t, r in row["probes"].items()},
              flush=True)
        rows.append(row)
    print(table(rows, tasks))
    args.json.write_text(json.dumps({"machine": machine(), "wall_s": time.perf_counter() - start, "tasks": tasks,
                                     "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
