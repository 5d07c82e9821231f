"""ApplyKeyLockedEdit: put a concept into a MODEL and a CLIP."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..perfusion_core.concept import Concept, ConceptError
from ..perfusion_core.concept_checks import check_compatible, concept_problem
from ..perfusion_core.trigger_words import trigger_problem, words_match
from ..perfusion_core.edit import MAX_DIRECTION_COSINE, parallel_pairs
from ..perfusion_core.families import label as family_label

from . import clip_patch, host_model, model_patch
from .nodes_concept import CATEGORY, ConceptSocket

NODE = "ApplyKeyLockedEdit"


def check_concept_fits(concept: Concept, model: Any, clip: Any) -> dict[str, int]:
    """Raise a ConceptError a user can act on if the concept does not fit; returns the model's layers."""
    family = host_model.model_family(model)
    layers = host_model.cross_attention_layers(model)
    check_compatible(concept, family=family, context_dim=host_model.context_dim(model), layer_dims=layers,
                     source=f"{NODE} (concept '{concept.trigger}')")
    clip_family = host_model.family_of_clip(clip)
    if clip_family != family:
        raise ConceptError(f"{NODE}: the CLIP is {family_label(clip_family)} but the model is "
                           f"{family_label(family)}; connect the CLIP of the same checkpoint")
    want, have = concept.text_encoder.layer, clip.layer_idx
    if want != have and not same_layer_output(clip, want):
        def name(layer):
            return "the default layer" if layer is None else f"layer {layer}"
        raise ConceptError(f"{NODE}: concept '{concept.trigger}' was made with CLIP {name(want)} but this CLIP "
                           f"uses {name(have)}; set CLIPSetLastLayer to match")
    return layers


PROBE_PROMPT = "a photo of a cat on a sofa"


def same_layer_output(clip: Any, layer: int | None) -> bool:
    """Whether ``clip`` set to ``layer`` encodes exactly as it is. Different layer numbers can name
    the same output (SD1's default is the last layer, which CLIPSetLastLayer calls -1): the concept's
    directions only need the same encodings, so equal outputs on a probe prompt are accepted."""
    probe = clip.clone()
    probe.clip_layer(layer)
    with torch.no_grad():
        ours = clip.encode_from_tokens(clip.tokenize(PROBE_PROMPT))
        theirs = probe.encode_from_tokens(probe.tokenize(PROBE_PROMPT))
    return ours.shape == theirs.shape and bool(torch.equal(ours, theirs))


def applied_triggers(model: Any, clip: Any, layers: list[str]) -> tuple[list[Concept], list[str]]:
    """Concepts already on ``model`` (earlier Apply nodes) and triggers already taught to ``clip``."""
    runtime, _ = model_patch.find_runtime(model, layers)
    on_model = list(runtime.all_concepts) if runtime is not None else []
    tokenizer = clip.tokenizer
    on_clip = [e.trigger for e in tokenizer.entries] if isinstance(tokenizer, clip_patch.TriggerTokenizer) else []
    return on_model, on_clip


def check_joint(concept: Concept, on_model: list[Concept], on_clip: list[str]) -> None:
    """Refuse a concept that cannot join the ones applied upstream: one trigger would silently lose
    its embedding, and near-parallel directions make the joint edit singular or wash the image out."""
    for trigger in [c.trigger for c in on_model] + on_clip:
        if words_match(trigger, concept.trigger):
            raise ConceptError(f"{NODE}: concept '{concept.trigger}' has the same trigger as concept '{trigger}' "
                               "applied upstream; one of them would lose its embedding. Set a different "
                               "trigger_word on one of the Apply nodes, or apply the concept only once")
    if concept.gate.strength == 0.0:
        return  # not part of the joint edit (see model_patch.PerfusionRuntime)
    active = [c for c in on_model if c.gate.strength != 0.0 and c.context_dim == concept.context_dim]
    if not active:
        return
    group = active + [concept]
    pairs = parallel_pairs(torch.stack([c.i_star for c in group]), torch.stack([c.u for c in group]))
    for m, n, cos in pairs:
        if n == len(active):
            raise ConceptError(
                f"{NODE}: concept '{concept.trigger}' and concept '{active[m].trigger}' applied upstream have "
                f"nearly the same input direction i* (cosine {cos:.6f}, at most {MAX_DIRECTION_COSINE}): is one "
                "concept applied twice (e.g. through two ConceptGate nodes)? Apply each concept once; one "
                "ConceptGate sets all of its settings")


def apply_edit(model: Any, clip: Any, concept: Concept, trigger_word: str = "") -> tuple[Any, Any]:
    """The node's work: (model, clip) with ``concept`` applied; the inputs are not changed."""
    trigger_word = trigger_word.strip()
    if trigger_word:
        problem = trigger_problem(trigger_word, "trigger_word")
        if problem:
            raise ConceptError(f"{NODE}: {problem}")
        concept = concept.with_trigger(trigger_word)
    problem = concept_problem(concept)  # in-memory concepts too: the same bounds as a file's
    if problem:
        raise ConceptError(f"{NODE}: concept '{concept.trigger}': {problem}")
    layers = check_concept_fits(concept, model, clip)
    check_joint(concept, *applied_triggers(model, clip, list(layers)))
    return (model_patch.install(model, list(layers), [concept]),
            clip_patch.install(clip, [concept], source=NODE))


class ApplyKeyLockedEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE, display_name="Apply Key-Locked Edit (Perfusion)", category=CATEGORY,
            description=("Apply a Perfusion concept: hooks every cross-attention key/value projection of the MODEL "
                         "with a gated rank-1 edit (keys locked to the superclass) and teaches the CLIP the trigger "
                         "word. Chain several to put several concepts in one image: they form one joint edit."),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model, LoRAs and other patches allowed."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint."),
                ConceptSocket.Input("concept", tooltip="From Load Perfusion Concept, Concept Gate or a trainer."),
                io.String.Input("trigger_word", default="", optional=True, tooltip=(
                    "Use this word in prompts instead of the concept's own trigger. Empty = the concept's trigger. "
                    "A prompt without the trigger is fine: the concept stays idle.")),
            ],
            outputs=[
                io.Model.Output("patched_model", display_name="model",
                                tooltip="The model with the concept's edit (the input model is unchanged)."),
                io.Clip.Output("patched_clip", display_name="clip",
                               tooltip="The CLIP that encodes the trigger word with the concept's embedding."),
            ],
        )

    @classmethod
    def execute(cls, model: Any, clip: Any, concept: Concept, trigger_word: str = "") -> io.NodeOutput:
        return io.NodeOutput(*apply_edit(model, clip, concept, trigger_word))
