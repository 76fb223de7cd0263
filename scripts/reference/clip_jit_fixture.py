#!/usr/bin/env python3
"""Write train/tests/fixtures/clip_micro_jit.pt: a TorchScript archive with the
structure of OpenAI's released CLIP ViT models (the same nested module names,
nn.MultiheadAttention's packed in_proj, fp16 parameters, a 14x14+1 position table,
logit_scale, and input_resolution/context_length/vocab_size entries), at width 8
so it stays small; plus clip_micro_expected.json with values the Rust import test
checks. Needs PyTorch (run on a machine that has it):

    python3 scripts/reference/clip_jit_fixture.py OUT_DIR
"""
import json
import sys
from collections import OrderedDict

import torch
from torch import nn

W, HEADS, EMBED, VOCAB, CTX = 8, 2, 8, 49408, 77


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, d * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(d * 4, d))]))
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x), self.ln_1(x), self.ln_1(x), need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, d, layers, h):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(d, h) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        scale = W ** -0.5
        self.conv1 = nn.Conv2d(3, W, kernel_size=16, stride=16, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(W))
        self.positional_embedding = nn.Parameter(scale * torch.randn(14 * 14 + 1, W))
        self.ln_pre = nn.LayerNorm(W)
        self.transformer = Transformer(W, 1, HEADS)
        self.ln_post = nn.LayerNorm(W)
        self.proj = nn.Parameter(scale * torch.randn(W, EMBED))

    def forward(self, x):
        return self.ln_post(self.transformer(self.ln_pre(x))) @ self.proj


class CLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = VisionTransformer()
        self.transformer = Transformer(W, 1, HEADS)
        self.token_embedding = nn.Embedding(VOCAB, W)
        self.positional_embedding = nn.Parameter(torch.randn(CTX, W) * 0.01)
        self.ln_final = nn.LayerNorm(W)
        self.text_projection = nn.Parameter(torch.randn(W, EMBED) * W ** -0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * 4.6052)
        # OpenAI's archives carry these as entries of the state dict.
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("context_length", torch.tensor(CTX))
        self.register_buffer("vocab_size", torch.tensor(VOCAB))

    def forward(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        return self.ln_final(self.transformer(x)) @ self.text_projection


def main(out):
    torch.manual_seed(0)
    m = CLIP()
    for p in m.parameters():  # randomise LayerNorm/bias values too, so a swap would show
        p.data.add_(0.01 * torch.randn_like(p))
    m = m.half()
    scripted = torch.jit.script(m)
    scripted.save(f"{out}/clip_micro_jit.pt")
    sd = {k: v.float() for k, v in m.state_dict().items()}
    expect = {k: {"shape": list(v.shape), "first": [float(x) for x in v.flatten()[:4]]} for k, v in sd.items()}
    names = sorted(n for n, _ in scripted.named_parameters())
    with open(f"{out}/clip_micro_expected.json", "w") as f:
        json.dump({"generator": "scripts/reference/clip_jit_fixture.py", "torch": torch.__version__,
                   "parameters": names, "tensors": expect}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
