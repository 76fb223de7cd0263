#!/usr/bin/env bash
# Recipe search for the tiny preset (issue #4) on a lent GPU: many short runs at once,
# one process each, on the default `sen synth` benchmark. Only chooses what to try on
# the two-core CPU machine, where the 10-minute result is measured. Expects devcarry/
# with sen-train (--features cuda), sen and the CLIP vocabulary.
# Usage: scripts/device/recipe_grid.sh "name|sen-train train flags" ...
# (seed 42 unless the flags give --seed; `--model-config FILE` tries other model sizes)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")'):${LD_LIBRARY_PATH:-}
export SEN_CLIP_VOCAB=$PWD/devcarry/bpe_simple_vocab_16e6.txt.gz OMP_NUM_THREADS=1
B=$PWD/devcarry/sen-train; S=$PWD/devcarry/sen; chmod +x "$B" "$S"
LIMIT=${GRID_LIMIT_S:-400}
nvidia-smi -L
"$S" synth --out /tmp/synth > /dev/null
t0=$(date +%s)
for spec in "$@"; do
  name=${spec%%|*}; flags=${spec#*|}
  [[ " $flags " == *" --seed "* ]] || flags="--seed 42 $flags"
  [[ " $flags " == *" --model-config "* ]] || flags="--preset tiny $flags"
  # shellcheck disable=SC2086
  ( timeout "$LIMIT" "$B" train --dataset /tmp/synth --out /tmp/g/$name \
      --cache-images --workers 1 --eval-every 3 --device cuda $flags > /tmp/g.$name.log 2>&1
    "$B" eval --checkpoint /tmp/g/$name --dataset /tmp/synth --split test --device cuda --json \
      > "$OUT/$name.test.json" 2>> /tmp/g.$name.log
    cp /tmp/g/$name/log.jsonl "$OUT/$name.log.jsonl"; tail -3 /tmp/g.$name.log > "$OUT/$name.tail"
    echo "$name done after $(( $(date +%s) - t0 )) s" ) &
done
wait
for spec in "$@"; do
  name=${spec%%|*}
  echo "$name | ${spec#*|} | val: $(grep '"eval"' "$OUT/$name.log.jsonl" | grep -o '"r1":[0-9.]*' | tr '\n' ' ') | test: $(cat "$OUT/$name.test.json")"
done | tee "$OUT/grid.txt"
