#!/usr/bin/env bash
# Issue #4 on a lent GPU: a few hundred steps of vit-b16 (random weights, TIR on) at
# batch 64, fp32 and --amp, with samples/s and peak GPU memory. Expects devcarry/ with
# sen-train (--features cuda), sen and the CLIP vocabulary.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")'):${LD_LIBRARY_PATH:-}
export SEN_CLIP_VOCAB=$PWD/devcarry/bpe_simple_vocab_16e6.txt.gz
B=devcarry/sen-train; S=devcarry/sen; chmod +x $B $S
{
  nvidia-smi -L
  $S synth --out /tmp/synth > /dev/null
  for prec in amp fp32; do
    flag=""; [ $prec = amp ] && flag=--amp
    rm -rf /tmp/v
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.log & m=$!
    s=$(date +%s)
    # 62 steps an epoch at batch 64: 5 epochs = 310 steps.
    $B train --dataset /tmp/synth --out /tmp/v --preset vit-b16 --epochs 5 --batch 64 --cache-images \
      --eval-every 0 --device cuda --log-every 10 $flag > /tmp/v.log 2>&1
    e=$(date +%s); kill $m
    echo "== vit-b16 batch 64 $prec: wall $((e - s)) s (with start-up and one val pass), peak GPU memory $(sort -n /tmp/mem.log | tail -1) MiB"
    grep -o '"step":[0-9]*' /tmp/v/log.jsonl | tail -1
    grep '"step"' /tmp/v/log.jsonl | python3 -c 'import sys, json
rows = [json.loads(l) for l in sys.stdin]
by = {}
for r in rows: by[r["epoch"]] = r["samples_per_s"]
print("samples/s per epoch:", {k: round(v, 1) for k, v in by.items()})
print("losses first/last:", rows[0]["loss"], rows[-1]["loss"])'
    tail -2 /tmp/v.log
  done
} 2>&1 | tee "$OUT/gpu_vitb16_steps.log"
