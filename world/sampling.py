"""Generate world images in-process through ComfyUI's own loader, sampler and VAE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from harness.comfy_host import import_host


def load(checkpoint: Path, weight_dtype: torch.dtype | None = None) -> tuple[Any, Any, Any]:
    """(ModelPatcher, CLIP, VAE) from the stock checkpoint loader; ``weight_dtype`` stores the UNet
    weights in that dtype, as ``UNETLoader``'s weight_dtype does (e.g. torch.float8_e4m3fn)."""
    import_host()
    import comfy.sd

    options = {} if weight_dtype is None else {"dtype": weight_dtype}
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True,
                                                                model_options=options)
    return model, clip, vae


def conditioning(clip: Any, text: str) -> list:
    tokens = clip.tokenize(text)
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    return [[out.pop("cond"), out]]


@torch.no_grad()
def generate(model: Any, clip: Any, vae: Any, prompt: str | list, seeds: list[int], steps: int = 20, cfg: float = 5.0,
             negative: str = "", size: int = 64) -> torch.Tensor:
    """``[len(seeds), size, size, 3]`` float32 CPU images in [0, 1] (ComfyUI's IMAGE layout), Euler
    sampler; in inference mode, as ComfyUI runs its nodes. ``prompt``: a text, or a CONDITIONING."""
    import comfy.sample

    with torch.inference_mode():
        pos = conditioning(clip, prompt) if isinstance(prompt, str) else prompt
        neg = conditioning(clip, negative)
        out = []
        for seed in seeds:
            latent = torch.zeros(1, 4, size // 8, size // 8)
            noise = comfy.sample.prepare_noise(latent, seed)
            samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", pos, neg, latent,
                                          disable_pbar=True, seed=seed)
            out.append(vae.decode(samples).clamp(0, 1).reshape(-1, size, size, 3).float().cpu())
        return torch.cat(out)


def grid(images: torch.Tensor, columns: int, scale: int = 2) -> Image.Image:
    """Tile ``[N, H, W, 3]`` images into one picture, ``scale`` x nearest-neighbour enlarged."""
    n, h, w, _ = images.shape
    rows = (n + columns - 1) // columns
    canvas = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, img in enumerate(images):
        tile = Image.fromarray((img.numpy() * 255).round().astype("uint8"))
        canvas.paste(tile, ((i % columns) * w, (i // columns) * h))
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
