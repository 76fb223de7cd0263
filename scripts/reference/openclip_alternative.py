#!/usr/bin/env python3
"""The alternative a user would otherwise deploy, timed like `sen bench` (issue #17).

open_clip's ViT-B-16 at 384x128 (`force_image_size`, random weights: nothing is
downloaded; speed does not depend on the weights), each tower exported with
`torch.onnx.export` (TorchScript exporter, opset 17, dynamic batch; the text tower
takes open_clip's fixed 77-token input and finds EOT with argmax, as open_clip
does), optimised by `onnxruntime.transformers.optimizer.optimize_model`
(model_type "clip"), then run by Python onnxruntime's CPU provider with sen's
session settings. Prints one JSON object: the fusions the optimizer applied and
the rows (keys as `sen bench --json`).

    python scripts/reference/openclip_alternative.py OUTDIR [--batch 1,8,32] [--seconds 3]

Needs torch, open_clip_torch, onnx, onnxruntime (scripts/perf.sh installs them).
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort
import open_clip
import torch
from onnxruntime.transformers import optimizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ortbench import cpu_session, measure  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--batch", default="1,8,32")
ap.add_argument("--seconds", type=float, default=3.0)
a = ap.parse_args()
batches = [int(b) for b in a.batch.split(",")]
os.makedirs(a.out, exist_ok=True)
H, W, CTX = 384, 128, 77

torch.manual_seed(0)
model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=(H, W)).eval()
# nn.MultiheadAttention's inference fast path (`_native_multi_head_attention`) has no
# ONNX export; the documented switch turns it off for the export.
torch.backends.mha.set_fastpath_enabled(False)


class Image(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return torch.nn.functional.normalize(self.m.encode_image(x), dim=-1)


class Text(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids):
        return torch.nn.functional.normalize(self.m.encode_text(ids), dim=-1)


def export(module, example, name, inp, out):
    path = os.path.join(a.out, name + ".onnx")
    t = time.time()
    with torch.no_grad():
        torch.onnx.export(module, (example,), path, input_names=[inp], output_names=[out],
                          dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}}, opset_version=17,
                          dynamo=False)
    export_s = time.time() - t
    opt = optimizer.optimize_model(path, model_type="clip", num_heads=0, hidden_size=0)
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    opt_path = os.path.join(a.out, name + ".opt.onnx")
    opt.save_model_to_file(opt_path)
    return opt_path, {"export_seconds": round(export_s, 1), "fusions": fused}


ids0 = torch.zeros((1, CTX), dtype=torch.long)
ids0[0, 0], ids0[0, 1:5], ids0[0, 5] = 49406, torch.tensor([320, 786, 530, 320]), 49407
img_path, img_info = export(Image(model), torch.randn(1, 3, H, W), "image_encoder", "pixel_values", "image_embeds")
txt_path, txt_info = export(Text(model), ids0, "text_encoder", "input_ids", "text_embeds")

rng = np.random.default_rng(11)
results = []
img = cpu_session(img_path)
for b in batches:
    x = rng.standard_normal((b, 3, H, W)).astype(np.float32)
    r = measure(lambda: img.run(None, {"pixel_values": x}), a.seconds)
    results.append({"encoder": "image", "batch": b, **r, "images_per_s": b * 1e3 / r["mean_ms"]})
txt = cpu_session(txt_path)
for b in batches:
    # open_clip's input is always the whole context: 77 positions whatever the caption.
    ids = np.zeros((b, CTX), np.int64)
    ids[:, 0] = 49406
    ids[:, 1:19] = rng.integers(300, 40000, (b, 18))
    ids[:, 19] = 49407
    r = measure(lambda: txt.run(None, {"input_ids": ids}), a.seconds)
    results.append({"encoder": "text", "batch": b, **r, "texts_per_s": b * 1e3 / r["mean_ms"],
                    "tokens": 20, "sequence_fed": CTX})
print(json.dumps({"engine": "open_clip ViT-B-16 -> torch.onnx.export -> onnxruntime.transformers optimizer -> "
                            "python onnxruntime", "torch": torch.__version__,
                  "open_clip": open_clip.__version__, "onnxruntime": ort.__version__,
                  "python": platform.python_version(), "image": img_info, "text": txt_info,
                  "seconds_per_entry": a.seconds, "results": results}, indent=1))
