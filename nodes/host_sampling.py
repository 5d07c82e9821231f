"""Running our own loops on ComfyUI's sampling machinery.

Training, mask extraction and training previews all need the model exactly as
a sampler sees it: loaded by ComfyUI's model management, with its object
patches, wrappers and cleanup. A ``comfy.samplers.Sampler`` run inside a
stock ``CFGGuider`` gives exactly that; ``denoise`` is the per-batch call
every sampler step makes (``calc_cond_batch``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

# fn(base_model, model_options): the body of the loop; the model is loaded and patched while it runs.
LoopBody = Callable[[Any, dict], None]


def run_in_guider(patched: Any, positive: list, latent_shape: tuple[int, ...], body: LoopBody, seed: int = 0) -> None:
    """Run ``body`` as the sampler of a CFGGuider on ``patched`` (conditioning ``positive``, cfg 1)."""
    import comfy.samplers

    class _BodySampler(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                   denoise_mask=None, disable_pbar=False):
            body(model_wrap.inner_model, extra_args["model_options"])
            return torch.zeros_like(latent_image)

    guider = comfy.samplers.CFGGuider(patched)
    guider.inner_set_conds({"positive": positive})
    guider.set_cfg(1.0)
    shape = (1,) + tuple(latent_shape)
    guider.sample(torch.zeros(shape), torch.zeros(shape), _BodySampler(), torch.ones(2), seed=seed)


def encode(clip: Any, text: str) -> list:
    """ComfyUI conditioning ``[[cond, extras]]`` of ``text``."""
    out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
    return [[out.pop("cond"), out]]


def encode_batch(clip: Any, texts: list[str]) -> list:
    """One conditioning ``[[cond, extras]]`` whose batch row k is ``texts[k]`` (each text encoded once)."""
    encoded = {t: encode(clip, t)[0] for t in dict.fromkeys(texts)}
    rows = [encoded[t] for t in texts]
    extras = {k: torch.cat([r[1][k] for r in rows]) if torch.is_tensor(v) else v for k, v in rows[0][1].items()}
    return [[torch.cat([r[0] for r in rows]), extras]]


def denoise(base_model: Any, model_options: dict, conditionings: list[list], x_t: torch.Tensor, sigma: torch.Tensor,
            x0: torch.Tensor | None = None, seed: int = 0) -> list[torch.Tensor]:
    """The model's x0 estimates for ``x_t`` at ``sigma`` (per sample), one per conditioning, in one batch."""
    import comfy.sampler_helpers
    import comfy.samplers

    conds = [comfy.samplers.encode_model_conds(
        base_model.extra_conds, comfy.sampler_helpers.convert_cond(c), x_t, x_t.device, "positive",
        latent_image=x_t if x0 is None else x0, seed=seed) for c in conditionings]
    return comfy.samplers.calc_cond_batch(base_model, conds, x_t, sigma, model_options)
