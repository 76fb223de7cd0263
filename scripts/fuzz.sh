#!/usr/bin/env bash
# `make fuzz`: every fuzz target under fuzz/ for FUZZ_SECONDS seconds each (default 20)
# with cargo-fuzz (libFuzzer, AddressSanitizer) on the nightly pinned in
# fuzz/rust-toolchain.toml; the product stays on stable. Installs what is missing:
# that nightly (rustup) and cargo-fuzz 0.13.2 (`cargo install --locked`).
#
# Each target starts from its committed seed corpus (fuzz/corpus/TARGET) and writes
# what it learns to target/fuzz-corpus/TARGET (never into the checkout). A crash stops
# the run, naming the target and the input (under fuzz/artifacts/TARGET); a finding is
# fixed with a regression test before it lands. FUZZ_TARGETS narrows the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' fuzz/rust-toolchain.toml)
rustup toolchain list | grep -q "^$toolchain" ||
  rustup toolchain install "$toolchain" --profile minimal
if ! cargo fuzz --version 2>/dev/null | grep -q '0\.13\.2'; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cd fuzz
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
t0=$SECONDS
echo "fuzz: building $(echo $targets | wc -w) targets ($toolchain, AddressSanitizer)"
if [ -z "${FUZZ_TARGETS:-}" ]; then
  cargo fuzz build -O >/dev/null
else
  for t in $targets; do cargo fuzz build -O "$t" >/dev/null; done
fi
summary=()
for t in $targets; do
  work=../target/fuzz-corpus/$t
  mkdir -p "$work"
  log=../target/fuzz-$t.log
  echo "fuzz: $t for ${seconds} s"
  if ! cargo fuzz run -O "$t" "$work" "corpus/$t" -- -max_total_time="$seconds" \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 > "$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $t FAILED (input under fuzz/artifacts/$t; log $log)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  summary+=("$t: ${runs:-?} runs")
done
echo "fuzz: no failure in $(((SECONDS - t0) / 60)) min $(((SECONDS - t0) % 60)) s"
printf '  %s\n' "${summary[@]}"
