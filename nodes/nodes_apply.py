"""ApplyKeyLockedEdit: put a concept into a MODEL and a CLIP."""

from __future__ import annotations

from typing import Any

from perfusion_core.concept import Concept, ConceptError
from perfusion_core.concept_file import check_compatible, word_problem

from . import clip_patch, host_model, model_patch
from .nodes_concept import CATEGORY, CONCEPT

NODE = "ApplyKeyLockedEdit"


def check_concept_fits(concept: Concept, model: Any, clip: Any) -> dict[str, int]:
    """Raise a ConceptError a user can act on if the concept does not fit; returns the model's layers."""
    family = host_model.model_family(model)
    layers = host_model.cross_attention_layers(model)
    check_compatible(concept, family=family, context_dim=host_model.context_dim(model), layer_dims=layers,
                     source=f"{NODE} (concept '{concept.trigger}')")
    clip_family = host_model.family_of_clip(clip)
    if clip_family != family:
        raise ConceptError(f"{NODE}: the CLIP is {host_model.FAMILY_NAMES[clip_family]} but the model is "
                           f"{host_model.FAMILY_NAMES[family]}; connect the CLIP of the same checkpoint")
    want, have = concept.text_encoder.layer, clip.layer_idx
    if want != have:
        def name(layer):
            return "the default layer" if layer is None else f"layer {layer}"
        raise ConceptError(f"{NODE}: concept '{concept.trigger}' was made with CLIP {name(want)} but this CLIP "
                           f"uses {name(have)}; set CLIPSetLastLayer to match")
    return layers


class ApplyKeyLockedEdit:
    DESCRIPTION = ("Apply a Perfusion concept: hooks every cross-attention key/value projection of the MODEL with "
                   "a gated rank-1 edit (keys locked to the superclass) and teaches the CLIP the trigger word. "
                   "Chain several to put several concepts in one image: they form one joint edit.")
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    OUTPUT_TOOLTIPS = ("The model with the concept's edit (the input model is unchanged).",
                       "The CLIP that encodes the trigger word with the concept's embedding.")
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model, LoRAs and other patches allowed."}),
                "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint."}),
                "concept": (CONCEPT, {"tooltip": "From Load Perfusion Concept, Concept Gate or a trainer."}),
            },
            "optional": {
                "trigger_word": ("STRING", {"default": "", "tooltip":
                                 "Use this word in prompts instead of the concept's own trigger. Empty = the "
                                 "concept's trigger. A prompt without the trigger is fine: the concept stays idle."}),
            },
        }

    def apply(self, model: Any, clip: Any, concept: Concept, trigger_word: str = "") -> tuple[Any, Any]:
        trigger_word = trigger_word.strip()
        if trigger_word:
            problem = word_problem(trigger_word, "trigger_word")
            if problem:
                raise ConceptError(f"{NODE}: {problem}")
            concept = concept.with_trigger(trigger_word)
        layers = check_concept_fits(concept, model, clip)
        return (model_patch.install(model, list(layers), [concept]),
                clip_patch.install(clip, [concept], source=NODE))


NODE_CLASS_MAPPINGS = {NODE: ApplyKeyLockedEdit}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "Apply Key-Locked Edit (Perfusion)"}
