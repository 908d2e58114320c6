"""Which fine-tuning recipe gives a pretrained encoder its due on small data?

Fine-tunes one pretrained model folder, and a random initialisation of the same architecture, with
each recipe of a grid (``electra-kit finetune`` flags), on TREC-6 and the movie-review polarity
task (bench/prepare_trec.py, bench/prepare_sentiment.py), and prints median test accuracy per recipe.
A recipe that helps the pretrained encoder but not random init is the one that reads what
pretraining learned; the gap between the two columns is what pretraining is worth.

    python bench/finetune_recipe.py runs/pretrain_x/model --recipes paper,long,long_mean
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
TASKS = {"trec": (DATA / "trec_train.tsv", DATA / "trec_test.tsv"),
         "movie": (DATA / "movie_train.tsv", DATA / "movie_test.tsv")}

RECIPES = {
    "paper": "--epochs 3 --lr 3e-4",  # ELECTRA-Small's GLUE recipe (Table 7)
    "long": "--epochs 10 --lr 3e-4",
    "long_lr1e-4": "--epochs 10 --lr 1e-4",
    "long_mean": "--epochs 10 --lr 3e-4 --pooling mean",
    "long_mean_nodecay": "--epochs 10 --lr 3e-4 --pooling mean --layer-decay 1.0",
    "long_lr1e-3_mean": "--epochs 10 --lr 1e-3 --pooling mean",
}


def finetune(model: Path, task: str, recipe: str, random_init: bool, args, out: Path) -> dict:
    name = f"{task}_{recipe}{'_random' if random_init else ''}"
    train, test = TASKS[task]
    argv = [sys.executable, "-m", "electra_kit", "finetune", "--model", str(model), "--train", str(train),
            "--eval", str(test), "--text-column", "text", "--label-column", "label", "--seeds", str(args.seeds),
            "--max-seq-len", "64", "--no-progress", "--no-tracking", "--run-dir", str(out / name),
            *RECIPES[recipe].split(), *(["--random-init"] if random_init else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with open(out / f"{name}.log", "w") as log:
        if subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode != 0:
            raise RuntimeError(f"fine-tuning {name} failed; see {out / name}.log")
    results = json.loads((out / name / "results.json").read_text())
    accs = [s["metrics"]["accuracy"] for s in results["seeds"]]
    return {"task": task, "recipe": recipe, "random_init": random_init, "accuracy_seeds": accs,
            "accuracy_median": statistics.median(accs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--tasks", default="trec,movie")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench_finetune_recipe")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "finetune_recipe.json")
    args = parser.parse_args(argv)
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(t, r, ri) for t in args.tasks.split(",") for r in args.recipes.split(",") for ri in (False, True)]
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda j: finetune(args.model, *j, args, out), jobs))
    kept = json.loads(args.json.read_text()) if args.json.is_file() else {}
    kept[str(args.model)] = rows
    args.json.write_text(json.dumps(kept, indent=2) + "\n")
    print(f"model: {args.model}; median of {args.seeds} seed(s)")
    print("| task | recipe | flags | pretrained | random init | gap |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in args.tasks.split(","):
        for r in args.recipes.split(","):
            pre, rnd = (next(x for x in rows if x["task"] == t and x["recipe"] == r and x["random_init"] is ri)
                        for ri in (False, True))
            gap = pre["accuracy_median"] - rnd["accuracy_median"]
            print(f"| {t} | {r} | `{RECIPES[r]}` | {pre['accuracy_median']:.4f} | {rnd['accuracy_median']:.4f} | "
                  f"{gap:+.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
