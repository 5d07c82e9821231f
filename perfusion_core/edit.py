"""The gated rank-1 edit of one cross-attention projection (docs/method.md §2, §4).

For one projection W (d_out x D) and concepts n = 1..N with input directions
i*_n, u_n = C^-1 i*_n and targets o*_n, the joint edit of a token encoding e is

    W_hat e = W e - sum_n s_n c_n(e) W i*_n + sum_n s_n g_n(e) o*_n

where c(e) = G^-1 (U^T e) are the coordinates of the C^-1-orthogonal projection
of e onto span{i*} in the i* basis (G_mn = i*_m^T C^-1 i*_n), g_n(e) =
sigmoid((r_n(e) - beta_n) / tau_n) with r_n(e) = u_n^T e / E_n, E_n = G_nn, and
s_n is the concept's strength (times its timestep window, per sample).

With all s_n = 1 this is exactly  W e_perp + sum_n g_n o*_n  with e_perp = e minus
its C^-1-projection on span{i*}; for N = 1 it reduces to
W (e - r(e) i*) + g(e) o*. Concepts are composed as ONE joint edit: the
projection removes the span of all i* at once, so non-orthogonal concepts do
not double-subtract their shared component.

Nothing here multiplies by W: the caller passes ``W e`` (the layer's own
forward, so LoRA patches, offloading and fp8 keep working) and ``W i*_n``
(the same forward applied to i*_n).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import einsum


@dataclass(frozen=True)
class JointDirections:
    """Layer-independent terms of a joint edit of N concepts.

    U        (D, N)  columns u_n = C^-1 i*_n
    gram_inv (N, N)  G^-1, G_mn = u_m . i*_n = i*_m^T C^-1 i*_n
    energy   (N,)    E_n = G_nn
    """

    U: torch.Tensor
    gram_inv: torch.Tensor
    energy: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "JointDirections":
        return JointDirections(*(t.to(device=device, dtype=dtype) for t in (self.U, self.gram_inv, self.energy)))


# Largest |cosine| (in the C^-1 metric) between two concepts' i* in one joint edit. Beyond it the
# two are one direction for the projection: G's condition number (1 + c) / (1 - c) passes ~2000,
# each concept's gate opens on the other's trigger (r = c there, above any usable beta), so both
# value targets land on one token (a washed-out image), and at c = 1 G is singular.
MAX_DIRECTION_COSINE = 0.999


def _gram(i_stars: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
    if i_stars.ndim != 2 or i_stars.shape != us.shape:
        raise ValueError(f"i_stars and us must both be (N, D); got {tuple(i_stars.shape)} and {tuple(us.shape)}")
    gram = einsum(us.double(), i_stars.double(), "m d, n d -> m n")
    return 0.5 * (gram + gram.T)  # symmetric in exact arithmetic (C is symmetric)


def direction_cosines(i_stars: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
    """(N, N) cosines of the i*_n in the C^-1 metric: G_mn / sqrt(G_mm G_nn), float64."""
    gram = _gram(i_stars, us)
    scale = torch.diagonal(gram).clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    return gram / (scale[:, None] * scale[None, :])


def parallel_pairs(i_stars: torch.Tensor, us: torch.Tensor,
                   limit: float = MAX_DIRECTION_COSINE) -> list[tuple[int, int, float]]:
    """(m, n, cosine) for every pair m < n whose directions are too close to share one joint edit."""
    cos = direction_cosines(i_stars, us)
    n = cos.shape[0]
    return [(a, b, float(cos[a, b])) for a in range(n) for b in range(a + 1, n) if abs(float(cos[a, b])) > limit]


def joint_directions(i_stars: torch.Tensor, us: torch.Tensor) -> JointDirections:
    """Precompute the joint-projection terms from i*_n (N, D) and u_n (N, D).

    G is built and inverted in float64: two concepts with nearly parallel i*
    make G ill-conditioned, and the error would otherwise leak into every token.
    Concepts closer than MAX_DIRECTION_COSINE are refused with a ValueError
    naming them by index (callers name them by trigger first).
    """
    gram = _gram(i_stars, us)
    energy = torch.diagonal(gram)
    if not bool((energy > 0).all()):
        raise ValueError(f"every concept needs i*^T C^-1 i* > 0; got energies {energy.tolist()}")
    close = parallel_pairs(i_stars, us)
    if close:
        m, n, c = close[0]
        raise ValueError(f"concepts {m} and {n} have nearly the same input direction i* (cosine {c:.6f} in the "
                         f"C^-1 metric, at most {MAX_DIRECTION_COSINE}); one joint edit cannot tell them apart")
    gram_inv = torch.linalg.solve(gram, torch.eye(gram.shape[0], dtype=torch.float64))
    return JointDirections(U=us.T.float().contiguous(), gram_inv=gram_inv.float(), energy=energy.float())


def gate_values(r: torch.Tensor, beta: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """sigmoid((r - beta) / tau), broadcasting beta/tau over r's last axis (concepts)."""
    return torch.sigmoid((r - beta) / tau)


def gated_edit(
    base_out: torch.Tensor,
    e: torch.Tensor,
    directions: JointDirections,
    w_istar: torch.Tensor,
    targets: torch.Tensor,
    beta: torch.Tensor,
    tau: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Apply the joint gated edit to one projection's output.

    base_out (B, T, d_out)  W e, from the layer's own forward
    e        (B, T, D)      the projection's input (token encodings)
    w_istar  (N, d_out)     W i*_n, from the layer's own forward
    targets  (B, N, d_out)  o*_n per sample (per-sample: timestep-interval sets)
    beta, tau (N,)          gate parameters
    scale    (B, N)         strength x window activity, per sample and concept
    Returns (B, T, d_out) in base_out's dtype; the edit is computed in float32.
    """
    e32 = e.float()
    a = einsum(e32, directions.U, "b t d, d n -> b t n")
    coords = einsum(a, directions.gram_inv, "b t m, m n -> b t n")
    gates = gate_values(a / directions.energy, beta, tau)
    removed = einsum(coords, scale, w_istar.float(), "b t n, b n, n o -> b t o")
    added = einsum(gates, scale, targets.float(), "b t n, b n, b n o -> b t o")
    return (base_out.float() - removed + added).to(base_out.dtype)


def rome_edit(
    base_out: torch.Tensor,
    e: torch.Tensor,
    u: torch.Tensor,
    energy: float | torch.Tensor,
    w_istar: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """ROME's closed-form rank-1 edit of one concept (a linear factor instead of
    the gate): W_hat e = W e + r(e) (o* - W i*), r(e) = u^T e / E.

    It maps i* exactly to o* and leaves C^-1-orthogonal inputs unchanged; the
    gated edit is defined against it.
    """
    r = einsum(e.float(), u.float(), "b t d, d -> b t") / energy
    delta = einsum(r, target.float() - w_istar.float(), "b t, o -> b t o")
    return (base_out.float() + delta).to(base_out.dtype)


def context_locked_keys(own: torch.Tensor, superclass: torch.Tensor, openness: torch.Tensor) -> torch.Tensor:
    """Key-locking to the superclass word in the same prompt (lock mode "context", docs/method.md §3).

    own        (B, T, d_out)  keys of the prompt as written (after any rank-1 edits)
    superclass (B, T, d_out)  keys of the same prompt with each trigger replaced by its superclass
    openness   (B, T)         sum over context-locked concepts of gate x scale, per token

    K = own + min(openness, 1) (superclass - own): a token whose gate is fully open gets exactly
    the superclass word's key at its position in this prompt (its context included, which the
    template-averaged W_K i_super of the local lock lacks); a closed gate leaves the key as is.
    Returns (B, T, d_out) in ``own``'s dtype; the blend is computed in float32.
    """
    g = openness.float().clamp(0.0, 1.0).unsqueeze(-1)
    own32 = own.float()
    return (own32 + g * (superclass.float() - own32)).to(own.dtype)
