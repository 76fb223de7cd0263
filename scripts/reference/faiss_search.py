#!/usr/bin/env python3
"""faiss on the gallery shapes `sen bench --search` times (the user's alternative for
exact search).

    python3 -m venv /tmp/benv && /tmp/benv/bin/pip install faiss-cpu numpy
    /tmp/benv/bin/python scripts/reference/faiss_search.py [--n 100000] [--threads 1 2] \
        [--index flat sq-fp16] [--queries 1 16 64 256] [--seconds 3]

N x 512 unit float32 rows, unit queries, top 10, timed like `sen bench` (warm-up, then
back to back for --seconds, nearest-rank percentiles of each `index.search` call with
all the queries). `flat` is `IndexFlatIP` (exact over float32 rows: sen's f32 rows);
`sq-fp16` is `IndexScalarQuantizer(d, QT_fp16, METRIC_INNER_PRODUCT)` (exact over
float16 rows: sen's f16 rows). Prints one JSON line per (index, threads, queries).
"""
import argparse
import json
import os
import sys

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ortbench import measure  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=100_000)
ap.add_argument("--d", type=int, default=512)
ap.add_argument("--k", type=int, default=10)
ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
ap.add_argument("--index", nargs="+", default=["flat", "sq-fp16"], choices=["flat", "sq-fp16"])
ap.add_argument("--queries", type=int, nargs="+", default=[1])
ap.add_argument("--seconds", type=float, default=3.0)
a = ap.parse_args()

rng = np.random.default_rng(7)
g = rng.uniform(-1, 1, (a.n, a.d)).astype(np.float32)
g /= np.linalg.norm(g, axis=1, keepdims=True)
qs = rng.uniform(-1, 1, (max(a.queries), a.d)).astype(np.float32)
qs /= np.linalg.norm(qs, axis=1, keepdims=True)
for kind in a.index:
    if kind == "flat":
        index = faiss.IndexFlatIP(a.d)
    else:
        index = faiss.IndexScalarQuantizer(a.d, faiss.ScalarQuantizer.QT_fp16,
                                           faiss.METRIC_INNER_PRODUCT)
        index.train(g)
    index.add(g)
    bytes_per_value = 4 if kind == "flat" else 2
    for t in a.threads:
        faiss.omp_set_num_threads(t)
        for nq in a.queries:
            q = np.ascontiguousarray(qs[:nq])
            r = measure(lambda: index.search(q, a.k), a.seconds)
            print(json.dumps({
                "faiss": faiss.__version__, "index": kind, "simd": faiss.get_compile_options().strip(),
                "rows": a.n, "dim": a.d, "threads": t, "queries": nq, **r,
                "median_ms": r["p50_ms"], "queries_per_s": nq * 1e3 / r["mean_ms"],
                "gib_per_s": round(a.n * a.d * bytes_per_value / (r["p50_ms"] / 1e3) / 2**30, 1),
            }), flush=True)
    del index
