"""A Perfusion concept: what one learned (or constructed) concept carries.

A concept is independent of any particular model object: it holds the input
directions (text-encoder space, D = context dim), the per-layer value targets
and the trigger-token embedding(s). Key targets are never stored: they are
recomputed as ``W_K @ i_super`` on the model in use, so that LoRA-patched or
quantised key weights are honoured (key-locking).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from .lock_modes import DEFAULT_LOCK_MODE, LOCK_MODES


class ConceptError(ValueError):
    """A concept (or concept file) is unusable; the message says which and why."""


def _finite(value: object) -> bool:
    """A finite real number (ints, floats, numpy/torch scalars); strings do not count."""
    if isinstance(value, (str, bytes)):
        return False
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Gate:
    """Inference-time gate of one concept (docs/method.md §2, §3, §8 S1).

    beta/tau shape the sigmoid gate, ``strength`` scales the concept's whole
    contribution to the joint edit (0 = concept absent), and the concept is
    active only while the denoising progress lies in [start_percent, end_percent].
    """

    beta: float = 0.7
    tau: float = 0.15
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    lock: str = DEFAULT_LOCK_MODE  # a name in lock_modes.LOCK_MODES

    def __post_init__(self) -> None:
        # NaN passes every range comparison below and would silently blacken images.
        for name in ("beta", "tau", "strength"):
            value = getattr(self, name)
            if not _finite(value):
                raise ConceptError(f"gate {name} must be a finite number, got {value!r}")
        if not (self.tau > 0.0):
            raise ConceptError(f"gate tau must be > 0, got {self.tau}")
        if not (0.0 <= self.start_percent <= self.end_percent <= 1.0):
            raise ConceptError(
                f"gate window must satisfy 0 <= start_percent <= end_percent <= 1, "
                f"got start {self.start_percent}, end {self.end_percent}")
        if self.lock not in LOCK_MODES:
            raise ConceptError(f"gate lock mode must be one of {LOCK_MODES}, got {self.lock!r}")


# ConceptGate's input ranges (beyond its "keep the stored value" settings): what a concept may
# carry as its gate, so that a file or a trained concept never sets what the node cannot.
GATE_RANGES: dict[str, tuple[float, float]] = {"beta": (0.0, 2.0), "tau": (0.0, 1.0), "strength": (0.0, 2.0)}


def gate_range_problem(gate: Gate) -> str | None:
    """The first of beta, tau and strength outside GATE_RANGES, phrased for the user, or None."""
    for name, (low, high) in GATE_RANGES.items():
        value = getattr(gate, name)
        if not (low <= value <= high):
            return f"gate {name} is {value:g}; must be in [{low:g}, {high:g}] (ConceptGate's range)"
    return None


@dataclass(frozen=True)
class TextEncoderId:
    """Which text encoder output the concept's directions live in.

    ``name`` identifies the encoder family ("clip-l", "clip-h", "clip-l+clip-g");
    ``layer`` is ComfyUI's CLIP layer index (None = the model's default, -2 =
    "clip skip 2", ...). i*, u and E are meaningless for any other output.
    """

    name: str
    layer: int | None = None


@dataclass(frozen=True)
class Concept:
    """One concept; tensors are float32 on CPU unless the caller moves them.

    Shapes: D = context dim, S = number of timestep-interval parameter sets.
      i_star     (D,)          input direction i* (EMA of the trigger's encoding)
      u          (D,)          C^-1 i*  (C = text-encoder second moment)
      i_super    (D,)          superclass encoding; key target = W_K i_super
      v_targets  layer -> (S, d_out)   value targets o*_V, one row per interval
      embeddings tokenizer key ("l", "g", "h") -> (dim,)   learned trigger token;
                 empty for a word edit whose trigger is an ordinary word
    """

    trigger: str
    superclass: str
    family: str
    text_encoder: TextEncoderId
    i_star: torch.Tensor
    u: torch.Tensor
    i_super: torch.Tensor
    v_targets: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    gate: Gate = field(default_factory=Gate)
    statistics: str = "identity"
    training: dict = field(default_factory=dict)

    @property
    def context_dim(self) -> int:
        return int(self.i_star.shape[-1])

    @property
    def timestep_sets(self) -> int:
        return int(next(iter(self.v_targets.values())).shape[0])

    @property
    def layer_dims(self) -> dict[str, int]:
        return {name: int(t.shape[-1]) for name, t in self.v_targets.items()}

    def with_gate(self, **changes: object) -> "Concept":
        """A copy whose gate has the given fields changed (validated)."""
        return dataclasses.replace(self, gate=dataclasses.replace(self.gate, **changes))

    def with_trigger(self, trigger: str) -> "Concept":
        return dataclasses.replace(self, trigger=trigger)
