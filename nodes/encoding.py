"""Reading single token encodings out of a ComfyUI CLIP."""

from __future__ import annotations

from typing import Any

import torch

from ..perfusion_core.concept import ConceptError


# ComfyUI's prompt syntax that a template cannot carry: a weight or escape changes the word's
# encoding (or splits it from '{}'), and 'embedding:' makes the word an embedding file's name.
_TEMPLATE_SYNTAX = ("(", ")", "\\")


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot hold the word to encode, or None."""
    if template.count("{}") != 1:
        return f"template must contain '{{}}' exactly once (where the word goes), got {template!r}"
    bad = next((ch for ch in _TEMPLATE_SYNTAX if ch in template), None)
    if bad is not None:
        return (f"template {template!r} contains the prompt-syntax character {bad!r} (weights and escapes "
                "would change or split the word's encoding); write the template as plain text")
    if "embedding:" in template.lower():
        return (f"template {template!r} contains 'embedding:', which makes ComfyUI read a word as an embedding "
                "file; write the template as plain text")
    return None


def _chunks(tokenizer: Any, text: str) -> list[list]:
    tokens = tokenizer.tokenize_with_weights(text)
    key = "l" if "l" in tokens else next(iter(tokens))
    return [[t[0] for t in chunk] for chunk in tokens[key]]


def _ids(tokenizer: Any, text: str) -> list:
    return _chunks(tokenizer, text)[0]


def word_positions(tokenizer: Any, prefix: str, word: str) -> list[int]:
    """Indices (BOS counted) of ``word``'s tokens in the prompt ``prefix + ' ' + word + rest``.

    Found by diffing the tokenization of the prefix alone against prefix + word,
    so it holds for any tokenizer layout, multi-token words included.
    """
    if len(_chunks(tokenizer, prefix)) > 1:
        raise ConceptError(f"the text before the word {word!r} ({prefix[:40]!r}...) is longer than one 77-token "
                           "chunk; put '{}' within the first 75 tokens")
    a, b = _ids(tokenizer, prefix), _ids(tokenizer, f"{prefix} {word}".strip())
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if not (isinstance(x, int) and x == y)), None)
    if start is None:
        raise ConceptError(f"the word {word!r} adds no token to the prompt")
    end_token = a[start]
    end = next((i for i in range(start, len(b)) if isinstance(b[i], int) and b[i] == end_token), None)
    if end is None or end == start:
        raise ConceptError(f"the word {word!r} does not fit in the first 77-token chunk after {prefix[:40]!r}...; "
                           "put '{}' within the first 75 tokens")
    return list(range(start, end))


def last_token_position(tokenizer: Any, prefix: str, word: str) -> int:
    """Index (BOS counted) of the last token of ``word`` after ``prefix`` (see word_positions)."""
    return word_positions(tokenizer, prefix, word)[-1]


def encode_word(clip: Any, template: str, word: str) -> torch.Tensor:
    """The encoding (D,) of ``word``'s last token in ``template`` (which contains '{}')."""
    if template.count("{}") != 1:
        raise ConceptError(f"prompt template must contain exactly one '{{}}', got {template!r}")
    prefix = template.split("{}")[0].rstrip()
    pos = last_token_position(clip.tokenizer, prefix, word)
    # replace, not format: other braces in the template are plain text, not format fields
    cond = clip.encode_from_tokens(clip.tokenize(template.replace("{}", word)))
    return cond[0, pos].detach().float().cpu()
