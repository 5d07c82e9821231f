"""The gated rank-1 edit against float64 dense math and its defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from perfusion_core.edit import context_locked_keys, gate_values, gated_edit, joint_directions, rome_edit
from perfusion_core.schedule import interval_index, window_active

D, D_OUT, T = 24, 10, 7


def spd(dim: int, cond: float, gen: torch.Generator) -> torch.Tensor:
    """A random symmetric positive definite matrix with a chosen condition number."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), dim, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


@pytest.fixture
def world() -> dict:
    gen = torch.Generator().manual_seed(0)
    C = spd(D, 1e3, gen)
    W = torch.randn(D_OUT, D, generator=gen, dtype=torch.float64)
    return {"gen": gen, "C": C, "Cinv": torch.linalg.inv(C), "W": W}


def concepts(world: dict, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = world["gen"]
    i_stars = torch.randn(n, D, generator=gen, dtype=torch.float64)
    us = i_stars @ world["Cinv"]  # rows u_n = C^-1 i*_n (C symmetric)
    targets = torch.randn(n, D_OUT, generator=gen, dtype=torch.float64)
    return i_stars, us, targets


def reference_joint(e, W, Cinv, i_stars, targets, beta, tau, strength):
    """Dense float64 reference: Gram-Schmidt in the C^-1 inner product, then
    W e_perp + sum gates, blended per concept by strength as documented."""
    basis = []
    for v in i_stars:
        w = v.clone()
        for b in basis:
            w = w - b * (b @ Cinv @ v)
        basis.append(w / torch.sqrt(w @ Cinv @ w))
    B = torch.stack(basis)  # (N, D), C^-1-orthonormal
    proj = (e @ Cinv @ B.T) @ B  # C^-1-orthogonal projection of e onto span{i*}
    # coordinates of the projection in the i* basis, for the per-concept strength split
    coords = torch.linalg.lstsq(i_stars.T, proj.reshape(-1, D).T).solution.T.reshape(*e.shape[:-1], -1)
    r = (e @ Cinv @ i_stars.T) / torch.diagonal(i_stars @ Cinv @ i_stars.T)
    g = torch.sigmoid((r - beta) / tau)
    out = e @ W.T - (coords * strength) @ (i_stars @ W.T) + (g * strength) @ targets
    return out, proj


@pytest.mark.parametrize("n", [1, 2, 4])
def test_joint_edit_matches_float64_reference(world, n):
    i_stars, us, targets = concepts(world, n)
    e = torch.randn(2, T, D, generator=world["gen"], dtype=torch.float64)
    e[0, 3] = i_stars[0]  # one token exactly at a concept direction
    beta = torch.linspace(0.4, 0.75, n, dtype=torch.float64)
    tau = torch.full((n,), 0.15, dtype=torch.float64)
    strength = torch.linspace(1.0, 0.5, n, dtype=torch.float64)

    want, _ = reference_joint(e, world["W"], world["Cinv"], i_stars, targets, beta, tau, strength)
    got = gated_edit(
        base_out=(e @ world["W"].T).float(),
        e=e.float(),
        directions=joint_directions(i_stars.float(), us.float()),
        w_istar=(i_stars @ world["W"].T).float(),
        targets=targets.float().expand(2, n, D_OUT),
        beta=beta.float(), tau=tau.float(),
        scale=strength.float().expand(2, n),
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-4)


def test_full_strength_equals_projection_of_span(world):
    """With unit strengths the edit is W e_perp + sum gates: the joint projection."""
    i_stars, us, targets = concepts(world, 3)
    e = torch.randn(1, T, D, generator=world["gen"], dtype=torch.float64)
    beta, tau = torch.full((3,), 0.7), torch.full((3,), 0.15)
    _, proj = reference_joint(e, world["W"], world["Cinv"], i_stars, targets, beta.double(), tau.double(), torch.ones(3, dtype=torch.float64))
    r = (e @ world["Cinv"] @ i_stars.T) / torch.diagonal(i_stars @ world["Cinv"] @ i_stars.T)
    want = (e - proj) @ world["W"].T + torch.sigmoid((r - 0.7) / 0.15) @ targets
    got = gated_edit((e @ world["W"].T).float(), e.float(), joint_directions(i_stars.float(), us.float()),
                     (i_stars @ world["W"].T).float(), targets.float()[None], beta, tau, torch.ones(1, 3))
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-4)


def test_single_concept_maps_istar_to_gated_target(world):
    i_stars, us, targets = concepts(world, 1)
    e = i_stars.float().reshape(1, 1, D)
    beta, tau = torch.tensor([0.7]), torch.tensor([0.15])
    got = gated_edit(e @ world["W"].T.float(), e, joint_directions(i_stars.float(), us.float()),
                     (i_stars @ world["W"].T).float(), targets.float()[None], beta, tau, torch.ones(1, 1))
    # W_hat i* = W i* - 1 * W i* + g(1) o*  =  g(1) o*
    g1 = 1.0 / (1.0 + math.exp(-(1 - 0.7) / 0.15))
    torch.testing.assert_close(got[0, 0].double(), g1 * targets[0], rtol=1e-4, atol=1e-4)


def test_rome_edit_maps_istar_exactly_and_keeps_orthogonal_inputs(world):
    i_stars, us, targets = concepts(world, 1)
    i, u, o = i_stars[0], us[0], targets[0]
    E = float(u @ i)
    W = world["W"]
    got = rome_edit((i @ W.T).reshape(1, 1, -1), i.reshape(1, 1, -1), u, E, i @ W.T, o)
    torch.testing.assert_close(got[0, 0].double(), o.double(), rtol=1e-5, atol=1e-5)
    # a C^-1-orthogonal input (u^T x = 0) is unchanged
    x = torch.randn(D, generator=world["gen"], dtype=torch.float64)
    x = x - u * (u @ x) / (u @ u)
    assert abs(float(u @ x)) < 1e-9
    got = rome_edit((x @ W.T).reshape(1, 1, -1), x.reshape(1, 1, -1), u, E, i @ W.T, o)
    torch.testing.assert_close(got[0, 0].double(), x @ W.T, rtol=1e-5, atol=1e-5)


def test_orthogonal_input_gets_only_the_closed_gate_leak(world):
    """u^T x = 0 -> r = 0: output is W x + sigmoid(-beta/tau) o*, and exactly W x as tau -> 0."""
    i_stars, us, targets = concepts(world, 1)
    u = us[0]
    x = torch.randn(D, generator=world["gen"], dtype=torch.float64)
    x = (x - u * (u @ x) / (u @ u)).reshape(1, 1, D)
    args = dict(e=x.float(), directions=joint_directions(i_stars.float(), us.float()),
                w_istar=(i_stars @ world["W"].T).float(), targets=targets.float()[None], scale=torch.ones(1, 1))
    base = (x @ world["W"].T).float()
    leak = torch.sigmoid(torch.tensor(-0.7 / 0.15)).item()
    got = gated_edit(base, beta=torch.tensor([0.7]), tau=torch.tensor([0.15]), **args)
    torch.testing.assert_close(got[0, 0].double(), base[0, 0].double() + leak * targets[0], rtol=1e-4, atol=1e-4)
    closed = gated_edit(base, beta=torch.tensor([0.7]), tau=torch.tensor([1e-4]), **args)
    torch.testing.assert_close(closed, base, rtol=1e-5, atol=1e-5)


def test_key_lock_trigger_keys_equal_superclass_keys(world):
    """Key-locking: with o*_K = W_K i_super, the trigger's key is g(1) W_K i_super
    (exactly W_K i_super for the linear ROME factor)."""
    i_stars, us, _ = concepts(world, 1)
    i_super = torch.randn(D, generator=world["gen"], dtype=torch.float64)
    WK = world["W"]
    key_target = i_super @ WK.T
    rome = rome_edit((i_stars[0] @ WK.T).reshape(1, 1, -1), i_stars.reshape(1, 1, D), us[0], float(us[0] @ i_stars[0]),
                     i_stars[0] @ WK.T, key_target)
    torch.testing.assert_close(rome[0, 0].double(), key_target, rtol=1e-5, atol=1e-5)
    gated = gated_edit((i_stars @ WK.T).float().reshape(1, 1, -1), i_stars.float().reshape(1, 1, D),
                       joint_directions(i_stars.float(), us.float()), (i_stars @ WK.T).float(),
                       key_target.float().reshape(1, 1, -1), torch.tensor([0.7]), torch.tensor([1e-3]), torch.ones(1, 1))
    torch.testing.assert_close(gated[0, 0].double(), key_target, rtol=1e-4, atol=1e-4)


def test_context_lock_gives_open_tokens_the_superclass_keys_of_their_prompt(world):
    """Lock mode "context": an open gate gives the token exactly the superclass word's key in the same
    prompt, a closed gate its own key, a partly open one the float64 blend; openness above 1 (two
    concepts on one token) saturates."""
    gen = world["gen"]
    WK = world["W"]
    written, with_superclass = (torch.randn(2, T, D, generator=gen, dtype=torch.float64) for _ in range(2))
    own, superclass = written @ WK.T, with_superclass @ WK.T
    openness = torch.rand(2, T, generator=gen, dtype=torch.float64)
    openness[0, 0], openness[0, 1], openness[1, 2] = 1.0, 0.0, 1.7
    got = context_locked_keys(own.float(), superclass.float(), openness.float())
    g = openness.clamp(0, 1)[..., None]
    torch.testing.assert_close(got.double(), (1 - g) * own + g * superclass, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0, 0].double(), superclass[0, 0], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got[1, 2].double(), superclass[1, 2], rtol=1e-6, atol=1e-5)
    assert torch.equal(got[0, 1], own[0, 1].float())
    assert context_locked_keys(own.half(), superclass.half(), openness).dtype == torch.float16


def test_zero_scale_is_identity_and_scale_is_per_sample(world):
    i_stars, us, targets = concepts(world, 2)
    e = torch.randn(3, T, D, generator=world["gen"]).float()
    base = e @ world["W"].T.float()
    scale = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    out = gated_edit(base, e, joint_directions(i_stars.float(), us.float()), (i_stars @ world["W"].T).float(),
                     targets.float().expand(3, 2, D_OUT), torch.full((2,), 0.7), torch.full((2,), 0.15), scale)
    assert torch.equal(out[0], base[0])
    assert not torch.allclose(out[1], base[1]) and not torch.allclose(out[1], out[2])


def test_orthogonal_concepts_compose_as_independent_edits(world):
    """When the i*_n are C^-1-orthogonal the joint edit equals the sum of the single edits."""
    gen = world["gen"]
    a = torch.randn(D, generator=gen, dtype=torch.float64)
    b = torch.randn(D, generator=gen, dtype=torch.float64)
    b = b - a * (a @ world["Cinv"] @ b) / (a @ world["Cinv"] @ a)
    i_stars = torch.stack([a, b])
    us = i_stars @ world["Cinv"]
    targets = torch.randn(2, D_OUT, generator=gen, dtype=torch.float64)
    e = torch.randn(1, T, D, generator=gen, dtype=torch.float64)
    W = world["W"]
    beta, tau = torch.full((2,), 0.6), torch.full((2,), 0.15)

    def edit(idx):
        return gated_edit((e @ W.T).float(), e.float(), joint_directions(i_stars[idx].float(), us[idx].float()),
                          (i_stars[idx] @ W.T).float(), targets[idx].float()[None], beta[idx], tau[idx],
                          torch.ones(1, len(idx))).double()

    joint = edit([0, 1])
    separate = (e @ W.T) + (edit([0]) - e @ W.T) + (edit([1]) - e @ W.T)
    torch.testing.assert_close(joint, separate, rtol=1e-4, atol=1e-4)


def test_gate_reference_values():
    """The table in docs/method.md §2."""
    for beta, tau, at1, at0 in [(0.75, 0.10, 0.924, 5.5e-4), (0.70, 0.15, 0.881, 0.0093), (0.40, 0.15, 0.982, 0.065)]:
        g = gate_values(torch.tensor([1.0, 0.0]), torch.tensor(beta), torch.tensor(tau))
        assert g[0].item() == pytest.approx(at1, abs=1e-3)
        assert g[1].item() == pytest.approx(at0, rel=0.05)


def test_joint_directions_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        joint_directions(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="> 0"):
        joint_directions(torch.ones(1, 4), -torch.ones(1, 4))


def test_schedule_window_and_intervals():
    sig = torch.tensor([14.6, 5.0, 1.0, 0.03])
    assert window_active(sig, start_sigma=6.0, end_sigma=0.5).tolist() == [False, True, True, False]
    t = torch.tensor([0.0, 249.9, 250.0, 499.0, 500.0, 999.0, 1000.0])
    assert interval_index(t, 1).tolist() == [0] * 7
    assert interval_index(t, 2).tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert interval_index(t, 4).tolist() == [0, 0, 1, 1, 2, 3, 3]
    with pytest.raises(ValueError):
        interval_index(t, 0)
