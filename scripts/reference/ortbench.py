"""Shared by the Python baselines: time a callable the way `sen bench` does.

Warm-up for a fifth of `seconds` (at most 2 s, at least 2 runs), then back to back
for `seconds` and at least 5 runs; nearest-rank percentiles of per-call wall time.
"""
import math
import time


def nearest_rank(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms), max(1, math.ceil(q * len(sorted_ms)))) - 1]


def measure(run, seconds):
    warm_end = time.perf_counter() + min(seconds * 0.2, 2.0)
    n = 0
    while n < 2 or time.perf_counter() < warm_end:
        run()
        n += 1
    times = []
    end = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < end:
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    mean = sum(times) / len(times)
    return {"runs": len(times), "p50_ms": nearest_rank(times, 0.5), "p90_ms": nearest_rank(times, 0.9),
            "p99_ms": nearest_rank(times, 0.99), "mean_ms": mean, "min_ms": times[0]}


def cpu_session(path):
    """A CPU session with sen's settings: every graph optimisation, default threads."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
