# Sourced by load.sh and source_load.sh: sets $bundle and $data to the demo's
# bundle-fp32 and synthetic set when `make demo` made them; otherwise to a tiny bundle
# of seeded random weights (speed does not depend on the weights) and a 130-identity
# synthetic set under $out, made with the release binaries under $t/release.
bundle=target/demo/bundle-fp32
data=target/demo/synth
if [ ! -f "$bundle/manifest.json" ] || [ ! -f "$data/reid_raw.json" ]; then
  bundle=$out/bundle-tiny
  data=$out/synth
  [ -f "$bundle/manifest.json" ] ||
    "$t/release/sen-export" --random-weights tiny --out "$bundle" --force > /dev/null
  [ -f "$data/reid_raw.json" ] || "$t/release/sen" synth --out "$data" --ids 130 > /dev/null
  echo "(no target/demo: a tiny bundle of random weights and a 130-identity synthetic set)"
fi
