#!/usr/bin/env python3
"""Python onnxruntime on a sen bundle's ONNX files, timed the way `sen bench` times them.

    python3 scripts/reference/ort_throughput.py BUNDLE [--batch 1,8,32] [--seconds 3]

Same model files, same session settings as sen's CPU provider (all graph
optimisations, intra-op threads = cores, CPU provider), inputs of the same shapes
(normal random pixels; 77 token ids with the EOT at position 12: speed does not
depend on the values); each (encoder, batch) is warmed up for a fifth of --seconds
(at most 2 s, at least 2 runs), then run back to back for --seconds and at least 5
runs. Prints one JSON object (keys as `sen bench --json`: p50_ms, p90_ms, p99_ms,
images_per_s / texts_per_s). Needs: pip install onnxruntime==1.31.1 numpy.
"""
import argparse
import json
import math
import os
import platform
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("bundle")
ap.add_argument("--batch", default="1,8,32")
ap.add_argument("--seconds", type=float, default=3.0)
a = ap.parse_args()
batches = [int(b) for b in a.batch.split(",")]
m = json.load(open(os.path.join(a.bundle, "manifest.json")))
h, w = m["preprocess"]["height"], m["preprocess"]["width"]
ctx = m["tokenizer"]["context_length"]


def session(name):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.path.join(a.bundle, name), so, providers=["CPUExecutionProvider"])


def nearest_rank(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms), max(1, math.ceil(q * len(sorted_ms)))) - 1]


def measure(run):
    warm_end = time.perf_counter() + min(a.seconds * 0.2, 2.0)
    n = 0
    while n < 2 or time.perf_counter() < warm_end:
        run()
        n += 1
    times = []
    end = time.perf_counter() + a.seconds
    while len(times) < 5 or time.perf_counter() < end:
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    mean = sum(times) / len(times)
    return {"runs": len(times), "p50_ms": nearest_rank(times, 0.5), "p90_ms": nearest_rank(times, 0.9),
            "p99_ms": nearest_rank(times, 0.99), "mean_ms": mean, "min_ms": times[0]}


rng = np.random.default_rng(11)
results = []
img = session(m["io"]["image"]["file"])
for b in batches:
    x = rng.standard_normal((b, 3, h, w)).astype(np.float32)
    r = measure(lambda: img.run(None, {"pixel_values": x}))
    results.append({"encoder": "image", "batch": b, **r, "images_per_s": b * 1e3 / r["mean_ms"]})
txt = session(m["io"]["text"]["file"])
for b in batches:
    ids = np.zeros((b, ctx), np.int64)
    ids[:, 0] = 49406
    ids[:, 1:12] = rng.integers(300, 40000, (b, 11))
    ids[:, 12] = 49407
    eot = np.full((b,), 12, np.int64)
    r = measure(lambda: txt.run(None, {"input_ids": ids, "eot_index": eot}))
    results.append({"encoder": "text", "batch": b, **r, "texts_per_s": b * 1e3 / r["mean_ms"]})
print(json.dumps({"engine": "python onnxruntime", "onnxruntime": ort.__version__,
                  "python": platform.python_version(), "bundle": a.bundle,
                  "precision": m["precision"], "seconds_per_entry": a.seconds, "results": results}, indent=1))
