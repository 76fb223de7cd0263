#!/usr/bin/env bash
# `make test`'s dependency check (SPEC §10, §11): the libraries another program links
# stay lean. sen-runtime (the encoders) links no async runtime, HTTP stack, metrics
# server or Milvus client; sen-store links neither those nor ONNX Runtime. Fails
# naming the crate and the path that pulls it in.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
check() {
  local pkg=$1; shift
  local tree
  tree=$(cargo tree -q -p "$pkg" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  for bad in "$@"; do
    if grep -qx -- "$bad" <<<"$tree"; then
      echo "check_lean: $pkg depends on $bad (normal dependencies); it must not:" >&2
      cargo tree -q -p "$pkg" -e normal -i "$bad" >&2 || true
      fail=1
    fi
  done
}
server_stack=(tokio axum axum-server hyper hyper-util reqwest prometheus tonic milvus-sdk-rust sen-milvus sen-serve)
check sen-runtime "${server_stack[@]}"
check sen-store "${server_stack[@]}" ort ort-sys sen-runtime
[ "$fail" = 0 ] && echo "check_lean: sen-runtime and sen-store link no server stack (and sen-store no ONNX Runtime)"
exit "$fail"
