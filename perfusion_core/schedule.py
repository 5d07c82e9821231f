"""When a concept acts during denoising (docs/method.md §8).

S1: a concept is active only inside a window of denoising progress, given as
start/end percent (0 = first step, 1 = last) and converted to sigmas by the
caller (higher sigma = earlier). Trained for such a window, it sees only the
training timesteps inside it (``window_timesteps``).
S2: a concept carries S value-target sets; the set for model timestep t in
[0, 1000) is floor(t * S / 1000), i.e. uniform intervals of the timeline.
"""

from __future__ import annotations

import math

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


def window_timesteps(start_percent: float, end_percent: float, horizon: int = 1000) -> tuple[int, int]:
    """The training timesteps [low, high) whose sigma lies in the window of denoising progress
    [start_percent, end_percent]: the timesteps S1 trains a concept on.

    Progress p sits at model timestep (1 - p) * (horizon - 1), as ComfyUI's discrete model
    sampling converts a percent to a sigma (0 and 1 are the open ends), and sigma rises with t,
    so t is in the window iff (1 - end) * (horizon - 1) <= t <= (1 - start) * (horizon - 1).
    """
    if not (0.0 <= start_percent < end_percent <= 1.0):
        raise ValueError(f"the window needs 0 <= start_percent < end_percent <= 1, "
                         f"got {start_percent}, {end_percent}")
    last = horizon - 1
    low = 0 if end_percent >= 1.0 else math.ceil((1.0 - end_percent) * last)
    high = horizon if start_percent <= 0.0 else math.floor((1.0 - start_percent) * last) + 1
    if high <= low:
        raise ValueError(f"the window [{start_percent}, {end_percent}] holds no training timestep; widen it")
    return low, high
