"""The main job's contact sheet: one picture that shows a person what training did.

Rows, top to bottom: the training images; the base model asked for the superclass word in
settings the images do not show; the trained concept asked for in the same settings, with the
same seed. Every picture is scaled to one cell size with nearest-neighbour sampling, so that
small (64 px) pictures keep their pixels sharp and their parts (pattern, accessory) visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

Row = tuple[str, Sequence[tuple[Path, str]]]  # (heading, [(picture file, caption), ...])
PAD, HEADING, CAPTION = 12, 30, 40  # pixels: margins, a row's heading, a picture's two caption lines
CELL = 256  # pixels of a picture's side on the sheet: 4x a 64 px world picture


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed-size bitmap font
        return ImageFont.load_default()


def cell_origin(row: int, column: int, cell: int = CELL) -> tuple[int, int]:
    """Top-left corner of picture ``column`` of ``row`` on a sheet of ``cell`` px pictures."""
    return PAD + column * (cell + PAD), PAD + row * (HEADING + cell + CAPTION + PAD) + HEADING


def contact_sheet(rows: Sequence[Row], cell: int = CELL) -> Image.Image:
    """One white sheet: each row a heading over its pictures, each picture ``cell`` px square
    with its caption under it. Raises FileNotFoundError naming a missing picture."""
    heading_font, caption_font = _font(20), _font(14)
    columns = max(len(pictures) for _, pictures in rows)
    sheet = Image.new("RGB", cell_origin(len(rows), columns, cell), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (heading, pictures) in enumerate(rows):
        x, y = cell_origin(r, 0, cell)
        draw.text((x, y - HEADING), heading, fill="black", font=heading_font)
        for c, (path, caption) in enumerate(pictures):
            if not path.is_file():
                raise FileNotFoundError(f"contact sheet: no picture at {path}")
            x, y = cell_origin(r, c, cell)
            with Image.open(path) as picture:
                sheet.paste(picture.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
            draw.multiline_text((x, y + cell + 3), _wrap(draw, caption, caption_font, cell), fill="black",
                                font=caption_font, spacing=2)
    return sheet


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
          width: int) -> str:
    """``text`` broken into lines of at most ``width`` pixels, at spaces (a longer word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)
