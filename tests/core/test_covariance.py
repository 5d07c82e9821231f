"""Second-moment accumulation, Cholesky solves and the statistics file format."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from perfusion_core.concept import TextEncoderId
from perfusion_core.covariance import (
    PADDING_RULE,
    MAX_CONDITION,
    SecondMoment,
    StatisticsError,
    Whitener,
    energy,
    fingerprint,
    load_statistics,
    save_statistics,
    solve,
    token_mask,
)

D = 32


def spd(dim: int, cond: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPD matrix Q diag(eig) Q^T with a known eigendecomposition and condition number."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), dim, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T, q, eig


def batches(gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random float32 encodings with per-row lengths like real captions (padding masked out)."""
    out = []
    for b, t in ((3, 9), (5, 9), (1, 4), (4, 12)):
        enc = torch.randn(b, t, D, generator=gen) * 3.0 + 0.5
        lengths = torch.randint(1, t + 1, (b,), generator=gen)
        out.append((enc, token_mask(lengths, t)))
    return out


# ---------------------------------------------------------------- accumulator
def test_accumulator_matches_direct_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    data = batches(gen)
    acc = SecondMoment()
    for enc, mask in data:
        acc.add(enc, mask)
    rows = torch.cat([enc[mask] for enc, mask in data]).double()
    direct = rows.T @ rows / rows.shape[0]
    assert acc.count == rows.shape[0] == sum(int(m.sum()) for _, m in data)
    assert acc.dim == D
    got = acc.matrix()
    assert got.dtype == torch.float64 and got.shape == (D, D)
    torch.testing.assert_close(got, direct, rtol=1e-13, atol=1e-13)
    assert torch.equal(got, got.T)


def test_mask_none_counts_everything_and_2d_input() -> None:
    gen = torch.Generator().manual_seed(1)
    enc = torch.randn(2, 5, D, generator=gen, dtype=torch.float64)
    a, b = SecondMoment(), SecondMoment(dim=D)
    a.add(enc)
    b.add(enc.reshape(10, D), torch.ones(10, dtype=torch.bool))
    flat = enc.reshape(10, D)
    assert a.count == b.count == 10
    torch.testing.assert_close(a.matrix(), flat.T @ flat / 10, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(a.matrix(), b.matrix(), rtol=0, atol=0)


def test_padding_changes_c_so_the_mask_matters() -> None:
    gen = torch.Generator().manual_seed(2)
    enc = torch.randn(2, 6, D, generator=gen)
    enc[:, 3:] = 7.0  # "padding" rows with a distinctive value
    masked, unmasked = SecondMoment(), SecondMoment()
    masked.add(enc, token_mask([3, 3], 6))
    unmasked.add(enc)
    assert masked.count == 6 and unmasked.count == 12
    assert not torch.allclose(masked.matrix(), unmasked.matrix())
    rows = enc[:, :3].reshape(-1, D).double()
    torch.testing.assert_close(masked.matrix(), rows.T @ rows / 6, rtol=1e-13, atol=1e-13)


def test_token_mask_counts_prefixes() -> None:
    m = token_mask([0, 2, 4], 4)
    assert m.dtype == torch.bool
    assert m.tolist() == [[False] * 4, [True, True, False, False], [True] * 4]
    with pytest.raises(ValueError):
        token_mask([5], 4)
    with pytest.raises(ValueError):
        token_mask([-1], 4)


def test_add_rejects_bad_input() -> None:
    acc = SecondMoment()
    acc.add(torch.randn(1, 3, D))
    with pytest.raises(ValueError, match="dim"):
        acc.add(torch.randn(1, 3, D + 1))
    with pytest.raises(TypeError, match="bool"):
        acc.add(torch.randn(1, 3, D), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mask shape"):
        acc.add(torch.randn(1, 3, D), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        acc.add(torch.randn(D))
    bad = torch.randn(1, 3, D)
    bad[0, 1, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        acc.add(bad)
    assert acc.count == 3  # nothing from the rejected batches was counted


def test_nan_in_masked_out_padding_is_ignored() -> None:
    enc = torch.randn(1, 4, D)
    enc[0, 3] = float("nan")
    acc = SecondMoment()
    acc.add(enc, token_mask([3], 4))
    assert acc.count == 3 and bool(torch.isfinite(acc.matrix()).all())


def test_empty_accumulator_has_no_matrix() -> None:
    acc = SecondMoment(dim=D)
    acc.add(torch.randn(2, 3, D), torch.zeros(2, 3, dtype=torch.bool))
    assert acc.count == 0
    with pytest.raises(ValueError, match="no token"):
        acc.matrix()


def test_state_dict_resume_is_bit_identical() -> None:
    gen = torch.Generator().manual_seed(3)
    data = batches(gen)
    whole = SecondMoment()
    for enc, mask in data:
        whole.add(enc, mask)
    first = SecondMoment()
    first.add(*data[0])
    state = first.state_dict()
    assert set(state) == {"sum", "count"}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    resumed = SecondMoment.from_state_dict(state)
    for enc, mask in data[1:]:
        resumed.add(enc, mask)
    assert resumed.count == whole.count
    assert torch.equal(resumed.matrix(), whole.matrix())
    # the saved state is a copy: continuing `first` does not change it
    first.add(*data[1])
    assert int(state["count"]) == int(data[0][1].sum())


def test_state_dict_of_fresh_accumulator_and_bad_states() -> None:
    fresh = SecondMoment.from_state_dict(SecondMoment().state_dict())
    assert fresh.count == 0 and fresh.dim is None
    with pytest.raises(ValueError):
        SecondMoment.from_state_dict({"sum": torch.zeros(D, D, dtype=torch.float64)})
    with pytest.raises(ValueError):
        SecondMoment.from_state_dict({"count": torch.tensor(5)})
    with pytest.raises(ValueError):
        SecondMoment.from_state_dict({"count": torch.tensor(5), "sum": torch.zeros(D, D)})  # float32


def test_accumulates_under_inference_mode_and_resumes_outside() -> None:
    with torch.inference_mode():
        acc = SecondMoment()
        acc.add(torch.randn(2, 3, D))
    resumed = SecondMoment.from_state_dict(acc.state_dict())
    resumed.add(torch.randn(2, 3, D))
    assert resumed.count == 12


# ---------------------------------------------------------------- solves
def test_solve_matches_float64_linalg_and_defining_property() -> None:
    gen = torch.Generator().manual_seed(4)
    C, _, _ = spd(D, 50.0, gen)
    i = torch.randn(D, generator=gen, dtype=torch.float64)
    x = solve(C, i)
    assert x.dtype == torch.float64 and x.shape == (D,)
    torch.testing.assert_close(x, torch.linalg.solve(C, i), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(C @ x, i, rtol=1e-12, atol=1e-12)


def test_solve_rows_and_float32_input() -> None:
    gen = torch.Generator().manual_seed(5)
    C, _, _ = spd(D, 100.0, gen)
    rows = torch.randn(3, D, generator=gen)
    x = solve(C.float(), rows)
    assert x.shape == (3, D) and x.dtype == torch.float64
    # float32 inputs are widened first, so the result is exact for the float32 data
    expect = torch.linalg.solve(C.float().double(), rows.double().T).T
    torch.testing.assert_close(x, expect, rtol=1e-11, atol=1e-11)


def test_ill_conditioned_relative_error_bound() -> None:
    gen = torch.Generator().manual_seed(6)
    cond = 1e4
    C, q, eig = spd(D, cond, gen)
    x_true = torch.randn(D, generator=gen, dtype=torch.float64)
    i = C @ x_true
    w = Whitener(C)
    assert w.ridge == 0.0
    x = w.solve(i)
    rel = float((x - x_true).norm() / x_true.norm())
    eps = torch.finfo(torch.float64).eps
    assert rel < 10 * D * cond * eps  # backward-stable Cholesky: error ~ cond * eps
    residual = float((C @ x - i).norm() / i.norm())
    assert residual < 100 * D * eps
    # the same bound along the worst direction (smallest eigenvalue)
    v = q[:, 0]
    torch.testing.assert_close(w.solve(v), v / eig[0], rtol=1e-10, atol=1e-12)


def test_semidefinite_uses_a_tiny_ridge() -> None:
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(D, D // 2, generator=gen, dtype=torch.float64)
    C = a @ a.T  # rank D/2: only semi-definite
    w = Whitener(C)
    assert w.ridge > 0.0
    top = float(torch.linalg.eigvalsh(C)[-1])
    assert w.ridge <= top / (MAX_CONDITION - 1) * (1 + 1e-9)  # the smallest ridge that reaches the bound
    i = a @ torch.randn(D // 2, generator=gen, dtype=torch.float64)  # in the range of C
    x = w.solve(i)
    assert bool(torch.isfinite(x).all())
    assert float((C @ x - i).norm() / i.norm()) < 1e-5


def test_rejects_indefinite_asymmetric_and_nonfinite() -> None:
    gen = torch.Generator().manual_seed(8)
    C, q, eig = spd(D, 10.0, gen)
    flipped = eig.clone()
    flipped[0] = -1.0  # one negative eigenvalue, positive trace
    with pytest.raises(ValueError, match="positive semi-definite"):
        Whitener(q @ torch.diag(flipped) @ q.T)
    with pytest.raises(ValueError, match="trace"):
        Whitener(-C)
    asym = C.clone()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        Whitener(asym)
    bad = C.clone()
    bad[2, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        Whitener(bad)
    with pytest.raises(ValueError, match="square"):
        Whitener(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="dim"):
        Whitener(C).solve(torch.zeros(D + 1))


def test_energy_positive_consistent_and_scale_covariant() -> None:
    gen = torch.Generator().manual_seed(9)
    C, _, _ = spd(D, 1e3, gen)
    i = torch.randn(D, generator=gen)
    e = energy(C, i)
    assert e > 0
    assert math.isclose(e, float(i.double() @ torch.linalg.solve(C, i.double())), rel_tol=1e-11)
    assert math.isclose(energy(4.0 * C, i), e / 4.0, rel_tol=1e-11)
    w = Whitener(C)
    assert math.isclose(float(w.whiten(i).square().sum()), e, rel_tol=1e-12)
    # the ratio r(e) = u^T e / E of the method is 1 at e = i*
    assert math.isclose(float(w.solve(i) @ i.double()) / e, 1.0, rel_tol=1e-12)
    with pytest.raises(ValueError):
        energy(C, torch.randn(2, D))


# ---------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_and_distinguishes_recipes() -> None:
    enc = TextEncoderId("clip-l", None)
    fp = fingerprint(enc, "abc123", 1000)
    assert fp == fingerprint(TextEncoderId("clip-l", None), "abc123", 1000)
    assert fp.startswith("clip-l@default:") and len(fp.split(":")[1]) == 12
    int(fp.split(":")[1], 16)  # readable prefix, hex tail
    others = {
        fingerprint(TextEncoderId("clip-l", -2), "abc123", 1000),
        fingerprint(enc, "abc124", 1000),
        fingerprint(enc, "abc123", 1001),
        fingerprint(enc, "abc123", 1000, padding_rule="all-77"),
    }
    assert fp not in others and len(others) == 4
    assert fingerprint(TextEncoderId("clip-l", -2), "x", 1).startswith("clip-l@-2:")
    assert PADDING_RULE == "all-positions"
    # pinned value: changing the hashing would orphan every recorded concept
    assert fingerprint(enc, "abc123", 1000, padding_rule="bos+tokens+first-eos") == _PINNED_FINGERPRINT


_PINNED_FINGERPRINT = "clip-l@default:d6c6416e4923"


# ---------------------------------------------------------------- file format
def test_save_load_round_trip_keeps_float64(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(10)
    C, _, _ = spd(D, 1e3, gen)
    meta = {"encoder": "clip-l", "layer": None, "count": 12345, "padding": PADDING_RULE}
    path = tmp_path / "sub" / "stats.safetensors"
    save_statistics(path, C, meta)
    got, got_meta = load_statistics(path)
    assert got.dtype == torch.float64 and torch.equal(got, 0.5 * (C + C.T))
    assert got_meta == meta
    assert [p.name for p in path.parent.iterdir()] == ["stats.safetensors"]  # no temp left behind
    # overwriting replaces atomically
    save_statistics(path, 2.0 * C, {"v": 2})
    got2, meta2 = load_statistics(path)
    torch.testing.assert_close(got2, 2.0 * got, rtol=0, atol=0)
    assert meta2 == {"v": 2}
    assert len(list(path.parent.iterdir())) == 1


def test_save_rejects_bad_input_and_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "stats.safetensors"
    C = torch.eye(4, dtype=torch.float64)
    save_statistics(path, C, {})
    with pytest.raises(ValueError, match="JSON"):
        save_statistics(path, C, {"bad": object()})
    with pytest.raises(ValueError, match="square"):
        save_statistics(path, torch.zeros(3, 4), {})
    got, _ = load_statistics(path)
    assert torch.equal(got, C)
    assert len(list(tmp_path.iterdir())) == 1


def test_load_accepts_float32(tmp_path: Path) -> None:
    path = tmp_path / "f32.safetensors"
    C = torch.eye(5) * 3.0
    save_file({"second_moment": C}, str(path),
              metadata={"format": "perfusion-second-moment", "version": "1", "meta": "{}"})
    got, meta = load_statistics(path)
    assert got.dtype == torch.float64 and torch.equal(got, C.double()) and meta == {}


@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "no_marker", "wrong_version",
                                  "no_tensor", "not_square", "int_dtype", "bad_json", "nan"])
def test_load_errors_name_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.safetensors"
    ok = {"format": "perfusion-second-moment", "version": "1", "meta": "{}"}
    eye = torch.eye(3, dtype=torch.float64)
    if case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(b"this is not a safetensors file at all")
    elif case == "no_marker":
        save_file({"second_moment": eye}, str(path))
    elif case == "wrong_version":
        save_file({"second_moment": eye}, str(path), metadata={**ok, "version": "99"})
    elif case == "no_tensor":
        save_file({"other": eye}, str(path), metadata=ok)
    elif case == "not_square":
        save_file({"second_moment": torch.zeros(3, 4, dtype=torch.float64)}, str(path), metadata=ok)
    elif case == "int_dtype":
        save_file({"second_moment": torch.eye(3, dtype=torch.int32)}, str(path), metadata=ok)
    elif case == "bad_json":
        save_file({"second_moment": eye}, str(path), metadata={**ok, "meta": "{not json"})
    elif case == "nan":
        save_file({"second_moment": torch.full((3, 3), float("nan"), dtype=torch.float64)}, str(path),
                  metadata=ok)
    with pytest.raises(StatisticsError) as info:
        load_statistics(path)
    assert path.name in str(info.value)


def _condition(L: torch.Tensor) -> float:
    eigs = torch.linalg.eigvalsh(L @ L.T)
    return float(eigs[-1] / eigs[0])


def test_singular_c_of_an_encoder_without_layernorm_bias_gets_a_ridge() -> None:
    """Encodings that all sum to zero (a final LayerNorm without bias) leave C singular along the
    ones vector: cond ~1e16, which Cholesky's pivots let through. The guard reads the eigenvalues
    and adds the ridge that brings the condition number to MAX_CONDITION, no more."""
    gen = torch.Generator().manual_seed(9)
    e = torch.randn(4 * D, D, generator=gen, dtype=torch.float64)
    e = e - e.mean(dim=1, keepdim=True)  # every encoding sums to zero
    C = e.T @ e / e.shape[0]
    assert float(torch.linalg.eigvalsh(C)[0]) < 1e-12 * float(torch.linalg.eigvalsh(C)[-1])
    w = Whitener(C)
    assert w.ridge > 0.0
    assert _condition(w.L) == pytest.approx(MAX_CONDITION, rel=1e-3)
    ones = torch.ones(D, dtype=torch.float64) / D ** 0.5
    u = w.solve(e[0])
    assert abs(float(u @ ones)) < 1e-6 * float(u.norm())  # no noise along the missing direction


@pytest.mark.parametrize("cond", [1e4, 1e7])
def test_well_conditioned_c_gets_no_ridge(cond: float) -> None:
    C, _, _ = spd(D, cond, torch.Generator().manual_seed(10))
    assert Whitener(C).ridge == 0.0
