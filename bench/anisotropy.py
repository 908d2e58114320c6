"""How alike does an encoder make different texts look to the fine-tuning head? Anisotropy of the pooled vector.

The classification head reads one vector per text (``[CLS]`` or the mean over real tokens). If the vectors of
different texts point almost the same way, a freshly initialised head gives every text nearly the same logits
and learns only from the small part that varies. For each encoder (frozen, in eval mode) this prints, over the
first ``--texts`` training texts of a task: the mean cosine between the pooled vectors of two different texts
(1: all parallel), and the across-text standard deviation (the norm of the per-dimension std) over the norm of
the mean vector (how large the part that varies is next to the part they share).

    python bench/anisotropy.py --task amazon --random-seeds 0 e8000=runs/pretrain_electra_8000/model

Models are given as to ``bench/probe.py`` (NAME=PATH; a random init of ``--arch`` or the first model folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from electra_vs_mlm import TASKS  # noqa: E402  the tasks' files
from probe import features, load_encoder, models_to_probe, read_task  # noqa: E402

from electra_kit.finetune.model import POOLINGS  # noqa: E402


def anisotropy(x: torch.Tensor) -> dict[str, float]:
    """x: (texts, d). Mean cosine over distinct pairs; across-text std norm over mean-vector norm."""
    unit = torch.nn.functional.normalize(x, dim=-1)
    cosines = unit @ unit.T
    off_diagonal = cosines[~torch.eye(len(x), dtype=torch.bool)]
    return {"mean_cosine": off_diagonal.mean().item(),
            "spread_over_mean": (x.std(0).norm() / x.mean(0).norm()).item()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="NAME=PATH: a model folder or a pretraining checkpoint folder")
    parser.add_argument("--arch", type=Path, help="model folder giving a checkpoint's (and random init's) architecture")
    parser.add_argument("--random-seeds", default="0", help="random-init baselines ('' for none)")
    parser.add_argument("--task", default="amazon", choices=sorted(TASKS))
    parser.add_argument("--texts", type=int, default=300, help="the first N training texts")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.texts < 2:
        raise SystemExit(f"--texts {args.texts}: needs at least 2 texts to compare")
    torch.set_num_threads(1)
    texts = read_task(args.data, args.task)[0][:args.texts]
    rows = []
    print("| encoder | " + " | ".join(f"{p}: mean cosine | {p}: spread / mean" for p in POOLINGS) + " |")
    print("|" + " --- |" * (1 + 2 * len(POOLINGS)))
    for name, path, seed in models_to_probe(args):
        backbone, tokenizer = load_encoder(path, args.arch, seed)
        pooled = features(backbone, tokenizer, texts, args.max_seq_len)
        row = {"name": name, "path": str(path), "random_seed": seed, **{p: anisotropy(pooled[p]) for p in POOLINGS}}
        rows.append(row)
        print(f"| {name} | " + " | ".join(f"{row[p]['mean_cosine']:.3f} | {row[p]['spread_over_mean']:.3f}"
                                          for p in POOLINGS) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "texts": len(texts), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
