"""A concept built without training: render one word as another (ROME-style).

i* is the trigger word's encoding in a prompt, the key target is the target
word's encoding (key-locking onto the target), and the value targets are
W_V i_target per layer. With the gate open this makes the model attend to
"cat" exactly as it would to "dog": a test of the whole edit pipeline, a demo,
and an initialisation for training.
"""

from __future__ import annotations

from typing import Mapping

import torch
from einops import einsum

from .concept import Concept, Gate, TextEncoderId


def word_edit_concept(
    trigger: str,
    target: str,
    i_trigger: torch.Tensor,
    i_target: torch.Tensor,
    value_weights: Mapping[str, torch.Tensor],
    family: str,
    text_encoder: TextEncoderId,
    u: torch.Tensor | None = None,
    statistics: str = "identity",
    gate: Gate | None = None,
) -> Concept:
    """Build the concept. ``value_weights``: layer -> W_V (d_out, D).
    ``u`` = C^-1 i_trigger from the encoder's statistics; None means C = I
    (plain orthogonal projection), recorded as statistics "identity"."""
    i_star = i_trigger.detach().float().cpu()
    i_super = i_target.detach().float().cpu()
    if u is None:
        u, statistics = i_star.clone(), "identity"
    u = u.detach().float().cpu()
    v_targets = {layer: einsum(w.float().cpu(), i_super, "o d, d -> o").unsqueeze(0) for layer, w in value_weights.items()}
    return Concept(
        trigger=trigger, superclass=target, family=family, text_encoder=text_encoder,
        i_star=i_star, u=u, i_super=i_super, v_targets=v_targets, embeddings={},
        gate=gate or Gate(), statistics=statistics,
        training={"kind": "word_edit", "target": target},
    )
