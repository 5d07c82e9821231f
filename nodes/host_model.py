"""What a ComfyUI MODEL / CLIP is, in the terms a concept records."""

from __future__ import annotations

from typing import Any

import torch

from ..perfusion_core.concept import ConceptError, TextEncoderId
from ..perfusion_core.concept_file import FAMILY_NAMES  # noqa: F401  (re-exported for the nodes)

ENCODER_NAMES = {"sd1": "clip-l", "sd2": "clip-h", "sdxl": "clip-l+clip-g"}


def model_family(model: Any) -> str:
    """"sd1" | "sd2" | "sdxl" from the model's ComfyUI config class."""
    import comfy.supported_models as sm

    config = model.model.model_config
    # Order matters: SD2 subclasses share ancestors with SD1 in some versions.
    for family, classes in (("sdxl", ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B")),
                            ("sd2", ("SD20", "SD21UnclipL", "SD21UnclipH", "SD_X4Upscaler")),
                            ("sd1", ("SD15", "SD15_instructpix2pix"))):
        if any(isinstance(config, getattr(sm, name)) for name in classes if hasattr(sm, name)):
            return family
    raise ConceptError(f"Perfusion supports SD1.x, SD2.x and SDXL models; this model is {type(config).__name__}")


def family_of_clip(clip: Any) -> str:
    """Family from the tokenizer keys: l -> sd1, h -> sd2, g+l -> sdxl."""
    keys = set(clip.tokenizer.tokenize_with_weights(""))
    for family, want in (("sdxl", {"g", "l"}), ("sd2", {"h"}), ("sd1", {"l"})):
        if keys == want:
            return family
    raise ConceptError(f"Perfusion supports SD1.x, SD2.x and SDXL text encoders; this CLIP has {sorted(keys)}")


def cross_attention_layers(model: Any) -> dict[str, int]:
    """{path under diffusion_model: d_out} for every cross-attention (attn2) with a text context."""
    out = {}
    for name, module in model.model.diffusion_model.named_modules():
        if name.endswith(".attn2") and hasattr(module, "to_k") and hasattr(module, "to_v"):
            out[name] = int(module.to_v.weight.shape[0])
    if not out:
        raise ConceptError(f"model {type(model.model).__name__} has no cross-attention layers to edit")
    return out


def context_dim(model: Any) -> int:
    layer = next(iter(cross_attention_layers(model)))
    return int(model.get_model_object(f"diffusion_model.{layer}.to_k").weight.shape[1])


def text_encoder_id(clip: Any) -> TextEncoderId:
    return TextEncoderId(name=ENCODER_NAMES[family_of_clip(clip)], layer=clip.layer_idx)


def plain_weight(weight: torch.Tensor) -> torch.Tensor:
    """A float32 copy of a layer's stored weight, also when the host keeps it quantized.

    Quantized checkpoints load as tensor subclasses with their own ``dequantize`` (ComfyUI's
    ``QuantizedTensor``: fp8 values and a scale), on which ``.float()`` is ignored and other ops
    dequantize implicitly. They dequantize to their ``orig_dtype``, which ComfyUI 0.3.7x leaves
    unset (None: dequantizing fails) until the layer's first forward sets it on the weight itself;
    ``detach`` gives a copy with its own parameter dict, so the model's weight is never changed."""
    weight = weight.detach()
    if type(weight).dequantize is not torch.Tensor.dequantize:  # a host's quantized tensor subclass
        params = getattr(weight, "_layout_params", None)  # 0.3.7x's QuantizedTensor (0.33+: set at load)
        if isinstance(params, dict) and params.get("orig_dtype") is None:
            params["orig_dtype"] = torch.float32
        weight = weight.dequantize()
    return weight.float().cpu()


def value_weight(model: Any, layer: str) -> torch.Tensor:
    """W_V of one layer as float32 (what is stored, before LoRA-style patches; dequantized)."""
    return plain_weight(model.get_model_object(f"diffusion_model.{layer}.to_v").weight)
