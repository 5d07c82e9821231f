"""The text-encoder second moment C and solves against it (docs/method.md §2, §7).

C = mean(e e^T) over token encodings e (uncentered), taken from exactly the
encoder output the UNet consumes. Perfusion only needs u = C^-1 i* and the
energy E = i*^T C^-1 i*; the real SD1.5 C has a condition number of about
4e3, so every solve here runs in float64 through a Cholesky factorisation,
never through an explicit low-precision inverse.

Padding rule (PADDING_RULE): every position of every 77-token window counts,
padding included, because the UNet's key/value projections see all of them
and the edit must leave them alone: with padding left out of C, padding
encodings kept r = u.e/E of about 0.13 against a trigger (and the closed gate
still removed 13% of i* from them); with padding counted, about 0.02
(measured on the random-weight SD1 encoder of the tests). The mask argument of
SecondMoment.add (and ``token_mask``) remains for callers with another rule.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from .atomic_write import write_atomic
from .concept import TextEncoderId

PADDING_RULE = "all-positions"
FILE_FORMAT = "perfusion-second-moment"
FILE_VERSION = "1"
_TENSOR_KEY = "second_moment"

# Largest condition number (max/min eigenvalue) of C that solves use as is. A real encoder's C is
# far below it (SD1.5: ~4e3). Beyond it, C is singular in practice (an encoder whose outputs all
# lie in a subspace, e.g. a final LayerNorm without bias makes every encoding sum to zero: cond
# ~1e16), and u = C^-1 i* would be float64 noise along the missing directions, so a ridge is
# added that brings the condition number down to this. Judged on eigenvalues, not on Cholesky's
# pivots: a singular C can factorise with harmless-looking pivots.
MAX_CONDITION = 1e8
# Eigenvalues more negative than this (relative to the largest) mean C is no second moment at all.
_NEGATIVE_TOLERANCE = 1e-9


class StatisticsError(ValueError):
    """A statistics file is unusable; the message names the file and says why."""


def token_mask(lengths: torch.Tensor | Sequence[int], seq_len: int) -> torch.Tensor:
    """(B, seq_len) bool mask counting the first lengths[b] positions of each row
    (e.g. BOS + caption tokens + first EOS, for a rule that leaves padding out)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if lengths.ndim != 1 or bool((lengths < 0).any()) or bool((lengths > seq_len).any()):
        raise ValueError(f"lengths must be a 1-D list of values in [0, {seq_len}], got {lengths.tolist()}")
    return torch.arange(seq_len).unsqueeze(0) < lengths.unsqueeze(1)


class SecondMoment:
    """Streaming accumulator of C = mean(e e^T) over the counted token encodings.

    The running sum of e e^T and the count are kept in float64 on ``device``
    (default: the device of the first batch), so a 100K-caption run loses no
    precision; ``state_dict`` lets a long run be saved and resumed exactly.
    """

    def __init__(self, dim: int | None = None, device: torch.device | str | None = None) -> None:
        self._device = None if device is None else torch.device(device)
        self._sum: torch.Tensor | None = None
        self._count = 0
        if dim is not None:
            if dim < 1:
                raise ValueError(f"dim must be >= 1, got {dim}")
            self._sum = torch.zeros(dim, dim, dtype=torch.float64, device=self._device)

    @property
    def dim(self) -> int | None:
        return None if self._sum is None else int(self._sum.shape[0])

    @property
    def count(self) -> int:
        """Number of token encodings accumulated so far."""
        return self._count

    def add(self, encodings: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Accumulate encodings (B, T, D) (or (N, D)); mask (B, T) (or (N,)) bool
        selects the positions that count, None counts all of them."""
        if encodings.ndim not in (2, 3):
            raise ValueError(f"encodings must be (B, T, D) or (N, D), got shape {tuple(encodings.shape)}")
        d = int(encodings.shape[-1])
        if self.dim is not None and d != self.dim:
            raise ValueError(f"encodings have dim {d} but this accumulator holds dim {self.dim}")
        if mask is not None:
            if mask.dtype != torch.bool:  # an integer mask would silently index rows instead
                raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
            if tuple(mask.shape) != tuple(encodings.shape[:-1]):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match encodings "
                                 f"{tuple(encodings.shape)} without the last axis")
            rows = encodings[mask.to(encodings.device)]
        else:
            rows = encodings.reshape(-1, d)
        if self._device is None:
            self._device = rows.device
        rows = rows.detach().to(device=self._device, dtype=torch.float64)
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("encodings contain NaN or infinite values; refusing to poison the statistics")
        if self._sum is None:
            self._sum = torch.zeros(d, d, dtype=torch.float64, device=self._device)
        if rows.shape[0] == 0:
            return
        # Out of place on purpose: works whether or not we run under inference mode.
        self._sum = self._sum + rows.T @ rows
        self._count += int(rows.shape[0])

    def matrix(self) -> torch.Tensor:
        """C as a (D, D) float64 CPU tensor, exactly symmetric."""
        if self._sum is None or self._count == 0:
            raise ValueError("no token encodings accumulated yet; C is undefined")
        c = (self._sum / self._count).cpu()
        return 0.5 * (c + c.T)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (CPU): 'count' (int64 scalar) and, once D is known, 'sum' (D, D) float64."""
        state = {"count": torch.tensor(self._count, dtype=torch.int64)}
        if self._sum is not None:
            state["sum"] = self._sum.detach().cpu().clone()
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor],
                        device: torch.device | str | None = None) -> "SecondMoment":
        """Resume from ``state_dict()`` output; continuing gives bit-identical sums."""
        if "count" not in state or not isinstance(state["count"], torch.Tensor) or state["count"].numel() != 1:
            raise ValueError("state must hold a scalar tensor 'count'")
        count = int(state["count"].item())
        total = state.get("sum")
        if count < 0 or (count > 0 and total is None):
            raise ValueError(f"inconsistent state: count {count}, sum {'missing' if total is None else 'present'}")
        acc = cls(device=device)
        if total is not None:
            if total.ndim != 2 or total.shape[0] != total.shape[1] or total.dtype != torch.float64:
                raise ValueError(f"state 'sum' must be a square float64 matrix, got "
                                 f"{tuple(total.shape)} {total.dtype}")
            acc._device = acc._device or torch.device("cpu")
            acc._sum = total.detach().to(acc._device).clone()
        acc._count = count
        return acc


def fingerprint(encoder: TextEncoderId, corpus: str, count: int, padding_rule: str = PADDING_RULE) -> str:
    """Short stable id of a set of statistics, recorded in concepts.

    Form '<encoder>@<layer>:<12 hex>', the hex being a SHA-256 digest of the
    encoder identity, corpus id, token count and padding rule. It names how C
    was made, not its float bits, so re-running the same recipe on another
    device gives the same id. 'identity' (C = I) can never collide with it.
    """
    payload = json.dumps({"encoder": encoder.name, "layer": encoder.layer, "corpus": corpus,
                          "count": int(count), "padding": padding_rule, "v": 1}, sort_keys=True)
    layer = "default" if encoder.layer is None else str(encoder.layer)
    return f"{encoder.name}@{layer}:{hashlib.sha256(payload.encode('utf-8')).hexdigest()[:12]}"


def _checked_matrix(C: torch.Tensor) -> torch.Tensor:
    """C as float64, validated (square, finite, symmetric) and exactly symmetrised."""
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] == 0:
        raise ValueError(f"C must be a non-empty square matrix, got shape {tuple(C.shape)}")
    c = C.detach().to(torch.float64)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("C contains NaN or infinite values")
    scale = float(c.abs().max())
    if float((c - c.T).abs().max()) > 1e-5 * max(scale, 1e-300):
        raise ValueError("C is not symmetric; a second-moment matrix must be")
    return 0.5 * (c + c.T)


def condition_ridge(c: torch.Tensor) -> float:
    """The ridge to add to C (float64, symmetric) so that its condition number is at most
    MAX_CONDITION: 0.0 for a well-conditioned C. Raises ValueError for an indefinite C."""
    eigs = torch.linalg.eigvalsh(c)
    top, bottom = float(eigs[-1]), float(eigs[0])
    if not top > 0 or bottom < -_NEGATIVE_TOLERANCE * top:
        raise ValueError(f"C is not positive semi-definite (eigenvalues from {bottom:.3g} to {top:.3g}); the "
                         "statistics are corrupted or not a second moment")
    if bottom * MAX_CONDITION >= top:
        return 0.0
    # (bottom + r) * MAX_CONDITION = top + r, with bottom clipped at 0 (rounding can make it negative)
    return (top - max(bottom, 0.0) * MAX_CONDITION) / (MAX_CONDITION - 1.0)


class Whitener:
    """Cholesky factor C = L L^T (float64), reused for any number of solves.

    If C's condition number exceeds MAX_CONDITION (semi-definite, numerically singular), it is
    factorised as C + ridge * I with the smallest ridge that brings it down to MAX_CONDITION;
    ``ridge`` records what was added (0.0 normally). An indefinite C (corrupted) raises ValueError.
    """

    def __init__(self, C: torch.Tensor) -> None:
        c = _checked_matrix(C)
        d = c.shape[0]
        if float(torch.trace(c)) <= 0:
            raise ValueError(f"C has non-positive trace ({float(torch.trace(c))}); not a second-moment matrix")
        ridge = condition_ridge(c)
        L, info = torch.linalg.cholesky_ex(c + ridge * torch.eye(d, dtype=torch.float64, device=c.device))
        if int(info) != 0:
            raise ValueError("C is not positive definite even after its ridge; the statistics are corrupted")
        self.L, self.ridge = L, ridge

    @property
    def dim(self) -> int:
        return int(self.L.shape[0])

    def _rows(self, i: torch.Tensor) -> torch.Tensor:
        if i.ndim not in (1, 2) or i.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of dim {self.dim} as (D,) or (N, D), got {tuple(i.shape)}")
        return i.detach().to(device=self.L.device, dtype=torch.float64).reshape(-1, self.dim)

    def solve(self, i: torch.Tensor) -> torch.Tensor:
        """C^-1 i for i (D,) or rows of (N, D); float64, same shape, on C's device."""
        return torch.cholesky_solve(self._rows(i).T, self.L).T.reshape(i.shape)

    def whiten(self, e: torch.Tensor) -> torch.Tensor:
        """L^-1 e (rows), so that |L^-1 e|^2 = e^T C^-1 e (for C^-1-metric Gram-Schmidt/QR)."""
        y = torch.linalg.solve_triangular(self.L, self._rows(e).T, upper=False)
        return y.T.reshape(e.shape)

    def energy(self, i: torch.Tensor) -> float:
        """E = i^T C^-1 i for one vector i (D,); > 0 for any non-zero i."""
        if i.ndim != 1:
            raise ValueError(f"energy takes one vector (D,), got shape {tuple(i.shape)}")
        return float(self.whiten(i).square().sum())


def solve(C: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """C^-1 i in float64 via Cholesky (see Whitener for the semi-definite fallback)."""
    return Whitener(C).solve(i)


def energy(C: torch.Tensor, i: torch.Tensor) -> float:
    """i^T C^-1 i in float64 (docs/method.md §2: E)."""
    return Whitener(C).energy(i)


def save_statistics(path: str | os.PathLike[str], C: torch.Tensor, meta: Mapping[str, object]) -> None:
    """Write C (kept float64) and JSON-serialisable ``meta`` to a safetensors file.

    The write is atomic (write_atomic): an interrupted save never leaves a
    truncated statistics file behind; an existing file is replaced.
    """
    c = _checked_matrix(C).cpu().contiguous()
    try:
        meta_json = json.dumps(dict(meta), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"statistics metadata must be JSON-serialisable: {exc}") from None
    header = {"format": FILE_FORMAT, "version": FILE_VERSION, "meta": meta_json}
    write_atomic(path, save({_TENSOR_KEY: c}, metadata=header), overwrite=True)


def load_statistics(path: str | os.PathLike[str]) -> tuple[torch.Tensor, dict]:
    """Read (C as float64 CPU tensor, meta dict) written by ``save_statistics``.

    A float32 C (e.g. converted by hand to halve the file) is accepted and
    widened to float64; anything else raises StatisticsError naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise StatisticsError(f"statistics file '{p}' does not exist or is not a file")
    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
            keys = set(fh.keys())
            tensor = fh.get_tensor(_TENSOR_KEY) if _TENSOR_KEY in keys else None
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise StatisticsError(f"statistics file '{p}' is not a readable safetensors file: {exc}") from None
    if header.get("format") != FILE_FORMAT:
        raise StatisticsError(f"'{p}' is not a Perfusion statistics file (format "
                              f"{header.get('format')!r}, expected {FILE_FORMAT!r})")
    if header.get("version") != FILE_VERSION:
        raise StatisticsError(f"statistics file '{p}' has version {header.get('version')!r}; "
                              f"this code reads version {FILE_VERSION}")
    if tensor is None:
        raise StatisticsError(f"statistics file '{p}' has no '{_TENSOR_KEY}' tensor")
    if tensor.dtype not in (torch.float64, torch.float32):
        raise StatisticsError(f"statistics file '{p}': C must be float64 or float32, got {tensor.dtype}")
    try:
        c = _checked_matrix(tensor)
        meta = json.loads(header.get("meta", "{}"))
    except ValueError as exc:
        raise StatisticsError(f"statistics file '{p}' holds an invalid matrix or metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise StatisticsError(f"statistics file '{p}': metadata is not a JSON object")
    return c, meta
