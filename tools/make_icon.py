"""Draw the pack's registry icon, docs/icon.png: a key (key-locking) over a soft glow.

    python tools/make_icon.py    # (re)writes docs/icon.png; the output is deterministic

The Comfy registry shows a square icon of at most 400 px; 128 px keeps the file tiny.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ICON_PATH = Path(__file__).resolve().parent.parent / "docs" / "icon.png"
SIZE = 128


def draw_icon(size: int = SIZE) -> Image.Image:
    img = Image.new("RGB", (size, size), (22, 28, 48))
    d = ImageDraw.Draw(img)
    s = size / 128  # the drawing is laid out on a 128 px grid
    for r, shade in ((52, (40, 52, 92)), (40, (58, 76, 130)), (28, (80, 104, 170))):  # glow behind the bow
        d.ellipse(((44 - r) * s, (52 - r) * s, (44 + r) * s, (52 + r) * s), fill=shade)
    gold = (242, 190, 70)
    d.ellipse((22 * s, 30 * s, 66 * s, 74 * s), fill=gold)  # bow of the key
    d.ellipse((34 * s, 42 * s, 54 * s, 62 * s), fill=(22, 28, 48))  # its hole
    d.rectangle((62 * s, 47 * s, 112 * s, 57 * s), fill=gold)  # shaft
    for x in (90, 102):  # bit: two teeth
        d.rectangle((x * s, 57 * s, (x + 7) * s, 72 * s), fill=gold)
    return img


def main() -> None:
    ICON_PATH.parent.mkdir(parents=True, exist_ok=True)
    draw_icon().save(ICON_PATH, optimize=True)
    print(f"wrote {ICON_PATH} ({ICON_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
