# sen: the two commands a fresh machine needs are `make demo` and `make test`.
# Both first run `make deps`, which fetches the pinned native dependencies from
# PyPI into $(SEN_CACHE) (outside the checkout) and verifies them.

SHELL := /bin/bash
SEN_CACHE ?= $(HOME)/.cache/sen
export SEN_CACHE
CARGO ?= cargo
PYTHON ?= python3

.PHONY: fuzz deps deps-cuda deps-ort-gpu test demo bench bench-baseline bench-check perf store-perf crash-test load serve-demo screenshot test-aarch64 test-int8-avx2 dist-aarch64 test-milvus milvus-perf test-sources source-load help

help:
	@echo "make demo   - run the sen pipeline end to end (what exists so far)"
	@echo "make test   - run every test (cargo test --workspace)"
	@echo "make bench  - criterion benches (BENCH_FILTER=... to select)"
	@echo "make bench-baseline - run the benches and save them as baseline $(BENCH_BASELINE)"
	@echo "make bench-check - run the benches; fail if any is > $(BENCH_THRESHOLD)% slower than the baseline"
	@echo "make perf   - the README's performance tables: sen vs Python onnxruntime, PyTorch eager, faiss"
	@echo "make store-perf - the gallery store's speed figures (ingest, 1M-row open/search/filters, compaction)"
	@echo "make crash-test - $(CRASH_ROUNDS) SIGKILLs of a store writer, $(MIGRATE_ROUNDS) of a store migration, $(SERVE_CRASH_ROUNDS) of sen serve while clients ingest"
	@echo "make load   - sen serve under a bounded load: QPS, p50, p99 (search, ingest, mixed; batching on/off)"
	@echo "make serve-demo - sen serve on the demo's bundle and store (after make demo); prints the URL"
	@echo "make screenshot - refresh docs/search-page.png from the browser test with the demo's bundle"
	@echo "make test-aarch64 - build for aarch64 and run the tests under qemu (sets itself up)"
	@echo "make test-int8-avx2 - the int8 calibration tests on an emulated AVX2 CPU without VNNI (qemu)"
	@echo "make test-milvus - replication into and search through Milvus, against milvus-lite (installs it into the cache)"
	@echo "make milvus-perf - replication rows/s and search latency/recall through milvus-lite (FLAT, HNSW) vs the local store"
	@echo "make test-sources - the Frigate source under faults: SIGKILL rounds, a broker restart, Frigate down (mosquitto)"
	@echo "make source-load - the Frigate source's events/s next to HTTP ingest, and its publish-to-durable lag"
	@echo "make dist-aarch64 - Jetson release tarball (glibc 2.31, cargo-zigbuild) in target/dist/"
	@echo "make fuzz   - every fuzz target (cargo-fuzz, pinned nightly) for FUZZ_SECONDS (default 20) each"
	@echo "make deps   - fetch and verify native dependencies into $(SEN_CACHE)"
	@echo "make deps-cuda - also the CUDA libraries libtorch_cuda loads (GPU machines only, ~2 GB)"
	@echo "make deps-ort-gpu - ONNX Runtime's GPU build for sen --ort-lib (~255 MB; make deps fetches it too)"

# Besides the pinned set: ONNX Runtime 1.19.2, the oldest sen accepts, for the
# version test (cli/tests/ort_versions.rs), and the 1.31.1 GPU build (CUDA 13), whose
# provider libraries the GPU preflight test reads (runtime/src/providers/preflight.rs).
deps:
	@command -v $(PYTHON) >/dev/null || { echo "make deps: $(PYTHON) is required to fetch wheels from PyPI" >&2; exit 1; }
	@$(PYTHON) scripts/deps.py
	@$(PYTHON) scripts/deps.py ort-oldest
	@$(PYTHON) scripts/deps.py ort-gpu

# GPU machines only: the CUDA libraries (cuDNN, cuBLAS, NCCL, ...) that libtorch_cuda
# loads, for running `sen-train --device cuda` built with `--features cuda` without a
# PyTorch install. Never needed on CPU machines.
deps-cuda: deps
	@$(PYTHON) scripts/deps.py cuda

# ONNX Runtime 1.31.1's GPU build (CUDA and TensorRT providers) into
# $(SEN_CACHE)/onnxruntime-gpu/lib; run sen with --ort-lib (or ORT_DYLIB_PATH) pointing there.
deps-ort-gpu:
	@$(PYTHON) scripts/deps.py ort-gpu

# The lean-library check first (sen-runtime and sen-store link no server stack), then
# every test.
test: deps
	@scripts/check_lean.sh
	$(CARGO) test --workspace

demo: deps
	@scripts/demo.sh

# Latency-regression gate (README, Measuring): save a baseline on a fixed machine, then
# `make bench-check` reruns the benches and exits 1 when any median is more than
# BENCH_THRESHOLD percent above the baseline's. BENCH_FILTER narrows both (criterion filter).
BENCH_BASELINE ?= main
BENCH_THRESHOLD ?= 10
BENCH_FILTER ?=

bench: deps
	$(CARGO) bench -p sen-benches -- $(BENCH_FILTER)

bench-baseline: deps
	$(CARGO) bench -p sen-benches -- $(BENCH_FILTER) --save-baseline $(BENCH_BASELINE)

bench-check: deps
	$(CARGO) bench -p sen-benches -- $(BENCH_FILTER) --baseline-lenient $(BENCH_BASELINE)
	$(CARGO) run -q --release -p sen-benches --bin bench-check -- --baseline $(BENCH_BASELINE) --threshold $(BENCH_THRESHOLD)

perf: deps
	@scripts/perf.sh

# The gallery store's speed (README, Performance): one reported run, not a test.
# STORE_ROWS sets the big store's size.
STORE_ROWS ?= 1000000
store-perf: deps
	$(CARGO) run -q --release -p sen-benches --bin store-bench -- --rows $(STORE_ROWS)

# Long crash runs (README, Durability): the tests `make test` runs with 20 store kills
# and 3 server kills, here with many more. Each prints the number of kills it survived.
CRASH_ROUNDS ?= 500
SERVE_CRASH_ROUNDS ?= 50
MIGRATE_ROUNDS ?= 200
crash-test: deps
	SEN_CRASH_ROUNDS=$(CRASH_ROUNDS) $(CARGO) test --release -p sen-store --test crash -- --nocapture kill
	SEN_MIGRATE_ROUNDS=$(MIGRATE_ROUNDS) $(CARGO) test --release -p sen-store --test migrate -- --nocapture killed
	SEN_SERVE_CRASH_ROUNDS=$(SERVE_CRASH_ROUNDS) $(CARGO) test --release -p sen-cli --test server -- --nocapture kill

# sen serve under load (README, Serving): one reported run, not a test. LOAD_SECONDS per
# cell (default 5), LOAD_CLIENTS (default 1,8,32).
load: deps
	@scripts/load.sh

# Sources (README, Sources): the fault runs of the Frigate source (SIGKILL rounds while
# events flow, a broker restart without persistence, Frigate down for 5 s) against
# Debian's mosquitto. SOURCE_KILL_ROUNDS (default 10).
SOURCE_KILL_ROUNDS ?= 10
test-sources: deps
	SEN_SOURCE_KILL_ROUNDS=$(SOURCE_KILL_ROUNDS) $(CARGO) test -p sen-cli --test sources -- --ignored --nocapture

# The Frigate source's events/s next to HTTP ingest, and its lag at half that rate
# (README, Sources): one reported run, not a test.
source-load: deps
	@scripts/source_load.sh

# The search page on the demo's gallery (after `make demo`): open the printed URL.
SERVE_LISTEN ?= 127.0.0.1:8750
serve-demo: deps
	@test -f target/demo/store/store.db || { echo "make serve-demo: run \`make demo\` first (it builds target/demo/store)" >&2; exit 1; }
	$(CARGO) build --release -q -p sen-cli
	@echo "open http://$(SERVE_LISTEN)/ (Ctrl-C stops the server)"
	target/release/sen serve --bundle target/demo/bundle-fp32 --store target/demo/store --listen $(SERVE_LISTEN)

screenshot: deps
	@scripts/screenshot.sh

# aarch64 (Jetson-class boxes): every crate that ships to a box, cross-compiled and
# tested under qemu-user. Not built there, with the reason: sen-train (links libtorch,
# which has no aarch64 build in the pinned set, and training does not ship to a box),
# sen-tests (compares against libtorch). Skipped: the page's browser test (the page is
# the same bytes on every architecture), and the ONNX Runtime 1.19.2 comparison (its
# pinned library is x86-64's). scripts/test_aarch64.sh sets up the target,
# cross compiler, qemu, the pinned aarch64 ONNX Runtime and the qemu sysroot.
test-aarch64: deps
	@scripts/test_aarch64.sh

# The int8 calibration tests on an emulated AVX2 CPU without AVX-512 or VNNI
# (qemu-x86_64 -cpu Haswell): where ONNX Runtime's int8 sums saturate (issue 31).
test-int8-avx2: deps
	@scripts/test_int8_avx2.sh

# Milvus replication and search against milvus-lite on free loopback ports (README,
# Many boxes); `scripts/deps.py milvus` installs it, hash-checked, into the cache.
test-milvus: deps
	@scripts/test_milvus.sh

# Replication rows/s into milvus-lite and search latency and recall@10 through it
# (FLAT, HNSW) next to the local store, for MILVUS_PERF_ROWS rows (one reported run).
MILVUS_PERF_ROWS ?= 100000
milvus-perf: deps
	@$(PYTHON) scripts/deps.py milvus
	SEN_MILVUS_LITE=$(SEN_CACHE)/milvus-lite/venv/bin/milvus-lite SEN_MILVUS_PERF_ROWS=$(MILVUS_PERF_ROWS) \
	  $(CARGO) run --release -q -p sen-milvus --example speed

# Release binaries for JetPack 5 (glibc 2.31) and newer, checked against that bound.
dist-aarch64: deps
	@scripts/dist_aarch64.sh

# Fuzzing every parser that takes outside bytes (README, Hardening): cargo-fuzz on the
# nightly pinned in fuzz/rust-toolchain.toml, each target FUZZ_SECONDS (default 20) from
# its committed seed corpus. Installs that nightly and cargo-fuzz when missing.
FUZZ_SECONDS ?= 20
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh
