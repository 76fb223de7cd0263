#!/usr/bin/env bash
# `make test-int8-avx2`: the calibration tests whose result depends on the CPU's int8
# kernels, run on an emulated AVX2 CPU without AVX-512 or VNNI (qemu-x86_64 -cpu
# Haswell), whatever CPU runs them. That is the class where ONNX Runtime's u8 x s8
# kernels add pairs of products into saturating 16-bit sums: there the automatic
# choice must pick 7-bit weights and keep the embeddings (cosine >= 0.99), and
# 8-bit weights are measured (image cosine 0.9898 under this emulation, as on the
# real AVX2 machines). qemu emulates the instructions, not their speed: nothing
# here is timed. About 2 minutes after make test's build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-x86_64 >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "test-int8-avx2: installing qemu-user (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user >/dev/null
fi
# Haswell less the features TCG cannot give (they only make qemu warn).
cpu="Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-rtm,-invpcid"
cargo build -q -p sen-calibrate --tests
# The emulated CPU really lacks AVX-512 and VNNI (else the test would prove nothing).
cat > target/cpu_probe.rs <<'RS'
fn main() {
    let f = |n: bool| if n { 1 } else { 0 };
    println!("avx2={} avx512f={} avx512vnni={} avxvnni={}",
        f(std::arch::is_x86_feature_detected!("avx2")),
        f(std::arch::is_x86_feature_detected!("avx512f")),
        f(std::arch::is_x86_feature_detected!("avx512vnni")),
        f(std::arch::is_x86_feature_detected!("avxvnni")));
}
RS
rustc -O -o target/cpu_probe target/cpu_probe.rs
probe=$(qemu-x86_64 -cpu "$cpu" target/cpu_probe)
echo "test-int8-avx2: emulated CPU: $probe"
[ "$probe" = "avx2=1 avx512f=0 avx512vnni=0 avxvnni=0" ] || {
  echo "test-int8-avx2: qemu did not emulate AVX2 without AVX-512/VNNI" >&2
  exit 1
}
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="qemu-x86_64 -cpu $cpu" \
  cargo test -p sen-calibrate --test calibrate -- --nocapture \
  calibrated_bundle_places_qdq seven_and_eight_bit_weights 2>&1 | tee target/test-int8-avx2.log
