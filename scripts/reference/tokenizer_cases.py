#!/usr/bin/env python3
"""Write core/tests/fixtures/tokenizer_open_clip.json: texts and the ids that
open_clip's `tokenize()` (open_clip_torch 3.3.0, ftfy 6.3.1) gives them.

    pip install ftfy==6.3.1 regex numpy && pip install --no-deps open_clip_torch==3.3.0
    python3 scripts/reference/tokenizer_cases.py > core/tests/fixtures/tokenizer_open_clip.json

open_clip's tokenizer module imports torch only to build the output tensor. Where
torch cannot be imported (a CPU machine without the CUDA libraries torch links),
a stand-in with `zeros`/`tensor`/`long` backed by numpy is installed first; the
tokenisation code that runs is open_clip's own.
"""
import importlib.util
import json
import sys
import types

try:
    import torch  # noqa: F401
    TORCH = "torch"
except Exception:
    import numpy as np
    shim = types.ModuleType("torch")
    shim.long = np.int64
    shim.LongTensor = np.ndarray
    shim.Tensor = np.ndarray
    shim.zeros = lambda *shape, dtype=None: np.zeros(shape, dtype=dtype)
    shim.tensor = lambda data, dtype=None: np.array(data, dtype=dtype)
    sys.modules["torch"] = shim
    TORCH = "numpy stand-in for torch"

import importlib.metadata  # noqa: E402
import os  # noqa: E402

# Load open_clip/tokenizer.py by path: the package __init__ pulls in the models (torch.nn).
_pkg = importlib.util.find_spec("open_clip").submodule_search_locations[0]
spec = importlib.util.spec_from_file_location("open_clip_tokenizer", os.path.join(_pkg, "tokenizer.py"))
tok = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tok)
OPEN_CLIP_VERSION = importlib.metadata.version("open_clip_torch")

CASES = [
    "",
    "a man in a grey hoodie with a red backpack",
    "A WOMAN in a Red Coat, carrying a black backpack.",
    "He's wearing blue jeans; she'd've worn a skirt... isn't it?!",
    "The pedestrian wears a t-shirt (white/black) & shorts -- size 42, 3.5 cm, 1990s.",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe \u00c5ngstr\u00f6m",
    "e\u0301 composed differently: cafe\u0301",
    "a girl with a \U0001F392 backpack and \U0001F45F sneakers \U0001F600\U0001F44D\U0001F3FD",
    "\u4e00\u4e2a\u7a7f\u7ea2\u8272\u5916\u5957\u7684\u5973\u4eba \u8d64\u3044\u30b3\u30fc\u30c8\u306e\u5973\u6027 \ube68\uac04 \ucf54\ud2b8",
    "\u201ccurly\u201d quotes and \u2018single\u2019 ones, it\u2019s fine",
    "html &amp; entities &lt;b&gt; &quot;quoted&quot; &#39;apos&#39; &eacute; &amp;amp;",
    "<b>bold</b> &amp; tags keep ftfy's unescape off",
    "full\uff37\uff49\uff44\uff54\uff48 \uff11\uff12\uff13 and ligature \ufb01ne \ufb02ower",
    "  lots   of\twhite\nspace\r\n and\u00a0nbsp\u3000ideographic  ",
    "numbers 0123456789 and 3.14159 and 1,000,000",
    "<start_of_text> literal special tokens <end_of_text>",
    "URL http://example.com/a_b?c=d#e and email a.b@c.de",
    "\u0391\u03b8\u03b7\u039d\u0391 \u039f\u0394\u039f\u03a3 \u041c\u043e\u0441\u043a\u0432\u0430 \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "'s 't 're 've 'm 'll 'd at the start, and trailing'",
    "under_scores, hy-phens, sl/ashes, back\\slashes, pipes|, tildes~, carets^",
    "The man is wearing a black jacket over a white shirt, dark blue jeans and brown leather shoes. "
    "He is carrying a grey backpack on his right shoulder and holding a phone in his left hand while "
    "walking towards the camera. His hair is short and black, and he has a thin beard. He also wears "
    "glasses and a silver watch on his wrist, and there is a small logo on the chest of the jacket.",
    " ".join(["word"] * 80),
    " ".join(["supercalifragilisticexpialidocious"] * 20),
    "A young woman with long brown hair, wearing a light pink dress with white polka dots, "
    "a denim jacket, and white sneakers; she carries a small crossbody bag.",
    "\u00bfQu\u00e9? \u00a1S\u00ed! \u00c7a va? \u0130stanbul \u0130I\u0131i \u1e9e",
    "tab\there, zero\u200bwidth, soft\u00adhyphen, bom\ufeffmark, ctrl\x07char",
]


def main():
    out = {
        "generator": "scripts/reference/tokenizer_cases.py",
        "reference": f"open_clip_torch {OPEN_CLIP_VERSION} tokenize() via {TORCH}",
        "context_length": 77,
        "cases": [],
    }
    ids = tok.tokenize(CASES)
    for text, row in zip(CASES, ids):
        row = [int(x) for x in row]
        out["cases"].append({"text": text, "ids": row})
    # Also a short context, to pin the truncation rule (last slot is EOT).
    out["short_context"] = {
        "context_length": 8,
        "cases": [{"text": t, "ids": [int(x) for x in r]}
                  for t, r in zip(CASES[1:4], tok.tokenize(CASES[1:4], context_length=8))],
    }
    json.dump(out, sys.stdout, indent=1, ensure_ascii=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
