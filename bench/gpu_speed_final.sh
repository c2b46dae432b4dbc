#!/usr/bin/env bash
# Issue 20 re-measure on one H200 after the prompt encoder (bench_speed.py parts; JSON straight into OUT so a run cut
# short still returns what finished). Usage (repo root): bash bench/gpu_speed_final.sh OUT
set -u
OUT=${1:?OUT folder}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
W=/tmp/bsw
python3 -m pytest -q -p no:cacheprovider tests/test_static_decode.py 2>&1 | tail -3
python3 bench/bench_speed.py --lineage-preset qwen2.5-vl-7b --workdir $W --data "${DATA:-$PWD/.devdata}" --out "$OUT/speed2.json" \
  --parts generator vision --vision-pairs ${VPAIRS:-25}
python3 bench/bench_speed.py --lineage-preset qwen2.5-vl-7b --workdir $W --data "${DATA:-$PWD/.devdata}" --out "$OUT/same2.json" \
  --parts same --same-units ${SAME:-56}
python3 bench/bench_speed.py --lineage-preset qwen2.5-vl-7b --workdir $W --data "${DATA:-$PWD/.devdata}" --out "$OUT/reasoning2.json" \
  --parts reasoning --gsm8k-questions ${QUESTIONS:-30}
