"""A small scatter plot with error bars, drawn with PIL (no plotting library needed)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207), (127, 127, 127))


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    x_err: float = 0.0
    y_err: float = 0.0
    label: str = ""


def scatter(series: dict[str, list[Point]], x_label: str, y_label: str, title: str,
            size: tuple[int, int] = (720, 540), connect: bool = True) -> Image.Image:
    """Points of each series in its colour (joined in order when ``connect``), axes fixed to [0, 1]."""
    w, h = size
    left, right, top, bottom = 70, 190, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def px(x: float, y: float) -> tuple[float, float]:
        return left + x * (w - left - right), h - bottom - y * (h - top - bottom)

    for i in range(11):
        v = i / 10
        x0, y0 = px(v, 0)
        d.line([px(v, 0), px(v, 1)], fill=(235, 235, 235))
        d.line([px(0, v), px(1, v)], fill=(235, 235, 235))
        d.text((x0 - 8, y0 + 6), f"{v:.1f}", fill="black")
        xl, yl = px(0, v)
        d.text((xl - 28, yl - 6), f"{v:.1f}", fill="black")
    d.rectangle([px(0, 1), px(1, 0)], outline="black")
    d.text((left, 12), title, fill="black")
    d.text(((w - right + left) / 2 - 40, h - 25), x_label, fill="black")
    d.text((8, top - 25), y_label, fill="black")
    for n, (name, points) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        xy = [px(p.x, p.y) for p in points]
        if connect and len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for p, (cx, cy) in zip(points, xy):
            if p.x_err:
                d.line([px(p.x - p.x_err, p.y), px(p.x + p.x_err, p.y)], fill=colour)
            if p.y_err:
                d.line([px(p.x, p.y - p.y_err), px(p.x, p.y + p.y_err)], fill=colour)
            d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour)
            if p.label:
                d.text((cx + 6, cy - 12), p.label, fill=colour)
        ly = top + 20 * n
        d.rectangle([w - right + 15, ly, w - right + 27, ly + 12], fill=colour)
        d.text((w - right + 33, ly), name, fill="black")
    return img
