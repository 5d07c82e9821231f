"""A world codec's second phase: fine-tuning with the loss on the parts' pixels raised, and
optionally a patch discriminator.

A codec trained only on L1 + MSE over whole images blurs what its latent leaves
uncertain (where exactly on the teddy each dot sits, which pixel column a cat's
stripe starts in), and parts are 1.4% of the pixels of world v2's training
scenes, so they get 1.4% of the L1 gradient. The fine-tune weighs the pixels the
parts change more (``CodecRecipe.parts_weight``, the renderer's parts mask).

A discriminator that judges small patches as "rendered" or "round-tripped"
makes a smear costly, so a decoder draws sharp detail where its latent says
there is some (the idea SD's own autoencoder was trained with; written here
with a discriminator sized for 32 px crops). Its term is weighted against the
reconstruction term by the ratio of their gradients at the decoder's last
convolution, so neither swamps the other whatever their raw scales.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from world.autoencoder import CodecRecipe, TrainingPool, reconstruct, set_latent_scale


class PatchDiscriminator(torch.nn.Module):
    """``[b, 3, h, w]`` in [0, 1] -> ``[b, 1, h/4, w/4]`` logits, each judging a patch of about 22 px."""

    def __init__(self, width: int = 64, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), torch.nn.GroupNorm(8, 2 * width),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(2 * width, 4 * width, 3, padding=1), torch.nn.GroupNorm(8, 4 * width),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(4 * width, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss: real patches pushed above +1, round-tripped ones below -1."""
    return (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()) / 2


def balanced_weight(reconstruction: torch.Tensor, adversarial: torch.Tensor, last: torch.Tensor,
                    factor: float) -> torch.Tensor:
    """``factor`` times |d rec / d last| / |d adv / d last|: the adversarial term's weight that gives
    it ``factor`` times the reconstruction term's pull on the decoder's last layer."""
    g_rec = torch.autograd.grad(reconstruction, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adversarial, last, retain_graph=True)[0]
    return (factor * g_rec.norm() / (g_adv.norm() + 1e-6)).clamp(max=1e4).detach()


def finetune_codec(
    taesd: torch.nn.Module, recipe: CodecRecipe, seed: int = 1, log: Callable[[str], None] = print,
    snapshot: Callable[[torch.nn.Module, int], None] | None = None, pool: int = 2048,
) -> torch.nn.Module:
    """Train ``taesd`` (encoder and decoder) ``recipe.finetune_steps`` more steps on ``pool``
    of the recipe's images (a quarter renewed every 500 steps) with the recipe's weighted
    reconstruction loss plus, at ``adversarial_weight`` > 0, the discriminator's; sets the latent
    scale again."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    taesd.requires_grad_(True).train()
    disc = PatchDiscriminator(seed=seed)
    betas = (0.5, 0.9)  # the usual GAN setting: a short momentum follows the moving opponent
    codec = list(taesd.taesd_encoder.parameters()) + list(taesd.taesd_decoder.parameters())
    opt = torch.optim.Adam(codec, lr=recipe.finetune_lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=recipe.finetune_lr, betas=betas)
    last = [m for m in taesd.taesd_decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight
    images = TrainingPool(pool, rng, recipe)
    steps = recipe.finetune_steps
    adversarial = recipe.adversarial_weight > 0
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups + opt_d.param_groups:  # warm up: fresh Adam moments jolt a trained codec
            group["lr"] = recipe.finetune_lr * min(1.0, (step + 1) / 200)
        if step and step % 500 == 0:
            images.renew(pool // 4)
        if snapshot is not None and step and step % 1000 == 0:
            snapshot(taesd, step)
        x, w = images.batch()
        recon, rec = reconstruct(taesd, x, w)
        loss = rec
        if adversarial:
            adv = -disc(recon).mean()
            loss = rec + balanced_weight(rec, adv, last, recipe.adversarial_weight) * adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if adversarial:
            d_loss = discriminator_loss(disc(x), disc(recon.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        if step % 50 == 0 or step == steps - 1:
            extra = f" adversarial {adv.item():.3f} discriminator {d_loss.item():.3f}" if adversarial else ""
            log(f"codec fine-tune step {step}/{steps} reconstruction {rec.item():.4f}{extra} "
                f"({(time.time() - start) / (step + 1):.2f} s/step)")
    taesd.requires_grad_(False).eval()
    set_latent_scale(taesd)
    return taesd
