#!/usr/bin/env python3
"""Write the preprocessing parity fixtures under core/tests/fixtures/images/.

Inputs are crops of photographs that ship in the scikit-image wheel (astronaut,
rocket, hubble: NASA, public domain; coffee: Rachel Michetti, CC0; chelsea:
Stefan van der Walt, CC0), saved in the formats and variants sen must read. For
each, the reference is what a PyTorch/PIL pipeline feeds CLIP before the float
step: `ImageOps.exif_transpose(Image.open(p)).convert("RGB").resize((W, H),
filter)` as uint8, saved losslessly, for both filters sen implements: BICUBIC
(OpenAI CLIP's) as `<name>.<W>x<H>.pil.png` and BILINEAR (torchvision's
`Resize` on PIL images, IRRA's and SEN's) as `<name>.<W>x<H>.bilinear.pil.png`.
`/255` and the CLIP normalisation are then applied identically on both sides in
the test. cases.json lists everything, each case with its `filter`.

    pip install pillow==13.0.0 && pip download --no-deps scikit-image  # then unzip skimage/data
    python3 scripts/reference/preprocess_cases.py SKIMAGE_DATA_DIR
"""
import io
import json
import os
import sys

import PIL
from PIL import Image, ImageOps

# Each filter: its name in sen's `preprocess.resize`, Pillow's constant, and the
# reference file's suffix (bicubic's is the original, unmarked one).
FILTERS = [("bicubic", Image.BICUBIC, ""), ("bilinear", Image.BILINEAR, ".bilinear")]

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "core", "tests", "fixtures", "images")


def main(src):
    os.makedirs(OUT, exist_ok=True)
    op = lambda n: Image.open(os.path.join(src, n)).convert("RGB")
    astronaut, coffee, chelsea = op("astronaut.png"), op("coffee.png"), op("chelsea.png")
    rocket, hubble = op("rocket.jpg"), op("hubble_deep_field.jpg")
    inputs = {}

    def save(name, img, **kw):
        path = os.path.join(OUT, name)
        img.save(path, **kw)
        inputs[name] = path

    save("astronaut.jpg", astronaut.crop((150, 0, 350, 500)), quality=92)
    save("coffee.png", coffee.crop((200, 0, 360, 400)))
    save("coffee.bmp", coffee.crop((200, 0, 360, 400)))
    save("coffee.webp", coffee.crop((200, 0, 360, 400)), quality=90)
    save("chelsea_q75.jpg", chelsea.crop((150, 0, 270, 300)), quality=75)
    save("rocket.jpg", rocket.crop((120, 50, 300, 590)), quality=95)
    save("hubble.jpg", hubble.crop((0, 0, 240, 600)), quality=85)
    save("small_upscale.png", astronaut.crop((200, 40, 248, 160)))
    save("grey.jpg", chelsea.crop((150, 0, 270, 300)).convert("L"), quality=90)
    rgba = coffee.crop((200, 0, 360, 400)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    save("rgba.png", rgba)
    # Stored rotated, with EXIF Orientation 6 ("rotate 90 CW to display").
    upright = astronaut.crop((150, 0, 350, 500))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_orientation6.jpg", upright.transpose(Image.Transpose.ROTATE_90), quality=92, exif=exif.tobytes())

    cases = []
    for filt, pil_filter, suffix in FILTERS:
        for name, path in sorted(inputs.items()):
            sizes = [(128, 384)] + ([(64, 192)] if name in ("astronaut.jpg", "coffee.png") else [])
            for w, h in sizes:
                ref = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((w, h), pil_filter)
                ref_name = f"{name}.{w}x{h}{suffix}.pil.png"
                ref.save(os.path.join(OUT, ref_name))
                cases.append({"input": name, "reference": ref_name, "width": w, "height": h, "filter": filt})
    # Pass-order and kernel edge cases: a noise image resized to many sizes (both
    # pass orders, up- and downscaling, one axis only). Lossless, so exact equality.
    import random
    import numpy as np
    rnd = random.Random(7)
    noise = Image.fromarray(np.random.default_rng(7).integers(0, 256, (150, 90, 3), dtype=np.uint8))
    noise.save(os.path.join(OUT, "noise.png"))
    sizes = [(90, 40), (30, 150), (31, 149), (12, 20), (45, 30), (200, 70), (64, 192), (128, 384)]
    sizes += [(rnd.randint(4, 100), rnd.randint(4, 100)) for _ in range(16)]
    for filt, pil_filter, suffix in FILTERS:
        for w, h in sizes:
            ref_name = f"noise.png.{w}x{h}{suffix}.pil.png"
            noise.resize((w, h), pil_filter).save(os.path.join(OUT, ref_name))
            cases.append({"input": "noise.png", "reference": ref_name, "width": w, "height": h, "filter": filt})
    meta = {
        "generator": "scripts/reference/preprocess_cases.py",
        "reference": f"Pillow {PIL.__version__}: exif_transpose, convert('RGB'), resize((W, H), BICUBIC or BILINEAR as the case's filter)",
        "cases": cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
