"""The world model: a reduced SD1.5 UNet and a TAESD-layout VAE, trained on the world.

ComfyUI recognises a checkpoint as SD1.5 from its UNet's shapes
(``model_channels`` 320, ``context_dim`` 768, no linear projections). The
world UNet keeps those and only the smallest block layout ComfyUI accepts:
one resolution level, one residual + transformer block down, a residual
middle, two residual + transformer blocks up (21 M parameters, 42 MB in
float16). Its 8 x 8 latents are the world's 64 px images.

What is committed is only the trained part (UNet and VAE, ``WEIGHTS``); the
text encoder is the seeded random SD1 CLIP-L, rebuilt bit for bit at setup,
and :func:`world_checkpoint` assembles the single-file checkpoint the stock
``CheckpointLoaderSimple`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from harness.comfy_host import REPO_ROOT, import_host
from harness.random_models import (
    UNET_PREFIX,
    VAE_PREFIX,
    cache_dir,
    tensor_value,
    write_checkpoint_with_text_encoder,
)
from world.captions import CLIP_SEED

WORLD_UNET: dict[str, Any] = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "in_channels": 4, "out_channels": 4, "model_channels": 320, "use_temporal_resblock": False,
    "use_temporal_attention": False, "adm_in_channels": None, "context_dim": 768,
    "use_linear_in_transformer": False, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": -1,
}
WEIGHTS = REPO_ROOT / "world" / "weights" / "world-sd15-unet-vae.safetensors"
# World v2 is built stage by stage (``python -m world.build --v2-codec``, ``--v2-text``, then
# ``--v2-unet``), a file a stage; its checkpoint is assembled from the three (``V2_WEIGHTS``).
V2_CODEC = WEIGHTS.with_name("world-v2-vae.safetensors")
V2_TEXT_ENCODER = WEIGHTS.with_name("world-v2-text-encoder.safetensors")
V2_UNET = WEIGHTS.with_name("world-v2-unet.safetensors")
V2_WEIGHTS = (V2_UNET, V2_CODEC)
CHECKPOINT_NAME = "perfusion-world-sd15.safetensors"
# Layers that write into a residual path start at zero, so the untrained network is
# the identity plus small changes (the original latent-diffusion initialisation).
_ZERO_INIT = ("out.2.", "out_layers.3.", "proj_out.")


def new_unet(seed: int = 0) -> torch.nn.Module:
    """ComfyUI's SD1.5 model object (``BaseModel``) with the world layout and fresh seeded weights."""
    import_host()
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet_config(json.loads(json.dumps(WORLD_UNET)))
    if config is None or type(config).__name__ != "SD15":
        raise RuntimeError(f"ComfyUI does not detect the world UNet as SD1.5 (got {type(config).__name__})")
    model = config.get_model({}, "", device=torch.device("cpu"))
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if any(z in name for z in _ZERO_INIT):
                p.zero_()
            else:
                p.copy_(tensor_value(UNET_PREFIX + name, p.shape, seed))
    return model


def save_weights(path: Path, unet: torch.nn.Module | None, taesd: torch.nn.Module | None) -> Path:
    """UNet and VAE (either may be None) in checkpoint key names, float16: the committed artefact."""
    from safetensors.torch import save_file

    tensors = {UNET_PREFIX + k: v.detach().cpu().half().contiguous() for k, v in unet.state_dict().items()} if unet else {}
    tensors |= {VAE_PREFIX + k: v.detach().cpu().half().contiguous() for k, v in taesd.state_dict().items()} if taesd else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"perfusion.world": json.dumps({"unet": WORLD_UNET, "clip_seed": CLIP_SEED})})
    tmp.replace(path)
    return path


def world_checkpoint(dest_dir: Path | None = None, weights: Path | tuple[Path, ...] = WEIGHTS,
                     text_encoder: Path | None = None, name: str = CHECKPOINT_NAME) -> Path:
    """The loadable single-file checkpoint ``name`` under ``dest_dir`` (default: the model cache's
    ``world`` folder, shared by the demo, the tests and the experiments), assembled when missing or
    stale: the UNet and VAE of ``weights`` (one file, or several, e.g. ``V2_WEIGHTS``), the seeded
    SD1 text encoder, and over it the trained tensors of ``text_encoder`` (world v2's,
    ``world.text_encoder``) when given."""
    dest_dir = cache_dir() / "world" if dest_dir is None else dest_dir
    weights = (weights,) if isinstance(weights, Path) else tuple(weights)
    sources = [*weights] + ([text_encoder] if text_encoder else [])
    for source in sources:
        if not source.is_file():
            raise FileNotFoundError(f"world model weights missing: {source} (python -m world.build makes them)")
    path = Path(dest_dir) / name
    stamp = " ".join(f"{s.name}-{s.stat().st_size}-{s.stat().st_mtime_ns}" for s in sources)
    marker = path.with_suffix(".source")
    if path.is_file() and marker.is_file() and marker.read_text() == stamp:
        return path
    tensors = {k: v for w in weights for k, v in load_file(str(w)).items()}
    if text_encoder is not None:
        from world.text_encoder import checkpoint_tensors

        tensors |= checkpoint_tensors(text_encoder)
    write_checkpoint_with_text_encoder(path, tensors, "sd1", seed=CLIP_SEED,
                                       metadata={"perfusion.world": f"world model, text encoder seed {CLIP_SEED}"
                                                 + (" with trained layers" if text_encoder else "")})
    marker.write_text(stamp)
    return path


def load_world_taesd(weights: Path = WEIGHTS) -> torch.nn.Module:
    """The committed world's VAE as a float32 TAESD module (the checkpoint stores float16)."""
    from world.autoencoder import new_taesd

    if not weights.is_file():
        raise FileNotFoundError(f"world codec missing: {weights} (python -m world.build makes it; --v2-codec for world v2's)")
    state = load_file(str(weights))
    taesd = new_taesd()
    taesd.load_state_dict({k[len(VAE_PREFIX):]: v.float() for k, v in state.items() if k.startswith(VAE_PREFIX)})
    return taesd.requires_grad_(False).eval()
