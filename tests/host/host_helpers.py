"""Small helpers shared by the in-process host tests: build a word edit, apply it, sample."""

from __future__ import annotations

from typing import Any

import torch

import nodes as comfy_nodes

STATS_CAPTIONS = 300  # enough for a stable C of the tiny encoders; one cached C for every host test


def word_edit_of(pack: Any, model: Any, clip: Any, trigger: str = "cat", target: str = "dog") -> Any:
    return pack.nodes.nodes_word_edit.word_edit(model, clip, trigger, target, "a photo of a {}", STATS_CAPTIONS)


def apply(pack: Any, model: Any, clip: Any, concept: Any, **kw: Any) -> tuple[Any, Any]:
    return pack.nodes.nodes_apply.apply_edit(model, clip, concept, **kw)


def encode(clip: Any, text: str) -> list:
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def ksample(model: Any, positive: list, negative: list, cfg: float = 1.0, steps: int = 1, seed: int = 0) -> torch.Tensor:
    """One deterministic KSampler run (euler, normal) on an 8x8 latent."""
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = comfy_nodes.common_ksampler(model, seed, steps, cfg, "euler", "normal", positive, negative, latent,
                                      denoise=1.0)
    return out[0]["samples"].clone()
