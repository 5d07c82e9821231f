"""Making a ComfyUI model trainable in place: autograd through weights a node loaded under
``torch.inference_mode()``, gradient checkpointing, and a text encoder whose residual adds
keep what backward needs. Nothing here copies or changes a weight's values.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import host_model


def _inner_tensors(t: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The tensors a wrapper tensor subclass is made of (ComfyUI's ``QuantizedTensor``: fp8 data
    and its scale), by torch's subclass protocol ``__tensor_flatten__``; None for a plain tensor."""
    if type(t) in (torch.Tensor, torch.nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return None
    names, _ = t.__tensor_flatten__()
    return {name: getattr(t, name) for name in names}


def _ordinary_view(t: torch.Tensor) -> torch.Tensor:
    """An ordinary (non-inference) tensor on the same storage as ``t``: no copy, same values.

    A wrapper subclass (a quantized weight) owns no storage of its own: a view of it would be an
    unallocated plain tensor (a crash, or fp8 values without their scale). It is rebuilt from
    ordinary views of its inner tensors with its own ``__tensor_unflatten__``."""
    inner = _inner_tensors(t)
    if inner is not None:
        _, ctx = t.__tensor_flatten__()
        views = {name: _ordinary_view(value) for name, value in inner.items()}
        return type(t).__tensor_unflatten__(views, ctx, t.size(), t.stride())
    view = torch.empty(0, dtype=t.dtype, device=t.device)
    return view.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _frozen(t: torch.Tensor) -> bool:
    """Whether autograd cannot use ``t``: an inference tensor, or a parameter made in inference mode
    whose ``.data`` was swapped later (ComfyUI moving weights to a GPU), which has no version counter.
    For a wrapper subclass also any of its inner tensors: a host may rebuild the wrapper outside
    inference mode around the inference-mode fp8 data it loaded."""
    if t.is_inference():
        return True
    try:
        _ = t._version  # raises for a tensor without a version counter
    except RuntimeError:
        return True
    inner = _inner_tensors(t)
    return inner is not None and any(_frozen(value) for value in inner.values())


def thaw(module: torch.nn.Module) -> int:
    """Replace inference-mode parameters/buffers by ordinary tensors on the same storage (so
    autograd may save them for backward; no memory is copied); returns how many. Quantized
    weights stay quantized (same subclass, same fp8 data and scale)."""
    count = 0
    with torch.inference_mode(False), torch.no_grad():
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and _frozen(p):
                    m._parameters[name] = torch.nn.Parameter(_ordinary_view(p), requires_grad=False)
                    count += 1
            for name, b in list(m._buffers.items()):
                if b is not None and _frozen(b):
                    m._buffers[name] = _ordinary_view(b)
                    count += 1
    return count


class CheckpointedForward:
    """Object patch for a UNet block: recompute its activations in backward (gradient checkpointing)."""

    def __init__(self, base: Callable) -> None:
        self.base = base

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return torch.utils.checkpoint.checkpoint(self.base, *args, use_reentrant=False, **kwargs)


def add_gradient_checkpointing(model: Any) -> int:
    """Checkpoint every layer of every UNet block; returns how many. The layers, not the blocks:
    ComfyUI's UNet iterates a block's layers itself and never calls the block's ``forward``."""
    unet = model.model.diffusion_model
    blocks = []
    for name in host_model.model_spec(model).checkpoint_containers:  # a list of blocks, or one block
        container = unet.get_submodule(name)
        blocks += [f"{name}.{i}" for i in range(len(container))] if isinstance(container, torch.nn.ModuleList) else [name]
    count = 0
    for block in blocks:
        for index, _ in enumerate(unet.get_submodule(block)):
            key = f"diffusion_model.{block}.{index}.forward"
            model.add_object_patch(key, CheckpointedForward(model.get_model_object(key)))
            count += 1
    return count


class OutOfPlaceResidual:
    """Object patch for ComfyUI's ``CLIPLayer.forward``: the same two residual
    blocks, but ``x = x + f(x)`` instead of ``x += f(x)``. The in-place add
    overwrites the input that layer norm saved for backward, so gradients could
    not reach the trigger embedding through the stock layer."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None, optimized_attention: Any = None) -> torch.Tensor:
        layer = self.layer
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))


def differentiable_text_encoder(clip: Any) -> None:
    """Patch every transformer layer of ``clip`` (a private clone) with OutOfPlaceResidual."""
    from comfy.clip_model import CLIPLayer

    for name, module in clip.cond_stage_model.named_modules():
        if isinstance(module, CLIPLayer):
            clip.patcher.add_object_patch(f"{name}.forward", OutOfPlaceResidual(module))
