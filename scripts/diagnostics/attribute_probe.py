#!/usr/bin/env python3
"""What a trained bundle's embeddings know about the synthetic benchmark's attributes.

For each of the 13 attributes `sen synth` records, a ridge-regression linear probe is
fitted on the train split's embeddings and scored on the test split, separately for
image embeddings (read from `sen index` files) and caption embeddings (the bundle's
text encoder through Python onnxruntime, ids from `sen tokenize --json`). Also prints
which attributes differ between each query's identity and its wrong top-1 image, and
the effective rank of both embedding sets. This is how the tiny preset's weak image
tower was found (docs/decisions.md, "tiny preset").

Usage (numpy and onnxruntime in the Python environment; SEN is target/release/sen):
  sen index BUNDLE --dataset DATA --split train --out BUNDLE_train.senidx
  sen index BUNDLE --dataset DATA --split test --out BUNDLE_test.senidx
  scripts/diagnostics/attribute_probe.py BUNDLE DATA TRAIN_INDEX TEST_INDEX [SEN]
"""
import collections
import json
import struct
import subprocess
import sys

import numpy as np
import onnxruntime as ort


def load_index(path):
    b = open(path, "rb").read()
    if b[:8] != b"SENINDEX":
        sys.exit(f"{path}: not a sen index")
    hlen, off = struct.unpack("<Q", b[16:24])[0], struct.unpack("<Q", b[24:32])[0]
    h = json.loads(b[64:64 + hlen])
    if h["dtype"] != "f32":
        sys.exit(f"{path}: {h['dtype']} index; build it from an fp32 bundle")
    x = np.frombuffer(b[off:off + 4 * h["count"] * h["dim"]], dtype=np.float32)
    return h, x.reshape(h["count"], h["dim"])


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    bundle, data, train_idx, test_idx = sys.argv[1:5]
    sen = sys.argv[5] if len(sys.argv) > 5 else "target/release/sen"
    recs = json.load(open(f"{data}/reid_raw.json"))
    by_file = {r["file_path"].split("/")[-1]: r for r in recs}
    text = ort.InferenceSession(f"{bundle}/text_encoder.onnx", providers=["CPUExecutionProvider"])

    def images(path):
        h, x = load_index(path)
        return unit(x), [by_file[p.split("/")[-1]]["attributes"] for p in h["paths"]]

    def captions(split):
        caps, attrs = [], []
        for r in recs:
            if r["split"] == split:
                caps += r["captions"]
                attrs += [r["attributes"]] * len(r["captions"])
        out = []
        for i in range(0, len(caps), 200):
            enc = json.loads(subprocess.check_output(
                [sen, "tokenize", "--json", "--bundle", bundle] + caps[i:i + 200]))
            feeds = {"input_ids": np.array([e["ids"] for e in enc], dtype=np.int64),
                     "eot_index": np.array([e["eot_index"] for e in enc], dtype=np.int64)}
            out.append(text.run(None, feeds)[0])
        return unit(np.concatenate(out)), attrs

    def probe(xtr, atr, xte, ate, key):
        vals = sorted({a[key] for a in atr})
        col = {v: i for i, v in enumerate(vals)}
        y = np.array([col[a[key]] for a in atr])
        X = np.hstack([xtr, np.ones((len(xtr), 1))])
        W = np.linalg.solve(X.T @ X + 1e-2 * np.eye(X.shape[1]), X.T @ np.eye(len(vals))[y])
        pred = np.argmax(np.hstack([xte, np.ones((len(xte), 1))]) @ W, 1)
        truth = np.array([col.get(a[key], -1) for a in ate])
        return len(vals), 100 * (pred == truth).mean(), 100 * np.bincount(y).max() / len(y)

    vi, ai = images(train_idx)
    vt, at = images(test_idx)
    ti, tai = captions("train")
    tt, tat = captions("test")
    print(f"{'attribute':14s} classes  image   text  train majority   (test accuracy, %)")
    for k in sorted(ai[0]):
        n, img, maj = probe(vi, ai, vt, at, k)
        _, txt, _ = probe(ti, tai, tt, tat, k)
        print(f"{k:14s} {n:7d} {img:6.1f} {txt:6.1f} {maj:8.1f}")
    key = lambda a: tuple(sorted(a.items()))
    top = np.argmax(tt @ vt.T, 1)
    wrong = [(tat[q], at[j]) for q, j in enumerate(top) if key(tat[q]) != key(at[j])]
    ndiff = collections.Counter(sum(a[k] != b[k] for k in a) for a, b in wrong)
    print(f"R@1 {100 * (1 - len(wrong) / len(top)):.2f}; wrong top-1 answers by attributes "
          f"differing from the query's identity: {dict(sorted(ndiff.items()))}")
    for name, x in (("image", vt), ("text", tt)):
        s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
        p = s / s.sum()
        print(f"{name} embeddings: effective rank {np.exp(-(p * np.log(p)).sum()):.1f} of {x.shape[1]}")


if __name__ == "__main__":
    main()
