"""Training world v2's text encoder on the world, as CLIP was trained: captions against pictures.

Each step draws scenes (pretraining scenes, half of the ordinary objects wearing
concept parts, never a held-out concept), one caption of each (optional parts
dropped at random) and its render. A small image tower and the text encoder,
pooled at the end token as CLIP pools and projected, learn to pick each
caption's own picture among the batch's, and each picture's caption (symmetric
InfoNCE with a learned temperature). Telling "a red cup and a blue teddy" from
"a blue cup and a red teddy" needs word order; telling a cup "with white dots"
from a plain one needs the words after the noun: what a trained CLIP's features
carry and the seeded random encoder's do not.

On its own, before the UNet, as SD1.5's CLIP was trained before its UNet and
frozen: the UNet stage then encodes each caption once and caches it, so it
costs what the first world's did.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from world.dataset import images
from world.scenes import caption, sample_scene
from world.text_encoder import END_TOKEN, WorldTextEncoder, token_ids

EMBED = 256


class ImageTower(torch.nn.Module):
    """64 px picture -> ``EMBED`` vector: four stride-2 convolutions and a projection."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        layers, cin = [], 3
        for cout in (width, 2 * width, 4 * width, 4 * width):  # 64 -> 32 -> 16 -> 8 -> 4 px
            layers += [torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1), torch.nn.GroupNorm(8, cout), torch.nn.SiLU()]
            cin = cout
        self.trunk = torch.nn.Sequential(*layers)
        self.project = torch.nn.Linear(cin * 16, EMBED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.trunk(x).flatten(1))


class CaptionPictureModel(torch.nn.Module):
    """The two towers and the temperature; only ``text`` is kept after training."""

    def __init__(self, text: WorldTextEncoder) -> None:
        super().__init__()
        self.text, self.image = text, ImageTower()
        self.text_projection = torch.nn.Linear(768, EMBED, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss(self, tokens: torch.Tensor, pictures: torch.Tensor) -> torch.Tensor:
        # Causal attention: positions after the end token cannot change it, so they are cut off.
        ends = (tokens == END_TOKEN).int().argmax(-1)
        pooled = self.text(tokens[:, :int(ends.max()) + 1])[torch.arange(len(tokens)), ends]
        t = F.normalize(self.text_projection(pooled), dim=-1)
        i = F.normalize(self.image(pictures), dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * t @ i.T
        target = torch.arange(len(tokens))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def caption_picture_pool(clip, n: int, rng: random.Random, parts_share: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[n, 77]`` token ids, ``[n, 3, 64, 64]`` renders) of ``n`` fresh pretraining scenes."""
    scenes = [sample_scene(rng, parts_share=parts_share) for _ in range(n)]
    return token_ids(clip, [caption(s, rng) for s in scenes]), images(scenes)


def train_text_encoder(text: WorldTextEncoder, steps: int, batch: int = 64, lr: float = 3e-4, seed: int = 0,
                       pool: int = 4096, log: Callable[[str], None] = print) -> CaptionPictureModel:
    """Train ``text`` in place against an image tower; returns both towers (for measuring)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = CaptionPictureModel(text)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    tokens, pictures = caption_picture_pool(text.clip, pool, rng)
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        if step and step % 500 == 0:  # fresh scenes now and then: the language is small, the pictures are not
            fresh = torch.randperm(pool)[:pool // 4]
            tokens[fresh], pictures[fresh] = caption_picture_pool(text.clip, len(fresh), rng)
        idx = torch.randperm(pool)[:batch]
        loss = model.loss(tokens[idx], pictures[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"text step {step}/{steps} loss {loss.item():.4f} ({(time.time() - start) / (step + 1):.2f} s/step)")
    text.write_rows_into_clip()
    return model
