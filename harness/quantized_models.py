"""Random models in ComfyUI's quantized layout (fp8 ``TensorCoreFP8Layout`` Linear weights).

The tiny SD1.5 model of :mod:`harness.random_models`, with every UNet Linear weight stored as
float8_e4m3fn plus a per-tensor float32 ``weight_scale`` (value = fp8 * scale), the way ComfyUI's
own quantized files store them. Two files:

- :func:`write_quantized_unet`: the diffusion model alone (UNet keys without the checkpoint
  prefix), as quantized models usually ship, for the stock "Load Diffusion Model" loader
  (``comfy.sd.load_diffusion_model``). Quantized layers are declared in the safetensors metadata
  ``_quantization_metadata`` = ``{"format_version", "layers": {name: {"format": ...}}}``, names
  relative to the diffusion model: 0.3.7x reads that directly and 0.33+ converts it to its
  per-layer ``comfy_quant`` tensors, so ONE file serves both host generations. This is the file
  to sample and train with on either host.
- :func:`write_quantized_checkpoint`: a whole checkpoint (UNet, text encoder, VAE) for
  ``CheckpointLoaderSimple``. Here the two generations disagree: 0.3.7x matches metadata names
  relative to the diffusion model, 0.33+ matches them against checkpoint keys (prefixed), so the
  file declares its layers the way the imported host reads (:func:`host_layout`): metadata for
  0.3.7x, per-layer ``<layer>.comfy_quant`` uint8 JSON tensors (what 0.33 itself writes) for 0.33+.
  Caveat measured on 0.3.75: its checkpoint loader gives quantized layers no compute dtype when the
  UNet runs in float32 (CPU), so they load but fail at the first forward; its diffusion-model
  loader sets one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness import random_models
from harness.comfy_host import import_host

FP8 = torch.float8_e4m3fn
FORMAT = "float8_e4m3fn"  # ComfyUI's QUANT_ALGOS key for TensorCoreFP8Layout
LAYOUTS = ("metadata", "comfy_quant")
QUANT_VERSION = 1  # bump when the written file changes, so cached copies are rewritten


def host_layout() -> str:
    """The declaration the imported ComfyUI reads: 0.33+ converts old quantized formats into
    per-layer ``comfy_quant`` tensors (``comfy.utils.convert_old_quants``), 0.3.7x reads metadata."""
    import_host()
    import comfy.utils

    return "comfy_quant" if hasattr(comfy.utils, "convert_old_quants") else "metadata"


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 values, float32 scalar scale) with per-tensor absmax scaling, as ComfyUI's
    ``TensorCoreFP8Layout.quantize`` does: the largest magnitude maps to fp8's largest finite value."""
    w = weight.float()
    scale = w.abs().amax().clamp_min(1e-12) / torch.finfo(FP8).max
    q = (w / scale).clamp(-torch.finfo(FP8).max, torch.finfo(FP8).max).to(FP8)
    return q.contiguous(), scale.reshape(()).to(torch.float32)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values a host computes with when it casts the fp8 weight back (no fp8 matmul)."""
    return q.float() * scale.float()


def unet_linear_layers(family: str = "sd1", size: str = "tiny") -> list[str]:
    """Paths (under the diffusion model) of every Linear in the family's UNet: attention q/k/v/out,
    feed-forward, time and label embeddings. Built on the meta device, so it costs no memory."""
    unet = random_models.build_unet(family, size, device="meta").model.diffusion_model
    return [name for name, m in unet.named_modules() if isinstance(m, torch.nn.Linear)]


def _quantized_tensors(source: Path, layers: list[str], layout: str | None, unet_only: bool) -> dict[str, torch.Tensor]:
    """The tensors of ``source`` with the listed UNet Linear weights replaced by fp8 + scale;
    ``unet_only``: only the UNet's, without the checkpoint prefix. ``layout == "comfy_quant"``
    adds each quantized layer's declaration tensor."""
    prefix = random_models.UNET_PREFIX
    wanted = {f"{prefix}{name}.weight": f"{prefix}{name}" for name in layers}
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(source), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            if unet_only and not key.startswith(prefix):
                continue
            tensor, layer = f.get_tensor(key), wanted.get(key)
            if layer is None:
                out[key] = tensor
                continue
            out[key], out[f"{layer}.weight_scale"] = quantize_fp8(tensor)
            if layout == "comfy_quant":
                conf = json.dumps({"format": FORMAT}).encode("utf-8")
                out[f"{layer}.comfy_quant"] = torch.tensor(list(conf), dtype=torch.uint8)
    if unet_only:
        out = {key[len(prefix):]: value for key, value in out.items()}
    return out


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")  # atomic: test runs may share the cache
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _metadata(family: str, size: str, seed: int, layout: str, layers: list[str]) -> dict[str, str]:
    metadata = {"perfusion.random_model": json.dumps({"family": family, "size": size, "seed": seed,
                                                      "quantized": FORMAT, "layout": layout})}
    if layout == "metadata":
        metadata["_quantization_metadata"] = json.dumps(
            {"format_version": "1.0", "layers": {name: {"format": FORMAT} for name in layers}})
    return metadata


def write_quantized_unet(path: str | Path, family: str = "sd1", size: str = "tiny", seed: int = 0) -> Path:
    """Write the UNet of ``random_models.cached_checkpoint(family, size, seed)`` alone, its Linear
    weights in fp8, declared in metadata (read by both host generations; module docstring)."""
    layers = unet_linear_layers(family, size)
    source = random_models.cached_checkpoint(family, size, seed=seed)
    tensors = _quantized_tensors(source, layers, None, unet_only=True)
    return _save(Path(path), tensors, _metadata(family, size, seed, "metadata", layers))


def write_quantized_checkpoint(path: str | Path, layout: str | None = None, family: str = "sd1",
                               size: str = "tiny", seed: int = 0) -> Path:
    """Write ``random_models.cached_checkpoint(family, size, seed)`` with its UNet Linear weights
    in fp8, declared the ``layout`` way (default: what the imported host reads)."""
    layout = layout or host_layout()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    layers = unet_linear_layers(family, size)
    source = random_models.cached_checkpoint(family, size, seed=seed)
    prefixed = [random_models.UNET_PREFIX + name for name in layers]
    tensors = _quantized_tensors(source, layers, layout, unet_only=False)
    # 0.3.7x (the only reader of this form in a checkpoint) matches names relative to the UNet.
    return _save(Path(path), tensors, _metadata(family, size, seed, layout, layers if layout == "metadata" else prefixed))


def _cached(kind: str, family: str, size: str, seed: int, write: Callable[[Path], Path]) -> Path:
    name = f"random-{family}-{size}-s{seed}-fp8-{kind}-v{random_models.FORMAT_VERSION}.{QUANT_VERSION}.safetensors"
    path = random_models.cache_dir() / "checkpoints" / name
    return path if path.exists() else write(path)


def cached_quantized_unet(family: str = "sd1", size: str = "tiny", seed: int = 0) -> Path:
    """Path of :func:`write_quantized_unet`'s file under ``random_models.cache_dir()``, written when missing."""
    return _cached("unet", family, size, seed, lambda p: write_quantized_unet(p, family, size, seed))


def cached_quantized_checkpoint(layout: str | None = None, family: str = "sd1", size: str = "tiny",
                                seed: int = 0) -> Path:
    """Path of :func:`write_quantized_checkpoint`'s file under ``random_models.cache_dir()``, written when missing."""
    layout = layout or host_layout()
    return _cached(f"ckpt-{layout}", family, size, seed,
                   lambda p: write_quantized_checkpoint(p, layout, family, size, seed))


def load_quantized(seed: int = 0) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) as a workflow gets them: the quantized UNet from the stock diffusion-model
    loader, CLIP and VAE from the full-precision checkpoint (the one the UNet was quantized from)."""
    import_host()
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(cached_quantized_unet(seed=seed)))
    checkpoint = random_models.cached_checkpoint("sd1", "tiny", seed=seed)
    _, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_model=False)
    return model, clip, vae
