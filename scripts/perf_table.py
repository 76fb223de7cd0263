#!/usr/bin/env python3
"""Render target/perf/*.json (written by scripts/perf.sh) as the README's tables."""
import glob
import json
import os
import sys

d = sys.argv[1]


def load(name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None


def rows(r):
    return {(e["encoder"], e["batch"]): e for e in r["results"]} if r else {}


presets = sorted({os.path.basename(p).split("-", 1)[1].rsplit("-", 1)[0]
                  for p in glob.glob(os.path.join(d, "sen-*-fp32.json"))}, key=lambda s: s != "tiny")
any_sen = load(f"sen-{presets[0]}-fp32.json") if presets else None
if any_sen:
    m = any_sen["machine"]
    print(f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['os']}; "
          f"ONNX Runtime {m['onnxruntime']}; {any_sen['seconds_per_entry']} s per cell.\n")
print("p50 latency in ms (throughput per second) per call, CPU, same batch and input shapes:\n")
print("| model | encoder | batch | sen fp32 | sen int8 | Python onnxruntime fp32 | PyTorch eager fp32 |")
print("|---|---|---|---|---|---|---|")
for p in presets:
    sen32, sen8 = rows(load(f"sen-{p}-fp32.json")), rows(load(f"sen-{p}-int8.json"))
    py, pt = rows(load(f"python-ort-{p}-fp32.json")), rows(load(f"torch-{p}-fp32.json"))
    for key in sorted(sen32, key=lambda k: (k[0] != "image", k[1])):
        def cell(t):
            e = t.get(key)
            if not e:
                return "-"
            rate = e.get("images_per_s") or e.get("texts_per_s")
            return f"{e['p50_ms']:.2f} ({rate:.0f}/s)"
        print(f"| {p} | {key[0]} | {key[1]} | {cell(sen32)} | {cell(sen8)} | {cell(py)} | {cell(pt)} |")

crit = "target/criterion/search"
faiss = [json.loads(l) for l in open(os.path.join(d, "faiss.jsonl"))] if os.path.exists(os.path.join(d, "faiss.jsonl")) else []
print("\nExact top-10, one query, 100k x 512 float32 unit rows (median ms):\n")
print("| threads | sen (criterion) | faiss IndexFlatIP |")
print("|---|---|---|")
for f in faiss:
    t = f["threads"]
    est = os.path.join(crit, f"100k-x512-f32-{t}t", "new", "estimates.json")
    s = f"{json.load(open(est))['median']['point_estimate'] / 1e6:.2f}" if os.path.exists(est) else "-"
    print(f"| {t} | {s} | {f['median_ms']:.2f} (faiss {f['faiss']}) |")
