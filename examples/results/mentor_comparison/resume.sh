#!/bin/sh
# Runs examples/paper_comparison.py steps one after another in the background, each under the heavy lock (so other
# heavy jobs can take the machine between steps) and sampled by examples/monitor_run.py into $OUT/monitor-NAME-*.tsv;
# each step appends to $OUT/NAME.log, and $OUT/resume.log gets a line as each step ends. Every step resumes where it
# was killed, so rerun the same command after a kill. OUT and LOCK override the run directory and the lock file.
#
#   setsid nohup sh examples/results/mentor_comparison/resume.sh sweep "--sweep --recipe steps=10" \
#       a0 "--seeds 0 --recipe lr=...,num_generations=...,temperature=...,steps=50" > /dev/null 2>&1 < /dev/null &
cd "$(dirname "$0")/../../.." || exit 1
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/work/runs/mentor_comparison}
LOCK=${LOCK:-/tmp/heavy.lock}
mkdir -p "$OUT"
echo "$(date +%H:%M:%S) start in $PWD at $(git rev-parse --short HEAD): $*" >> "$OUT/resume.log"
while [ $# -ge 2 ]; do
    name=$1; args=$2; shift 2
    # shellcheck disable=SC2086  # $args is several arguments
    nice -n 19 flock "$LOCK" python examples/paper_comparison.py $args --out "$OUT" >> "$OUT/$name.log" 2>&1 &
    pid=$!
    until child=$(pgrep -P $pid -f paper_comparison.py); do  # flock's child, once the lock is ours
        kill -0 $pid 2>/dev/null || break
        sleep 5
    done
    [ -n "$child" ] && python examples/monitor_run.py "$child" "$OUT" "$OUT/monitor-$name-$(date +%m%d-%H%M).tsv" \
        > /dev/null 2>&1 &
    wait $pid
    echo "$(date +%H:%M:%S) $name ($args) exited $?" >> "$OUT/resume.log"
done
