#!/usr/bin/env bash
# bench/full_size.py on a lent GPU machine (no internet): install the carried wheels (.whl: lmms-eval and what the
# machine's image lacks) and frankeneval, then start the benchmark detached, so that it outlives one call; poll with
#   tail -n 30 /tmp/fs/full_size.out        and collect /tmp/fs/full_size.json and /tmp/fs/transfer/report.md
# Usage (repo root):  bash bench/full_size_device.sh [WORK] [DATA] [extra full_size.py args...]
#                     bash bench/full_size_device.sh --acceptance --work W --data DATA [bench/acceptance.py run args]
#                     (issue 28: the same install, then `bench/acceptance.py start`, which runs detached itself)
set -u
MODE=full_size
if [ "${1:-}" = --acceptance ]; then
  MODE=acceptance; shift
else
  W=${1:-/tmp/fs}
  DATA=${2:-$PWD/.devdata}
  shift 2 2>/dev/null || true
fi
# into the interpreter's own site-packages (not --target + PYTHONPATH: the transfer cells' lmms-eval child processes
# are started with their own environment and must import the same packages)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl \
  || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --break-system-packages .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
python3 -c "import frankeneval.engine.generation, frankeneval.localization.attention, math_verify, pynvml; print('imports ok')" || exit 1
# the transfer stage needs lmms-eval (a carry without its wheels runs the other stages)
python3 -c "import datasets, evaluate, lmms_eval.evaluator, frankeneval.tasks.common, frankeneval.model_wrappers.franken_qwen" \
  2>/dev/null && echo "lmms-eval ok" || echo "lmms-eval not installed: the transfer stage cannot run on this machine"
[ "$MODE" = acceptance ] && exec python3 bench/acceptance.py start "$@"
mkdir -p "$W"
setsid nohup python3 bench/full_size.py --work "$W" --data "$DATA" "$@" > "$W/full_size.out" 2>&1 < /dev/null &
echo "started: $W/full_size.out"
