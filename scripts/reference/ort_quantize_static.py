#!/usr/bin/env python3
"""The Python baseline for sen-calibrate: onnxruntime.quantization.quantize_static on a
bundle's image encoder, timed against the fp32 model and sen-calibrate's int8 model.

    python3 scripts/reference/ort_quantize_static.py FP32_BUNDLE SEN_INT8_BUNDLE [--batch 8]

Settings are the ones sen-calibrate uses: QDQ format, symmetric int8 activations
(per tensor) and weights (per output channel), MatMul/Gemm/Conv only, no
activation-activation MatMuls excluded (quantize_static cannot tell them apart; it
quantises them). Calibration feeds 4 batches of normalised random images (speed
does not depend on the ranges). Prints median ms per run of each model, timed in
alternating rounds, and ONNX Runtime's node counts after optimisation (how many
MatMuls run as integer kernels). Needs: pip install onnxruntime==1.31.1 onnx numpy.
"""
import argparse, collections, os, tempfile, time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

ap = argparse.ArgumentParser()
ap.add_argument("fp32")
ap.add_argument("int8")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--rounds", type=int, default=7)
a = ap.parse_args()

src = os.path.join(a.fp32, "image_encoder.onnx")
shape = [d.dim_value for d in onnx.load(src, load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
shape[0] = a.batch
rng = np.random.default_rng(0)


class Reader(CalibrationDataReader):
    def __init__(self):
        self.n = 0

    def get_next(self):
        if self.n == 4:
            return None
        self.n += 1
        return {"pixel_values": rng.standard_normal(shape).astype(np.float32)}


tmp = tempfile.mkdtemp()
ref = os.path.join(tmp, "ort_int8.onnx")
quantize_static(src, ref, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm", "Conv"], calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})

models = {"fp32": src, "onnxruntime quantize_static int8": ref,
          "sen-calibrate int8": os.path.join(a.int8, "image_encoder.onnx")}
sessions = {}
for name, path in models.items():
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.optimized_model_filepath = os.path.join(tmp, name.replace(" ", "_") + ".opt.onnx")
    sessions[name] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    print(f"{name}: after ONNX Runtime's optimisation {ops.get('MatMulIntegerToFloat', 0)} MatMulIntegerToFloat, "
          f"{ops.get('QLinearMatMul', 0)} QLinearMatMul, {ops.get('MatMul', 0) + ops.get('FusedMatMul', 0)} float MatMul")

x = rng.standard_normal(shape).astype(np.float32)
for s in sessions.values():
    for _ in range(3):
        s.run(None, {"pixel_values": x})
t0 = time.perf_counter(); sessions["fp32"].run(None, {"pixel_values": x}); one = time.perf_counter() - t0
per_round = max(1, int(0.25 / max(one, 1e-6)))
times = {n: [] for n in sessions}
for _ in range(a.rounds):
    for n, s in sessions.items():
        t0 = time.perf_counter()
        for _ in range(per_round):
            s.run(None, {"pixel_values": x})
        times[n].append((time.perf_counter() - t0) / per_round * 1e3)
base = np.median(times["fp32"])
for n, t in times.items():
    print(f"{n:<36} batch {a.batch}: {np.median(t):9.2f} ms  ({base / np.median(t):.2f}x fp32)")
