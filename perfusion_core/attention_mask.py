"""Loss masks from the model's own cross-attention maps of the superclass word.

A user who has no masks can still focus the loss on the object: in a prompt
like "a photo of a teddy", the image positions that attend to "teddy" are
where the model sees the teddy. Each cross-attention layer gives one such map
at its own resolution; they are brought to the latent size, averaged, and
thresholded into a mask. No extra model is needed.

Shapes: B images, N image positions of a layer, M context tokens, H heads,
D channels per head, h x w the latent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

DEFAULT_THRESHOLD = 0.5


def token_attention(q: torch.Tensor, k: torch.Tensor, heads: int, tokens: Sequence[int]) -> torch.Tensor:
    """(B, N) attention probability that each image position gives to ``tokens`` (summed over
    them), averaged over heads; ``q`` (B, N, H*D) and ``k`` (B, M, H*D) are projected queries/keys."""
    if not tokens:
        raise ValueError("token_attention: no context tokens given")
    q = rearrange(q.float(), "b n (h d) -> b h n d", h=heads)
    k = rearrange(k.float(), "b m (h d) -> b h m d", h=heads)
    probs = torch.einsum("bhnd,bhmd->bhnm", q, k).mul(q.shape[-1] ** -0.5).softmax(dim=-1)
    return probs[..., list(tokens)].sum(dim=-1).mean(dim=1)


def maps_to_latent(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Average of per-layer maps (each (B, N), N = a downscaled h x w grid) on the latent grid,
    each map first divided by its per-image maximum so that no layer dominates. (B, h, w)."""
    if not maps:
        raise ValueError("maps_to_latent: no attention maps were recorded")
    h, w = size
    out = []
    for m in maps:
        factor = math.sqrt(h * w / m.shape[1])
        grid = (round(h / factor), round(w / factor))
        if grid[0] * grid[1] != m.shape[1]:
            raise ValueError(f"maps_to_latent: {m.shape[1]} positions do not tile a {h}x{w} latent")
        m = rearrange(m.float(), "b (y x) -> b 1 y x", y=grid[0])
        m = m / m.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        out.append(F.interpolate(m, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, dim=1).mean(dim=1)


def threshold_mask(saliency: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Binary mask (B, h, w): where the per-image min-max normalised saliency reaches ``threshold``.
    A flat map says nothing about where the object is: that image keeps its whole area."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    lo = saliency.amin(dim=(-2, -1), keepdim=True)
    hi = saliency.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    normalised = torch.where(span > 1e-12, (saliency - lo) / span.clamp_min(1e-12), torch.ones_like(saliency))
    return (normalised >= threshold).float()
