"""Check exported bundles with the ONNX reference tools and list what ONNX Runtime's
optimiser makes of each graph (issue #5).

    python3 -m venv /tmp/onnxenv && /tmp/onnxenv/bin/pip install onnx==1.23.2 onnxruntime==1.31.1
    /tmp/onnxenv/bin/python scripts/reference/onnx_check.py BUNDLE [BUNDLE ...]

For each encoder: onnx.checker.check_model(full_check=True) (external data included),
then an ONNX Runtime CPU session at ORT_ENABLE_ALL writing its optimised model, and
the op counts before and after (contrib ops show as com.microsoft:...).
"""
import collections
import os
import sys
import tempfile

import onnx
import onnxruntime as ort


def ops(model):
    return collections.Counter((n.domain or "ai.onnx") + ":" + n.op_type for n in model.graph.node)


def main(bundles):
    out = tempfile.mkdtemp()
    for b in bundles:
        for f in ("image_encoder", "text_encoder"):
            path = os.path.join(b, f + ".onnx")
            onnx.checker.check_model(path, full_check=True)
            before = ops(onnx.load(path, load_external_data=False))
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.optimized_model_filepath = os.path.join(out, f"{os.path.basename(b)}_{f}.onnx")
            ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            after = ops(onnx.load(so.optimized_model_filepath, load_external_data=False))
            contrib = {k: v for k, v in before.items() if not k.startswith("ai.onnx:")}
            print(f"{path}: checker ok (full_check); {sum(before.values())} nodes, contrib ops {contrib or 'none'}")
            print(f"  optimised by ONNX Runtime: {sum(after.values())} nodes; new: "
                  f"{dict((k, v) for k, v in after.items() if k not in before)}")


if __name__ == "__main__":
    main(sys.argv[1:])
