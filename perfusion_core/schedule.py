"""When a concept acts during denoising (docs/method.md §8).

S1: a concept is active only inside a window of denoising progress, given as
start/end percent (0 = first step, 1 = last) and converted to sigmas by the
caller (higher sigma = earlier).
S2: a concept carries S value-target sets; the set for model timestep t in
[0, 1000) is floor(t * S / 1000), i.e. uniform intervals of the timeline.
"""

from __future__ import annotations

import torch


def window_active(sigmas: torch.Tensor, start_sigma: float, end_sigma: float) -> torch.Tensor:
    """Per-sample bool: sigma lies in [end_sigma, start_sigma] (start is the noisier end)."""
    return (sigmas <= start_sigma) & (sigmas >= end_sigma)


def interval_index(timesteps: torch.Tensor, n_sets: int, horizon: float = 1000.0) -> torch.Tensor:
    """Per-sample index of the active parameter set: floor(t * n_sets / horizon), clamped."""
    if n_sets < 1:
        raise ValueError(f"n_sets must be >= 1, got {n_sets}")
    idx = torch.floor(timesteps.double() * n_sets / horizon).long()
    return idx.clamp_(0, n_sets - 1)
