"""The joint gated edit (``edit.gated_edit``) as two matrix products, for the sampling hooks.

``gated_edit`` spells the edit out term by term (docs/method.md §2, §4); on a GPU every one of
its small ops is a kernel launch, and at small batch those launches, not the FLOPs, are the
cost. The same edit with the per-concept terms stacked side by side:

    coef  = e M + b,          M = [-U G^-1 | U / (E tau)]  (D, 2N),  b = [0 | -beta / tau]
    coef  = [-c(e) | sigmoid((r(e) - beta) / tau)] * [s | s]     (the gate half squashed in place)
    W_hat e = W e + coef [W i* ; o*]                              ((2N, d_out) stacked targets)

Two matrix products per projection (plus the sigmoid, and the per-sample scale when it is not
all ones). Equal to ``gated_edit`` up to float32 round-off; tests/core/test_fused_edit.py checks
both against float64 dense math.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .edit import JointDirections


@dataclass(frozen=True)
class FusedEdit:
    """Per runtime and device: M (D, 2N) and b (2N,) of the stacked coefficients, N concepts."""

    M: torch.Tensor
    b: torch.Tensor
    n: int


def fuse(directions: JointDirections, beta: torch.Tensor, tau: torch.Tensor) -> FusedEdit:
    """Stack the projection coordinates and the gate logits of N concepts into one (D, 2N) map."""
    U = directions.U.double()
    tau64 = tau.double()
    coords = U @ directions.gram_inv.double()
    logits = U / (directions.energy.double() * tau64)
    M = torch.cat([-coords, logits], dim=1)
    b = torch.cat([torch.zeros_like(tau64), -beta.double() / tau64])
    return FusedEdit(M=M.float().contiguous(), b=b.float(), n=int(U.shape[1]))


def fused_edit(base_out: torch.Tensor, e: torch.Tensor, fused: FusedEdit, w_istar: torch.Tensor,
               targets: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``gated_edit`` in two matrix products.

    base_out (B, T, d_out)  W e, from the layer's own forward
    e        (B, T, D)      the projection's input
    w_istar  (N, d_out)     W i*_n
    targets  (N, d_out) shared by the batch, or (B, N, d_out) per sample (timestep-interval sets)
    scale    (B, N) strength x window per sample, or None when it is all ones (the usual case)
    Returns (B, T, d_out) in base_out's dtype; computed in float32.
    """
    B, T, D = e.shape
    n = fused.n
    coef = torch.addmm(fused.b, e.reshape(B * T, D).float(), fused.M)  # (B*T, 2N)
    coef[:, n:].sigmoid_()
    base = base_out.reshape(B * T, -1).float()
    if scale is not None:
        coef = (coef.view(B, T, 2 * n) * scale.repeat(1, 2).unsqueeze(1)).view(B * T, 2 * n)
    if targets.ndim == 2:
        out = torch.addmm(base, coef, torch.cat([w_istar.float(), targets.float()]))
    else:
        stacked = torch.cat([w_istar.float().expand(B, -1, -1), targets.float()], dim=1)  # (B, 2N, d_out)
        out = torch.baddbmm(base.view(B, T, -1), coef.view(B, T, 2 * n), stacked)
    return out.view(B, T, -1).to(base_out.dtype)
