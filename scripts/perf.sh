#!/usr/bin/env bash
# The README's Performance tables, measured in one run on this machine:
# - sen's encoders on ONNX Runtime (`sen bench`, fp32 and int8 bundles; text at 20
#   tokens, a typical query, and vit-b16 also at the whole 77-token context), the same
#   ONNX files in Python onnxruntime, the same architecture in PyTorch eager (libtorch
#   through tch, `sen-train bench`), and the user's alternative: open_clip's ViT-B-16
#   at 384x128 exported with torch.onnx.export, optimised by onnxruntime.transformers'
#   optimizer, run by Python onnxruntime (scripts/reference/openclip_alternative.py);
# - sen's exact search (`sen bench --search`) next to faiss: one query over 100k x 512
#   (IndexFlatIP for f32 rows, IndexScalarQuantizer fp16 for f16 rows) on 1 and all
#   threads, and 1/16/64/256 queries at once over 1M x 512;
# - the end-to-end text query (criterion `query-e2e`), before (format-1 bundle, 77
#   positions) and after (dynamic sequence).
#
#   scripts/perf.sh            # or: make perf
#
# SEN_PERF_SECONDS (default 3) of measurement per row, SEN_PERF_BATCHES (1,8,32),
# SEN_PERF_PRESETS ("tiny vit-b16"). The Python baselines are installed into
# $SEN_CACHE/perf-venv (pinned; torch brings its CUDA wheels, ~3 GB, as PyPI ships it).
# Results: target/perf/*.json and target/perf/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SEN_CACHE:=$HOME/.cache/sen}"
secs=${SEN_PERF_SECONDS:-3}
batches=${SEN_PERF_BATCHES:-1,8,32}
presets=${SEN_PERF_PRESETS:-tiny vit-b16}
out=target/perf
mkdir -p "$out"
t0=$SECONDS
say() { printf '== [%ds] %s\n' $((SECONDS - t0)) "$*" >&2; }
cores=$(nproc)

venv="$SEN_CACHE/perf-venv"
if ! "$venv/bin/python" -c "import onnxruntime, faiss, numpy, torch, open_clip, onnx" 2>/dev/null; then
  say "installing the Python baselines into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q onnxruntime==1.31.1 faiss-cpu==1.15.1 numpy==2.4.6 torch==2.11.0 \
    torchvision==0.26.0 open_clip_torch==3.3.0 timm==1.0.31 onnx==1.23.2
fi

say "building (release)"
cargo build --release -q -p sen-cli -p sen-train
say "making the bench bundles (random weights; fp32 and int8) if missing"
cargo bench -q -p sen-benches --bench encoders -- --test encoder-image/cpu >/dev/null

sen=target/release/sen
for p in $presets; do
  for prec in fp32 int8; do
    dir=target/bench-bundles/$p
    [ $prec = int8 ] && dir=$dir-int8
    say "sen bench $dir"
    $sen bench "$dir" --batch "$batches" --seconds "$secs" --json > "$out/sen-$p-$prec.json"
  done
  say "python onnxruntime on target/bench-bundles/$p"
  "$venv/bin/python" scripts/reference/ort_throughput.py "target/bench-bundles/$p" --batch "$batches" \
    --seconds "$secs" > "$out/python-ort-$p-fp32.json"
  say "pytorch eager (sen-train bench --preset $p)"
  target/release/sen-train bench --preset "$p" --batch "$batches" --seconds "$secs" --json \
    > "$out/torch-$p-fp32.json"
done
if [[ " $presets " == *" vit-b16 "* ]]; then
  say "sen bench vit-b16 text at the whole context (77 tokens)"
  $sen bench target/bench-bundles/vit-b16 --encoders text --text-tokens 77 --batch "$batches" \
    --seconds "$secs" --json > "$out/sen-vit-b16-fp32-text77.json"
  say "the alternative: open_clip ViT-B-16 -> torch.onnx.export -> ORT transformers optimizer -> python onnxruntime"
  "$venv/bin/python" scripts/reference/openclip_alternative.py target/perf/openclip --batch "$batches" \
    --seconds "$secs" > "$out/openclip-vit-b16-fp32.json" 2> "$out/openclip.log"
fi

say "search: one query, 100k x 512, sen and faiss, 1 and $cores threads"
for t in 1 "$cores"; do
  $sen bench --search 100000x512 --queries 1 --search-threads "$t" --seconds "$secs" --json > "$out/search-100k-f32-${t}t.json"
  $sen bench --search 100000x512 --queries 1 --search-threads "$t" --f16 --seconds "$secs" --json > "$out/search-100k-f16-${t}t.json"
done
"$venv/bin/python" scripts/reference/faiss_search.py --n 100000 --threads 1 "$cores" --queries 1 \
  --seconds "$secs" > "$out/faiss-100k.jsonl"
say "search: 1/16/64/256 queries at once, 1M x 512, sen and faiss, $cores threads"
$sen bench --search 1000000x512 --queries 1,16,64,256 --seconds "$secs" --json > "$out/search-1m-f32.json"
$sen bench --search 1000000x512 --queries 1,16,64,256 --f16 --seconds "$secs" --json > "$out/search-1m-f16.json"
"$venv/bin/python" scripts/reference/faiss_search.py --n 1000000 --threads "$cores" --queries 1 16 64 256 \
  --seconds "$secs" > "$out/faiss-1m.jsonl"

if [[ " $presets " == *" vit-b16 "* ]]; then
  say "end-to-end text query (criterion query-e2e): before (77 positions) and after"
  cargo bench -q -p sen-benches --bench search -- "query-e2e/cpu-fp32" >/dev/null
fi

python3 scripts/perf_table.py "$out" | tee "$out/table.md"
say "done"
