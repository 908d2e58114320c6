"""Learned absolute positions against rotary ones (issue 11): the curves behind gin/backbone_transformer.gin.

The runs are ordinary CLI runs (commands in bench/README.md, "Positions"); their eval curves and fine-tuning
results were gathered into ``bench/positions.json`` (``hour_factors``: the hour runs of RESULTS.md section 8).
This script draws them: the generator's (or MLM's)
held-out loss and the discriminator's held-out AUC against step, and prints the final numbers.

    python bench/plot_positions.py bench/positions.json --plot bench/positions.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def final(curve: list[dict], key: str) -> str:
    return f"{curve[-1][key]:.3f} (step {curve[-1]['step']})" if curve and key in curve[-1] else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    runs = {**data["diagnostics_2000_steps"],
            "hour_electra_rotary_lr5e-4": data["hour"]["electra"], "hour_mlm_rotary_lr5e-4": data["hour"]["mlm"]}
    for name in ("lr2e-4", "temperature1.5"):  # the fifth session's hour runs, one binding each (RESULTS s. 8)
        if name in data.get("hour_factors", {}):
            runs[f"hour_electra_rotary_{name}"] = data["hour_factors"][name]
    print("| run | final gen/MLM loss | final gen/MLM accuracy | final disc AUC |\n| --- | --- | --- | --- |")
    for name, run in runs.items():
        curve = run["eval"]
        print(f"| {name} | {final(curve, 'gen_loss')} | {final(curve, 'gen_acc')} | {final(curve, 'disc_auc')} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, run in runs.items():
            steps = [r["step"] for r in run["eval"]]
            style = "-" if "rotary" in name else "--"
            left.plot(steps, [r["gen_loss"] for r in run["eval"]], style, marker=".", label=name)
            if run["eval"] and "disc_auc" in run["eval"][0]:
                right.plot(steps, [r["disc_auc"] for r in run["eval"]], style, marker=".", label=name)
        left.set(xlabel="step", ylabel="held-out generator / MLM loss (nats)", xscale="log",
                 title="word order: rotary (solid) vs learned table (dashed)")
        right.set(xlabel="step", ylabel="held-out discriminator ROC AUC", xscale="log", title="ELECTRA's discriminator")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
