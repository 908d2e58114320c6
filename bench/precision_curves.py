"""bf16 autocast against fp32 over a 1,000-step run (issue 14, item 2): loss curves and final discriminator AUC.

The runs are ordinary CLI runs (the commands are in bench/README.md); this script reads their
``metrics.jsonl`` files, draws train loss and eval AUC against step for each precision and seed, and
prints a table of the final numbers with the seed-to-seed spread of each precision.

    python bench/precision_curves.py RUN_ROOT --json bench/precision_curves.json --plot bench/precision_curves.png

``RUN_ROOT`` holds one run directory per ``{fp32,bf16}_s{seed}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_run(run_dir: Path) -> dict:
    train, evals = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            train.append((record["step"], record["train/loss"], record.get("train/tokens_per_s")))
        if "eval/disc_auc" in record:
            evals.append((record["step"], record["eval/disc_auc"], record["eval/loss"], record["eval/gen_loss"]))
    return {"train": train, "eval": evals}


def summarise(runs: dict[str, dict]) -> dict:
    """Per precision: final eval AUC / loss per seed, and the mean train tokens/s."""
    out = {}
    for name, run in sorted(runs.items()):
        precision, seed = name.rsplit("_s", 1)
        step, auc, loss, gen = run["eval"][-1]
        speed = statistics.median(t for _, _, t in run["train"] if t)
        out.setdefault(precision, []).append({"seed": int(seed), "step": step, "disc_auc": auc, "eval_loss": loss,
                                             "gen_loss": gen, "tokens_per_s": speed})
    return out


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, run in sorted(runs.items()):
        style = "-" if name.startswith("fp32") else "--"
        left.plot([s for s, _, _ in run["train"]], [v for _, v, _ in run["train"]], style, label=name, lw=1)
        right.plot([s for s, *_ in run["eval"]], [a for _, a, *_ in run["eval"]], style + "o", label=name, ms=3)
    left.set(title="train loss (gen + 50 x disc)", xlabel="step")
    right.set(title="eval discriminator AUC", xlabel="step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--json", type=Path, default=Path("bench/precision_curves.json"))
    p.add_argument("--plot", type=Path, default=Path("bench/precision_curves.png"))
    args = p.parse_args(argv)
    runs = {d.name: read_run(d) for d in sorted(args.root.iterdir()) if (d / "metrics.jsonl").is_file()}
    if not runs:
        raise SystemExit(f"no run directories with metrics.jsonl under {args.root}")
    summary = summarise(runs)
    args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1) + "\n")
    plot(runs, args.plot)
    print("| precision | seed | step | eval disc AUC | eval loss | eval gen loss | train tokens/s (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for precision, rows in summary.items():
        for r in rows:
            print(f"| {precision} | {r['seed']} | {r['step']} | {r['disc_auc']:.4f} | {r['eval_loss']:.4f} | "
                  f"{r['gen_loss']:.4f} | {r['tokens_per_s']:.0f} |")
    for precision, rows in summary.items():
        aucs = [r["disc_auc"] for r in rows]
        print(f"{precision}: AUC mean {statistics.mean(aucs):.4f}, seed spread {max(aucs) - min(aucs):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
