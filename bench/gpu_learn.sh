#!/usr/bin/env bash
# bench/gpu_learn.sh: issue 29, item 4 as one prepared device call. ELECTRA-Small against MLM at equal FLOPs on
# the bigger corpus (bench/build_corpus.py, carried compressed), then `electra-kit finetune` with its defaults on
# each task for both encoders and random init; every run recorded in MLflow (WORK/mlflow.db). It ends inside
# TOTAL_S = 450 s on one H100 by construction: each stage runs under its own `timeout` (its budget, cut to what
# is left), and the study writes each finished run before the next starts, so a stage cut short still reports.
#
#   0 setup   (45 s) the machine's Python, torch and card; with INSTALL=1 the wheels of WHEELS into WORK/site
#                    (bench/gpu_check.sh's setup stage)
#   1 corpus  (20 s) unpack CORPUS (a .tar.xz of corpus files, made here with --pack) into WORK/corpus
#   2 probe   (75 s) 20 steps of transformer_small.gin on it, bf16: builds the tokenizer and token cache the
#                    study reuses, and the kit's own measured seconds per step, which sets the pretraining budget:
#                    ELECTRA steps = PRETRAIN_S / (s/step), MLM at the same FLOPs (bench/electra_vs_mlm.py)
#   3 study  (270 s) bench/electra_vs_mlm.py: transformer_small.gin vs mlm_small.gin, tracked, one fine-tuning
#                    seed per task of TASKS (amazon, the held-out task)
#   4 report (40 s)  the study's table, OUT_DIR/learn.{json,png} (from what finished, if the study was cut
#                    short), the stages and the MLflow runs
#
# Usage: bash bench/gpu_learn.sh [OUT_DIR]              (default: $OUT if set, else ./gpu-learn-out)
#        bash bench/gpu_learn.sh --pack CORPUS_DIR [MB]  writes CORPUS: the corpus files in name order, every
#                                                        k-th, to about MB of text (default 40)
# Knobs: PYTHON, INSTALL (1), WHEELS (.gpu-wheels), CORPUS (.gpu-corpus/corpus.tar.xz), WORK, PRETRAIN_S (40),
#        TASKS (amazon), SMOKE=1 INSTALL=0: tiny sizes on CPU (tests/test_bench.py).
# The device call (bench/README.md, "GPU learning run"):
#   run(command='bash bench/gpu_learn.sh "$OUT"', carry=[".gpu-wheels", ".gpu-corpus"], timeout_s=510)
set -uo pipefail
SELF=$(realpath "$0")
if [[ ${1:-} == --pack ]]; then
  src=${2:?usage: gpu_learn.sh --pack CORPUS_DIR [MB]} mb=${3:-40}
  dest=$(realpath -m "${CORPUS:-$(dirname "$SELF")/../.gpu-corpus/corpus.tar.xz}")
  mkdir -p "$(dirname "$dest")" || exit 2
  "${PYTHON:-python}" - "$src" "$mb" "$dest" <<'EOF' || exit 2
import sys, tarfile
from pathlib import Path
src, limit, dest = Path(sys.argv[1]).expanduser(), float(sys.argv[2]) * 1e6, Path(sys.argv[3])
files = sorted(p for p in src.rglob("*.txt") if p.is_file())
if not files:
    sys.exit(f"gpu_learn.sh --pack: no .txt files under {src} (build it with bench/build_corpus.py)")
total = sum(p.stat().st_size for p in files)
every = max(1, round(total / limit))  # every k-th file in name order keeps each source's share
kept = files[::every]
tmp = dest.with_suffix(".tmp")
with tarfile.open(tmp, "w:xz", preset=9) as tar:
    for p in kept:
        tar.add(p, arcname=str(p.relative_to(src)))
tmp.replace(dest)
size = sum(p.stat().st_size for p in kept)
print(f"{dest}: {len(kept)} of {len(files)} files (every {every}), {size / 1e6:.1f} MB of text, "
      f"{dest.stat().st_size / 2**20:.1f} MiB compressed")
EOF
  exit 0
fi
[[ ${1:-} == --stage ]] || export OUT_DIR=$(realpath -m "${1:-${OUT:-gpu-learn-out}}")
cd "$(dirname "$SELF")/.."
export PY=${PYTHON:-python} INSTALL=${INSTALL:-1} WHEELS=${WHEELS:-.gpu-wheels} SMOKE=${SMOKE:-0} REPO=$PWD
export CORPUS=$(realpath -m "${CORPUS:-.gpu-corpus/corpus.tar.xz}") PRETRAIN_S=${PRETRAIN_S:-40}
export TASKS=${TASKS:-amazon} WORK=${WORK:-$(mktemp -d /tmp/gpu-learn.XXXXXX)} DEVICE=${DEVICE:-cuda}
TOTAL_S=450
BUDGETS=(setup:45 corpus:20 probe:75 study:270 report:40)  # seconds: 450 = TOTAL_S
mkdir -p "$OUT_DIR" "$WORK"
export ELECTRA_KIT_CACHE=$WORK/cache MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=5 PYTHONWARNINGS=ignore OMP_NUM_THREADS=4

# the sizes: ELECTRA-Small in bf16 on the GPU; the tiny shape on CPU for the smoke (MLM gets the same bindings)
if [[ $SMOKE == 1 ]]; then
  export ELECTRA_CONFIG=tiny.gin MLM_CONFIG=mlm_small.gin PRETRAIN_S=${PRETRAIN_S_SMOKE:-4} FINETUNE_ARGS="--epochs 1"
  # smoke.gin's data sizes, not its step counts (the study sets those, and these bindings come after them)
  SIZES=("include 'size_tiny.gin'" "BATCH_SIZE = 8" "MAX_SEQ_LEN = 64" "VOCAB_SIZE = 2000" "train.warmup_steps = 3")
else
  export ELECTRA_CONFIG=transformer_small.gin MLM_CONFIG=mlm_small.gin
  SIZES=("train.precision = 'bf16'")
fi
BINDINGS=$(printf '%s\n' "${SIZES[@]}")
export BINDINGS

gins() {  # every binding of SIZES as a --gin flag
  local line
  while IFS= read -r line; do printf -- '--gin\n%s\n' "$line"; done <<< "$BINDINGS"
}

stage_setup() {
  WORK=$WORK bash "$REPO/bench/gpu_check.sh" --stage setup
}

stage_corpus() {
  [[ -f $CORPUS ]] || { echo "gpu_learn.sh: no $CORPUS: make it here with bash bench/gpu_learn.sh --pack ~/.cache/electra-kit-corpus and carry .gpu-corpus"; exit 2; }
  "$PY" - <<'EOF'
import os, tarfile
from pathlib import Path
dest = Path(os.environ["WORK"]) / "corpus"
with tarfile.open(os.environ["CORPUS"], "r:xz") as tar:
    tar.extractall(dest, filter="data")
files = list(dest.rglob("*.txt"))
print(f"gpu_learn.sh: {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB of text in {dest}")
EOF
}

stage_probe() {
  local flags
  mapfile -t flags < <(gins)
  "$PY" -m electra_kit run "$ELECTRA_CONFIG" --no-tracking --run-dir "$WORK/probe" --gin "TRAIN_STEPS = 20" \
    --gin "build_data.corpus = '$WORK/corpus'" --gin "train.eval_every = 1000000" \
    --gin "train.checkpoint_every = 1000000" --gin "train.progress = False" "${flags[@]}" 2>&1 | tee "$WORK/probe.txt"
  "$PY" - <<'EOF'
import os, re, sys
from pathlib import Path
work = Path(os.environ["WORK"])
found = re.findall(r"x ([0-9.]+) s/step", (work / "probe.txt").read_text())
if not found:
    sys.exit("gpu_learn.sh: the probe printed no seconds per step")
per_step = float(found[-1])
steps = max(20, min(50000, int(float(os.environ["PRETRAIN_S"]) / max(per_step, 1e-4))))
(work / "steps.txt").write_text(f"{steps}\n")
print(f"gpu_learn.sh: {per_step} s/step: {steps} ELECTRA steps in {os.environ['PRETRAIN_S']} s")
EOF
}

study() {  # study FLAGS...: bench/electra_vs_mlm.py on this run's corpus, sizes and store
  local flags steps
  mapfile -t flags < <(gins)
  steps=$(cat "$WORK/steps.txt" 2> /dev/null) || { echo "gpu_learn.sh: no probe, no budget"; exit 2; }
  "$PY" "$REPO/bench/electra_vs_mlm.py" --electra-config "$ELECTRA_CONFIG" --mlm-config "$MLM_CONFIG" \
    --electra-steps "$steps" --corpus "$WORK/corpus" --tasks "$TASKS" --seeds 1 --parallel 1 \
    --tracking-uri "sqlite:///$WORK/mlflow.db" --out-dir "$WORK/study" --json "$OUT_DIR/learn.json" \
    --plot "$OUT_DIR/learn.png" --finetune-args "${FINETUNE_ARGS:-}" "${flags[@]}" "$@"
}

stage_study() {
  study --reuse
}

stage_report() {  # the study's own table where it finished; what it finished where it was cut short
  if grep -q $'^study\t.*\t0$' "$WORK/stages.tsv"; then
    sed -n '/^FLOPs per step/,$p' "$OUT_DIR/study.log"
  else
    study --finished-only
  fi
  "$PY" - <<'EOF'
import os
from pathlib import Path
work = Path(os.environ["WORK"])
print("\n| stage | budget s | took s | exit |\n| --- | ---: | ---: | --- |")
for line in (work / "stages.tsv").read_text().splitlines():
    print("| " + " | ".join(line.split("\t")) + " |")
try:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    print(f"\nMLflow ({work}/mlflow.db): " + "; ".join(f"{r.info.run_name} {r.info.status}" for r in runs))
except Exception as exc:  # noqa: BLE001 - reported, not fatal
    print(f"\nMLflow: {type(exc).__name__}: {exc}")
EOF
}

# ------------------------------------------------------------------------------------------- the runner

if [[ ${1:-} == --stage ]]; then  # one stage, in the child process that `timeout` watches
  if [[ $INSTALL == 1 && $2 != setup && $2 != corpus ]]; then
    PYTHONPATH=$(find "$WORK/site" -maxdepth 5 -type d \( -name site-packages -o -name dist-packages \) | paste -sd:)
    [[ -n $PYTHONPATH ]] || { echo "gpu_learn.sh: nothing installed under $WORK/site"; exit 2; }
    export PYTHONPATH
  fi
  "stage_$2"
  exit
fi

start=$SECONDS
: > "$WORK/stages.tsv"
echo "gpu_learn.sh: OUT_DIR=$OUT_DIR WORK=$WORK, stages' budgets ${BUDGETS[*]} (s), $TOTAL_S s in all"
for entry in "${BUDGETS[@]}"; do
  name=${entry%%:*} budget=${entry#*:}
  left=$((TOTAL_S - (SECONDS - start)))
  (( budget > left )) && budget=$left
  [[ $name == report ]] && (( budget < 40 )) && budget=40  # the report always runs: what finished is kept
  t0=$SECONDS
  log=$OUT_DIR/$name.log
  [[ $name == report ]] && log=$OUT_DIR/table.md
  if [[ ${failed:-} && $name != report ]]; then
    rc=skipped  # a stage needs the ones before it
  else
    timeout -k 2 "$budget" bash "$SELF" --stage "$name" > "$log" 2>&1
    rc=$?
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$budget" "$((SECONDS - t0))" "$rc" >> "$WORK/stages.tsv"
  echo "== $name: exit $rc after $((SECONDS - t0)) s of $budget s"
  [[ $rc != 0 && $name != study ]] && failed=$name  # a study cut short still reports what it finished
done
cat "$OUT_DIR/table.md"
[[ -z ${failed:-} ]] || { echo "gpu_learn.sh: stage $failed failed: see $failed.log" >&2; exit 2; }
