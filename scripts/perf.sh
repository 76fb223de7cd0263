#!/usr/bin/env bash
# The README's Performance table, measured in one run on this machine: sen's encoders
# on ONNX Runtime (`sen bench`, fp32 and int8 bundles) next to the same ONNX files in
# Python onnxruntime and the same architecture in PyTorch eager (libtorch through
# tch, `sen-train bench`), and sen's exact search next to faiss IndexFlatIP.
#
#   scripts/perf.sh            # or: make perf
#
# SEN_PERF_SECONDS (default 3) of measurement per row, SEN_PERF_BATCHES (1,8,32),
# SEN_PERF_PRESETS ("tiny vit-b16"). The Python baselines (onnxruntime 1.31.1,
# faiss-cpu 1.15.1, numpy 2.4.6) are installed into $SEN_CACHE/perf-venv. Bundles
# are the random-weight ones the criterion benches make in target/bench-bundles/.
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

venv="$SEN_CACHE/perf-venv"
if ! "$venv/bin/python" -c "import onnxruntime, faiss, numpy" 2>/dev/null; then
  say "installing the Python baselines into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q onnxruntime==1.31.1 faiss-cpu==1.15.1 numpy==2.4.6
fi

say "building (release)"
cargo build --release -q -p sen-runtime -p sen-train
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

say "sen search (criterion) and faiss IndexFlatIP, 100k x 512, top 10"
cargo bench -q -p sen-benches --bench search -- "search/100k-x512-f32" >/dev/null
"$venv/bin/python" scripts/reference/faiss_search.py --threads 1 "$(nproc)" > "$out/faiss.jsonl"

python3 scripts/perf_table.py "$out" | tee "$out/table.md"
say "done"
