"""The training images as the model consumes them: latents, flips, loss weights from masks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from ..perfusion_core.training import TrainingError, latent_weights, square_crop


@dataclass
class TrainingData:
    """Latents of the training images (N, C, h, w), as the model consumes them, and their
    horizontal flips; optional loss weights (N, 1, h, w) from masks; a digest for resume checks."""

    latents: torch.Tensor
    flipped: torch.Tensor
    weights: torch.Tensor | None
    digest: str

    def batch(self, indices: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        pick = flips.view(-1, 1, 1, 1)
        x0 = torch.where(pick, self.flipped[indices], self.latents[indices])
        if self.weights is None:
            return x0, None
        return x0, torch.where(pick, self.weights[indices].flip(-1), self.weights[indices])

    def with_masks(self, masks: torch.Tensor) -> "TrainingData":
        """The same data with loss weights from ``masks`` (N, H, W) of the unflipped images."""
        weights = latent_weights(masks, tuple(self.latents.shape[-2:]))
        digest = hashlib.sha256(self.digest.encode() + weights.numpy().tobytes()).hexdigest()[:16]
        return TrainingData(self.latents, self.flipped, weights, digest)

    def loss_masks(self, resolution: int) -> torch.Tensor:
        """(N, resolution, resolution) view of the loss weights (all ones without masks), for the UI."""
        n, _, h, w = self.latents.shape
        weights = torch.ones(n, 1, h, w) if self.weights is None else self.weights.float().cpu()
        return torch.nn.functional.interpolate(weights, size=(resolution, resolution), mode="nearest")[:, 0]


def prepare_data(model: Any, vae: Any, images: torch.Tensor, masks: torch.Tensor | None, resolution: int) -> TrainingData:
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (3, 4):
        raise TrainingError(f"images: expected a batch of 1-100 RGB images, got shape {tuple(images.shape)}")
    if images.shape[0] > 100:
        raise TrainingError(f"images: {images.shape[0]} images; Perfusion trains on 1-10 (at most 100)")
    pixels = square_crop(images[..., :3], resolution)
    h = hashlib.sha256(pixels.numpy().tobytes())
    with torch.no_grad():
        raw = torch.cat([vae.encode(pixels), vae.encode(pixels.flip(2))]).float()
    latents = model.model.process_latent_in(raw)
    n = images.shape[0]
    weights = None
    if masks is not None:
        masks = masks.unsqueeze(0) if masks.ndim == 2 else masks
        if masks.ndim != 3 or masks.shape[0] not in (1, n):
            raise TrainingError(f"mask: expected one mask or one per image ({n}), got shape {tuple(masks.shape)}")
        if masks.shape[1:] != images.shape[1:3]:
            raise TrainingError(f"mask: size {tuple(masks.shape[1:])} differs from the images' {tuple(images.shape[1:3])}")
        masks = square_crop(masks.expand(n, -1, -1).unsqueeze(-1), resolution)[..., 0]
        weights = latent_weights(masks, tuple(latents.shape[-2:]))
        h.update(weights.numpy().tobytes())
    return TrainingData(latents=latents[:n], flipped=latents[n:], weights=weights, digest=h.hexdigest()[:16])
