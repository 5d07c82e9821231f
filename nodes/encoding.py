"""Reading single token encodings out of a ComfyUI CLIP."""

from __future__ import annotations

from typing import Any

import torch

from ..perfusion_core.concept import ConceptError
from ..perfusion_core.prompt_text import SLOT, slot_problem, text_before_slot


# ComfyUI's prompt syntax that a template cannot carry: a weight or escape changes the word's
# encoding (or splits it from '{}'), and 'embedding:' makes the word an embedding file's name.
_TEMPLATE_SYNTAX = ("(", ")", "\\")


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot hold the word to encode, or None."""
    problem = slot_problem(template, "template", "where the word goes")
    if problem:
        return problem
    bad = next((ch for ch in _TEMPLATE_SYNTAX if ch in template), None)
    if bad is not None:
        return (f"template {template!r} contains the prompt-syntax character {bad!r} (weights and escapes "
                "would change or split the word's encoding); write the template as plain text")
    if "embedding:" in template.lower():
        return (f"template {template!r} contains 'embedding:', which makes ComfyUI read a word as an embedding "
                "file; write the template as plain text")
    return None


def word_tokens(tokenizer: Any, prefix: str, word: str) -> dict[str, tuple[int, list[int]]]:
    """Per tokenizer key, (index of the first token, BOS counted; the token ids) of ``word`` in the
    prompt ``prefix + ' ' + word + rest``.

    Found by diffing the tokenization of the prefix alone against prefix + word: the word's
    tokens start where the two first differ and end where the prefix's end token reappears.
    So it holds for any tokenizer layout (BOS or not, any padding token), multi-token words
    included. Keys whose value is not a list of chunks (the superclass prompt that
    clip_patch adds) are skipped.
    """
    before = tokenizer.tokenize_with_weights(prefix)
    after = tokenizer.tokenize_with_weights(f"{prefix} {word}".strip())
    spans = {}
    for key, chunks in after.items():
        if not isinstance(chunks, list):
            continue
        if len(before[key]) > 1:
            raise ConceptError(f"the text before the word {word!r} ({prefix[:40]!r}...) is longer than one "
                               "77-token chunk; put '{}' within the first 75 tokens")
        a, b = [t[0] for t in before[key][0]], [t[0] for t in chunks[0]]
        # A token may be an embedding tensor (a trigger on a patched CLIP): never equal to anything.
        start = next((i for i, (x, y) in enumerate(zip(a, b)) if not (isinstance(x, int) and x == y)), None)
        if start is None:
            raise ConceptError(f"the word {word!r} adds no token to the prompt")
        end_token = a[start]
        end = next((i for i in range(start, len(b)) if isinstance(b[i], int) and b[i] == end_token), None)
        if end is None or end == start:
            raise ConceptError(f"the word {word!r} does not fit in the first 77-token chunk after "
                               f"{prefix[:40]!r}...; put '{{}}' within the first 75 tokens")
        spans[key] = (start, b[start:end])
    return spans


def word_positions(tokenizer: Any, prefix: str, word: str) -> list[int]:
    """Indices (BOS counted) of ``word``'s tokens in the prompt ``prefix + ' ' + word + rest``,
    read on the "l" tokenizer where there is one (SDXL's two tokenizers place words alike)."""
    spans = word_tokens(tokenizer, prefix, word)
    start, ids = spans["l"] if "l" in spans else next(iter(spans.values()))
    return list(range(start, start + len(ids)))


def last_token_position(tokenizer: Any, prefix: str, word: str) -> int:
    """Index (BOS counted) of the last token of ``word`` after ``prefix`` (see word_positions)."""
    return word_positions(tokenizer, prefix, word)[-1]


def encode_word(clip: Any, template: str, word: str) -> torch.Tensor:
    """The encoding (D,) of ``word``'s last token in ``template`` (which contains '{}')."""
    problem = slot_problem(template, "prompt template", "where the word goes")
    if problem:
        raise ConceptError(problem)
    pos = last_token_position(clip.tokenizer, text_before_slot(template), word)
    # replace, not format: other braces in the template are plain text, not format fields
    cond = clip.encode_from_tokens(clip.tokenize(template.replace(SLOT, word)))
    return cond[0, pos].detach().float().cpu()
