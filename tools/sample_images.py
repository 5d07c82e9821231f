"""The bundled training images: the world's held-out teddy, in four settings.

    python tools/sample_images.py [--check]

Writes ``example_workflows/images/teddy_<n>.png`` (and a mask per image): the world
model's held-out concept instance (``world.scenes`` "polka_teddy": a brown
teddy with white dots and a top hat, a look the world model never saw in
pretraining) on grass, in the snow, at night and in a room, at varied places
and sizes. The beach is left out on purpose: the demo asks for the trained
teddy "on the beach", a setting it was never shown in. They are what the
README's main job and the training workflow train on; ``--check`` verifies
the committed files match this code.

The renders are 128 px (twice the world model's 64 px) so the training node's
own resize is exercised; TrainPerfusion's ``resolution`` 64 brings them back.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image

if __package__ in (None, ""):  # run as a script: make `world.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from world.render import render  # noqa: E402
from world.scenes import CONCEPT_BY_NAME, Scene, concept_object  # noqa: E402

IMAGES_DIR = Path(__file__).resolve().parent.parent / "example_workflows" / "images"
SIZE = 128
CONCEPT = CONCEPT_BY_NAME["polka_teddy"]
# (setting, place, size, mirrored, jitter seed): every setting but the beach.
SCENES = (
    ("grass", "middle", "big", False, 11),
    ("snow", "left", "big", True, 12),
    ("night", "right", "small", False, 13),
    ("room", "middle", "small", True, 14),
)


def scene(n: int) -> Scene:
    setting, slot, size, flipped, jitter = SCENES[n]
    return Scene(setting, (concept_object(CONCEPT, slot, size, flipped),), jitter_seed=jitter)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def expected_files() -> dict[str, bytes]:
    out = {}
    for n in range(len(SCENES)):
        image, mask = render(scene(n), SIZE)
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
