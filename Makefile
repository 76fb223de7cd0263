# sen: the two commands a fresh machine needs are `make demo` and `make test`.
# Both first run `make deps`, which fetches the pinned native dependencies from
# PyPI into $(SEN_CACHE) (outside the checkout) and verifies them.

SHELL := /bin/bash
SEN_CACHE ?= $(HOME)/.cache/sen
export SEN_CACHE
CARGO ?= cargo
PYTHON ?= python3

.PHONY: deps deps-cuda deps-ort-gpu test demo bench bench-baseline bench-check perf help

help:
	@echo "make demo   - run the sen pipeline end to end (what exists so far)"
	@echo "make test   - run every test (cargo test --workspace)"
	@echo "make bench  - criterion benches (BENCH_FILTER=... to select)"
	@echo "make bench-baseline - run the benches and save them as baseline $(BENCH_BASELINE)"
	@echo "make bench-check - run the benches; fail if any is > $(BENCH_THRESHOLD)% slower than the baseline"
	@echo "make perf   - the README's performance tables: sen vs Python onnxruntime, PyTorch eager, faiss"
	@echo "make deps   - fetch and verify native dependencies into $(SEN_CACHE)"
	@echo "make deps-cuda - also the CUDA libraries libtorch_cuda loads (GPU machines only, ~2 GB)"
	@echo "make deps-ort-gpu - ONNX Runtime's GPU build for sen --ort-lib (GPU machines only, ~255 MB)"

deps:
	@command -v $(PYTHON) >/dev/null || { echo "make deps: $(PYTHON) is required to fetch wheels from PyPI" >&2; exit 1; }
	@$(PYTHON) scripts/deps.py

# GPU machines only: the CUDA libraries (cuDNN, cuBLAS, NCCL, ...) that libtorch_cuda
# loads, for running `sen-train --device cuda` built with `--features cuda` without a
# PyTorch install. Never needed on CPU machines.
deps-cuda: deps
	@$(PYTHON) scripts/deps.py cuda

# GPU machines only: ONNX Runtime 1.31.1's GPU build (CUDA and TensorRT providers) into
# $(SEN_CACHE)/onnxruntime-gpu/lib; run sen with --ort-lib (or ORT_DYLIB_PATH) pointing there.
deps-ort-gpu:
	@$(PYTHON) scripts/deps.py ort-gpu

test: deps
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
