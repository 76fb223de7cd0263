#!/usr/bin/env bash
# make test-milvus: replication into and search through Milvus, against milvus-lite
# (installed, hash-checked, into $SEN_CACHE/milvus-lite by `scripts/deps.py milvus`).
# Each test starts its own server on a free 127.0.0.1 port and stops it by its pid;
# every pid is also recorded here, so a server a killed test left behind is stopped
# on the way out, whatever happened.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SEN_CACHE:=$HOME/.cache/sen}"
python3 scripts/deps.py milvus
export SEN_MILVUS_LITE="$SEN_CACHE/milvus-lite/venv/bin/milvus-lite"
pids=$(mktemp -d)
export SEN_MILVUS_PIDS="$pids"
cleanup() {
  local f
  for f in "$pids"/*; do [ -e "$f" ] && kill -TERM "$(basename "$f")" 2>/dev/null || true; done
  sleep 1
  for f in "$pids"/*; do [ -e "$f" ] && kill -KILL "$(basename "$f")" 2>/dev/null || true; done
  rm -rf "$pids"
}
trap cleanup EXIT
cargo test -p sen-milvus --test lite -- --ignored --test-threads=2
cargo test -p sen-cli --test milvus -- --ignored --test-threads=1
