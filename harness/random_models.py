"""Real ComfyUI Stable Diffusion models with deterministic random weights.

No model weights can be downloaded where this project is developed and
tested, yet the node pack has to be exercised against the *real* ComfyUI
classes (UNet, text encoders, tokenizers, loaders). This module builds those
real objects and fills every tensor from a seeded generator.

Design points:

* Every tensor's value is a pure function of ``(seed, key, shape)``, where
  ``key`` is the tensor's name in a single-file checkpoint. The in-process
  builders and the checkpoint writer therefore agree: a checkpoint written for
  a seed loads (through ComfyUI's own loader) into exactly the weights that
  :func:`build_unet` produces for that seed (up to the file's dtype).
* ComfyUI's layers skip weight initialisation, so nothing may be left to the
  constructors: norms get weight 1 / bias 0, matrices and convolutions get
  ``N(0, 1/fan_in)`` so activations keep unit scale through depth, embeddings
  get ``N(0, 0.02^2)`` like CLIP's own initialiser.
* ``"tiny"`` keeps what the Perfusion math depends on (context dims 768 /
  1024 / 2048, CLIP widths 768 / 1024 / 1280, the tokenizers) and shrinks the
  rest. Tiny UNets keep ``model_channels`` 320 because ComfyUI's checkpoint
  detection requires it; tiny SDXL uses the KOALA-700M block layout, the
  smallest layout ComfyUI still detects as an SDXL model.
* Checkpoints always carry full-size text encoders: ComfyUI builds the text
  encoder from a fixed config when loading a checkpoint, and any layer missing
  from the file would be left uninitialised. Only in-process builds can use a
  shrunken text encoder.
* Checkpoints are streamed tensor by tensor into the safetensors file, so
  writing a full SDXL checkpoint needs memory for one tensor, not the model.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch

from harness.comfy_host import REPO_ROOT, import_host
from perfusion_core.families import FAMILIES, MODEL_FAMILIES

if TYPE_CHECKING:  # pragma: no cover - typing only
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

SIZES = ("tiny", "full")
# Bump whenever the value rules below change: it is part of cached file names.
FORMAT_VERSION = 3

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# What each family is comes from the pack's family table; only the random-weight layouts live here.
CONTEXT_DIM = {f.name: f.context_dim for f in MODEL_FAMILIES}
CLIP_NAMES = {f.name: tuple(f"clip_{key}" for key in f.embedding_widths) for f in MODEL_FAMILIES}
# What ComfyUI's VAE loader uses to scale TAESD latents for each family.
_TAESD_SCALE = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
# In-process "tiny" text encoders: 3 layers is the minimum ComfyUI accepts for
# encoders that read the penultimate layer (SD2, SDXL).
TINY_CLIP_OVERRIDES = {"num_hidden_layers": 3, "intermediate_size": 1024}

_COMMON_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
# transformer_depth lists one entry per input res block; transformer_depth_output
# lists the output blocks from the last (highest resolution) to the first,
# exactly as ComfyUI's model detection reports them.
_UNET = {
    ("sd1", "full"): {
        "adm_in_channels": None, "context_dim": 768, "use_linear_in_transformer": False,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "transformer_depth_middle": 1,
    },
    ("sd1", "tiny"): {
        "adm_in_channels": None, "context_dim": 768, "use_linear_in_transformer": False,
        "num_res_blocks": [1, 1], "channel_mult": [1, 1],
        "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
        "transformer_depth_middle": 1,
    },
    ("sdxl", "full"): {
        "num_classes": "sequential", "adm_in_channels": 2816, "context_dim": 2048,
        "use_linear_in_transformer": True,
        "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "transformer_depth_middle": 10,
    },
    ("sdxl", "tiny"): {
        "num_classes": "sequential", "adm_in_channels": 2816, "context_dim": 2048,
        "use_linear_in_transformer": True,
        "num_res_blocks": [1, 1, 1], "channel_mult": [1, 1, 1],
        "transformer_depth": [0, 2, 5], "transformer_depth_output": [0, 0, 1, 1, 1, 1],
        "transformer_depth_middle": 1,
    },
}
# SD2 shares SD1's block layout; it differs in context width and linear projections.
for _size in SIZES:
    _UNET[("sd2", _size)] = {**_UNET[("sd1", _size)], "context_dim": 1024, "use_linear_in_transformer": True}


def _check(family: str, size: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def unet_config(family: str, size: str = "tiny") -> dict[str, Any]:
    """The UNet config in the form ComfyUI's checkpoint detection reports it (a copy)."""
    _check(family, size)
    cfg = {**_COMMON_UNET, **_UNET[(family, size)]}
    return json.loads(json.dumps(cfg))  # deep copy: callers and ComfyUI mutate lists


def model_config(family: str, size: str = "tiny", dtype: torch.dtype = torch.float32) -> Any:
    """The ``comfy.supported_models`` config object ComfyUI itself picks for this UNet."""
    import_host()
    import comfy.model_detection
    import comfy.model_management

    config = comfy.model_detection.model_config_from_unet_config(unet_config(family, size))
    if config is None:
        raise RuntimeError(f"ComfyUI did not recognise the {family}/{size} UNet config")
    cast = comfy.model_management.unet_manual_cast(dtype, comfy.model_management.get_torch_device())
    config.set_inference_dtype(dtype, cast)
    return config


# ---------------------------------------------------------------------------
# Deterministic values


def _generator(seed: int, key: str) -> torch.Generator:
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + zlib.crc32(key.encode())) % (2**63)
    return torch.Generator().manual_seed(mixed)


def _is_embedding(key: str) -> bool:
    return any(s in key for s in ("token_embedding", "position_embedding", "positional_embedding"))


# Trained text encoders keep a token's identity at its own position: each block
# writes a small update into the residual stream. With plain fan-in init a
# random encoder instead smears every word over all later positions, and no
# word-level test (a word edit, a trigger swap) could be told apart from that
# noise. So the projections that write into the residual stream (attention
# out_proj, MLP fc2 / c_proj) start small, in the spirit of GPT-2's scaled init.
TEXT_RESIDUAL_GAIN = 0.01
_TEXT_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
_RESIDUAL_WRITES = ("out_proj.weight", "fc2.weight", "c_proj.weight")


# A trained text encoder's final LayerNorm has a bias; with bias 0 every encoding sums to exactly
# zero, so C is singular along the ones vector (cond ~1e16) and every test of u = C^-1 i* measures
# noise. Tiny (test-only) encoders get a seeded bias of this scale. Full-size encoders keep bias 0:
# the world model's UNet was trained against the full SD1 encoder as it is (world/captions.py).
FINAL_NORM_BIAS_STD = 0.1


def _is_text_residual_write(key: str) -> bool:
    return key.startswith(_TEXT_PREFIXES) and key.endswith(_RESIDUAL_WRITES)


def tensor_value(key: str, shape: tuple[int, ...] | torch.Size, seed: int) -> torch.Tensor:
    """The float32 value of checkpoint tensor ``key``: a pure function of (seed, key, shape).

    Keys are checkpoint names (``model.diffusion_model.*``, ``cond_stage_model.*``,
    ``conditioner.embedders.*``, ``first_stage_model.*``, LoRA and ControlNet names).
    """
    shape = tuple(int(s) for s in shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "logit_scale":
        return torch.full(shape, 4.6052)  # ln(100), CLIP's trained value
    if leaf in ("vae_scale", "vae_shift"):
        raise ValueError(f"{key} has no generic value; the VAE template sets it")
    if len(shape) <= 1 and (leaf.endswith("bias") or len(shape) == 0):
        return torch.zeros(shape)
    if len(shape) == 1:  # every 1-D weight in these models belongs to a norm layer
        return torch.ones(shape)
    if _is_embedding(key):
        std = 0.02
    else:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        if leaf == "text_projection":  # open_clip stores it as (in, out)
            fan_in = shape[0]
        std = fan_in ** -0.5
        if _is_text_residual_write(key):
            std *= TEXT_RESIDUAL_GAIN
    return torch.randn(shape, generator=_generator(seed, key)).mul_(std)


# ---------------------------------------------------------------------------
# In-process builders


def build_unet(
    family: str,
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> "ModelPatcher":
    """A real ComfyUI UNet (``model_base.BaseModel``/``SDXL``) wrapped in a ModelPatcher.

    ``device="meta"`` builds the structure without memory or values (for
    counting layers or reading shapes of the full-size models). Memory for a
    real build is parameters x dtype size: full SDXL is 2.6 G parameters
    (10 GB in float32, 5 GB in float16), full SD1/SD2 0.86 G.
    """
    import_host()
    import comfy.model_management as mm
    import comfy.model_patcher

    device = torch.device(device)
    config = model_config(family, size, dtype)
    model = config.get_model({}, "", device=device)
    if device.type != "meta":
        with torch.no_grad():
            for name, tensor in model.diffusion_model.state_dict(keep_vars=True).items():
                value = tensor_value(UNET_PREFIX + name, tensor.shape, seed)
                tensor.data.copy_(value.to(tensor.dtype))
    model.eval()
    load_device = device if device.type == "meta" else mm.get_torch_device()
    offload_device = device if device.type == "meta" else mm.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def _clip_model_options(family: str, size: str, dtype: torch.dtype) -> dict[str, Any]:
    options: dict[str, Any] = {"dtype": dtype}
    if size == "tiny":
        for name in CLIP_NAMES[family]:
            options[f"{name}_model_config"] = dict(TINY_CLIP_OVERRIDES)
    return options


def _clip_template(family: str, clip_size: str) -> dict[str, torch.Tensor]:
    """Checkpoint-format text-encoder keys -> meta tensors (or real ones for integer buffers).

    Uses ComfyUI's own save conversion, so key names and layouts (CLIP-L in
    transformers layout, OpenCLIP-H/G with fused ``in_proj``) are the real ones.
    """
    import_host()
    config = model_config(family, "full")
    target = config.clip_target()
    options = _clip_model_options(family, clip_size, torch.float32)
    with torch.device("meta"):
        module = target.clip(device="meta", dtype=torch.float32, model_options=options, **target.params)
    return config.process_clip_state_dict_for_saving(module.state_dict())


def _fill(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in template.items():
        if t.is_floating_point() and t.device.type == "meta":
            out[key] = tensor_value(key, t.shape, seed)
        else:
            out[key] = t.contiguous()
    return out


def build_clip(family: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> "CLIP":
    """A real ``comfy.sd.CLIP`` (the family's text encoder(s) and real tokenizers).

    ``"tiny"`` keeps the real widths and vocabulary but only
    :data:`TINY_CLIP_OVERRIDES` layers / MLP size. Values are produced in
    checkpoint layout and loaded through the family's own
    ``process_clip_state_dict``, the path ComfyUI uses for checkpoints, so
    tensors shared with a full-size encoder (embeddings, attention weights)
    equal those in the checkpoints this module writes.
    """
    _check(family, size)
    import_host()
    import comfy.sd

    config = model_config(family, size)
    options = _clip_model_options(family, size, dtype)
    options["initial_device"] = torch.device("cpu")
    clip = comfy.sd.CLIP(config.clip_target(), model_options=options)
    values = config.process_clip_state_dict(_fill(_clip_template(family, size), seed))
    missing, unexpected = clip.load_sd(values, full_model=True)
    # The checkpoint layout drops CLIP-L's unused projection (SD1, SDXL); give it a value anyway.
    state = clip.cond_stage_model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in missing:
            if not key.endswith(("text_projection.weight", "logit_scale")):
                raise RuntimeError(f"text encoder weight {key} has no generated value")
            state[key].data.copy_(tensor_value(key, state[key].shape, seed).to(state[key].dtype))
    if size == "tiny":
        _give_final_norms_a_bias(clip.cond_stage_model, seed)
    # ComfyUI ignores the position_ids buffer some checkpoint layouts carry.
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if unexpected:
        raise RuntimeError(f"generated text encoder keys not used by ComfyUI: {unexpected[:5]}")
    return clip


def _give_final_norms_a_bias(encoder: torch.nn.Module, seed: int) -> None:
    """Seeded N(0, FINAL_NORM_BIAS_STD^2) biases for every text encoder's final LayerNorm."""
    with torch.no_grad():
        for name, module in encoder.named_modules():
            if name.endswith("final_layer_norm") and getattr(module, "bias", None) is not None:
                bias = torch.randn(module.bias.shape, generator=_generator(seed, name + ".bias"))
                module.bias.copy_((bias * FINAL_NORM_BIAS_STD).to(module.bias.dtype))


def build_pipeline(
    family: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple["ModelPatcher", "CLIP"]:
    """``(ModelPatcher, CLIP)`` for ``family`` in {"sd1", "sd2", "sdxl"}, ``size`` in {"tiny", "full"}."""
    return build_unet(family, size, seed, dtype), build_clip(family, size, seed, dtype)


def attn2_layer_names(model_patcher: "ModelPatcher") -> list[str]:
    """Module paths (relative to ``diffusion_model``) of every cross-attention block, in forward order."""
    import_host()
    from comfy.ldm.modules.attention import CrossAttention

    return [
        name
        for name, module in model_patcher.model.diffusion_model.named_modules()
        if name.endswith(".attn2") and isinstance(module, CrossAttention)
    ]


# ---------------------------------------------------------------------------
# Streaming safetensors writer

_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.int64: "I64", torch.int32: "I32",
}

# One entry of a file to write: key, shape, dtype, and a function making the value.
_Entry = tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]


def _produce(entries: list[_Entry], lookahead: int = 3) -> Iterator[tuple[_Entry, torch.Tensor]]:
    """Yield ``(entry, value)`` in order while worker threads generate the next few values.

    Random generation and dtype casts release the GIL, so this overlaps them
    with each other and with file writes; the lookahead bounds the memory held.
    """
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque = deque()
        upcoming = iter(entries)

        def submit() -> None:
            entry = next(upcoming, None)
            if entry is not None:
                pending.append((entry, pool.submit(lambda e=entry: e[3]().to(e[2]).contiguous())))

        for _ in range(lookahead):
            submit()
        while pending:
            entry, future = pending.popleft()
            value = future.result()
            submit()
            yield entry, value


def _write_safetensors(path: Path, entries: Iterable[_Entry], metadata: dict[str, str]) -> Path:
    """Write a safetensors file producing one tensor at a time (memory: the largest tensor)."""
    entries = list(entries)
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, shape, dtype, _ in entries:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for (key, shape, _, _), value in _produce(entries):
                if tuple(value.shape) != tuple(shape):
                    raise RuntimeError(f"{key}: produced {tuple(value.shape)}, declared {shape}")
                if value.numel():
                    f.write(value.reshape(-1).view(torch.uint8).numpy().data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _entries(template: dict[str, torch.Tensor], seed: int, dtype: torch.dtype, fixed: dict[str, torch.Tensor] | None = None) -> list[_Entry]:
    """Turn a key -> (meta) tensor template into writer entries with generated float values."""
    fixed = fixed or {}
    out: list[_Entry] = []
    for key, t in template.items():
        shape = tuple(t.shape)
        if key in fixed:
            value = fixed[key]
            out.append((key, shape, dtype, lambda v=value: v))
        elif t.is_floating_point():
            out.append((key, shape, dtype, lambda k=key, s=shape: tensor_value(k, s, seed)))
        else:
            value = t.contiguous()
            out.append((key, shape, value.dtype, lambda v=value: v))
    return out


# ---------------------------------------------------------------------------
# Checkpoint, LoRA and ControlNet files


def _unet_template(family: str, size: str) -> dict[str, torch.Tensor]:
    patcher = build_unet(family, size, device="meta")
    return {UNET_PREFIX + k: v for k, v in patcher.model.diffusion_model.state_dict().items()}


def _vae_template(kind: str) -> dict[str, torch.Tensor]:
    import_host()
    with torch.device("meta"):
        if kind == "taesd":
            from comfy.taesd.taesd import TAESD

            module = TAESD()
        elif kind == "kl":
            from comfy.ldm.models.autoencoder import AutoencoderKL

            ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                        "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
            module = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
        else:
            raise ValueError(f"unknown VAE kind {kind!r}; expected 'taesd' or 'kl'")
    return {VAE_PREFIX + k: v for k, v in module.state_dict().items()}


def _vae_fixed(kind: str, family: str) -> dict[str, torch.Tensor]:
    """Values the generic rule gets wrong for the VAE.

    TAESD maps its last layer's output straight to pixel values, so a zero bias
    would put half of all pixels at black; centring it on mid-grey gives images
    with visible (random) structure instead. The latent scale is the one
    ComfyUI's own TAESD loader uses for the family.
    """
    if kind != "taesd":
        return {}
    return {
        VAE_PREFIX + "vae_scale": torch.tensor(_TAESD_SCALE[family]),
        VAE_PREFIX + "vae_shift": torch.tensor(0.0),
        VAE_PREFIX + "taesd_decoder.19.bias": torch.full((3,), 0.5),
    }


def build_vae(family: str, seed: int = 0) -> "VAE":
    """A real ``comfy.sd.VAE`` in the TAESD layout that tiny checkpoints carry, with the same
    values as the VAE in :func:`write_checkpoint` files for this seed and the family's latent scale."""
    _check(family, "tiny")
    import_host()
    import comfy.sd

    fixed = _vae_fixed("taesd", family)
    template = {key: t for key, t in _vae_template("taesd").items() if key not in fixed}
    values = {**_fill(template, seed), **fixed}
    return comfy.sd.VAE(sd={key[len(VAE_PREFIX):]: value for key, value in values.items()})


def write_checkpoint(
    path: str | Path,
    family: str,
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    vae: str | None = None,
) -> Path:
    """Write a single-file checkpoint in the family's real key layout; deterministic per seed.

    Contents: ``model.diffusion_model.*`` (the :func:`build_unet` weights), the
    family's full-size text encoder(s) in their original layout, and a VAE under
    ``first_stage_model.*``: ``vae="taesd"`` (2.4 M params, default for tiny) or
    ``"kl"`` (the real SD AutoencoderKL layout, default for full).
    """
    _check(family, size)
    vae = vae or ("taesd" if size == "tiny" else "kl")
    fixed = _vae_fixed(vae, family)
    template = {**_unet_template(family, size), **_clip_template(family, "full"), **_vae_template(vae)}
    metadata = {"perfusion.random_model": json.dumps(
        {"family": family, "size": size, "seed": seed, "vae": vae, "format_version": FORMAT_VERSION})}
    return _write_safetensors(Path(path), _entries(template, seed, dtype, fixed), metadata)


def write_checkpoint_with_text_encoder(
    path: str | Path, tensors: dict[str, torch.Tensor], family: str = "sd1", seed: int = 0,
    dtype: torch.dtype = torch.float16, metadata: dict[str, str] | None = None,
) -> Path:
    """A checkpoint of the given UNet/VAE ``tensors`` (checkpoint key names) plus the family's
    full-size text encoder(s) with this module's seeded weights: how a model whose UNet and VAE
    were trained elsewhere ships without its (much larger, untrained) text encoder."""
    _check(family, "full")
    template = {**_clip_template(family, "full"), **{k: v.to("meta") for k, v in tensors.items()}}
    fixed = {k: v.detach().cpu() for k, v in tensors.items()}
    return _write_safetensors(Path(path), _entries(template, seed, dtype, fixed), metadata or {})


def cache_dir() -> Path:
    """Git-ignored folder for generated model files, shared by tests and demos."""
    return Path(os.environ.get("PERFUSION_MODEL_CACHE", REPO_ROOT / ".cache" / "random_models"))


def _dtype_tag(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def cached_checkpoint(
    family: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float16, vae: str | None = None
) -> Path:
    """Path of the checkpoint for these arguments under :func:`cache_dir`, writing it when missing."""
    vae = vae or ("taesd" if size == "tiny" else "kl")
    name = f"random-{family}-{size}-s{seed}-{vae}-{_dtype_tag(dtype)}-v{FORMAT_VERSION}.safetensors"
    path = cache_dir() / "checkpoints" / name
    if not path.exists():
        write_checkpoint(path, family, size, seed, dtype, vae)
    return path


def _kohya_unet_names(family: str, size: str) -> dict[str, str]:
    """ldm module path (``input_blocks.1.1....``) -> kohya LoRA name (``lora_unet_down_blocks_0_...``)."""
    import_host()
    import comfy.utils

    names = {}
    for diffusers_key, ldm_key in comfy.utils.unet_to_diffusers(unet_config(family, size)).items():
        if diffusers_key.endswith(".weight"):
            names[ldm_key[: -len(".weight")]] = "lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")
    return names


def write_lora(
    path: str | Path,
    checkpoint_family: str,
    seed: int,
    rank: int = 4,
    targets: tuple[str, ...] = ("attn2.to_k", "attn2.to_v"),
    size: str = "tiny",
    dtype: torch.dtype = torch.float16,
) -> Path:
    """A random LoRA (kohya naming: ``lora_unet_*.lora_down/lora_up/alpha``) for every module
    of the ``checkpoint_family``/``size`` UNet whose path ends with one of ``targets``.

    ``alpha == rank`` (scale 1); ``lora_up`` is scaled so the change is about half
    the size of the base weight, clearly visible yet not destructive.
    """
    template = _unet_template(checkpoint_family, size)
    names = _kohya_unet_names(checkpoint_family, size)
    entries: list[_Entry] = []
    for key, t in template.items():
        module = key[len(UNET_PREFIX):].rsplit(".", 1)[0]
        if not key.endswith(".weight") or not module.endswith(tuple(targets)):
            continue
        lora = names[module]
        out_dim, in_dim = int(t.shape[0]), int(t.shape[1])
        down_key, up_key = f"{lora}.lora_down.weight", f"{lora}.lora_up.weight"
        entries += [
            (down_key, (rank, in_dim), dtype, lambda k=down_key, i=in_dim: torch.randn((rank, i), generator=_generator(seed, k)) / i ** 0.5),
            (up_key, (out_dim, rank), dtype, lambda k=up_key, o=out_dim: torch.randn((o, rank), generator=_generator(seed, k)) * (0.5 / rank ** 0.5)),
            (f"{lora}.alpha", (), dtype, lambda: torch.tensor(float(rank))),
        ]
    if not entries:
        raise ValueError(f"no UNet module matches {targets}")
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank)}
    return _write_safetensors(Path(path), entries, metadata)


def write_controlnet(
    path: str | Path, seed: int, family: str = "sd1", size: str = "tiny", dtype: torch.dtype = torch.float16
) -> Path:
    """A random ControlNet in the original ldm layout (``control_model.*``) matching the
    ``family``/``size`` UNet, loadable by the stock ControlNetLoader.

    Its zero-convolutions are random rather than zero, so it visibly changes the output.
    """
    import_host()
    from comfy.cldm.cldm import ControlNet
    import comfy.ops

    config = model_config(family, size)
    kwargs = {k: v for k, v in config.unet_config.items() if k not in ("out_channels", "dtype")}
    with torch.device("meta"):
        net = ControlNet(**kwargs, hint_channels=3, device="meta", operations=comfy.ops.disable_weight_init)
    template = {"control_model." + k: v for k, v in net.state_dict().items()}
    return _write_safetensors(Path(path), _entries(template, seed, dtype), {})

