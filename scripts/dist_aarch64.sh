#!/usr/bin/env bash
# `make dist-aarch64`: release binaries for Jetson-class boxes that run on JetPack 5's
# glibc 2.31 (and everything newer: JetPack 6 has 2.35), packed with their licences
# and a README for the box into target/dist/sen-VERSION-aarch64-linux-gnu.tar.gz, with
# its sha256 beside it. Then it checks the glibc bound on every shipped binary
# (cli/tests/glibc.rs reads their version needs; it fails above 2.31).
#
# The toolchain: cargo-zigbuild (crates.io, pinned) linking with zig from its PyPI
# wheel (scripts/deps.py zig, sha256-checked), which targets an older glibc by
# linking against that version's symbol list: `--target aarch64-unknown-linux-gnu.2.31`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SEN_CACHE:=$HOME/.cache/sen}"
export SEN_CACHE
GLIBC=${GLIBC:-2.31}
ZIGBUILD_VERSION=0.24.1
t0=$SECONDS

rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
python3 scripts/deps.py zig
export PATH="$SEN_CACHE/zig:$PATH"
chmod +x "$SEN_CACHE/zig/zig"
tools=$SEN_CACHE/cargo-tools
if ! "$tools/bin/cargo-zigbuild" --version 2>/dev/null | grep -q "$ZIGBUILD_VERSION"; then
  echo "dist-aarch64: installing cargo-zigbuild $ZIGBUILD_VERSION into $tools"
  cargo install --locked --quiet --root "$tools" cargo-zigbuild --version "$ZIGBUILD_VERSION"
fi
export PATH="$tools/bin:$PATH"

version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "sen-cli"))')
name=sen-$version-aarch64-linux-gnu
echo "dist-aarch64: building $name against glibc $GLIBC (cargo zigbuild, release)"
cargo zigbuild --release --target "aarch64-unknown-linux-gnu.$GLIBC" \
  -p sen-cli -p sen-export -p sen-calibrate --bin sen --bin sen-export --bin sen-calibrate

rel=target/aarch64-unknown-linux-gnu/release
stage=$PWD/target/dist/$name
rm -rf "$stage"
mkdir -p "$stage"
# Without the DWARF line tables (the release profile keeps them for profiling):
# the symbol table stays, so backtraces still name functions.
for b in sen sen-export sen-calibrate; do
  zig objcopy --strip-debug "$rel/$b" "$stage/$b"
  chmod 0755 "$stage/$b"
done
cp LICENSE "$stage/LICENSE"
cp deploy/sen.service "$stage/"
# Third-party licences: every crate the three binaries link, from cargo metadata.
cargo metadata --format-version 1 --filter-platform aarch64-unknown-linux-gnu |
  python3 scripts/third_party.py sen-cli sen-export sen-calibrate > "$stage/THIRD-PARTY.txt"
cat > "$stage/README.txt" <<EOF
sen $version for aarch64 Linux (NVIDIA Jetson: JetPack 5 and 6; any glibc >= $GLIBC)

  sen            the runtime: bundles, index/search, the gallery store, sen serve
  sen-export     checkpoint -> ONNX bundle (no libtorch needed)
  sen-calibrate  INT8 calibration of a bundle
  sen.service    a systemd unit for sen serve (its header says how to install it)

sen needs ONNX Runtime >= 1.19 (its C library, libonnxruntime.so). For the GPU, use
a build with the CUDA and TensorRT execution providers made for your JetPack (the
README's "Jetson" section says where to get one), and point sen at it:

  sen info BUNDLE --ort-lib /path/to/libonnxruntime.so     # what can start here, and what is missing
  export ORT_DYLIB_PATH=/path/to/libonnxruntime.so          # or that, for every command
  sen build-engines BUNDLE                                  # TensorRT engines, once, on the box
  sen serve --bundle BUNDLE --store /var/lib/sen/store --provider tensorrt

Licences: LICENSE (sen, MIT) and THIRD-PARTY.txt (the crates linked in).
EOF
tar -C target/dist -czf "target/dist/$name.tar.gz" "$name"
(cd target/dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "dist-aarch64: checking the glibc bound ($GLIBC) on the shipped binaries"
SEN_GLIBC_MAX=$GLIBC SEN_GLIBC_BINARIES="$stage/sen:$stage/sen-export:$stage/sen-calibrate" \
  cargo test -q -p sen-cli --test glibc -- --nocapture
ls -l "target/dist/$name.tar.gz"
cat "target/dist/$name.tar.gz.sha256"
echo "dist-aarch64: $(((SECONDS - t0) / 60)) min $(((SECONDS - t0) % 60)) s"
