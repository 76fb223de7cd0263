#!/usr/bin/env python3
"""Python onnxruntime on a sen bundle's ONNX files, timed the way `sen bench` times them.

    python3 scripts/reference/ort_throughput.py BUNDLE [--batch 1,8,32] [--seconds 3]

Same model files, same session settings as sen's CPU provider (all graph
optimisations, intra-op threads = cores, CPU provider), inputs of the same shapes
(normal random pixels; captions of --text-tokens ids, cut to that length for a
format-2 bundle as sen cuts them: speed does not depend on the values); each (encoder, batch) is warmed up for a fifth of --seconds
(at most 2 s, at least 2 runs), then run back to back for --seconds and at least 5
runs. Prints one JSON object (keys as `sen bench --json`: p50_ms, p90_ms, p99_ms,
images_per_s / texts_per_s). Needs: pip install onnxruntime==1.31.1 numpy.
"""
import argparse
import json
import os
import platform
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ortbench import cpu_session, measure  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("bundle")
ap.add_argument("--batch", default="1,8,32")
ap.add_argument("--seconds", type=float, default=3.0)
ap.add_argument("--text-tokens", type=int, default=20,
                help="tokens per caption, SOT and EOT included; a format-2 bundle is fed that many "
                     "positions (as sen feeds it), a format-1 bundle the whole context")
a = ap.parse_args()
batches = [int(b) for b in a.batch.split(",")]
m = json.load(open(os.path.join(a.bundle, "manifest.json")))
h, w = m["preprocess"]["height"], m["preprocess"]["width"]
ctx = m["tokenizer"]["context_length"]


def session(name):
    return cpu_session(os.path.join(a.bundle, name))


rng = np.random.default_rng(11)
results = []
img = session(m["io"]["image"]["file"])
for b in batches:
    x = rng.standard_normal((b, 3, h, w)).astype(np.float32)
    r = measure(lambda: img.run(None, {"pixel_values": x}), a.seconds)
    results.append({"encoder": "image", "batch": b, **r, "images_per_s": b * 1e3 / r["mean_ms"]})
txt = session(m["io"]["text"]["file"])
dynamic = m["io"]["text"]["inputs"][0]["shape"][1] == "sequence"
n = a.text_tokens
fed = n if dynamic else ctx
for b in batches:
    ids = np.zeros((b, fed), np.int64)
    ids[:, 0] = 49406
    ids[:, 1:n - 1] = rng.integers(300, 40000, (b, n - 2))
    ids[:, n - 1] = 49407
    eot = np.full((b,), n - 1, np.int64)
    r = measure(lambda: txt.run(None, {"input_ids": ids, "eot_index": eot}), a.seconds)
    results.append({"encoder": "text", "batch": b, **r, "texts_per_s": b * 1e3 / r["mean_ms"],
                    "tokens": n, "sequence_fed": fed})
print(json.dumps({"engine": "python onnxruntime", "onnxruntime": ort.__version__,
                  "python": platform.python_version(), "bundle": a.bundle,
                  "precision": m["precision"], "seconds_per_entry": a.seconds, "results": results}, indent=1))
