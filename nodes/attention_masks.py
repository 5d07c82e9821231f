"""TrainPerfusion's mask source "superclass attention": loss masks from the
model's own cross-attention maps of the superclass word (no extra model).

Each cross-attention module of a private clone of the model gets an object
patch on its ``forward`` that first records how much every image position
attends to the superclass tokens (from the module's own to_q/to_k, so LoRA
patches and any pack's projection hooks are included), then runs the stock
forward unchanged. The training latents are noised at a few mid-range
timesteps and denoised once each under "a photo of a <superclass>".
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..perfusion_core.attention_mask import maps_to_latent, threshold_mask, token_attention
from ..perfusion_core.prompt_text import text_before_slot
from ..perfusion_core.training import gaussian_noise

from . import host_model
from .encoding import word_positions
from .host_sampling import denoise, encode, run_in_guider

PROMPT = "a photo of a {}"
TIMESTEPS = (250, 500, 750)  # mid-range noise: early steps see no shape, late steps only texture


class AttentionProbe:
    """Object patch for one cross-attention ``forward``: records the superclass word's attention map."""

    def __init__(self, module: torch.nn.Module, base_forward: Callable, tokens: list[int],
                 sink: list[torch.Tensor]) -> None:
        self.module, self.base_forward, self.tokens, self.sink = module, base_forward, tokens, sink

    def __call__(self, x: torch.Tensor, context: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if context is not None:
            with torch.no_grad():
                q, k = self.module.to_q(x), self.module.to_k(context)
                self.sink.append(token_attention(q, k, self.module.heads, self.tokens).cpu())
        return self.base_forward(x, context, *args, **kwargs)


def superclass_masks(model: Any, clip: Any, latents: torch.Tensor, superclass: str, seed: int) -> torch.Tensor:
    """(N, h, w) binary masks on the latent grid of ``latents`` (N, C, h, w), already as the model consumes them."""
    tokens = word_positions(clip.tokenizer, text_before_slot(PROMPT), superclass)
    conditioning = encode(clip, PROMPT.format(superclass))
    probe = model.clone()
    sink: list[torch.Tensor] = []
    for layer in host_model.cross_attention_layers(model):
        key = f"diffusion_model.{layer}.forward"
        module = probe.get_model_object(f"diffusion_model.{layer}")
        probe.add_object_patch(key, AttentionProbe(module, probe.get_model_object(key), tokens, sink))
    per_timestep: list[torch.Tensor] = []

    def body(base_model: Any, model_options: dict) -> None:
        sampling = base_model.model_sampling
        device = probe.load_device
        x0 = latents.to(device)
        for i, t in enumerate(TIMESTEPS):
            sink.clear()
            sigma = sampling.sigma(torch.full((x0.shape[0],), float(t))).to(device)
            noise = gaussian_noise(tuple(x0.shape), (seed + i) % 2**63).to(device)
            x_t = sampling.noise_scaling(sigma, noise, x0)
            with torch.no_grad():
                denoise(base_model, model_options, [conditioning], x_t, sigma, x0, seed)
            per_timestep.append(maps_to_latent(sink, tuple(x0.shape[-2:])))

    run_in_guider(probe, conditioning, tuple(latents.shape[1:]), body, seed)
    return threshold_mask(torch.stack(per_timestep).mean(dim=0))
