"""PerfusionLabelledGrid: lay a batch of images out in a grid with a caption under each."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw, ImageFont

from .nodes_concept import CATEGORY

NODE = "PerfusionLabelledGrid"


def labelled_grid(images: torch.Tensor, labels: list[str], columns: int) -> torch.Tensor:
    """(B, H, W, C) float images -> one (1, H', W', C) grid image with a label strip under each cell."""
    count, height, width, _ = images.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    font = ImageFont.load_default()
    strip = 14 if height < 128 else 24
    canvas = Image.new("RGB", (columns * width, rows * (height + strip)), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(count):
        row, col = divmod(i, columns)
        cell = (images[i, ..., :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        x, y = col * width, row * (height + strip)
        canvas.paste(Image.fromarray(cell), (x, y))
        label = labels[i] if i < len(labels) else ""
        draw.text((x + 3, y + height + 1), label, fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)[None]


class PerfusionLabelledGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE, display_name="Perfusion Labelled Grid", category=CATEGORY,
            description="Arrange an image batch in a grid with a text label under each image (e.g. a beta sweep).",
            inputs=[
                io.Image.Input("images", tooltip="The images, in order (combine branches with Batch Images)."),
                io.String.Input("labels", default="", multiline=False,
                                tooltip="Comma-separated labels, one per image, in the same order."),
                io.Int.Input("columns", default=4, min=1, max=32, tooltip="Images per row (1-32). Default 4."),
            ],
            outputs=[io.Image.Output("grid", display_name="grid", tooltip="One image holding the labelled grid.")],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, labels: str, columns: int) -> io.NodeOutput:
        return io.NodeOutput(labelled_grid(images, [s.strip() for s in labels.split(",")], columns))
