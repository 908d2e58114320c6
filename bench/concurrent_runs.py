"""Two training runs sharing the machine: each one's step time against running alone.

People run two experiments at once, or train while the machine does other work. With OpenMP's
default *active* wait, a torch thread spins at every barrier while the core its partner needs is
held by the other process; electra-kit now asks for a *passive* wait and sizes its thread pool to
the idle cores (electra_kit/threads.py). This benchmark runs ``electra-kit run`` (``--config``,
default the smoke config stretched to ``--steps``) in four ways:

- ``alone``: one run, electra-kit's defaults;
- ``together``: two such runs started at once;
- and both again with the old behaviour forced (``OMP_WAIT_POLICY=ACTIVE``, ``OMP_NUM_THREADS`` =
  all cores: what torch does by itself), to show what the defaults fix.

Step time is the median over the logged windows of ``seconds per step`` (from the run's
``metrics.jsonl``: ``train/tokens_per_s`` and the tokens of a step), skipping the first window
(start-up). Printed as a table; ``--json`` keeps the raw numbers.

    python bench/concurrent_runs.py                 # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def launch(run_dir: Path, args, env_extra: dict) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_extra)
    argv = [sys.executable, "-m", "electra_kit", "run", args.config, "--no-tracking", "--run-dir", str(run_dir),
            "--gin", f"TRAIN_STEPS = {args.steps}", "--gin", "train.log_every = 5", "--gin", "train.progress = False",
            "--gin", f"train.eval_every = {args.steps}", "--gin", f"train.checkpoint_every = {args.steps}",
            "--gin", f"BATCH_SIZE = {args.batch_size}"]
    log = open(run_dir.with_suffix(".log"), "w")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def step_seconds(run_dir: Path, batch_size: int, seq_len: int) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r][1:]
    return statistics.median(batch_size * seq_len / r for r in rates)


def case(name: str, copies: int, env_extra: dict, args, tmp: Path) -> list[float]:
    dirs = [tmp / f"{name}_{i}" for i in range(copies)]
    procs = [launch(d, args, env_extra) for d in dirs]
    for p, d in zip(procs, dirs, strict=True):
        if p.wait() != 0:
            raise SystemExit(f"{name}: electra-kit run failed; see {d.with_suffix('.log')}")
    return [step_seconds(d, args.batch_size, args.seq_len) for d in dirs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny.gin")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64, help="the config's MAX_SEQ_LEN (tiny.gin: 64)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "concurrent_runs.json")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    old = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": str(cores)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        case("warmup", 1, {}, args, tmp)  # tokenizer cache and page cache, not counted
        for label, env in (("defaults", {}), ("old: active wait, all cores", old)):
            alone = case(f"alone_{len(results)}", 1, env, args, tmp)[0]
            time.sleep(5)  # the previous case's processes are gone
            together = case(f"together_{len(results)}", 2, env, args, tmp)
            time.sleep(5)
            results[label] = {"alone_s": alone, "together_s": together,
                              "slowdown": [t / alone for t in together]}
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; config {args.config}, "
          f"batch {args.batch_size}, {args.steps} steps")
    print("| threading | alone, s/step | two together, s/step (each) | slowdown (each; 2.0 is ideal) |")
    print("| --- | --- | --- | --- |")
    for label, r in results.items():
        print(f"| {label} | {r['alone_s']:.3f} | {', '.join(f'{t:.3f}' for t in r['together_s'])} | "
              f"{', '.join(f'{s:.2f}x' for s in r['slowdown'])} |")
    args.json.write_text(json.dumps({"machine": {"cores": cores, "cpu": platform.processor(),
                                                 "python": platform.python_version()},
                                     "args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                    indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
