#!/usr/bin/env bash
# GPU check for issue #4 on a lent GPU machine with PyTorch 2.11 (libtorch from its
# Python package). Expects devcarry/ with sen-train (--features cuda), sen, and the
# CLIP vocabulary. Reports: CPU vs CUDA losses at step 0 (tiny), vit-b16 samples/s
# and peak GPU memory at batch 64 (fp32 and --amp) and at batch 128.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")'):${LD_LIBRARY_PATH:-}
export SEN_CLIP_VOCAB=$PWD/devcarry/bpe_simple_vocab_16e6.txt.gz
B=devcarry/sen-train; S=devcarry/sen; chmod +x $B $S
peak() { # run "$@" while sampling GPU memory; print the peak in MiB
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.log & m=$!
  "$@"; kill $m; echo "peak GPU memory: $(sort -n /tmp/mem.log | tail -1) MiB"
}
rate() { grep -o '"samples_per_s":[0-9.]*' "$1/log.jsonl" | tail -1; grep -o '"step":[0-9]*' "$1/log.jsonl" | tail -1; }
{
  nvidia-smi -L
  $S synth --out /tmp/synth --ids 650 --images-per-id 4
  echo "== step 0, tiny, same seed: CPU vs CUDA"
  for d in cpu cuda; do
    $B train --dataset /tmp/synth --out /tmp/s0$d --preset tiny --batch 32 --epochs 3 --max-minutes 0 --device $d --log-every 1 --eval-every 0 >/dev/null 2>&1
    echo "$d: $(head -1 /tmp/s0$d/log.jsonl)"
  done
  for cfg in "64 fp32" "64 amp" "128 fp32" "128 amp"; do
    set -- $cfg; bs=$1; prec=$2; flag=""; [ $prec = amp ] && flag=--amp
    echo "== vit-b16, batch $bs, $prec, ~45 seconds"
    rm -rf /tmp/v; peak $B train --dataset /tmp/synth --out /tmp/v --preset vit-b16 --epochs 10 --batch $bs --cache-images \
       --eval-every 0 --device cuda --log-every 10 --max-minutes 0.75 $flag >/tmp/v.log 2>&1
    tail -1 /tmp/v.log; rate /tmp/v
  done
} 2>&1 | tee "$OUT/gpu_train_check.log"
