"""What makes the ELECTRA discriminator learn at small compute? One factor at a time.

Each variant is a set of gin bindings on top of the shrunk ELECTRA-Small shape that fits a 2-core
CPU (discriminator 128x4, 2 heads, generator 32x4, embedding 128, vocabulary 8192, sequence 128,
batch 32). Each is pretrained through the CLI (``electra-kit run``) on the default corpus, then
its discriminator is fine-tuned on TREC-6 (``electra-kit finetune``) with one fixed recipe. The
table reports the held-out pretraining metrics (generator loss, discriminator loss, AUC, recall)
and the fine-tuned accuracy, beside a randomly initialised encoder fine-tuned the same way.

    OMP_WAIT_POLICY=PASSIVE python bench/recipe_factors.py --steps 600 --variants base,bert_like
    python bench/recipe_factors.py --list

Results: ``--json`` (default bench/recipe_factors.json) gets one record per variant, merged with
what is already there, so variants can be run in several sittings; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SHAPE = [
    "VOCAB_SIZE = 8192", "BATCH_SIZE = 32", "MAX_SEQ_LEN = 128", "backbone.emb_dim = 128",
    "discriminator/backbone.dim = 128", "discriminator/backbone.depth = 4", "discriminator/backbone.heads = 2",
    "generator/backbone.dim = 32", "generator/backbone.depth = 4", "generator/backbone.heads = 1",
    "train.seed = 0",
]
BERT_LIKE = ["Electra.weight_init = 'electra'", "backbone.position_scale = 1.0", "backbone.pre_norm = False",
             "backbone.post_emb_norm = True"]

# name -> bindings added to SHAPE (the library defaults of today's base.gin unless named). The table in
# bench/recipe_factors.json was measured before rotary positions became the transformer configs' default
# (gin/backbone_transformer.gin): its runs are the `absolute_*` variants of today.
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "absolute_positions": ["backbone.rotary_pos_emb = False"],
    "absolute_positions_lr2e-4": ["backbone.rotary_pos_emb = False", "train.lr = 2e-4"],
    "base_lr2e-4": ["train.lr = 2e-4"],
    "init_electra": ["Electra.weight_init = 'electra'"],
    "positions_unscaled": ["backbone.position_scale = 1.0"],
    "post_norm": ["backbone.pre_norm = False", "backbone.post_emb_norm = True"],
    "bert_like": BERT_LIKE,
    "bert_like_lr2e-4": [*BERT_LIKE, "train.lr = 2e-4"],
    "bert_like_lr1e-3": [*BERT_LIKE, "train.lr = 1e-3"],
    "bert_like_gen_depth2": [*BERT_LIKE, "generator/backbone.depth = 2"],
    "bert_like_gen_dim64": [*BERT_LIKE, "generator/backbone.dim = 64"],
    "bert_like_disc_weight20": [*BERT_LIKE, "Electra.disc_weight = 20.0"],
    "bert_like_temperature1.5": [*BERT_LIKE, "Electra.temperature = 1.5"],
    "bert_like_gdes": [*BERT_LIKE, "Electra.embedding_sharing = 'gdes'"],
    "bert_like_vocab4096": [*BERT_LIKE, "VOCAB_SIZE = 4096"],
    "bert_like_seq64": [*BERT_LIKE, "MAX_SEQ_LEN = 64", "BATCH_SIZE = 64"],
    "base_lr1e-4": ["train.lr = 1e-4"],
}
# one factor at a time against lr 2e-4 (the largest lr at which the discriminator learned here)
FACTORS = {
    "init_electra": ["Electra.weight_init = 'electra'"],
    "positions_unscaled": ["backbone.position_scale = 1.0"],
    "post_norm": ["backbone.pre_norm = False", "backbone.post_emb_norm = True"],
    "gen_depth2": ["generator/backbone.depth = 2"],
    "gen_dim64": ["generator/backbone.dim = 64"],
    "disc_weight20": ["Electra.disc_weight = 20.0"],
    "disc_weight100": ["Electra.disc_weight = 100.0"],
    "temperature1.5": ["Electra.temperature = 1.5"],
    "gdes": ["Electra.embedding_sharing = 'gdes'"],
    "vocab4096": ["VOCAB_SIZE = 4096"],
    "seq64": ["MAX_SEQ_LEN = 64", "BATCH_SIZE = 64"],
}
for _factor, _bindings in FACTORS.items():
    VARIANTS[f"lr2e-4_{_factor}"] = ["train.lr = 2e-4", *_bindings]


def cli(argv: list[str], log: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "electra_kit", *argv], stdout=out, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"electra-kit {argv[0]} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def finetune(model_dir: Path, out: Path, name: str, args, extra: list[str] = ()) -> dict:
    run_dir = out / f"finetune_{name}"
    argv = ["finetune", "--model", str(model_dir), "--train", str(args.train), "--eval", str(args.eval),
            "--text-column", "text", "--label-column", "label", "--seeds", str(args.seeds), "--no-progress",
            "--no-tracking", "--run-dir", str(run_dir), *args.finetune_args.split(), *extra]
    wall = cli(argv, out / f"finetune_{name}.log", args.threads)
    results = json.loads((run_dir / "results.json").read_text())
    return {"accuracy_median": results["median"]["accuracy"],
            "accuracy_seeds": [s["metrics"]["accuracy"] for s in results["seeds"]], "wall_s": wall}


def run_variant(name: str, args, out: Path) -> dict:
    run_dir = out / f"pretrain_{name}"
    bindings = [*SHAPE, f"TRAIN_STEPS = {args.steps}", "train.progress = False",
                f"train.eval_every = {args.eval_every}", "train.eval_batches = 20",
                f"train.checkpoint_every = {args.steps}", *VARIANTS[name], *args.gin]
    argv = ["run", args.config, "--no-tracking", "--run-dir", str(run_dir)]
    for b in bindings:
        argv += ["--gin", b]
    if args.reuse and (run_dir / "summary.json").is_file():
        wall = None  # finished in an earlier sitting
    else:
        wall = cli(argv, out / f"pretrain_{name}.log", args.threads)
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [{k: v for k, v in r.items() if k == "step" or k.startswith("eval/")} for r in curve
             if any(k.startswith("eval/") for k in r)]
    record = {"name": name, "bindings": VARIANTS[name] + list(args.gin), "steps": args.steps, "pretrain_wall_s": wall,
              "eval": summary["eval"], "eval_curve": evals}
    record["finetune"] = finetune(run_dir / "model", out, name, args)
    if args.random_init:
        record["finetune_random_init"] = finetune(run_dir / "model", out, f"{name}_random", args, ["--random-init"])
    return record


def table(records: list[dict]) -> str:
    lines = ["| variant | steps | gen loss | disc loss | disc AUC | disc recall | TREC acc (pretrained) "
             "| TREC acc (random init) |", "|" + " --- |" * 8]
    for r in records:
        e = r["eval"]
        rand = r.get("finetune_random_init", {}).get("accuracy_median")
        lines.append(f"| {r['name']} | {r['steps']} | {e.get('eval/gen_loss', float('nan')):.3f} | "
                     f"{e.get('eval/disc_loss', float('nan')):.3f} | {e.get('eval/disc_auc', float('nan')):.3f} | "
                     f"{e.get('eval/disc_recall', float('nan')):.3f} | {r['finetune']['accuracy_median']:.4f} | "
                     f"{'-' if rand is None else f'{rand:.4f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="base,bert_like")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--config", default="transformer_small.gin")
    parser.add_argument("--gin", action="append", default=[], help="extra binding for every variant")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--finetune-args", default="--epochs 10 --lr 1e-4 --max-seq-len 64")
    parser.add_argument("--random-init", action="store_true", help="also fine-tune a random init of each")
    parser.add_argument("--reuse", action="store_true", help="keep finished pretraining runs in --out-dir")
    parser.add_argument("--parallel", type=int, default=2, help="variants at once (one thread each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", type=Path, default=REPO / "bench" / "data" / "trec_train.tsv")
    parser.add_argument("--eval", type=Path, default=REPO / "bench" / "data" / "trec_test.tsv")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench_recipe_factors")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "recipe_factors.json")
    args = parser.parse_args(argv)
    if args.list:
        for name, bindings in VARIANTS.items():
            print(f"{name}: {bindings}")
        return 0
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; see --list")
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def one(name: str) -> dict | None:
        try:
            record = run_variant(name, args, out)
        except RuntimeError as exc:  # one failed variant must not lose the others
            print(f"{name}: {exc}", file=sys.stderr)
            return None
        with lock:  # each finished variant is kept at once: a long sweep can be stopped any time
            kept = json.loads(args.json.read_text()) if args.json.is_file() else {}
            kept[f"{name}@{args.steps}"] = record
            args.json.write_text(json.dumps(kept, indent=2) + "\n")
        return record

    with ThreadPoolExecutor(args.parallel) as pool:
        records = [r for r in pool.map(one, names) if r is not None]
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
