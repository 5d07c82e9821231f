"""Draw a :class:`~world.scenes.Scene` as a 64 px RGB image and an object mask.

Shapes are drawn at 4x and box-filtered down, so edges are smooth like a
photo's rather than aliased. Everything random (small offsets, size and tint)
comes from the scene's ``jitter_seed``, so a scene always renders to the same
pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from world.scenes import CONCEPT_BY_NAME, Scene, WorldObject

SIZE = 64
_SS = 4  # supersampling factor
_CANVAS = SIZE * _SS

RGB = {
    "red": (205, 40, 40), "yellow": (235, 200, 40), "green": (50, 160, 60), "blue": (50, 90, 215),
    "purple": (140, 60, 175), "brown": (140, 90, 45), "white": (242, 242, 236),
}
# (top colour, horizon colour, ground colour near, ground colour far), horizon height
_BACKGROUND = {
    "grass": ((110, 165, 235), (185, 215, 245), (70, 140, 60), (105, 170, 80), 0.55),
    "beach": ((120, 185, 240), (200, 225, 250), (215, 185, 125), (235, 210, 155), 0.55),
    "snow": ((165, 175, 195), (205, 210, 220), (235, 240, 247), (250, 252, 255), 0.55),
    "night": ((12, 15, 45), (35, 40, 85), (30, 38, 60), (45, 52, 80), 0.6),
    "room": ((225, 212, 185), (236, 226, 204), (150, 100, 60), (175, 122, 78), 0.62),
}
SLOT_X = {"left": 0.26, "middle": 0.5, "right": 0.74}
HEIGHT = {"small": 0.40, "big": 0.62}
GROUND_Y = 0.86


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * f))) for c in rgb)  # type: ignore[return-value]


class _Painter:
    """Draws each shape on the image and, in white, on the object mask."""

    def __init__(self, image: Image.Image, mask: Image.Image) -> None:
        self.img, self.mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: tuple) -> None:
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        self.img.ellipse(box, fill=fill)
        self.mask.ellipse(box, fill=255)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: tuple, radius: float = 0) -> None:
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self.img.rounded_rectangle(box, radius=radius, fill=fill)
        self.mask.rounded_rectangle(box, radius=radius, fill=255)

    def polygon(self, points: list[tuple[float, float]], fill: tuple) -> None:
        self.img.polygon(points, fill=fill)
        self.mask.polygon(points, fill=255)

    def line(self, points: list[tuple[float, float]], fill: tuple, width: float) -> None:
        self.img.line(points, fill=fill, width=int(width), joint="curve")
        self.mask.line(points, fill=255, width=int(width), joint="curve")

    def ring(self, cx: float, cy: float, rx: float, ry: float, fill: tuple, width: float) -> None:
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        self.img.ellipse(box, outline=fill, width=int(width))
        self.mask.ellipse(box, outline=255, width=int(width))


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return [(cx + q * np.cos(a), cy - q * np.sin(a)) for a, q in zip(angles, radii)]


@dataclass(frozen=True)
class _Anchors:
    """Where a category's parts go: the body's centre (px) and half-extents (units of the height
    h), the y of the body's top edge, the point a hat sits over and a collar hangs under (the
    head, or what stands for it), and the point a badge is pinned to."""

    body: tuple[float, float]
    reach: tuple[float, float]
    top: float
    head: tuple[float, float]
    front: tuple[float, float]


def _teddy(p: _Painter, x: float, ground: float, h: float, colour: tuple, d: int) -> _Anchors:
    dark = _shade(colour, 0.65)
    body_y, head_y = ground - 0.33 * h, ground - 0.72 * h
    for side in (-1, 1):
        p.ellipse(x + side * 0.14 * h, ground - 0.06 * h, 0.10 * h, 0.07 * h, dark)         # feet
        p.ellipse(x + side * 0.25 * h, body_y - 0.03 * h, 0.08 * h, 0.13 * h, colour)       # arms
        p.ellipse(x + side * 0.14 * h, head_y - 0.15 * h, 0.075 * h, 0.075 * h, dark)       # ears
    p.ellipse(x, body_y, 0.22 * h, 0.27 * h, colour)
    p.ellipse(x, head_y, 0.18 * h, 0.17 * h, colour)
    p.ellipse(x, head_y + 0.06 * h, 0.07 * h, 0.05 * h, _shade(colour, 1.25))              # muzzle
    for side in (-1, 1):
        p.ellipse(x + side * 0.065 * h, head_y - 0.03 * h, 0.025 * h, 0.025 * h, (20, 20, 20))
    p.ellipse(x, head_y + 0.045 * h, 0.03 * h, 0.022 * h, (35, 20, 10))
    return _Anchors((x, body_y), (0.22, 0.27), body_y - 0.27 * h, (x, head_y), (x, body_y))


def _cat(p: _Painter, x: float, ground: float, h: float, colour: tuple, d: int) -> _Anchors:
    body_y = ground - 0.3 * h
    p.line([(x - d * 0.32 * h, body_y), (x - d * 0.45 * h, body_y - 0.2 * h), (x - d * 0.38 * h, body_y - 0.42 * h)],
           colour, 0.07 * h)                                                                   # tail
    for lx in (-0.25, -0.13, 0.13, 0.25):
        p.rect(x + d * lx * h - 0.04 * h, body_y, x + d * lx * h + 0.04 * h, ground, colour)  # legs
    p.ellipse(x, body_y, 0.36 * h, 0.17 * h, colour)
    hx, hy = x + d * 0.3 * h, ground - 0.58 * h
    for side in (-1, 1):
        ex = hx + side * 0.1 * h
        p.polygon([(ex - 0.07 * h, hy - 0.08 * h), (ex + 0.07 * h, hy - 0.08 * h), (ex, hy - 0.26 * h)], colour)
    p.ellipse(hx, hy, 0.16 * h, 0.15 * h, colour)
    for side in (-1, 1):
        p.ellipse(hx + side * 0.06 * h, hy - 0.02 * h, 0.028 * h, 0.035 * h, (30, 130, 40))
    p.ellipse(hx, hy + 0.05 * h, 0.022 * h, 0.016 * h, (220, 120, 130))
    return _Anchors((x, body_y), (0.36, 0.17), body_y - 0.17 * h, (hx, hy), (x, body_y))


def _chair(p: _Painter, x: float, ground: float, h: float, colour: tuple, d: int) -> _Anchors:
    dark = _shade(colour, 0.7)
    w = 0.27 * h
    for lx in (-w, w - 0.05 * h):
        p.rect(x + lx, ground - 0.45 * h, x + lx + 0.05 * h, ground, dark)                    # legs
    p.rect(x - w - 0.02 * h, ground - 1.0 * h, x - w + 0.06 * h, ground - 0.45 * h, dark)   # back posts
    p.rect(x + w - 0.06 * h, ground - 1.0 * h, x + w + 0.02 * h, ground - 0.45 * h, dark)
    p.rect(x - w, ground - 0.95 * h, x + w, ground - 0.68 * h, colour, radius=0.03 * h)     # backrest
    p.rect(x - w - 0.04 * h, ground - 0.5 * h, x + w + 0.04 * h, ground - 0.42 * h, colour)  # seat
    # The backrest is the chair's body: patterns go on it, a hat sits on it, a badge hangs on it.
    back_y = ground - 0.815 * h
    return _Anchors((x, back_y), (0.27, 0.135), ground - 0.95 * h, (x, ground - 0.95 * h + 0.14 * h), (x, back_y))


def _cup(p: _Painter, x: float, ground: float, h: float, colour: tuple, d: int) -> _Anchors:
    top, half = ground - 0.7 * h, 0.27 * h
    p.ring(x + d * (half + 0.02 * h), ground - 0.38 * h, 0.14 * h, 0.16 * h, _shade(colour, 0.8), 0.06 * h)
    p.rect(x - half, top, x + half, ground, colour, radius=0.08 * h)
    p.ellipse(x, top + 0.02 * h, half, 0.06 * h, _shade(colour, 0.55))                      # rim
    return _Anchors((x, ground - 0.35 * h), (0.27, 0.35), top, (x, top + 0.14 * h), (x, top + 0.43 * h))


# Each part is drawn as on the concept it comes from (its home category); on another category
# its offsets stretch with that category's body (the factor is exactly 1 at home). ``s`` is the
# scene's ``part_scale``: the small parts (dots, dark stripes, star, collar) grow by it, and the
# dots and dark stripes move apart by three quarters of that growth, so they stay apart; the hat
# and the cup's red stripes, which the first world's codec already carried, stay as they are.
def _spread(s: float) -> float:
    return 1 + 0.75 * (s - 1)


def _white_dots(p: _Painter, a: _Anchors, h: float, colour: tuple, d: int, s: float) -> None:
    (x, body_y), (kx, ky) = a.body, (a.reach[0] / 0.22, a.reach[1] / 0.27)  # home: the teddy
    kx, ky = kx * _spread(s), ky * _spread(s)
    for dx, dy in ((-0.1, -0.1), (0.09, -0.05), (-0.05, 0.08), (0.1, 0.12), (0.0, -0.02), (-0.13, 0.05)):
        p.ellipse(x + dx * kx * h, body_y + dy * ky * h, 0.035 * s * h, 0.035 * s * h, (250, 250, 250))


def _dark_stripes(p: _Painter, a: _Anchors, h: float, colour: tuple, d: int, s: float) -> None:
    (x, body_y), (kx, ky) = a.body, (a.reach[0] / 0.36, a.reach[1] / 0.17)  # home: the cat
    dark, spread = _shade(colour, 0.6), _spread(s)
    for sx in (-0.2, -0.08, 0.04, 0.16):
        cx = x + d * (sx * spread * kx) * h
        p.rect(cx - 0.025 * s * h, body_y - 0.16 * ky * h, cx + 0.025 * s * h, body_y + 0.05 * ky * h, dark)


def _red_stripes(p: _Painter, a: _Anchors, h: float, colour: tuple, d: int, s: float) -> None:
    x, half, ky = a.body[0], a.reach[0] * h, a.reach[1] / 0.35  # home: the cup
    for sy in (0.2, 0.36, 0.52):
        p.rect(x - half, a.top + sy * ky * h, x + half, a.top + (sy + 0.07) * ky * h, (210, 30, 35))


def _top_hat(p: _Painter, a: _Anchors, h: float, colour: tuple, d: int, s: float) -> None:
    x, head_y = a.head
    p.rect(x - 0.2 * h, head_y - 0.16 * h, x + 0.2 * h, head_y - 0.12 * h, (15, 15, 15))  # brim
    p.rect(x - 0.12 * h, head_y - 0.36 * h, x + 0.12 * h, head_y - 0.14 * h, (15, 15, 15))
    p.rect(x - 0.12 * h, head_y - 0.2 * h, x + 0.12 * h, head_y - 0.16 * h, (200, 30, 30))  # band


def _star_badge(p: _Painter, a: _Anchors, h: float, colour: tuple, d: int, s: float) -> None:
    p.polygon(_star(a.front[0], a.front[1], 0.12 * s * h), (245, 200, 30))


def _red_collar(p: _Painter, a: _Anchors, h: float, colour: tuple, d: int, s: float) -> None:
    hx, hy = a.head
    grow = 0.06 * (s - 1) * h  # the band widens downwards, and the bell moves with it
    p.rect(hx - 0.13 * h, hy + 0.1 * h, hx + 0.13 * h, hy + 0.16 * h + grow, (215, 25, 35))
    p.ellipse(hx, hy + 0.19 * h + grow, 0.035 * s * h, 0.035 * s * h, (240, 200, 40))  # bell


_PARTS = {"white dots": _white_dots, "dark stripes": _dark_stripes, "red stripes": _red_stripes,
          "top hat": _top_hat, "star": _star_badge, "red collar": _red_collar}
_DRAW = {"teddy": _teddy, "cat": _cat, "chair": _chair, "cup": _cup}


def _background(name: str, rng: random.Random, night_stars: bool = True) -> Image.Image:
    top, horizon, near, far, y_h = _BACKGROUND[name]
    tint = np.array([rng.uniform(0.92, 1.08) for _ in range(3)])
    y = np.linspace(0.0, 1.0, _CANVAS)[:, None]
    sky_t = np.clip(y / y_h, 0, 1)
    ground_t = np.clip((y - y_h) / (1 - y_h), 0, 1)
    sky = np.asarray(top) * (1 - sky_t) + np.asarray(horizon) * sky_t
    ground = np.asarray(far) * (1 - ground_t) + np.asarray(near) * ground_t
    rows = np.where(y < y_h, sky, ground) * tint
    image = Image.fromarray(np.clip(rows, 0, 255).astype(np.uint8)[:, None, :].repeat(_CANVAS, axis=1), "RGB")
    if name == "night" and night_stars:
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            sx, sy = rng.uniform(0, _CANVAS), rng.uniform(0, y_h * _CANVAS * 0.9)
            draw.ellipse((sx - 2, sy - 2, sx + 2, sy + 2), fill=(230, 230, 200))
        mx, my = rng.uniform(0.1, 0.9) * _CANVAS, 0.15 * _CANVAS
        draw.ellipse((mx - 14, my - 14, mx + 14, my + 14), fill=(240, 235, 190))
    return image


def _draw_object(p: _Painter, o: WorldObject, rng: random.Random, part_scale: float) -> None:
    colour = RGB[o.colour]
    h = HEIGHT[o.size] * rng.uniform(0.94, 1.06) * _CANVAS
    x = (SLOT_X[o.slot] + rng.uniform(-0.03, 0.03)) * _CANVAS
    ground = (GROUND_Y + rng.uniform(-0.03, 0.03)) * _CANVAS
    d = -1 if o.flipped else 1
    if o.concept is not None:
        colour = RGB[CONCEPT_BY_NAME[o.concept].colour]
    anchors = _DRAW[o.category](p, x, ground, h, colour, d)
    for part in (o.pattern, o.accessory):  # the pattern first: a hat or badge covers it
        if part is not None:
            _PARTS[part](p, anchors, h, colour, d, part_scale)


def render(scene: Scene, size: int = SIZE) -> tuple[Image.Image, Image.Image]:
    """(RGB image, L mask of all objects), both ``size`` x ``size`` (at most the 256 px canvas)."""
    rng = random.Random(scene.jitter_seed)
    image = _background(scene.background, rng)
    mask = Image.new("L", image.size, 0)
    painter = _Painter(image, mask)
    for o in scene.objects:
        _draw_object(painter, o, rng, scene.part_scale)
    return image.resize((size, size), Image.BOX), mask.resize((size, size), Image.BOX)


def _without_parts(o: WorldObject) -> WorldObject:
    colour = CONCEPT_BY_NAME[o.concept].colour if o.concept else o.colour
    return replace(o, colour=colour, concept=None, pattern=None, accessory=None)


# A pixel a part changes by more than this (of 255, in any channel) counts as the part's.
VISIBLE_CHANGE = 8


def without_parts(scene: Scene) -> Scene:
    """The scene with every object's patterns and accessories taken off (a concept becomes a plain
    object of its colour); the parts draw no random numbers, so nothing else in its render moves."""
    return replace(scene, objects=tuple(_without_parts(o) for o in scene.objects))


def parts_mask(scene: Scene, size: int = SIZE, image: Image.Image | None = None) -> Image.Image:
    """L mask of the pixels the scene's parts (patterns, accessories) change: the render against
    the same render without them. ``image``: the scene's render at ``size``, when already made."""
    if image is None:
        image = render(scene, size)[0]
    bare = render(without_parts(scene), size)[0]
    changed = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(bare, dtype=np.int16)).max(-1)
    return Image.fromarray(((changed > VISIBLE_CHANGE) * 255).astype(np.uint8), "L")


def render_array(scene: Scene) -> np.ndarray:
    """The image as float32 HWC in [0, 1]."""
    return np.asarray(render(scene)[0], dtype=np.float32) / 255.0
