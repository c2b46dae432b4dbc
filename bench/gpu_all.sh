#!/usr/bin/env bash
# Every GPU benchmark of BENCHMARKS.md in one go, on one lent GPU machine (64 GB disk: the 7B-shaped
# lineage is written once and shared; the base member is dropped before the splice benchmark needs room).
# Usage (repo root, on the GPU machine):  setsid bash bench/gpu_all.sh LOGDIR &   -- then poll LOGDIR/progress.txt
set -u
LOG=${1:-/tmp/gpu_bench}
W=${BENCH_WORKDIR:-/tmp/b7}
PRESET=${BENCH_PRESET:-qwen2.5-vl-7b}
mkdir -p "$LOG" "$W"
export PYTHONPATH="$PWD:/tmp/site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi; nproc; free -g; df -h /tmp; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } > "$LOG/machine.txt" 2>&1
step() {
  local name=$1; shift
  echo "== start $name $(date -u +%T)" >> "$LOG/progress.txt"
  "$@" > "$LOG/$name.log" 2>&1
  echo "== end $name rc=$? $(date -u +%T)" >> "$LOG/progress.txt"
}
for s in ${BENCH_STEPS:-char_write char_measure generate localize splice}; do
  case $s in
    char_write)   step $s python3 bench/bench_characterize.py --preset $PRESET --workdir $W --phases write --no-progress ;;
    char_measure) step $s python3 bench/bench_characterize.py --preset $PRESET --workdir $W --phases read energy full micro --no-progress --json-out "$LOG/bench_characterize.json" ;;
    generate)     step $s python3 bench/bench_generate.py --preset $PRESET --workdir "$W/lineage-$PRESET" --unbatched-prompts 16 --out "$LOG/bench_generate.json" ;;
    localize)     step $s python3 bench/bench_localize.py --preset $PRESET --workdir $W --gsm8k .benchdata; cp "$W/bench_localize.json" "$LOG/" ;;
    splice)       rm -rf "$W/lineage-$PRESET/base"; mkdir -p "$W/splice"; ln -sfn "$W/lineage-$PRESET" "$W/splice/lineage"
                  step $s python3 bench/bench_splice.py --preset $PRESET --workdir "$W/splice" --repeats 2 --json "$LOG/bench_splice.json" ;;
  esac
done
echo DONE >> "$LOG/progress.txt"
