"""The world model's VAE: ComfyUI's TAESD layout, trained on the world's images.

64 px images become 8 x 8 x 4 latents. The codec is trained on pretraining
scenes overlaid with random small shapes (dots, bars, stars in any colour), so
it can carry the fine detail of objects it never saw, the held-out concepts
included, without ever seeing those. Noise on the latent while training keeps
nearby latents decoding to nearby images, which a diffusion model relies on.

ComfyUI's TAESD loader reads ``vae_scale``/``vae_shift`` from the checkpoint;
they are set so that the SD1 latent the UNet sees has zero mean and unit
variance over the world.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ImageDraw

from harness.comfy_host import import_host
from world.dataset import images
from world.render import parts_mask, render
from world.scenes import V2_PART_SCALE, V2_PARTS_SHARE, sample_scene

SD1_LATENT_SCALE = 0.18215  # ComfyUI's SD1 latent format multiplies VAE latents by this
# Small: the noise bounds how much a latent can carry (too much and fine detail is lost).
LATENT_NOISE = 0.01


@dataclass(frozen=True)
class CodecRecipe:
    """How a world's codec is trained (each field is a choice measured in docs/evidence.md)."""

    steps: int
    lr: float
    residual_gain: float   # each block's last convolution starts at this times He init
    scribbles: bool        # random small shapes drawn over the training scenes
    parts_share: float     # share of ordinary objects wearing concept parts (``sample_scene``)
    uniform_crops: float   # share of crops placed anywhere; the rest in the lower half, where objects stand
    object_weight: float = 1.0  # loss weight of object pixels against background pixels
    parts_weight: float = 1.0   # loss weight of the pixels that parts (patterns, accessories) change
    part_scale: float = 1.0     # how large the training scenes' parts are drawn (``Scene.part_scale``)
    # A second phase (``world.codec_finetune``): this many more steps at this rate, with a patch
    # discriminator whose pull on the decoder's last layer is this share of the reconstruction's.
    finetune_steps: int = 0
    finetune_lr: float = 1e-4
    adversarial_weight: float = 0.0
    batch: int = 16
    crop: int = 32         # px: the codec is convolutional, and crops cost a quarter of full images


# The first world's codec; its round trips lose colours and every small part.
WORLD_V1 = CodecRecipe(steps=2500, lr=5e-4, residual_gain=0.2, scribbles=True, parts_share=0.0, uniform_crops=0.2)
# World v2's: residual writes start at zero, so each block starts as the identity
# and a higher rate trains stably; the parts themselves (on ordinary objects), drawn larger,
# replace the scribbles, and their pixels weigh ten times the others (they are 1-2% of all);
# and many more steps, which is what carrying the parts needs.
WORLD_V2 = CodecRecipe(steps=12000, lr=1e-3, residual_gain=0.0, scribbles=False, parts_share=V2_PARTS_SHARE,
                       uniform_crops=1.0, parts_weight=10.0, part_scale=V2_PART_SCALE)


def new_taesd(seed: int = 0, residual_gain: float = WORLD_V1.residual_gain) -> torch.nn.Module:
    """ComfyUI's TAESD module with seeded He-initialised convolutions (ComfyUI skips init)."""
    import_host()
    from comfy.taesd.taesd import TAESD

    module = TAESD()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                # A block's last convolution writes into the residual sum: start it small, or
                # the sums of a dozen blocks blow the activations up by orders of magnitude.
                gain = residual_gain if ".conv.4." in name else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * gain * math.sqrt(2.0 / fan_in))
    return module


def training_images(n: int, rng: random.Random, recipe: CodecRecipe) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(``[n, 3, 64, 64]`` pretraining-style scenes, with random small shapes drawn over them if the
    recipe says so; ``[n, 1, 64, 64]`` each pixel's loss weight, or None when all weigh the same)."""
    uniform = recipe.object_weight == 1 and recipe.parts_weight == 1
    out, weights = [], []
    for _ in range(n):
        scene = sample_scene(rng, parts_share=recipe.parts_share, part_scale=recipe.part_scale)
        image, mask = render(scene)
        if not uniform:
            weight = 1 + (recipe.object_weight - 1) * np.asarray(mask, dtype=np.float32) / 255
            if recipe.parts_weight != 1:
                weight += (recipe.parts_weight - 1) * np.asarray(parts_mask(scene, image=image), dtype=np.float32) / 255
            weights.append(weight)
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randrange(0, 8) if recipe.scribbles else 0):
            x, y, r = rng.uniform(0, 64), rng.uniform(0, 64), rng.uniform(0.8, 4)
            fill = tuple(rng.randrange(256) for _ in range(3))
            kind = rng.randrange(3)
            if kind == 0:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
            elif kind == 1:
                draw.rectangle((x - 3 * r, y - r / 2, x + 3 * r, y + r / 2), fill=fill)
            else:
                draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
        out.append(image)
    rgb = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) / 255 for i in out])).permute(0, 3, 1, 2)
    return rgb, None if uniform else torch.from_numpy(np.stack(weights))[:, None]


class TrainingPool:
    """A pool of the recipe's training images and their pixel weights, renewed in part now and
    then (so a codec does not memorise it), from which batches of random crops are drawn."""

    def __init__(self, n: int, rng: random.Random, recipe: CodecRecipe) -> None:
        self.rng, self.recipe = rng, recipe
        self.images, self.weights = training_images(n, rng, recipe)

    def renew(self, n: int) -> None:
        fresh = torch.randperm(len(self.images))[:n]
        self.images[fresh], weights = training_images(n, self.rng, self.recipe)
        if self.weights is not None:
            self.weights[fresh] = weights

    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(``recipe.batch`` crops of ``recipe.crop`` px, their weights or None), each batch at one place."""
        rng, crop = self.rng, self.recipe.crop
        idx = torch.randint(0, len(self.images), (self.recipe.batch,))
        ox = rng.randrange(0, 64 - crop + 1, 8)
        oy = (rng.randrange(0, 64 - crop + 1, 8) if rng.random() < self.recipe.uniform_crops
              else rng.randrange(16, 64 - crop + 1, 8))
        x = self.images[idx][:, :, oy:oy + crop, ox:ox + crop]
        return x, None if self.weights is None else self.weights[idx][:, :, oy:oy + crop, ox:ox + crop]


def reconstruct(taesd: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(round trip of ``x`` through a noised latent, its training loss): the reconstruction loss and
    a small pull of the latent towards zero."""
    latent = taesd.taesd_encoder(x)
    recon = taesd.taesd_decoder(latent + LATENT_NOISE * torch.randn_like(latent))
    return recon, reconstruction_loss(recon, x, weights) + 1e-4 * latent.pow(2).mean()


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """L1 + MSE; with ``weights`` (per pixel) a weighted mean, in which object or part pixels can
    count more (the L1 gradient is the same for every pixel that is off, and the background has most)."""
    if weights is None:
        return F.l1_loss(recon, x) + F.mse_loss(recon, x)
    d = recon - x
    return ((weights * d.abs()).mean() + (weights * d.pow(2)).mean()) / weights.mean()


def train_autoencoder(
    recipe: CodecRecipe = WORLD_V1, seed: int = 0, log: Callable[[str], None] = print,
    snapshot: Callable[[torch.nn.Module, int], None] | None = None,
) -> torch.nn.Module:
    """Train encoder and decoder on random crops as ``recipe`` says; ``snapshot(taesd, step)`` is
    called every 1000 steps. Returns the TAESD module with its latent scale set."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    taesd = new_taesd(seed, recipe.residual_gain)
    params = list(taesd.taesd_encoder.parameters()) + list(taesd.taesd_decoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    pool = TrainingPool(2048, rng, recipe)
    steps = recipe.steps
    start = time.time()
    for step in range(steps):
        lr = recipe.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        if step and step % 500 == 0:
            pool.renew(512)
        if snapshot is not None and step and step % 1000 == 0:
            snapshot(taesd, step)
        _, loss = reconstruct(taesd, *pool.batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({(time.time() - start) / (step + 1):.2f} s/step)")
    set_latent_scale(taesd)
    return taesd


@torch.no_grad()
def set_latent_scale(taesd: torch.nn.Module, n: int = 512, seed: int = 1) -> None:
    """Choose ``vae_scale``/``vae_shift`` so SD1 latents of world images have mean 0, std 1.

    ComfyUI: latent = encoder(x) / vae_scale + vae_shift; the UNet sees latent * 0.18215.
    """
    rng = random.Random(seed)
    raw = taesd.taesd_encoder(images([sample_scene(rng) for _ in range(n)]))
    scale = SD1_LATENT_SCALE * raw.std().item()
    taesd.vae_scale.fill_(scale)
    taesd.vae_shift.fill_(-raw.mean().item() / scale)


@torch.no_grad()
def round_trip(taesd: torch.nn.Module, x: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """Encode and decode ``x`` (in [0, 1]), nothing else: on the codec's device and dtype, in chunks
    (the activations of thousands of images fill the memory), returned as float32 on the CPU."""
    w = next(taesd.parameters())
    return torch.cat([taesd.taesd_decoder(taesd.taesd_encoder(x[i:i + chunk].to(w))).clamp(0, 1).float().cpu()
                      for i in range(0, len(x), chunk)])
