#!/usr/bin/env bash
# One-shot GPU check for the trainer, run on a lent GPU machine with PyTorch 2.11
# (libtorch from its Python package). Expects, in devcarry/ (copied from a CPU build):
#   sen-train (built with --features cuda), sen, bpe_simple_vocab_16e6.txt.gz
# Writes logs and the TorchScript fixture to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
export SEN_CLIP_VOCAB=$PWD/devcarry/bpe_simple_vocab_16e6.txt.gz
B=devcarry/sen-train
S=devcarry/sen
chmod +x $B $S
{
  echo "== fixture"; python3 scripts/reference/clip_jit_fixture.py "$OUT" && ls -la "$OUT"
  echo "== info"; nvidia-smi -L; $B info --json
  echo "== synth"; $S synth --out /tmp/synth --ids 650 --images-per-id 4
  echo "== tiny on cuda, 4 epochs, batch 128"
  /usr/bin/time -f "%e s wall" $B train --dataset /tmp/synth --out /tmp/run --preset tiny --epochs 4 \
     --batch 128 --batch-k 2 --cache-images --eval-every 2 --device cuda --log-every 20 2>&1 | tail -5
  tail -n 3 /tmp/run/log.jsonl
  echo "== eval cuda vs cpu on the same checkpoint"
  $B eval --checkpoint /tmp/run --dataset /tmp/synth --split test --device cuda --json
  $B eval --checkpoint /tmp/run --dataset /tmp/synth --split test --device cpu --json
  echo "== vit-b16 on cuda, batch 128, 1.5 minutes"
  timeout 200 $B train --dataset /tmp/synth --out /tmp/runb --preset vit-b16 --epochs 10 --batch 128 \
     --batch-k 2 --cache-images --eval-every 0 --device cuda --log-every 5 --max-minutes 1.5 2>&1 | tail -3
  tail -n 3 /tmp/runb/log.jsonl
  nvidia-smi --query-gpu=name,memory.used --format=csv
} 2>&1 | tee "$OUT/gpu_check.log"
