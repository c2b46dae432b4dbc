#!/usr/bin/env bash
# Issue 20 on one H200 (run 3 in BENCHMARKS.md, "Real-scale speed on one GPU"): every goal of the issue in one
# bench_speed.py call (generator, vision sweep, GSM8K sweep, float32 batched = alone), JSON rewritten after every
# part straight into OUT, so a run cut short still returns what finished. ~7.5 min on an H200 including the 7B lineage.
# Usage (repo root, no install needed): bash bench/gpu_speed_final.sh OUT      (DATA=... to point at other data)
set -u
OUT=${1:?OUT folder}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
W=${WORK:-/tmp/bsw}
python3 bench/bench_speed.py --lineage-preset qwen2.5-vl-7b --workdir "$W" --data "${DATA:-$PWD/.devdata}" \
  --out "$OUT/speed.json" --parts generator vision reasoning same \
  --vision-pairs ${VPAIRS:-25} --gsm8k-questions ${QUESTIONS:-30} --same-units ${SAME:-100} > "$OUT/speed.txt" 2>&1
tail -16 "$OUT/speed.txt"
