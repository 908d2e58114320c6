#!/usr/bin/env bash
# bench/gpu_check.sh: the GPU half of issue 6, as one prepared script for a CUDA machine.
#
#   1. a seconds-long smoke run of the benchmark (fails fast on a broken environment);
#   2. bench/throughput.py at the ELECTRA-Small shape (batch 128, seq 128), every backbone, both
#      peers, plus electra-kit's transformer compiled and the full-vocabulary ablation;
#   3. bench/throughput.py at the ELECTRA-Base shape (batch 32, seq 512);
#   4. a short real run, `electra-kit run transformer_small.gin` in bf16 on the default corpus,
#      eager and compiled;
#   5. bench/long_sequences.py: the Small widths at sequence 512 -> 16384 (batch LONG_BATCH), every
#      backbone against the Hugging Face pair (SDPA and eager attention), with the crossover lengths;
#   6. one table of all of it (also written to OUT_DIR/table.md), with TFLOP/s and MFU against the
#      card's bf16 dense peak (bench/throughput.py states the FLOPs-per-token formula).
#
# Set-up on the GPU machine (a CUDA build of torch first, then the rest without touching it):
#   pip install torch && pip install -e '.[bench]' && pip install --no-deps electra-pytorch==0.1.2
# Usage: bash bench/gpu_check.sh [OUT_DIR]     (default: $OUT if set, else ./gpu-check-out)
# Knobs: PYTHON (interpreter), STEPS (timed steps per case per round, default 10), REAL_STEPS (200),
#        LONG_LENGTHS (512,...,16384), LONG_BATCH (4), LONG_BUDGET_GIB (memory a case may need, 60),
#        PEAK_TFLOPS (the card's bf16 peak when its name is not in bench/throughput.py's table),
#        SMOKE=1 DEVICE=cpu: the whole script at tiny sizes on CPU (how it is tested without a GPU).
# Expected to take about 15 minutes on one H100 (not yet run on a GPU); nothing is asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-check-out}}
PY=${PYTHON:-python}
STEPS=${STEPS:-10}
REAL_STEPS=${REAL_STEPS:-200}
DEVICE=${DEVICE:-cuda}
SMALL=(--shape small) BASE=(--shape base) REAL_CONFIG=transformer_small.gin REAL_BATCH=128 ROUNDS=3 WARMUP=3
LONG=(--lengths "${LONG_LENGTHS:-512,1024,2048,4096,8192,16384}" --batch "${LONG_BATCH:-4}" --budget-gib "${LONG_BUDGET_GIB:-60}")
if [[ "${SMOKE:-0}" == 1 ]]; then
  SMALL=(--tiny) BASE=(--tiny --seq 32) REAL_CONFIG=tiny.gin REAL_BATCH=8 ROUNDS=1 WARMUP=1
  LONG=(--tiny --lengths 64,128,256)
  STEPS=${STEPS_SMOKE:-2} REAL_STEPS=${REAL_STEPS_SMOKE:-10}
fi
PEAK=()
[[ -n "${PEAK_TFLOPS:-}" ]] && PEAK=(--peak-tflops "$PEAK_TFLOPS")
mkdir -p "$OUT_DIR"
export ELECTRA_KIT_CACHE="${ELECTRA_KIT_CACHE:-$OUT_DIR/cache}"

[[ "$DEVICE" == cuda ]] && "$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: torch sees no CUDA device (torch %s, built for CUDA %s); install a CUDA build "
             "of torch first" % (torch.__version__, torch.version.cuda))
print(f"gpu_check.sh: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

echo "== 1/6 smoke"
"$PY" bench/throughput.py --tiny --steps 2 --no-memory --device "$DEVICE" --json "$OUT_DIR/tiny.json" > "$OUT_DIR/tiny.txt"

echo "== 2/6 ELECTRA-Small shape"
"$PY" bench/throughput.py "${SMALL[@]}" --device "$DEVICE" --steps "$STEPS" --rounds "$ROUNDS" --warmup "$WARMUP" \
  --extra kit/transformer+compile --extra kit/transformer+fullvocab "${PEAK[@]}" \
  --json "$OUT_DIR/small.json" | tee "$OUT_DIR/small.txt"

echo "== 3/6 ELECTRA-Base shape"
"$PY" bench/throughput.py "${BASE[@]}" --device "$DEVICE" --steps "$STEPS" --rounds "$ROUNDS" --warmup "$WARMUP" "${PEAK[@]}" \
  --json "$OUT_DIR/base.json" | tee "$OUT_DIR/base.txt"

echo "== 4/6 real runs ($REAL_CONFIG, bf16, $REAL_STEPS steps of batch $REAL_BATCH)"
for mode in eager compile; do
  compile=False
  [[ $mode == compile ]] && compile=True
  rm -rf "$OUT_DIR/run-$mode"
  "$PY" -m electra_kit run "$REAL_CONFIG" --no-tracking --run-dir "$OUT_DIR/run-$mode" \
    --gin "TRAIN_STEPS=$REAL_STEPS" --gin "BATCH_SIZE=$REAL_BATCH" --gin "train.precision='bf16'" \
    --gin "train.compile=$compile" --gin "train.log_every=$((REAL_STEPS / 4))" \
    --gin "train.eval_every=1000000" --gin "train.checkpoint_every=1000000" --gin "train.progress=False" \
    > "$OUT_DIR/run-$mode.txt" 2>&1 || echo "real run ($mode) failed: see $OUT_DIR/run-$mode.txt"
done

echo "== 5/6 long sequences"
"$PY" bench/long_sequences.py "${LONG[@]}" --device "$DEVICE" --steps "$STEPS" --rounds "$ROUNDS" --warmup "$WARMUP" \
  --json "$OUT_DIR/long.json" | tee "$OUT_DIR/long.txt" || echo "long sequences failed: see $OUT_DIR/long.txt"

echo "== 6/6 table"
"$PY" - "$OUT_DIR" "${PEAK_TFLOPS:-}" "$REAL_CONFIG" <<'EOF' | tee "$OUT_DIR/table.md"
import json
import sys
from pathlib import Path

sys.path.insert(0, "bench")
from cases import SHAPES, flops_per_token  # noqa: E402

out, peak_arg, real_config = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows, peak, device = [], None, "?"
for shape in ("small", "base"):
    path = out / f"{shape}.json"
    if not path.exists():
        rows.append(f"| {shape} | (missing: see {shape}.txt) | | | | | |")
        continue
    r = json.loads(path.read_text())
    peak, device = r["peak_tflops"], r["device"]
    label = shape if r["shape"] == shape else f"{shape} ({r['shape']})"  # SMOKE=1 runs tiny shapes
    for c in r["rows"].values():
        mem = f"{c['memory_bytes'] / 2**30:.2f} GiB" if c["memory_bytes"] else "n/a"
        mfu = f"{100 * c['mfu']:.1f}%" if c.get("mfu") else "n/a"
        tflops = f"{c['tflops']:.1f}" if "tflops" in c else "n/a"
        rows.append(f"| {label} b{r['batch']} | {c['case']} | {c['tokens_per_s']:,.0f} | {1e3 * c['step_s_median']:.1f} "
                    f"| {mem} | {tflops} | {mfu} |")
    for name, v in r["ratios"].items():
        mem = f"{v['memory']:.2f}x" if v["memory"] else ""
        rows.append(f"| {label} | ratio {name} | {v['speed']:.2f}x | | {mem} | | |")
peak = peak or (float(peak_arg) if peak_arg else None)
fpt = flops_per_token(SHAPES["small" if "small" in real_config else "tiny"])  # nominal: tiny.gin is not exactly tiny
for mode in ("eager", "compile"):
    summary = out / f"run-{mode}" / "summary.json"
    if not summary.exists():
        rows.append(f"| real | {real_config} bf16 {mode} | (failed: see run-{mode}.txt) | | | | |")
        continue
    last = json.loads(summary.read_text())["last"] or {}
    tps = last.get("train/tokens_per_s", float("nan"))
    tflops = fpt * tps / 1e12
    mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
    rows.append(f"| real | {real_config} bf16 {mode} (last log window) | {tps:,.0f} | | | {tflops:.1f} | {mfu} |")
print(f"\n{device}; bf16 peak {peak} TFLOP/s; FLOPs/token: bench/throughput.py docstring\n")
print("| shape | case | tokens/s | step ms | peak memory | TFLOP/s | MFU |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
print("\n".join(rows))
long = out / "long.json"
if long.exists():
    r = json.loads(long.read_text())
    print(f"\nlong sequences, batch {r['batch']} ({r['shape']} widths): tokens/s, memory")
    print("| length | case | tokens/s | memory |")
    print("| ---: | --- | ---: | ---: |")
    for seq, cases in r["lengths"].items():
        for c in cases.values():
            if c["skipped"]:
                print(f"| {seq} | {c['case']} | skipped: would need ~{c['predicted_bytes'] / 2**30:.0f} GiB | |")
            else:
                print(f"| {seq} | {c['case']} | {c['tokens_per_s']:,.0f} | {c['memory_bytes'] / 2**20:,.0f} MiB |")
    for name, v in r["crossover"].items():
        print(f"crossover {name}: {v['length']} ({v['note']})")
EOF
