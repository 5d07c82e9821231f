"""Reading single token encodings out of a ComfyUI CLIP."""

from __future__ import annotations

from typing import Any

import torch

from perfusion_core.concept import ConceptError


def _ids(tokenizer: Any, text: str) -> list:
    tokens = tokenizer.tokenize_with_weights(text)
    key = "l" if "l" in tokens else next(iter(tokens))
    return [t[0] for t in tokens[key][0]]


def word_positions(tokenizer: Any, prefix: str, word: str) -> list[int]:
    """Indices (BOS counted) of ``word``'s tokens in the prompt ``prefix + ' ' + word + rest``.

    Found by diffing the tokenization of the prefix alone against prefix + word,
    so it holds for any tokenizer layout, multi-token words included.
    """
    a, b = _ids(tokenizer, prefix), _ids(tokenizer, f"{prefix} {word}".strip())
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if not (isinstance(x, int) and x == y)), None)
    if start is None:
        raise ConceptError(f"the word {word!r} adds no token to the prompt")
    end_token = a[start]
    end = next((i for i in range(start, len(b)) if isinstance(b[i], int) and b[i] == end_token), None)
    if end is None or end == start:
        raise ConceptError(f"the word {word!r} does not fit in one 77-token chunk after {prefix!r}")
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
    cond = clip.encode_from_tokens(clip.tokenize(template.format(word)))
    return cond[0, pos].detach().float().cpu()
