"""What makes a concept unusable, whatever file it came from, and whether it fits a model.

Shared by saving and loading (``concept_file``) and by the nodes that apply a concept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .concept import Concept, ConceptError, TextEncoderId, gate_range_problem
from .families import FAMILIES, FAMILY_BY_NAME
from .families import label as family_label
from .trigger_words import trigger_problem, word_problem

# Bounds on a concept's values: finite is not enough, since each of these renders black or noise
# with no error. Text encodings (i*, i_super) are layer-normed, |x| of order 1-30 in real encoders:
# at 1e4 W i* already overflows fp16 models and near the float32 maximum it overflows everywhere.
MAX_DIRECTION_ABS = 1e4
# u = C^-1 i* only enters as the ratio u.e / u.i*, so its scale is free, but u.i* must be a normal
# float32 (a subnormal u makes the ratio 0/0 or inf) and u.e must not overflow float32.
MIN_U_NORM, MAX_U_NORM = 1e-18, 1e18
# u.i* >= this times |u||i*|: the cosine of u = C^-1 i* with i* is at least 2 sqrt(k) / (1 + k) for
# k = cond(C) (Kantorovich): 0.03 for real encoders (k ~ 4e3), 2e-4 at the statistics' limit (1e8).
# Smaller means u does not belong to i*, and r(e) = u.e/E would amplify other tokens' encodings
# by up to |u||e|/E, opening the gate on noise.
MIN_U_COSINE = 1e-6
# Value targets replace attention values and embeddings enter the text encoder's residual stream;
# both run in fp16 on most GPUs (max 65504), and sums over a layer's width overflow long before a
# single value does. Real ones are of order 1-10; 1000 leaves two orders of magnitude for training.
MAX_VALUE_ABS = 1e3
MAX_EMBEDDING_ABS = 1e3


def is_finite_number(value: object) -> bool:
    """An int or float (not a bool, not a string) that is finite: what a gate field or a JSON number may be."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def listed(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def concept_problem(concept: Concept) -> str | None:
    """What makes ``concept`` unusable, or None. Shared by save and load."""
    if concept.family not in FAMILIES:
        return f"unknown base family {concept.family!r} (known: {', '.join(FAMILIES)})"
    problem = trigger_problem(concept.trigger) or word_problem(concept.superclass, "superclass", allow_spaces=True)
    if problem is not None:
        return problem
    if not isinstance(concept.text_encoder, TextEncoderId) or not isinstance(concept.text_encoder.name, str) \
            or not concept.text_encoder.name.strip():
        return "text encoder must be a TextEncoderId with a non-empty name"
    if not isinstance(concept.statistics, str) or not concept.statistics.strip():
        return "statistics must be a non-empty string"
    if not isinstance(concept.training, dict):
        return "training info must be a dict"
    gate = concept.gate
    if not (is_finite_number(gate.beta) and is_finite_number(gate.strength) and is_finite_number(gate.tau)):
        return f"gate beta, tau and strength must be finite numbers, got {gate.beta}, {gate.tau}, {gate.strength}"
    vectors = {"i_star": concept.i_star, "u": concept.u, "i_super": concept.i_super}
    for key, t in vectors.items():
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] < 1:
            return f"{key} must be a non-empty 1-D tensor, got {_shape(t)}"
    if not (concept.i_star.shape == concept.u.shape == concept.i_super.shape):
        return (f"i_star, u and i_super must have the same length, got {_shape(concept.i_star)}, "
                f"{_shape(concept.u)}, {_shape(concept.i_super)}")
    if not concept.v_targets:
        return "no value targets (v_targets is empty)"
    sets = None
    for layer, t in concept.v_targets.items():
        if not isinstance(layer, str) or not layer.strip():
            return f"layer name {layer!r} must be a non-empty string"
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or 0 in t.shape:
            return f"value target of layer {layer!r} must be a non-empty (S, d_out) tensor, got {_shape(t)}"
        if sets is not None and t.shape[0] != sets:
            return f"value target of layer {layer!r} has {t.shape[0]} timestep sets, other layers have {sets}"
        sets = t.shape[0]
    allowed = FAMILY_BY_NAME[concept.family].tokenizer_keys
    for key, t in concept.embeddings.items():
        if key not in allowed:
            return (f"embedding key {key!r} does not exist for {family_label(concept.family)} "
                    f"(text encoders: {', '.join(allowed)})")
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] < 1:
            return f"embedding {key!r} must be a non-empty 1-D tensor, got {_shape(t)}"
    named = [*vectors.items(), *(("v_target." + k, v) for k, v in concept.v_targets.items()),
             *(("embedding." + k, v) for k, v in concept.embeddings.items())]
    for key, t in named:
        if not t.is_floating_point():
            return f"tensor '{key}' must be floating point, got {t.dtype}"
        if not bool(torch.isfinite(t).all()):
            return f"tensor '{key}' contains non-finite values (NaN or inf)"
    energy = float(torch.dot(concept.u.double().cpu(), concept.i_star.double().cpu()))
    if not energy > 0.0:
        return f"energy E = u . i* is {energy:.4g}, must be > 0 (u and i* do not belong together)"
    return _bounds_problem(concept, energy)


def _max_abs(t: torch.Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


def _bounds_problem(concept: Concept, energy: float) -> str | None:
    """Finite values that still render black or noise (see the bounds above), or None."""
    for key in ("i_star", "i_super"):
        if _max_abs(getattr(concept, key)) > MAX_DIRECTION_ABS:
            return (f"tensor '{key}' has values up to {_max_abs(getattr(concept, key)):.3g}; a text encoding "
                    f"stays within {MAX_DIRECTION_ABS:g} (larger overflows the projections)")
    u, i_star = concept.u.double().cpu(), concept.i_star.double().cpu()
    u_norm, i_norm = float(u.norm()), float(i_star.norm())
    if not (MIN_U_NORM <= u_norm <= MAX_U_NORM):
        return (f"tensor 'u' has norm {u_norm:.3g}, outside [{MIN_U_NORM:g}, {MAX_U_NORM:g}] "
                "(float32 loses the gate ratio u.e / u.i*)")
    if energy < MIN_U_COSINE * u_norm * i_norm:
        return (f"u . i* is {energy / (u_norm * i_norm):.3g} of |u||i*| (at least {MIN_U_COSINE:g}): u is not "
                "C^-1 i* for this i*, and the gate would open on unrelated tokens")
    groups = (("v_target.", concept.v_targets, MAX_VALUE_ABS), ("embedding.", concept.embeddings, MAX_EMBEDDING_ABS))
    for prefix, group, limit in groups:
        for key, t in group.items():
            if _max_abs(t) > limit:
                return (f"tensor '{prefix}{key}' has values up to {_max_abs(t):.3g} (at most {limit:g}; "
                        "larger overflows fp16 models)")
    return gate_range_problem(concept.gate)


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_compatible(concept: Concept, *, family: str, context_dim: int, layer_dims: Mapping[str, int],
                     source: str) -> None:
    """Raise ConceptError (prefixed by ``source``) unless ``concept`` fits the model.

    ``layer_dims`` maps the model's cross-attention layer names to their
    to_v output width. A family mismatch is reported alone: it explains
    every other difference.
    """
    if family != concept.family:
        made, model = family_label(concept.family), family_label(family)
        raise ConceptError(f"{source}: this concept was made for {made}; the model is {model}. "
                           f"Use a {made} checkpoint or a concept trained for {model}")
    problems = []
    if context_dim != concept.context_dim:
        problems.append(f"the concept's text directions have dimension {concept.context_dim} but the model's "
                        f"cross-attention context has {context_dim} (different text encoder?)")
    ours, theirs = concept.layer_dims, dict(layer_dims)
    not_in_model = [k for k in ours if k not in theirs]
    not_in_concept = [k for k in theirs if k not in ours]
    if not_in_model or not_in_concept:
        text = f"the concept has {len(ours)} cross-attention layers, the model has {len(theirs)}"
        if not_in_model:
            text += f"; not in the model: {listed(not_in_model, 3)}"
        if not_in_concept:
            text += f"; not in the concept: {listed(not_in_concept, 3)}"
        problems.append(text)
    widths = [f"{k} (concept {ours[k]}, model {theirs[k]})" for k in ours if k in theirs and ours[k] != theirs[k]]
    if widths:
        problems.append(f"value widths differ for {len(widths)} layer(s): {listed(widths, 3)}")
    if problems:
        raise ConceptError(f"{source}: concept does not fit this model: " + "; ".join(problems))
