#!/usr/bin/env python3
"""faiss IndexFlatIP on the gallery shape of `cargo bench -p sen-benches --bench search`.

    python3 -m venv /tmp/benv && /tmp/benv/bin/pip install faiss-cpu numpy
    /tmp/benv/bin/python scripts/reference/faiss_search.py [--threads 1 2]

100k x 512 unit float32 rows, one unit query, top 10; median of 200 searches after
20 warm-ups, per OpenMP thread count. Prints one JSON line per thread count.
"""
import argparse
import json
import time

import faiss
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=100_000)
ap.add_argument("--d", type=int, default=512)
ap.add_argument("--k", type=int, default=10)
ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
ap.add_argument("--runs", type=int, default=200)
a = ap.parse_args()

rng = np.random.default_rng(7)
g = rng.uniform(-1, 1, (a.n, a.d)).astype(np.float32)
g /= np.linalg.norm(g, axis=1, keepdims=True)
q = rng.uniform(-1, 1, (1, a.d)).astype(np.float32)
q /= np.linalg.norm(q)
index = faiss.IndexFlatIP(a.d)
index.add(g)
for t in a.threads:
    faiss.omp_set_num_threads(t)
    for _ in range(20):
        index.search(q, a.k)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        index.search(q, a.k)
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({
        "faiss": faiss.__version__, "simd": faiss.get_compile_options(), "threads": t,
        "median_ms": round(med * 1e3, 3), "min_ms": round(times[0] * 1e3, 3),
        "gib_per_s": round(a.n * a.d * 4 / med / 2**30, 1),
    }))
