"""Masks from cross-attention maps: against dense float64 math and their defining properties."""

from __future__ import annotations

import pytest
import torch

from perfusion_core.attention_mask import maps_to_latent, threshold_mask, token_attention


def dense_token_attention(q: torch.Tensor, k: torch.Tensor, heads: int, tokens: list[int]) -> torch.Tensor:
    """Head by head, query by query, in float64."""
    q, k = q.double(), k.double()
    b, n, inner = q.shape
    d = inner // heads
    out = torch.zeros(b, n, dtype=torch.float64)
    for h in range(heads):
        qh, kh = q[..., h * d:(h + 1) * d], k[..., h * d:(h + 1) * d]
        logits = qh @ kh.transpose(1, 2) / d ** 0.5
        probs = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
        probs = probs / probs.sum(dim=-1, keepdim=True)
        out += probs[..., tokens].sum(-1) / heads
    return out


def test_token_attention_matches_dense_float64():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, 40, generator=gen), torch.randn(2, 7, 40, generator=gen)
    got = token_attention(q, k, heads=5, tokens=[2, 3])
    assert got.shape == (2, 16)
    assert torch.allclose(got.double(), dense_token_attention(q, k, 5, [2, 3]), atol=1e-6)


def test_token_attention_over_all_tokens_is_one():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 9, 24, generator=gen), torch.randn(1, 5, 24, generator=gen)
    assert torch.allclose(token_attention(q, k, 3, range(5)), torch.ones(1, 9), atol=1e-6)
    with pytest.raises(ValueError, match="no context tokens"):
        token_attention(q, k, 3, [])


def test_maps_from_each_layer_land_on_the_same_place():
    """A hot spot in the top-left quarter at 4x4 and at 8x8 lands in the top-left quarter of 8x8."""
    coarse = torch.zeros(1, 16)
    coarse[0, 0] = 1.0  # row 0, col 0 of 4x4
    fine = torch.zeros(1, 64)
    fine[0, 9] = 1.0  # row 1, col 1 of 8x8
    saliency = maps_to_latent([coarse * 0.01, fine * 5.0], (8, 8))  # scales differ: each is normalised
    assert saliency.shape == (1, 8, 8)
    mask = threshold_mask(saliency, 0.5)
    assert mask[0, :2, :2].sum() > 0 and mask[0, 4:, :].sum() == 0 and mask[0, :, 4:].sum() == 0


def test_maps_must_tile_the_latent():
    with pytest.raises(ValueError, match="do not tile"):
        maps_to_latent([torch.ones(1, 10)], (8, 8))
    with pytest.raises(ValueError, match="no attention maps"):
        maps_to_latent([], (8, 8))


def test_threshold_mask():
    saliency = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    mask = threshold_mask(saliency, 0.5)
    assert torch.equal(mask[0], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))  # (v - 0) / 4 >= 0.5
    assert torch.equal(mask[1], torch.ones(2, 2)), "a flat map keeps the whole image"
    with pytest.raises(ValueError, match="threshold"):
        threshold_mask(saliency, 1.0)
