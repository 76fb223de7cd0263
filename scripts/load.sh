#!/usr/bin/env bash
# `make load`: sen serve under a bounded load (benches/src/bin/serve-load.rs), with the
# demo's tiny bundle: QPS, p50 and p99 for search, ingest and 90/10 mixed at 1, 8 and
# 32 clients, with batching on and with --max-batch 1, then an open-loop run at half
# the best search QPS. One reported run, not a test.
#
# Uses target/demo/bundle-fp32 and target/demo/synth when `make demo` made them;
# otherwise a tiny bundle of seeded random weights (speed does not depend on the
# weights) and a small synthetic dataset under target/load/.
# LOAD_SECONDS (default 5) per cell, LOAD_CLIENTS (default 1,8,32), LOAD_ROUNDS (default 2:
# each cell runs that many times on each server, interleaved, keeping the best).
# Then the watches' cost (SPEC §12): ingest and 90/10 mixed with no watch against
# LOAD_WATCHES (default 1000) active watches, at 8 and 32 clients (LOAD_WATCHES=0 skips).
set -euo pipefail
cd "$(dirname "$0")/.."
t=${CARGO_TARGET_DIR:-target}
out=$t/load
mkdir -p "$out"
cargo build --release -q -p sen-cli -p sen-export -p sen-benches --bin sen --bin sen-export --bin serve-load
. scripts/load_inputs.sh
$t/release/serve-load --sen $t/release/sen --bundle "$bundle" --dataset "$data" \
  --seconds "${LOAD_SECONDS:-5}" --clients "${LOAD_CLIENTS:-1,8,32}" --rounds "${LOAD_ROUNDS:-2}" --work "$out/work" \
  --json "$out/load.json"
echo "JSON: $out/load.json"
if [ "${LOAD_WATCHES:-1000}" != 0 ]; then
  $t/release/serve-load --sen $t/release/sen --bundle "$bundle" --dataset "$data" \
    --seconds "${LOAD_SECONDS:-5}" --clients 8,32 --rounds "${LOAD_ROUNDS:-2}" --work "$out/work-watches" \
    --watches "${LOAD_WATCHES:-1000}" --json "$out/load-watches.json"
  echo "JSON: $out/load-watches.json"
fi
