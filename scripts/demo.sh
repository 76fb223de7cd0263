#!/usr/bin/env bash
# `make demo`: what sen can do so far, end to end on this machine.
# (The full pipeline -- synthetic data, training, export, index, search -- grows
# into this script as those parts land.)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building (release)"
cargo build --release -q -p sen-runtime -p sen-train -p sen-export

echo
echo "== libtorch (sen-train info)"
target/release/sen-train info

echo
echo "== CLIP tokenizer (sen tokenize)"
target/release/sen tokenize "A man in a grey hoodie with a red backpack." \
  "She wears a crimson coat, navy jeans & white sneakers; carrying a black handbag."

demo=${SEN_DEMO_DIR:-target/demo}
echo
echo "== synthetic pedestrian benchmark (sen synth -> $demo/synth)"
rm -rf "$demo/synth"
target/release/sen synth --out "$demo/synth"
target/release/sen dataset stats "$demo/synth"

echo
echo "== training SEN, tiny preset from scratch, on the synthetic benchmark (sen-train train)"
echo "   (7 planned epochs at batch 32, about 4 minutes on two cores; stopped after"
echo "    ${SEN_DEMO_TRAIN_MINUTES:-5} minutes at most: SEN_DEMO_TRAIN_MINUTES to change)"
rm -rf "$demo/run"
target/release/sen-train train --dataset "$demo/synth" --out "$demo/run" --preset tiny --epochs 7 \
  --batch 32 --batch-k 2 --eval-every 7 --cache-images --max-minutes "${SEN_DEMO_TRAIN_MINUTES:-5}"
target/release/sen-train eval --checkpoint "$demo/run" --dataset "$demo/synth" --split test

echo
echo "== exporting the encoders to ONNX bundles (sen-export), fp32 and fp16"
target/release/sen-export --checkpoint "$demo/run" --out "$demo/bundle-fp32" --force
target/release/sen-export --checkpoint "$demo/run" --out "$demo/bundle-fp16" --fp16 --force
target/release/sen tokenize --bundle "$demo/bundle-fp32" "a man in a grey hoodie with a red backpack"

echo
echo "== pruning augmentation (sen prune)"
target/release/sen prune --tags "The woman is wearing a light blue shirt, dark pants and she carries her black bag."

echo
echo "== preprocessing, Pillow-exact (sen preprocess)"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in core/tests/fixtures/images/astronaut.jpg "$demo/synth/imgs/synth/00001_0.jpg"; do
  target/release/sen preprocess "$f" --out "$out/$(basename "$f").npy"
  target/release/sen preprocess "$f" --preset tiny --out "$out/$(basename "$f").tiny.npy"
done
echo
echo "demo done."
