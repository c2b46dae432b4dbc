#!/usr/bin/env bash
# Issue 32's GPU figures, one after another, detached, on the acceptance lineage (bench/runs/issue28/RESUME.md): each
# bench writes its JSON into OUTDIR (atomic, after every part) and its log beside it; a bench whose JSON says
# "complete": true is not run again. With --after W it first waits for W's acceptance runner to end, so the
# benches start the moment the acceptance stages stop (pack --stop, or every stage done) and no call is spent idle.
#
#   bash bench/device_benches.sh [--after /tmp/accept] [--outdir /tmp/b32] NAME...     (from .clean, after install)
#   tail -3 /tmp/b32/queue.out; cp /tmp/b32/*.json /tmp/b32/*.out $OUT/                 (poll; collect)
#
# NAMEs, in the order given (estimates on an H100 at 7B):
#   lengths    continuous vs fixed length, log-normal draw (the goal's two figures; about 3 min)
#   lengths_recorded   the same with the recorded MathVista answer lengths
#   window     the transfer's own requests: today's order and window vs 252aabb's and 0c42a82's (bench_window.py;
#              about 12 min)
#   attention  attention-shift batched vs e95975c's way, float32 check on 2 prompts (about 7 min)
#   speed      decode compiled / auto / hf / generate at 64 rows, and the auto batch (about 6 min)
#   joint      the 7B transfer matrix (27 cells: 9 models x v1, 3 items a task, 16 tokens): one lmms-eval process per
#              GPU vs one per cell, 3 variants at a time in /dev/shm/b32_joint (about 20 min; needs the acceptance's
#              data folder, /tmp/accept/data, for the MathVista images)
set -u
AFTER="" OUTDIR=/tmp/b32 LINEAGE=/tmp/accept/lineage DATA=.devdata ACCEPT_DATA=/tmp/accept/data
JOINT_WORK=/dev/shm/b32_joint  # 3 variants (50 GB) at a time: more than the disk beside the lineage, in RAM
while [ $# -gt 0 ]; do
  case "$1" in
    --after) AFTER=$2; shift 2 ;;
    --outdir) OUTDIR=$2; shift 2 ;;
    --lineage) LINEAGE=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "device_benches: name at least one bench (--help)" >&2; exit 2; }
command_of() {
  case "$1" in
    lengths) echo python3 bench/bench_lengths.py --model "$LINEAGE/rl" --workdir "$OUTDIR/bl" --draw lognormal \
               --rows 64 --skip static,generate --out "$OUTDIR/lengths.json" ;;
    lengths_recorded) echo python3 bench/bench_lengths.py --model "$LINEAGE/rl" --workdir "$OUTDIR/blr" --draw recorded \
               --recorded "$DATA/mathvista/recorded" --rows 64 --skip static,generate --out "$OUTDIR/lengths_recorded.json" ;;
    window) echo python3 bench/bench_window.py --model "$LINEAGE/rl" --testmini "$DATA/mathvista/testmini.jsonl" \
               --samples "$DATA/transfer_requests.jsonl" --prompts 512 --out "$OUTDIR/window.json" ;;
    attention) echo python3 bench/bench_attention.py --base "$LINEAGE/base" --in "$LINEAGE/in" --rl "$LINEAGE/rl" \
               --workdir "$OUTDIR/ba" --check 2 --skip-one-at-a-time --out "$OUTDIR/attention.json" ;;
    joint) echo python3 bench/bench_transfer_joint.py --work "$JOINT_WORK" --data "$ACCEPT_DATA" --recipe openmmreasoner \
               --base "$LINEAGE/base" --in "$LINEAGE/in" --rl "$LINEAGE/rl" \
               --tasks franken_perception,franken_alignment,franken_reasoning --gpus 1 --batch-size auto \
               --variants-at-a-time 3 --modes per_gpu,per_cell --out "$OUTDIR/joint.json" ;;
    speed) # the weight-read limit: H100 SXM datasheet 3.35 TB/s; H200 4.27 measured (BENCHMARKS)
           bw=3.35; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -q H200 && bw=4.27
           echo python3 bench/bench_speed.py --model "$LINEAGE/rl" --parts generator --repeats 3 \
               --bandwidth-tbs "$bw" --out "$OUTDIR/speed.json" ;;
    *) return 1 ;;
  esac
}
for name in "$@"; do
  command_of "$name" > /dev/null || { echo "device_benches: unknown bench '$name' (--help)" >&2; exit 2; }
done
# never write into a folder this script did not make (its marker file says it did)
if [ -e "$OUTDIR" ] && [ ! -e "$OUTDIR/.device_benches" ] && [ -n "$(ls -A "$OUTDIR" 2>/dev/null)" ]; then
  echo "device_benches: $OUTDIR holds files this script did not write: name another --outdir" >&2; exit 2
fi
mkdir -p "$OUTDIR" && touch "$OUTDIR/.device_benches"
run_queue() {
  if [ -n "$AFTER" ]; then
    echo "$(date -u +%FT%TZ) waiting for the acceptance runner of $AFTER to end"
    python3 bench/acceptance.py status --work "$AFTER" --wait 86400 > /dev/null
  fi
  for name in "$@"; do
    json="$OUTDIR/$name.json"
    if [ -f "$json" ] && python3 -c "import json,sys; sys.exit(0 if json.load(open('$json')).get('complete') else 1)"; then
      echo "$(date -u +%FT%TZ) $name: complete already ($json)"; continue
    fi
    if [ "$name" = joint ]; then  # a fresh work folder each attempt (an interrupted one leaves variants in RAM)
      if [ -e "$JOINT_WORK" ] && [ ! -e "$JOINT_WORK/.device_benches" ]; then
        echo "$(date -u +%FT%TZ) joint: $JOINT_WORK holds files this script did not write: skipped"; continue
      fi
      rm -rf "$JOINT_WORK" && mkdir -p "$JOINT_WORK" && touch "$JOINT_WORK/.device_benches"
    fi
    echo "$(date -u +%FT%TZ) $name: $(command_of "$name")"
    start=$(date +%s)
    $(command_of "$name") > "$OUTDIR/$name.out" 2>&1
    echo "$(date -u +%FT%TZ) $name: rc $? after $(( $(date +%s) - start )) s"
  done
  echo "$(date -u +%FT%TZ) queue done"
}
export -f command_of run_queue
export AFTER OUTDIR LINEAGE DATA ACCEPT_DATA JOINT_WORK
setsid nohup bash -c 'run_queue "$@"' queue "$@" >> "$OUTDIR/queue.out" 2>&1 < /dev/null &
echo "device_benches: started ($*); log $OUTDIR/queue.out"
