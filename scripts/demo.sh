#!/usr/bin/env bash
# `make demo`: the whole sen pipeline on this machine, on the embedded default (the
# CPU provider): synthetic benchmark -> train the tiny preset -> export fp32 and
# fp16 bundles -> calibrate an int8 bundle (three methods compared) -> index the
# test gallery -> evaluate -> answer text queries -> a gallery store with cameras and
# times (filtered search, more like this, retention delete).
#
# SEN_DEMO_DIR (default target/demo) holds everything it writes;
# SEN_DEMO_TRAIN_MINUTES (default 7) is training's budget (the schedule is fitted to
# it); SEN_DEMO_PROVIDER picks the
# execution provider for index/eval/search (default cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$SECONDS
stage() { printf '\n== [%dm%02ds] %s\n' $(((SECONDS - t_start) / 60)) $(((SECONDS - t_start) % 60)) "$*"; }

demo=${SEN_DEMO_DIR:-target/demo}
minutes=${SEN_DEMO_TRAIN_MINUTES:-7}
provider=${SEN_DEMO_PROVIDER:-cpu}
sen=target/release/sen

stage "building (release)"
cargo build --release -q -p sen-cli -p sen-train -p sen-export -p sen-calibrate
target/release/sen-train info

stage "synthetic pedestrian benchmark (sen synth -> $demo/synth)"
rm -rf "$demo/synth"
$sen synth --out "$demo/synth"
$sen dataset stats "$demo/synth"

stage "training SEN (tiny preset, from scratch, recipe tiny-scratch; SDM + ID + triplet + TIR)"
echo "   the recipe's defaults (batch 32, val every 5 epochs, bf16 products where the CPU has them),"
echo "   epochs fitted to a $minutes-minute budget (SEN_DEMO_TRAIN_MINUTES) from the first steps' timing"
rm -rf "$demo/run"
target/release/sen-train train --dataset "$demo/synth" --out "$demo/run" --preset tiny --max-minutes "$minutes"
target/release/sen-train eval --checkpoint "$demo/run" --dataset "$demo/synth" --split test \
  --json > "$demo/train-eval.json"
echo "sen-train eval (libtorch): $(cat "$demo/train-eval.json")"

stage "exporting the encoders to ONNX bundles (sen-export), fp32 and fp16"
target/release/sen-export --checkpoint "$demo/run" --out "$demo/bundle-fp32" --force
target/release/sen-export --checkpoint "$demo/run" --out "$demo/bundle-fp16" --fp16 --force
$sen info "$demo/bundle-fp32"

stage "score calibration (sen calibrate-scores): fitted on val, judged on test, written into the fp32 bundle"
echo "   scores become p, the probability that a crop shows the person described, at a stated prior;"
echo "   the background set is 2,048 train crops; the report below is on the test split the fit never saw"
$sen calibrate-scores "$demo/bundle-fp32" --dataset "$demo/synth"
$sen calibrate-scores "$demo/bundle-fp16" --dataset "$demo/synth" --json > "$demo/score-calibration-fp16.json"

stage "INT8 calibration (sen-calibrate): each method on 512 train images + 512 captions"
echo "   each run: collect ranges, write Q/DQ models + TensorRT caches, evaluate int8 vs fp32 on the"
echo "   test split, time the image encoder at batch 8 (fp32 and int8 in alternating rounds)"
for m in entropy percentile minmax; do
  out="$demo/bundle-int8-$m"
  [ $m = entropy ] && out="$demo/bundle-int8"
  target/release/sen-calibrate --bundle "$demo/bundle-fp32" --dataset "$demo/synth" --method $m \
    --samples 512 --max-drop none --out "$out" --force
done
python3 - "$demo" <<'EOF'
import json, sys
d = sys.argv[1]
print(f"\n{'method':<11} {'R@1 fp32':>8} {'R@1 int8':>8} {'drop':>6} {'mAP int8':>8}  {'cos image mean/min':>18}  {'cos text mean/min':>17}  {'image batch 8, fp32 -> int8':>28}")
for m, b in [("entropy", "bundle-int8"), ("percentile", "bundle-int8-percentile"), ("minmax", "bundle-int8-minmax")]:
    r = json.load(open(f"{d}/{b}/calibration_report.json"))
    e, s = r["evaluation"], r["speed"]
    ci, ct = e["image_cosine"], e["text_cosine"]
    print(f"{m:<11} {e['fp32']['r1']:>8.2f} {e['int8']['r1']:>8.2f} {e['r1_drop']:>6.2f} {e['int8']['map']:>8.2f}"
          f"  {ci['mean']:>9.5f}/{ci['min']:.5f}  {ct['mean']:>8.5f}/{ct['min']:.5f}"
          f"  {s['fp32_ms']:>9.2f} -> {s['int8_ms']:.2f} ms ({s['speedup']:.2f}x)")
print("(test split, ONNX Runtime CPU; the demo's int8 bundle is the entropy one)")
EOF

for p in fp32 fp16 int8; do
  stage "indexing the test gallery with the $p bundle (sen index, provider $provider)"
  $sen index "$demo/bundle-$p" --dataset "$demo/synth" --split test --out "$demo/gallery-$p.senidx" \
    --force --provider "$provider" $([ $p = fp16 ] && echo --f16)
  stage "evaluating the $p bundle on the test split (sen eval, provider $provider)"
  $sen eval "$demo/bundle-$p" --dataset "$demo/synth" --split test --provider "$provider" --json \
    > "$demo/eval-$p.json"
done

stage "results (test split: 800 caption queries against 400 gallery images)"
python3 - "$demo" <<'EOF'
import json, sys
d = sys.argv[1]
t = json.load(open(f"{d}/train-eval.json"))
rows = [("libtorch (sen-train)", "fp32", t, None)]
for p in ["fp32", "fp16", "int8"]:
    e = json.load(open(f"{d}/eval-{p}.json"))
    rows.append((f"ONNX Runtime {e['provider']}", p, e, e))
print(f"{'engine':<22} {'precision':<9} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'mAP':>6} {'mINP':>6}  {'image encode, batch 1':>21}  {'gallery images/s':>16}")
for name, p, m, e in rows:
    lat = f"{e['image_latency_ms_batch1']:.2f} ms" if e else "-"
    ips = f"{e['images_per_s']:.0f}" if e else "-"
    print(f"{name:<22} {p:<9} {m['r1']:>6.2f} {m['r5']:>6.2f} {m['r10']:>6.2f} {m['map']:>6.2f} {m['minp']:>6.2f}  {lat:>21}  {ips:>16}")
EOF

stage "text queries against the fp32 gallery (sen search --queries: one process, many queries)"
python3 - "$demo/synth" > "$demo/queries.txt" <<'EOF'
import json, sys
recs = [r for r in json.load(open(f"{sys.argv[1]}/reid_raw.json")) if r["split"] == "test"]
for r in recs[::97][:3]:
    print(r["captions"][0])
print("a man in a grey hoodie with a red backpack")
EOF
$sen search "$demo/bundle-fp32" "$demo/gallery-fp32.senidx" --queries "$demo/queries.txt" -k 5 \
  --provider "$provider" > "$demo/answers.jsonl"
python3 - "$demo/synth" "$demo/answers.jsonl" <<'EOF'
import json, sys
truth = {}
for r in json.load(open(f"{sys.argv[1]}/reid_raw.json")):
    for c in r["captions"]:
        truth[c] = r["id"]
for line in open(sys.argv[2]):
    a = json.loads(line)
    want = truth.get(a["query"])
    print(f"\n\"{a['query']}\"" + (f"  (written for person {want})" if want is not None else "  (free text)"))
    for r in a["results"]:
        mark = " <- the described person" if want is not None and r["pid"] == want else ""
        print(f"  {r['rank']}. {r['score']:.3f}  pid {r['pid']:<5} {r['path']}{mark}")
EOF

stage "a live gallery store (sen store): cameras, capture times, filters, retention"
scripts/demo_store.sh "$demo" "$provider"

stage "demo done in $(((SECONDS - t_start) / 60)) min $(((SECONDS - t_start) % 60)) s"
echo "bundles, indexes and results are in $demo/"
