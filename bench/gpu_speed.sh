#!/usr/bin/env bash
# Issue 20 + 21 on a lent 2-GPU machine (no internet). Start it detached so that it outlives one call, then poll:
#   setsid nohup bash bench/gpu_speed.sh /tmp/fs $PWD/.devdata > /dev/null 2>&1 < /dev/null &
#   tail -n 40 /tmp/fs.progress.txt
# Usage (repo root): bash bench/gpu_speed.sh [WORK] [DATA]   (everything it prints goes to WORK.progress.txt)
#   1. install the carried wheels (.whl) and frankeneval      4. bench_speed.py on GPU 0 (generator, sweeps, same)
#   2. the 7B-shaped lineage (full_size.py --stages lineage)   5. bench_repeat.py on GPU 0 (bf16 run-to-run)
#   3. pytest tests/test_static_decode.py on the GPU           6. full_size.py --stages images gpus (1 vs 2 GPUs)
set -u
W=${1:-/tmp/fs}
DATA=${2:-$PWD/.devdata}
mkdir -p "$(dirname "$W")"
P=${W%/}.progress.txt
(
  set -x
  date
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl \
    || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --break-system-packages .whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
  nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
  python3 bench/full_size.py --work "$W" --data "$DATA" --stages lineage
  CUDA_VISIBLE_DEVICES=0 python3 -m pytest -q -p no:cacheprovider tests/test_static_decode.py 2>&1 | tail -5
  CUDA_VISIBLE_DEVICES=0 python3 bench/bench_speed.py --model "$W/lineage/rl" --data "$DATA" --out "$W/speed.json" \
    --parts generator vision reasoning --vision-pairs ${VPAIRS:-25} --gsm8k-questions ${QUESTIONS:-100} --repeats 2
  python3 bench/full_size.py --work "$W" --data "$DATA" --stages images gpus
  CUDA_VISIBLE_DEVICES=0 python3 bench/bench_repeat.py --model "$W/lineage/rl" --out "$W/repeat.json"
  CUDA_VISIBLE_DEVICES=0 python3 bench/bench_speed.py --model "$W/lineage/rl" --data "$DATA" --out "$W/same.json" \
    --parts same --same-units 100
  date
  echo ALL-DONE
) > "$P" 2>&1
