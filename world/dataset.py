"""The pretraining set: scenes, their captions and their latents, all from fixed seeds."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from world.render import render_array
from world.scenes import Scene, caption, sample_scene

PRETRAIN_SCENES = 16000
CAPTION_VARIANTS = 2  # captions per scene, each with its own optional parts dropped
TWO_OBJECT_SHARE = 0.25
EMPTY_CAPTION = ""  # what classifier-free guidance's unconditional branch encodes


@dataclass
class PretrainingSet:
    scenes: list[Scene]
    captions: list[list[str]]  # CAPTION_VARIANTS per scene

    def all_captions(self) -> list[str]:
        return [EMPTY_CAPTION] + [c for variants in self.captions for c in variants]


def pretraining_set(n: int = PRETRAIN_SCENES, seed: int = 0, parts_share: float = 0.0,
                    part_scale: float = 1.0) -> PretrainingSet:
    """Scenes without any held-out concept, each with its caption variants; with ``parts_share``
    (world v2), that share of the ordinary objects wears concept parts drawn at ``part_scale``, and
    their captions name them. At the defaults, the first world's set."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, two_objects=TWO_OBJECT_SHARE, parts_share=parts_share, part_scale=part_scale)
              for _ in range(n)]
    captions = [[caption(s, rng) for _ in range(CAPTION_VARIANTS)] for s in scenes]
    return PretrainingSet(scenes, captions)


def images(scenes: list[Scene]) -> torch.Tensor:
    """``[N, 3, 64, 64]`` float32 in [0, 1]."""
    return torch.from_numpy(np.stack([render_array(s) for s in scenes])).permute(0, 3, 1, 2).contiguous()
