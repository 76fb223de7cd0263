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


def lines(name):
    p = os.path.join(d, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []


def rows(r):
    return {(e["encoder"], e["batch"]): e for e in r["results"]} if r else {}


def rate(e):
    return e.get("images_per_s") or e.get("texts_per_s")


presets = sorted({os.path.basename(p).split("-", 1)[1].rsplit("-", 1)[0]
                  for p in glob.glob(os.path.join(d, "sen-*-fp32.json"))}, key=lambda s: s != "tiny")
any_sen = load(f"sen-{presets[0]}-fp32.json") if presets else None
if any_sen:
    m = any_sen["machine"]
    print(f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['os']}; search kernels "
          f"{m.get('search_kernel', '?')}; ONNX Runtime {m['onnxruntime']}; {any_sen['seconds_per_entry']} s per cell.\n")
print("p50 latency in ms (throughput per second) per call, CPU, same batch and input shapes; "
      "text rows: captions of 20 tokens (sen and Python onnxruntime feed a format-2 bundle 20 "
      "positions; open_clip's export always takes 77):\n")
oc = rows(load("openclip-vit-b16-fp32.json"))
print("| model | encoder | batch | sen fp32 | sen int8 | Python onnxruntime fp32 | PyTorch eager fp32 | open_clip + ORT optimizer fp32 | sen fp32 vs open_clip |")
print("|---|---|---|---|---|---|---|---|---|")
for p in presets:
    sen32, sen8 = rows(load(f"sen-{p}-fp32.json")), rows(load(f"sen-{p}-int8.json"))
    py, pt = rows(load(f"python-ort-{p}-fp32.json")), rows(load(f"torch-{p}-fp32.json"))
    alt = oc if p == "vit-b16" else {}
    for key in sorted(sen32, key=lambda k: (k[0] != "image", k[1])):
        def cell(t):
            e = t.get(key)
            return f"{e['p50_ms']:.2f} ({rate(e):.1f}/s)" if e else "-"
        a, s = alt.get(key), sen32.get(key)
        ratio = "-"
        if a and s:
            ratio = (f"{a['p50_ms'] / s['p50_ms']:.2f}x faster (p50)" if key[0] == "text" and key[1] == 1
                     else f"{rate(s) / rate(a):.2f}x throughput")
        print(f"| {p} | {key[0]} | {key[1]} | {cell(sen32)} | {cell(sen8)} | {cell(py)} | {cell(pt)} | {cell(alt)} | {ratio} |")

t77 = rows(load("sen-vit-b16-fp32-text77.json"))
if t77:
    s20 = rows(load("sen-vit-b16-fp32.json"))
    print("\nvit-b16 text encoder, sen fp32, p50 ms: whole 77-token context (before) vs 20-token query (after):\n")
    print("| batch | 77 positions | 20 positions | speed-up |")
    print("|---|---|---|---|")
    for key in sorted(t77):
        a, b = t77[key], s20.get(key)
        if b:
            print(f"| {key[1]} | {a['p50_ms']:.2f} | {b['p50_ms']:.2f} | {a['p50_ms'] / b['p50_ms']:.2f}x |")
alt = load("openclip-vit-b16-fp32.json")
if alt:
    print(f"\nThe alternative's optimizer fusions: image {alt['image']['fusions']}, text {alt['text']['fusions']} "
          f"(torch {alt['torch']}, open_clip {alt['open_clip']}, onnxruntime {alt['onnxruntime']}).")

faiss = {(f["index"], f["threads"], f["queries"]): f for f in lines("faiss-100k.jsonl")}
if faiss:
    print("\nExact top-10, one query, 100k x 512 unit rows (p50 ms):\n")
    print("| rows | threads | sen | sen kernel | faiss | faiss index |")
    print("|---|---|---|---|---|---|")
    for dt, idx in [("f32", "flat"), ("f16", "sq-fp16")]:
        for t in sorted({k[1] for k in faiss}):
            s = load(f"search-100k-{dt}-{t}t.json")
            f = faiss.get((idx, t, 1))
            if s and f:
                e = s["results"][0]
                print(f"| {dt} | {t} | {e['p50_ms']:.2f} | {s['kernel']} | {f['p50_ms']:.2f} | "
                      f"{'IndexFlatIP' if idx == 'flat' else 'IndexScalarQuantizer QT_fp16'} |")
faiss = {(f["index"], f["queries"]): f for f in lines("faiss-1m.jsonl")}
if faiss:
    print("\nExact top-10 of Q queries at once over 1M x 512 unit rows, all threads (p50 ms per call, queries/s):\n")
    print("| rows | queries | sen | faiss | sen vs faiss |")
    print("|---|---|---|---|---|")
    for dt, idx in [("f32", "flat"), ("f16", "sq-fp16")]:
        s = load(f"search-1m-{dt}.json")
        if not s:
            continue
        for e in s["results"]:
            f = faiss.get((idx, e["queries"]))
            if f:
                print(f"| {dt} | {e['queries']} | {e['p50_ms']:.1f} ({e['queries_per_s']:.0f}/s) | "
                      f"{f['p50_ms']:.1f} ({f['queries_per_s']:.0f}/s) | {f['p50_ms'] / e['p50_ms']:.2f}x |")

crit = "target/criterion/query-e2e"
e2e = []
for name in ["cpu-fp32-ctx77-vit-b16", "cpu-fp32-vit-b16"]:
    est = os.path.join(crit, name + "_100k-top10", "new", "estimates.json")
    if os.path.exists(est):
        e2e.append((name, json.load(open(est))["median"]["point_estimate"] / 1e6))
if len(e2e) == 2:
    print(f"\nEnd to end, text to top-10 ids over 100k x 512 (tokenise, vit-b16 fp32 text encoder, search), "
          f"criterion median: {e2e[0][1]:.2f} ms fed 77 positions (format 1, before) -> {e2e[1][1]:.2f} ms "
          f"fed the query's length (format 2, after).")
