"""The bundled training images: one particular toy teddy, rendered procedurally.

    python tools/sample_images.py [--check]

Writes ``workflows/images/teddy_<n>.png`` (and a mask per image): a brown
teddy with a red bow and a blue patch on its belly, in varied positions,
sizes and backgrounds. They are what the README's main job and the training
workflow train on; ``--check`` verifies the committed files match this code.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGES_DIR = Path(__file__).resolve().parent.parent / "workflows" / "images"
SIZE = 128
# (centre x, centre y, scale, background top colour, background bottom colour)
SCENES = (
    (0.50, 0.55, 1.00, (120, 170, 230), (90, 160, 80)),    # sky over grass
    (0.38, 0.58, 0.85, (235, 225, 200), (170, 120, 80)),   # cream wall, wooden floor
    (0.62, 0.52, 0.95, (40, 40, 70), (70, 70, 100)),       # night
    (0.50, 0.60, 0.75, (230, 210, 160), (220, 190, 120)),  # sand
)


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: tuple) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def render(scene: tuple) -> tuple[Image.Image, Image.Image]:
    """(RGB image, L mask of the teddy) for one scene."""
    cx, cy, scale, top, bottom = scene
    ramp = np.linspace(0.0, 1.0, SIZE)[:, None, None]
    background = (np.asarray(top) * (1 - ramp) + np.asarray(bottom) * ramp).repeat(SIZE, axis=1)
    image = Image.fromarray(background.astype(np.uint8), "RGB")
    mask = Image.new("L", (SIZE, SIZE), 0)
    s, x, y = scale * SIZE, cx * SIZE, cy * SIZE
    fur, dark = (150, 95, 50), (95, 60, 30)
    for target, colour in ((image, None), (mask, 255)):
        d = ImageDraw.Draw(target)
        paint = (lambda c: colour) if colour is not None else (lambda c: c)  # noqa: E731
        _ellipse(d, x, y + 0.10 * s, 0.20 * s, 0.24 * s, paint(fur))                  # body
        _ellipse(d, x, y - 0.20 * s, 0.15 * s, 0.14 * s, paint(fur))                  # head
        for side in (-1, 1):
            _ellipse(d, x + side * 0.12 * s, y - 0.31 * s, 0.06 * s, 0.06 * s, paint(dark))  # ears
            _ellipse(d, x + side * 0.22 * s, y + 0.05 * s, 0.07 * s, 0.11 * s, paint(fur))   # arms
            _ellipse(d, x + side * 0.12 * s, y + 0.33 * s, 0.08 * s, 0.06 * s, paint(dark))  # feet
        if colour is None:
            _ellipse(d, x, y + 0.12 * s, 0.08 * s, 0.08 * s, (60, 110, 210))            # blue belly patch
            for side in (-1, 1):                                                          # red bow
                d.polygon([(x, y - 0.07 * s), (x + side * 0.09 * s, y - 0.12 * s),
                           (x + side * 0.09 * s, y - 0.02 * s)], fill=(210, 30, 40))
                _ellipse(d, x + side * 0.05 * s, y - 0.23 * s, 0.018 * s, 0.018 * s, (20, 20, 20))  # eyes
            _ellipse(d, x, y - 0.17 * s, 0.03 * s, 0.022 * s, (40, 25, 15))              # nose
    return image, mask


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def expected_files() -> dict[str, bytes]:
    out = {}
    for n, scene in enumerate(SCENES):
        image, mask = render(scene)
        out[f"teddy_{n}.png"] = png_bytes(image)
        out[f"teddy_{n}_mask.png"] = png_bytes(mask)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the committed images")
    args = parser.parse_args(argv)
    stale = []
    for name, data in expected_files().items():
        path = IMAGES_DIR / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
        else:
            IMAGES_DIR.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    if stale:
        print(f"stale sample images (run tools/sample_images.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
