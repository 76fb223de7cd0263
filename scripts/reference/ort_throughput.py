#!/usr/bin/env python3
"""Python onnxruntime on the bundles `cargo bench -p sen-benches --bench encoders` builds.

    /tmp/benv/bin/pip install onnxruntime==1.31.1 numpy
    /tmp/benv/bin/python scripts/reference/ort_throughput.py [--presets tiny vit-b16]

Same model files (target/bench-bundles/<preset>/image_encoder.onnx), same input
(every value 0.1), same session settings as sen's CPU provider (all graph
optimisations, intra-op threads = cores); median latency per batch after warm-up.
"""
import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("--presets", nargs="+", default=["tiny", "vit-b16"])
ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
ap.add_argument("--seconds", type=float, default=10.0)
a = ap.parse_args()
root = os.path.join(os.path.dirname(__file__), "..", "..", "target", "bench-bundles")
for preset in a.presets:
    m = json.load(open(os.path.join(root, preset, "manifest.json")))
    h, w = m["preprocess"]["height"], m["preprocess"]["width"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(os.path.join(root, preset, "image_encoder.onnx"), so,
                             providers=["CPUExecutionProvider"])
    for b in a.batches:
        x = np.full((b, 3, h, w), 0.1, np.float32)
        for _ in range(3):
            s.run(None, {"pixel_values": x})
        times = []
        t_end = time.perf_counter() + a.seconds
        while time.perf_counter() < t_end or len(times) < 10:
            t0 = time.perf_counter()
            s.run(None, {"pixel_values": x})
            times.append(time.perf_counter() - t0)
        times.sort()
        med = times[len(times) // 2]
        print(json.dumps({"onnxruntime": ort.__version__, "preset": preset, "batch": b,
                          "runs": len(times), "median_ms": round(med * 1e3, 3),
                          "images_per_s": round(b / med, 1)}))
