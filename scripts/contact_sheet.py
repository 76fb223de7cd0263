#!/usr/bin/env python3
"""Render a contact sheet of a CUHK-PEDES-format dataset (images with a caption each).

    sen synth --out /tmp/synth && python3 scripts/contact_sheet.py /tmp/synth docs/synth_contact_sheet.png

Needs Pillow. Shows two images each of the first 12 test identities, 6 per row.
"""
import json
import sys
import textwrap

from PIL import Image, ImageDraw, ImageFont


def main(root, out, n=24, cols=6):
    # Two images each of the first n/2 test identities: the same person varies, neighbours differ a little.
    recs = [r for r in json.load(open(f"{root}/reid_raw.json"))
            if r["split"] == "test" and r["file_path"].endswith(("_0.jpg", "_1.jpg"))][:n]
    tw, th, cap_h = 128, 384, 150
    sheet = Image.new("RGB", (cols * (tw + 8) + 8, ((len(recs) + cols - 1) // cols) * (th + cap_h + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for i, r in enumerate(recs):
        x, y = 8 + (i % cols) * (tw + 8), 8 + (i // cols) * (th + cap_h + 8)
        im = Image.open(f"{root}/imgs/{r['file_path']}").convert("RGB").resize((tw, th), Image.BICUBIC)
        sheet.paste(im, (x, y))
        text = f"id {r['id']}: " + r["captions"][0]
        draw.multiline_text((x, y + th + 3), "\n".join(textwrap.wrap(text, 24))[:400], fill="black", font=font)
    sheet.quantize(colors=256, dither=Image.Dither.NONE).save(out, optimize=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
