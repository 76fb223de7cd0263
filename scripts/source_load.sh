#!/usr/bin/env bash
# `make source-load`: the Frigate source's events/s end to end next to HTTP multipart
# ingest of the same crops, and the publish-to-durable lag at half that rate
# (benches/src/bin/source-load.rs). One reported run, not a test. Needs mosquitto.
#
# Uses target/demo/bundle-fp32 and target/demo/synth when `make demo` made them;
# otherwise a tiny bundle of seeded random weights and a small synthetic dataset under
# target/load/ (as `make load`). SOURCE_EVENTS (default 600) per round, SOURCE_ROUNDS
# (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
t=${CARGO_TARGET_DIR:-target}
out=$t/load
mkdir -p "$out"
cargo build --release -q -p sen-cli -p sen-export -p sen-benches --bin sen --bin sen-export --bin source-load
. scripts/load_inputs.sh
$t/release/source-load --sen $t/release/sen --bundle "$bundle" --dataset "$data" \
  --events "${SOURCE_EVENTS:-600}" --rounds "${SOURCE_ROUNDS:-2}" --json "$out/source-load.json"
echo "JSON: $out/source-load.json"
