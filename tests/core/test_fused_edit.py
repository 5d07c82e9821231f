"""The fused edit (two matrix products) against float64 dense math and against gated_edit."""

from __future__ import annotations

import pytest
import torch

from perfusion_core.edit import gated_edit, joint_directions
from perfusion_core.fused_edit import fuse, fused_edit
from test_edit import D, D_OUT, T, concepts, reference_joint, world  # noqa: F401  (fixture)


def _inputs(world: dict, n: int, batch: int = 2) -> dict:
    i_stars, us, targets = concepts(world, n)
    e = torch.randn(batch, T, D, generator=world["gen"], dtype=torch.float64)
    e[0, 3] = i_stars[0]  # one token exactly at a concept direction: gate open, projection exact
    beta = torch.linspace(0.4, 0.75, n, dtype=torch.float64)
    tau = torch.full((n,), 0.15, dtype=torch.float64)
    return dict(i_stars=i_stars, us=us, targets=targets, e=e, beta=beta, tau=tau)


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("unit_scale", [True, False])
def test_fused_edit_matches_float64_reference(world, n, unit_scale):
    x = _inputs(world, n)
    strength = torch.ones(n, dtype=torch.float64) if unit_scale else torch.linspace(1.0, 0.5, n, dtype=torch.float64)
    want, _ = reference_joint(x["e"], world["W"], world["Cinv"], x["i_stars"], x["targets"], x["beta"], x["tau"],
                              strength)
    fused = fuse(joint_directions(x["i_stars"].float(), x["us"].float()), x["beta"].float(), x["tau"].float())
    got = fused_edit((x["e"] @ world["W"].T).float(), x["e"].float(), fused, (x["i_stars"] @ world["W"].T).float(),
                     x["targets"].float(), None if unit_scale else strength.float().expand(2, n))
    assert got.dtype == torch.float32 and got.shape == (2, T, D_OUT)
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-4)


def test_per_sample_targets_and_scale_match_gated_edit(world):
    """Targets that differ per sample (timestep-interval sets) and a per-sample scale (a window
    closed for one sample): the same as the term-by-term edit, sample by sample."""
    n = 3
    x = _inputs(world, n, batch=3)
    targets = torch.randn(3, n, D_OUT, generator=world["gen"])
    scale = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    directions = joint_directions(x["i_stars"].float(), x["us"].float())
    base = (x["e"] @ world["W"].T).float()
    w_istar = (x["i_stars"] @ world["W"].T).float()
    args = (x["beta"].float(), x["tau"].float())
    want = gated_edit(base, x["e"].float(), directions, w_istar, targets, *args, scale)
    got = fused_edit(base, x["e"].float(), fuse(directions, *args), w_istar, targets, scale)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], base[1], rtol=0, atol=1e-6)  # all scales 0: the base output


def test_fused_edit_keeps_half_precision_and_passes_gradients(world):
    """fp16 activations in, fp16 out; gradients reach the targets and the input as in gated_edit."""
    x = _inputs(world, 2)
    directions = joint_directions(x["i_stars"].float(), x["us"].float())
    fused = fuse(directions, x["beta"].float(), x["tau"].float())
    e = x["e"].float().requires_grad_()
    targets = x["targets"].float().requires_grad_()
    w_istar = (x["i_stars"] @ world["W"].T).float()
    fused_edit(e @ world["W"].T.float(), e, fused, w_istar, targets, None).square().sum().backward()
    grads = e.grad.clone(), targets.grad.clone()
    e.grad, targets.grad = None, None
    ones = torch.ones(2, 2)
    gated_edit(e @ world["W"].T.float(), e, directions, w_istar, targets.expand(2, -1, -1), x["beta"].float(), x["tau"].float(),
               ones).square().sum().backward()
    torch.testing.assert_close(grads[0], e.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1], targets.grad, rtol=1e-4, atol=1e-4)
    half = fused_edit((e @ world["W"].T.float()).detach().half(), e.detach().half(), fused, w_istar, targets.detach(), None)
    assert half.dtype == torch.float16
