"""PerfusionWordEdit: a concept made without training (render one word as another)."""

from __future__ import annotations

from typing import Any

from perfusion_core.captions import generate_captions
from perfusion_core.concept import Concept, ConceptError
from perfusion_core.concept_file import word_problem
from perfusion_core.covariance import Whitener
from perfusion_core.word_edit import word_edit_concept

from . import host_model, statistics
from .encoding import encode_word
from .nodes_concept import CATEGORY, CONCEPT

NODE = "PerfusionWordEdit"


class PerfusionWordEdit:
    DESCRIPTION = ("Build a concept with no training that makes the model read one word as another "
                   "(e.g. every 'cat' rendered as a 'dog'): keys and values of the trigger word are "
                   "edited to those of the target word. Useful as a demo and a check of the setup.")
    RETURN_TYPES = (CONCEPT,)
    RETURN_NAMES = ("concept",)
    OUTPUT_TOOLTIPS = ("A concept for this model's layout; save it or apply it.",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model whose value weights define the targets."}),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint (with its CLIPSetLastLayer, if any)."}),
            "trigger_word": ("STRING", {"default": "cat", "tooltip": "The word to edit (one word)."}),
            "target_word": ("STRING", {"default": "dog", "tooltip": "What the trigger should become (one word)."}),
            "template": ("STRING", {"default": "a photo of a {}", "tooltip":
                         "Prompt in which both words are encoded; must contain {} once."}),
            "statistics_captions": ("INT", {"default": 1000, "min": 0, "max": 100000, "step": 100, "tooltip":
                                    "How many built-in captions (0-100000) to estimate the text-encoder statistics C from "
                                    "(computed once per CLIP, then cached in models/perfusion/statistics). "
                                    "0 = no statistics (C = identity; the edit then leaks onto other tokens). "
                                    "Default 1000."}),
        }}

    def build(self, model: Any, clip: Any, trigger_word: str, target_word: str, template: str,
              statistics_captions: int = 1000) -> tuple[Concept]:
        trigger, target = trigger_word.strip(), target_word.strip()
        for name, word in (("trigger_word", trigger), ("target_word", target)):
            problem = word_problem(word, name)
            if problem:
                raise ConceptError(f"{NODE}: {problem}")
        if trigger.lower() == target.lower():
            raise ConceptError(f"{NODE}: trigger_word and target_word are both {trigger!r}; nothing to edit")
        if template.count("{}") != 1:
            raise ConceptError(f"{NODE}: template must contain '{{}}' exactly once (where the word goes), "
                               f"got {template!r}")
        family = host_model.model_family(model)
        layers = host_model.cross_attention_layers(model)
        i_trigger = encode_word(clip, template, trigger)
        u, stats_id = None, "identity"
        if statistics_captions > 0:
            C, stats_id = statistics.clip_statistics(clip, generate_captions(statistics_captions))
            u = Whitener(C).solve(i_trigger).float()
        concept = word_edit_concept(
            trigger=trigger, target=target, u=u, statistics=stats_id,
            i_trigger=i_trigger, i_target=encode_word(clip, template, target),
            value_weights={layer: host_model.value_weight(model, layer) for layer in layers},
            family=family, text_encoder=host_model.text_encoder_id(clip))
        return (concept,)


NODE_CLASS_MAPPINGS = {NODE: PerfusionWordEdit}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "Perfusion Word Edit (no training)"}
