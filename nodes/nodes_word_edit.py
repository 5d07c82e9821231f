"""PerfusionWordEdit: a concept made without training (render one word as another)."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..perfusion_core.caption_grammar import generate_captions
from ..perfusion_core.concept import Concept, ConceptError
from ..perfusion_core.concept_checks import concept_problem
from ..perfusion_core.trigger_words import trigger_problem, word_problem, words_match
from ..perfusion_core.covariance import Whitener
from ..perfusion_core.prompt_text import text_before_slot
from ..perfusion_core.word_edit import word_edit_concept

from . import host_model, statistics
from .encoding import encode_word, template_problem, word_positions
from .nodes_concept import CATEGORY, ConceptSocket

NODE = "PerfusionWordEdit"


class PerfusionWordEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE, display_name="Perfusion Word Edit (no training)", category=CATEGORY,
            description=("Build a concept with no training that makes the model read one word as another "
                         "(e.g. every 'cat' rendered as a 'dog'): keys and values of the trigger word are "
                         "edited to those of the target word. Useful as a demo and a check of the setup."),
            inputs=[
                io.Model.Input("model", tooltip="The model whose value weights define the targets."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint (with its CLIPSetLastLayer, if any)."),
                io.String.Input("trigger_word", default="cat", tooltip="The word to edit (one word)."),
                io.String.Input("target_word", default="dog", tooltip="What the trigger should become (one word)."),
                io.String.Input("template", default="a photo of a {}",
                                tooltip="Prompt in which both words are encoded; must contain {} once."),
                io.Int.Input("statistics_captions", default=1000, min=0, max=100000, step=100, tooltip=(
                    "How many built-in captions (0-100000) to estimate the text-encoder statistics C from "
                    "(computed once per CLIP, then cached in models/perfusion/statistics). "
                    "0 = no statistics (C = identity; the edit then leaks onto other tokens). Default 1000.")),
            ],
            outputs=[ConceptSocket.Output("concept", display_name="concept",
                                          tooltip="A concept for this model's layout; save it or apply it.")],
        )

    @classmethod
    def execute(cls, model: Any, clip: Any, trigger_word: str, target_word: str, template: str,
                statistics_captions: int = 1000) -> io.NodeOutput:
        return io.NodeOutput(word_edit(model, clip, trigger_word, target_word, template, statistics_captions))


def word_edit(model: Any, clip: Any, trigger_word: str, target_word: str, template: str,
              statistics_captions: int = 1000) -> Concept:
    """The node's work: a concept that makes ``model`` read ``trigger_word`` as ``target_word``."""
    trigger, target = trigger_word.strip(), target_word.strip()
    problem = (trigger_problem(trigger, "trigger_word") or word_problem(target, "target_word")
               or template_problem(template))
    if problem:
        raise ConceptError(f"{NODE}: {problem}")
    if words_match(trigger, target):
        raise ConceptError(f"{NODE}: trigger_word and target_word are both {trigger!r}; nothing to edit")
    try:
        check_one_token(clip, template, trigger)
        i_trigger = encode_word(clip, template, trigger)
        i_target = encode_word(clip, template, target)
    except ConceptError as err:
        raise ConceptError(f"{NODE}: {err}") from None
    family = host_model.model_family(model)
    layers = host_model.cross_attention_layers(model)
    u, stats_id = None, "identity"
    if statistics_captions > 0:
        C, stats_id = statistics.clip_statistics(clip, generate_captions(statistics_captions))
        u = Whitener(C).solve(i_trigger).float()
    concept = word_edit_concept(
        trigger=trigger, target=target, u=u, statistics=stats_id, i_trigger=i_trigger, i_target=i_target,
        value_weights={layer: host_model.value_weight(model, layer) for layer in layers},
        family=family, text_encoder=host_model.text_encoder_id(clip))
    problem = concept_problem(concept)  # e.g. statistics that make u unusable: refuse what Save would
    if problem:
        raise ConceptError(f"{NODE}: the concept built for {trigger!r} is unusable: {problem}")
    return concept


def check_one_token(clip: Any, template: str, trigger: str) -> None:
    """A word edit acts on the trigger's last token wherever it appears: a trigger of several tokens
    ('housecat' = 'house' + 'cat') would edit every 'cat' instead."""
    count = len(word_positions(clip.tokenizer, text_before_slot(template), trigger))
    if count != 1:
        raise ConceptError(f"trigger_word {trigger!r} is {count} tokens for this CLIP; a word edit needs a "
                           "one-token word (its edit would act on the last token, wherever it appears)")
