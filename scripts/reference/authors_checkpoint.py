#!/usr/bin/env python3
"""Write small IRRA / SEN checkpoints made with the authors' own PyTorch code, plus
the values sen's importer must reproduce from them.

    python3 scripts/reference/authors_checkpoint.py --irra IRRA_CHECKOUT --sen SEN_CHECKOUT OUT_DIR

IRRA_CHECKOUT / SEN_CHECKOUT are work trees of github anosorae/IRRA and
Delong-liu-bupt/SEN; their packages (model, utils, datasets, solver) are imported from
there, nothing of theirs is copied here. Needs torch, torchvision, pillow, numpy and
what their code imports (ftfy, regex, prettytable, pyyaml, easydict, tqdm); nltk is
stubbed (see `_stub_nltk`). No network: OpenAI weights are never downloaded.

Writes into OUT_DIR:
  irra_fp16.pth         IRRA model ('sdm+mlm+id', cmt_depth 1, 5 classes), fp16 as their
                        build_model's convert_weights leaves it, after one Adam step;
                        saved by their utils/checkpoint.py Checkpointer (model, optimizer,
                        scheduler, num_epoch, iteration, epoch).
  irra_fp32.pth         the same model after .float(), saved by the same Checkpointer
                        without optimizer and scheduler: only model, num_epoch,
                        iteration, epoch.
  sen_fp16_module.pth   SEN model ('sdm+mae+id+tri', need_MAE, mask_ratio 0.7, cmt_depth 1,
                        5 classes), fp16, every model key prefixed 'module.' as DDP
                        training saves it.
  images/*.png          3 RGB images of odd sizes (down- and up-scaling to 128x384) with
                        distinct dominant colours and structures (see `make_images`).
  config.json           sen's ModelConfig for this small CLIP.
  expected.json         versions, config, captions, their tokens, and per checkpoint:
                        sha256, number of model keys, a few key names, and the
                        un-normalised fp32 image (CLS) / text (EOT) features computed by
                        their encode_image / encode_text with the weights upcast to fp32,
                        from images preprocessed by their test transform; and per
                        image, checks of that preprocessed tensor (sums, sample values).

The small CLIP is their model/clip_model.py CLIP(embed_dim=64, image_resolution=(384,128),
vision_layers=1, vision_width=64 (1 head), patch/stride 16, context 77, vocab 49408,
text width 4, 1 head, 1 layer), built in place of build_CLIP_from_openai_pretrained.
"""
import argparse
import copy
import hashlib
import json
import os
import sys
import types
import zipfile

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torch import nn

AUTHOR_PACKAGES = ("model", "utils", "datasets", "solver", "processor")

CLIP_CFG = {
    "embed_dim": 64,
    "vision_layers": 1,
    "vision_width": 64,  # their ViT: heads = width // 64 = 1
    "vision_patch_size": 16,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 4,
    "transformer_heads": 1,
    "transformer_layers": 1,
}
IMG_SIZE = (384, 128)
NUM_CLASSES = 5
CMT_DEPTH = 1

SEN_CONFIG = {
    "vision": {"width": 64, "layers": 1, "heads": 1, "patch_size": 16, "image_height": 384, "image_width": 128},
    "text": {"width": 4, "layers": 1, "heads": 1, "context_length": 77, "vocab_size": 49408},
    "embed_dim": 64,
    "tir": {"width": 64, "heads": 1, "layers": 1, "mlp_width": 256, "mask_ratio": 0.7},
}

# (width, height); odd sizes so that resizing to 128x384 both shrinks and enlarges.
IMAGE_SIZES = [(37, 91), (130, 61), (64, 200)]
CAPTIONS = [
    "a man in a grey hoodie with a red backpack",
    "A woman wearing a long blue dress and white sneakers.",
    "the person carries a black bag, jeans and a yellow t-shirt",
]

# Their run scripts' arguments (run_irra.sh / run_SEN.sh), plus the small sizes.
IRRA_ARGV = ["--name", "irra", "--img_aug", "--batch_size", "64", "--MLM", "--dataset_name", "CUHK-PEDES",
             "--loss_names", "sdm+mlm+id", "--num_epoch", "60",
             "--cmt_depth", str(CMT_DEPTH), "--vocab_size", "64"]
SEN_ARGV = ["--name", "sen", "--img_aug", "--batch_size", "128", "--need_MAE", "--mlm_loss_weight", "1.0",
            "--mae_loss_weight", "10", "--tri_loss_weight", "10", "--mask_ratio", "0.7", "--lr", "1e-5",
            "--dataset_name", "CUHK-PEDES", "--loss_names", "sdm+mae+id+tri", "--num_epoch", "60",
            "--lrscheduler", "cosine", "--cmt_depth", str(CMT_DEPTH)]


def _stub_nltk():
    """SEN's datasets/bases.py imports nltk and calls nltk.download(...) at import time
    (network) for its caption augmentation, which is unused here (we only need its
    `tokenize`); so a stub nltk goes into sys.modules instead of the real package."""
    def unused(*_a, **_k):
        raise RuntimeError("nltk stub: not available in this script")

    nltk = types.ModuleType("nltk")
    nltk.download = lambda *_a, **_k: True
    nltk.word_tokenize = unused
    subs = {
        "tokenize": {"word_tokenize": unused},
        "tag": {"pos_tag": unused},
        "corpus": {"wordnet": types.SimpleNamespace(synsets=unused),
                   "words": types.SimpleNamespace(words=unused)},
    }
    for sub, attrs in subs.items():
        m = types.ModuleType("nltk." + sub)
        for k, v in attrs.items():
            setattr(m, k, v)
        setattr(nltk, sub, m)
        sys.modules["nltk." + sub] = m
    sys.modules["nltk"] = nltk


class Checkout:
    """Import the authors' packages from one checkout (IRRA and SEN use the same
    package names, so the previous checkout's modules are dropped first)."""

    def __init__(self, path):
        self.path = os.path.abspath(path)

    def __enter__(self):
        _purge_author_modules()
        sys.path.insert(0, self.path)
        return self

    def __exit__(self, *exc):
        sys.path.remove(self.path)
        _purge_author_modules()


def _purge_author_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in AUTHOR_PACKAGES:
            del sys.modules[name]


def parse_their_args(argv):
    from utils.options import get_args
    saved = sys.argv
    sys.argv = ["train.py"] + argv
    try:
        return get_args()
    finally:
        sys.argv = saved


def patch_clip_builder():
    """Replace the name model/build.py imported (build_CLIP_from_openai_pretrained,
    which downloads OpenAI's weights) by one that builds their CLIP class at our small
    size and returns (model, cfg) like theirs does."""
    import model.build as build
    from model.clip_model import CLIP

    def small_clip(name, image_size, stride_size, jit=False, download_root=None):
        cfg = dict(CLIP_CFG)
        cfg["image_resolution"] = image_size
        cfg["stride_size"] = stride_size
        return CLIP(**cfg), cfg

    build.build_CLIP_from_openai_pretrained = small_clip


def perturb(model, seed):
    """Make every parameter non-trivial, so that a swapped tensor in the importer shows:
    LayerNorms (ones/zeros), position / class embeddings, and any other constant tensor
    (zero biases, SEN's zero mask_token). SEN's decoder_pos_embed, a fixed sin-cos table
    computed by their code, is left as it is."""
    g = torch.Generator().manual_seed(seed)

    def noise(p, std):
        return torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std

    with torch.no_grad():
        for mname, m in model.named_modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(noise(m.weight, 0.1))
                m.bias.add_(noise(m.bias, 0.05))
        for name, p in model.named_parameters():
            if name.endswith("decoder_pos_embed"):
                continue
            if name.endswith("positional_embedding") or name.endswith("class_embedding"):
                p.add_(noise(p, 0.01))
            elif p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
                p.add_(noise(p, 0.02))
        for name, p in model.named_parameters():
            if p.numel() > 1 and not name.endswith("decoder_pos_embed"):
                assert not bool((p == p.reshape(-1)[0]).all()), f"{name} is still constant"


def make_images(out_dir):
    """Three images with distinct dominant colours and structures (red with vertical
    stripes, green with a checkerboard, dark blue with a yellow disc), so that their
    features differ clearly even through this small random model (mid-grey images with
    only high-frequency differences gave image features with cosine > 0.9999); noise
    and edges keep the resampling checks meaningful."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    names = []
    for i, (w, h) in enumerate(IMAGE_SIZES):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        u, v = x / max(w - 1, 1), y / max(h - 1, 1)
        if i == 0:  # red, vertical dark/bright stripes, brighter downwards
            stripes = np.sign(np.sin(2 * np.pi * 4 * u))[..., None]
            img = np.array([200.0, 40.0, 30.0]) + 60.0 * stripes * np.array([1.0, 0.3, 0.3]) + 30.0 * v[..., None]
        elif i == 1:  # green, 10-pixel checkerboard, darker to the right
            checker = ((x // 10 + y // 10) % 2)[..., None]
            img = (np.array([30.0, 190.0, 60.0]) + 50.0 * checker * np.array([0.3, 1.0, 0.5])
                   - 80.0 * u[..., None] * np.array([0.2, 1.0, 0.3]))
        else:  # dark blue, lighter downwards, with a bright yellow disc
            img = np.array([20.0, 40.0, 170.0]) + 40.0 * v[..., None] * np.array([0.0, 0.5, 1.0])
            disc = (u - 0.5) ** 2 + ((v - 0.4) * h / w) ** 2 < 0.12
            img[disc] = np.array([240.0, 220.0, 40.0])
        img = img + rng.normal(0.0, 12.0, size=(h, w, 3))
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        name = f"img{i}_{w}x{h}.png"
        Image.fromarray(img, "RGB").save(os.path.join(out_dir, "images", name))
        names.append(name)
    return names


def their_inputs(out_dir, image_names):
    """Images through their read_image + test transform, captions through their tokenizer."""
    from datasets.bases import tokenize
    from datasets.build import build_transforms
    from utils.iotools import read_image
    from utils.simple_tokenizer import SimpleTokenizer

    transform = build_transforms(img_size=IMG_SIZE, aug=False, is_train=False)
    images = torch.stack([transform(read_image(os.path.join(out_dir, "images", n))) for n in image_names])
    tokenizer = SimpleTokenizer()
    tokens = torch.stack([tokenize(c, tokenizer=tokenizer, text_length=77, truncate=True) for c in CAPTIONS])
    mask_id = tokenizer.encoder["<|mask|>"]
    return images, tokens, mask_id


def preprocess_checks(images):
    """Per image, a few numbers of their preprocessed [3, 384, 128] tensor, so that a test
    can check the Rust preprocessing directly (the pooled features are not sensitive to
    a pixel or two): sum and sum of |x| (in float64), and values at fixed positions."""
    rng = np.random.default_rng(1)
    _, c, h, w = images.shape
    pos = [(0, 0, 0), (c - 1, h - 1, w - 1), (1, 0, w - 1), (2, h - 1, 0)]
    pos += [(int(rng.integers(c)), int(rng.integers(h)), int(rng.integers(w))) for _ in range(20)]
    out = []
    for x in images:
        xd = x.double()
        out.append({
            "sum": float(xd.sum()),
            "abs_sum": float(xd.abs().sum()),
            "samples": [[ci, yi, xi, float(x[ci, yi, xi])] for ci, yi, xi in pos],
        })
    return out


def train_batch(images, tokens, mask_id, mlm):
    batch = {"images": images, "caption_ids": tokens, "pids": torch.tensor([0, 1, 2])}
    if mlm:
        # one masked word per caption; the labels must be < args.vocab_size (64 here).
        mlm_ids = tokens.clone()
        mlm_ids[:, 2] = mask_id
        labels = torch.zeros_like(tokens)
        labels[:, 2] = torch.tensor([5, 17, 42])
        batch.update({"mlm_ids": mlm_ids, "mlm_labels": labels})
    return batch


def one_step(model, batch, optimizer, scheduler):
    """One iteration of their processor.do_train loop, then the epoch's scheduler step."""
    model.train()
    ret = model(batch)
    total_loss = sum([v for k, v in ret.items() if "loss" in k])
    optimizer.zero_grad()
    total_loss.backward()
    optimizer.step()
    scheduler.step()
    return {k: float(v.detach()) for k, v in ret.items() if "loss" in k}


def freeze_token_embedding(model):
    """Size: Adam's exp_avg/exp_avg_sq of the [49408, 4] fp32 token embedding would add
    1.6 MB to each file with optimizer state (the embedding itself is 0.8 MB of the
    ~1.2 MB fp16 model). Frozen, their
    build_optimizer skips it (it skips every requires_grad=False parameter, as it already
    does SEN's decoder_pos_embed); every other parameter still gets Adam state."""
    model.base_model.token_embedding.weight.requires_grad_(False)


class DDPLike(nn.Module):
    """Holds the model as `.module`, so its state_dict keys start with 'module.' as
    DistributedDataParallel's do."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def features(build_fresh, path, images, tokens):
    """Load the saved file, upcast its weights to fp32 (load_state_dict into a model that
    was never converted to fp16), and run their encode_image / encode_text."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt["model"]
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    model = build_fresh()
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        img = model.encode_image(images)  # their: base_model.encode_image(x)[:, 0, :].float()
        txt = model.encode_text(tokens)  # their: encode_text(t)[arange, t.argmax(-1)].float()
    assert img.dtype == torch.float32 and txt.dtype == torch.float32
    keys = list(ckpt["model"].keys())
    sample = keys[:4] + [k for k in keys if "classifier" in k or "decoder_pred" in k or "mlm_head" in k][:3]
    return {
        "sha256": sha256(path),
        "size": os.path.getsize(path),
        "keys": len(keys),
        "model_key_sample": sample,
        "top_level": list(ckpt.keys()),
        "image": img.tolist(),
        "text": txt.tolist(),
    }, model


def irra_stage(checkout, out_dir, image_names):
    with Checkout(checkout):
        patch_clip_builder()
        from model.build import IRRA, build_model, convert_weights
        from solver import build_lr_scheduler, build_optimizer
        from utils.checkpoint import Checkpointer

        images, tokens, mask_id = their_inputs(out_dir, image_names)
        args = parse_their_args(IRRA_ARGV)

        torch.manual_seed(0)
        model = IRRA(args, NUM_CLASSES)
        perturb(model, seed=1)
        # their build_model(args, num_classes) = IRRA(args, num_classes) + convert_weights(model);
        # the perturbation has to sit in between, so the two steps are done here by hand.
        assert build_model.__code__.co_names[:2] == ("IRRA", "convert_weights"), build_model.__code__.co_names
        convert_weights(model)

        freeze_token_embedding(model)
        optimizer = build_optimizer(args, model)
        scheduler = build_lr_scheduler(args, optimizer)
        losses = one_step(model, train_batch(images, tokens, mask_id, mlm=True), optimizer, scheduler)
        arguments = {"num_epoch": args.num_epoch, "iteration": 0, "epoch": 1}
        ckp = Checkpointer(model, optimizer, scheduler, out_dir, True)
        ckp.save("irra_fp16", **arguments)
        model_fp32 = copy.deepcopy(model).float()
        model.float()
        # size: no optimizer / scheduler state in the fp32 file, only the model and the ints.
        Checkpointer(model, None, None, out_dir, True).save("irra_fp32", **arguments)

        def fresh():
            return IRRA(args, NUM_CLASSES)

        out = {}
        for name in ("irra_fp16.pth", "irra_fp32.pth"):
            out[name], loaded = features(fresh, os.path.join(out_dir, name), images, tokens)
            for (k, a), (k2, b) in zip(loaded.state_dict().items(), model_fp32.state_dict().items()):
                assert k == k2 and torch.equal(a, b), k
        return out, tokens, losses, preprocess_checks(images)


def sen_stage(checkout, out_dir, image_names):
    with Checkout(checkout):
        patch_clip_builder()
        from model.build import SEN, build_model, convert_weights
        from solver import build_lr_scheduler, build_optimizer
        from utils.checkpoint import Checkpointer

        images, tokens, mask_id = their_inputs(out_dir, image_names)
        args = parse_their_args(SEN_ARGV)

        torch.manual_seed(0)
        model = SEN(args, NUM_CLASSES)
        perturb(model, seed=2)
        assert build_model.__code__.co_names[:2] == ("SEN", "convert_weights"), build_model.__code__.co_names
        convert_weights(model)

        freeze_token_embedding(model)
        wrapped = DDPLike(model)  # train.py: DDP(model); optimizer built over the wrapper
        optimizer = build_optimizer(args, wrapped)
        scheduler = build_lr_scheduler(args, optimizer)
        losses = one_step(wrapped.module, train_batch(images, tokens, mask_id, mlm=False), optimizer, scheduler)
        arguments = {"num_epoch": args.num_epoch, "iteration": 0, "epoch": 1}
        Checkpointer(wrapped, optimizer, scheduler, out_dir, True).save("sen_fp16_module", **arguments)

        def fresh():
            return SEN(args, NUM_CLASSES)

        name = "sen_fp16_module.pth"
        res, loaded = features(fresh, os.path.join(out_dir, name), images, tokens)
        ref = copy.deepcopy(model).float().state_dict()
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, ref[k]), k
        return {name: res}, tokens, losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--irra", required=True, help="IRRA checkout (anosorae/IRRA)")
    ap.add_argument("--sen", required=True, help="SEN checkout (Delong-liu-bupt/SEN)")
    ap.add_argument("out_dir")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    torch.set_num_threads(1)
    _stub_nltk()

    image_names = make_images(a.out_dir)
    irra, irra_tokens, irra_losses, pre = irra_stage(a.irra, a.out_dir, image_names)
    sen, sen_tokens, sen_losses = sen_stage(a.sen, a.out_dir, image_names)
    assert torch.equal(irra_tokens, sen_tokens)

    checkpoints = {**irra, **sen}
    for name in checkpoints:
        with zipfile.ZipFile(os.path.join(a.out_dir, name)) as z:
            checkpoints[name]["zip_entries"] = [n for n in z.namelist() if "/data/" not in n]

    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump(SEN_CONFIG, f, indent=2)
        f.write("\n")
    expected = {
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "torchvision": torchvision.__version__,
        "config": SEN_CONFIG,
        "images": image_names,
        "preprocessed": pre,
        "captions": CAPTIONS,
        "tokens": irra_tokens.tolist(),
        "train_step_losses": {"irra": irra_losses, "sen": sen_losses},
        "checkpoints": checkpoints,
    }
    with open(os.path.join(a.out_dir, "expected.json"), "w") as f:
        json.dump(expected, f)
        f.write("\n")
    for name, c in checkpoints.items():
        print(f"{name}: {c['size']} bytes, {c['keys']} model keys, sha256 {c['sha256']}")


if __name__ == "__main__":
    main()
