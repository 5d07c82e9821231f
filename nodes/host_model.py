"""What a ComfyUI MODEL / CLIP is, in the terms a concept records."""

from __future__ import annotations

from typing import Any

import torch

from ..perfusion_core.concept import ConceptError, TextEncoderId
from ..perfusion_core.families import MODEL_FAMILIES, ModelFamily, family, family_of_tokenizer_keys, supported_labels


def model_family(model: Any) -> str:
    """The family name ("sd1", "sd2", "sdxl", ...) of a MODEL, from its ComfyUI config class."""
    import comfy.supported_models as sm

    config = model.model.model_config
    for candidate in MODEL_FAMILIES:  # in the table's order: subclasses before their bases
        if any(isinstance(config, getattr(sm, name)) for name in candidate.host_configs if hasattr(sm, name)):
            return candidate.name
    raise ConceptError(f"Perfusion supports {supported_labels()} models; this model is {type(config).__name__}")


def family_of_clip(clip: Any) -> str:
    """The family name of a CLIP, from its tokenizer keys (l: SD1, h: SD2, g+l: SDXL)."""
    keys = set(clip.tokenizer.tokenize_with_weights(""))
    found = family_of_tokenizer_keys(keys)
    if found is None:
        raise ConceptError(f"Perfusion supports {supported_labels()} text encoders; this CLIP has {sorted(keys)}")
    return found.name


def cross_attention_layers(model: Any) -> dict[str, int]:
    """{path under diffusion_model: d_out} for every cross-attention block with a text context."""
    spec = model_spec(model)
    out = {}
    for name, module in model.model.diffusion_model.named_modules():
        if name.rsplit(".", 1)[-1] == spec.cross_attention and hasattr(module, spec.key_projection) \
                and hasattr(module, spec.value_projection):
            out[name] = int(getattr(module, spec.value_projection).weight.shape[0])
    if not out:
        raise ConceptError(f"model {type(model.model).__name__} has no cross-attention layers to edit")
    return out


def model_spec(model: Any) -> ModelFamily:
    """The family table's entry for a MODEL."""
    return family(model_family(model))


def projection_path(spec: ModelFamily, layer: str, kind: str) -> str:
    """Module path (under diffusion_model) of the key ("k") or value ("v") projection of ``layer``."""
    return f"{layer}.{spec.key_projection if kind == 'k' else spec.value_projection}"


def context_dim(model: Any) -> int:
    layer = next(iter(cross_attention_layers(model)))
    return int(model.get_model_object(f"diffusion_model.{projection_path(model_spec(model), layer, 'k')}").weight.shape[1])


def text_encoder_id(clip: Any) -> TextEncoderId:
    return TextEncoderId(name=family(family_of_clip(clip)).encoder_id, layer=clip.layer_idx)


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
    return plain_weight(model.get_model_object(f"diffusion_model.{projection_path(model_spec(model), layer, 'v')}").weight)
