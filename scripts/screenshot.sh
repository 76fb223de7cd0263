#!/usr/bin/env bash
# `make screenshot`: refresh docs/search-page.png from the browser test
# (cli/tests/page.rs) with the demo's trained bundle and a snapshot of its store,
# searching a caption written for a person the store holds (who should come first).
set -euo pipefail
cd "$(dirname "$0")/.."
demo=$(realpath -m "${SEN_DEMO_DIR:-target/demo}")
for f in "$demo/bundle-fp32/manifest.json" "$demo/store/store.db" "$demo/synth/store-list.jsonl"; do
  [ -e "$f" ] || { echo "make screenshot: $f is missing; run \`make demo\` first" >&2; exit 1; }
done
cargo build --release -q -p sen-cli
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/sen store snapshot "$demo/store" --out "$work/store" > /dev/null
query=$(python3 - "$demo" <<'PY'
import json, sys
d = sys.argv[1]
kept = [json.loads(l) for l in open(f"{d}/synth/store-list.jsonl")]
kept = [r for r in kept if r["time"][11:16] >= "12:00"]  # what the demo's retention kept
caps = {r["id"]: r["captions"][0] for r in json.load(open(f"{d}/synth/reid_raw.json"))}
print(caps[kept[0]["pid"]])
PY
)
echo "query: $query"
SEN_PAGE_BUNDLE="$demo/bundle-fp32" SEN_PAGE_STORE="$work/store" SEN_PAGE_QUERY="$query" \
  SEN_SCREENSHOT="$PWD/docs/search-page.png" \
  cargo test -q --release -p sen-cli --test page -- --nocapture
