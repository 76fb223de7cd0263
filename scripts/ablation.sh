#!/usr/bin/env bash
# The paper's ablation on the synthetic benchmark at a fixed budget (issue #4):
# SDM+ID; +triplet; +TIR; +pruning (full SEN), each the default command with
# `--max-minutes 10` (the recipe's defaults, the schedule fitted to the budget) and the
# same seed, then the test split. Takes ~40 minutes on two cores; run nothing else
# meanwhile (the budget is wall time).
# Usage: scripts/ablation.sh DATA OUT [SEED]   (ROWS="sdm_id full" runs only those rows;
# FLAGS="..." adds flags to every row, e.g. FLAGS="--epochs 24 --no-amp")
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$1; OUT=$2; SEED=${3:-42}
B=target/release/sen-train
cargo build --release -q -p sen-train
mkdir -p "$OUT"
for spec in "sdm_id|--w-triplet 0 --w-tir 0 --prune-prob 0" "triplet|--w-tir 0 --prune-prob 0" "tir|--prune-prob 0" "full|"; do
  name=${spec%%|*}; flags=${spec#*|}
  [[ -z "${ROWS:-}" || " $ROWS " == *" $name "* ]] || continue
  rm -rf "${OUT:?}/$name"
  s=$(date +%s)
  # shellcheck disable=SC2086
  $B train --dataset "$DATA" --out "$OUT/$name" --preset tiny --seed "$SEED" \
     --max-minutes 10 $flags ${FLAGS:-} > "$OUT/$name.log" 2>&1
  e=$(date +%s)
  $B eval --checkpoint "$OUT/$name" --dataset "$DATA" --split test --json > "$OUT/$name.test.json"
  echo "$name $((e - s)) s $(cat "$OUT/$name.test.json")" | tee -a "$OUT/summary.txt"
done
