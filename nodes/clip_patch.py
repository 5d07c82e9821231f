"""Gives a ComfyUI CLIP the concepts' trigger words (and the superclass prompt for key-locking).

- Trigger embedding: ``CLIP.clone()`` shares its tokenizer, so we never touch
  it; the clone gets a wrapper tokenizer. It swaps each trigger word for a
  sentinel word that is one token and absent from the prompt, tokenizes with
  the real tokenizer (weights, chunking and padding stay ComfyUI's), then puts
  the learned embedding tensor where the sentinel token landed. ComfyUI's
  encoder accepts tensors in place of token ids. No file is written.
- Global and context key-locking: the tokenizer also emits the prompt with
  each such trigger replaced by its superclass word, under an extra key that
  stock encoders ignore; an object patch on the CLIP patcher's
  ``encode_token_weights`` encodes it and attaches it to the conditioning as a
  model cond that reaches the UNet (see nodes/model_patch.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..perfusion_core.concept import Concept, ConceptError
from ..perfusion_core.trigger_words import words_match
from ..perfusion_core.lock_modes import lock_mode
from ..perfusion_core.prompt_text import trigger_pattern

from .encoding import word_tokens
from .model_patch import K_CONTEXT_COND

SUPERCLASS_TOKENS = "perfusion_superclass_tokens"
# Rare whole words that CLIP's BPE vocabulary (shared by CLIP-L, OpenCLIP-H and -G) holds as one
# token; the tokenizer at hand is asked again when a CLIP is patched. One is chosen per trigger and
# prompt among those the prompt's other words do not use. The sentinel's token is replaced by the
# trigger's learned embedding before the encoder runs, so its own meaning never reaches it: a
# sentinel only has to be one token and absent from the prompt. 18 of them: as many triggers in
# one prompt, fewer only if the prompt itself uses some of these words.
SENTINEL_CANDIDATES = ("sks", "ohwx", "nlwx", "nmwx", "wwx", "httr", "rcn", "hmv", "dbz", "pbc", "tvc", "gsp",
                       "mwf", "cwgc", "nwsl", "ncbd", "wftv", "kprc")
log = logging.getLogger(__name__)


def embedding_reference(pattern: re.Pattern, text: str) -> bool:
    """Whether ``text`` writes the trigger as ``embedding:<trigger>`` (ComfyUI's embedding-file syntax):
    the trigger's learned embedding lives on this CLIP, not in a file, so the loader would drop it."""
    return any(text[max(0, m.start() - len("embedding:")):m.start()].lower() == "embedding:"
               for m in pattern.finditer(text))


def token_ids(tokens: dict[str, list]) -> dict[str, set]:
    return {key: {t[0] for batch in batches for t in batch if isinstance(t[0], int)} for key, batches in tokens.items()
            if isinstance(batches, list)}


def single_token_id(tokenizer: Any, word: str) -> dict[str, int] | None:
    """Per tokenizer key, the id of ``word`` if it tokenizes to exactly one token, else None."""
    try:
        spans = word_tokens(tokenizer, "", word)
    except ConceptError:
        return None
    if any(len(ids) != 1 for _, ids in spans.values()):
        return None
    return {key: ids[0] for key, (_, ids) in spans.items()}


def embedding_sizes(tokenizer: Any) -> dict[str, int]:
    """Token-embedding width per tokenizer key ("l": 768, "g": 1280, "h": 1024)."""
    out = {}
    for key in tokenizer.tokenize_with_weights(""):
        sub = getattr(tokenizer, f"clip_{key}", None) or getattr(tokenizer, getattr(tokenizer, "clip", ""), None)
        size = getattr(sub, "embedding_size", None)
        if size is not None:
            out[key] = int(size)
    return out


@dataclass(frozen=True)
class TriggerEntry:
    trigger: str
    superclass: str
    embeddings: dict[str, torch.Tensor]
    superclass_prompt: bool  # global or context lock: the keys need the prompt with the superclass word

    @property
    def pattern(self) -> re.Pattern:
        return trigger_pattern(self.trigger)

    def matches(self, word: str) -> bool:
        return words_match(self.trigger, word)


class TriggerTokenizer:
    """Tokenizer wrapper: everything is delegated except tokenize_with_weights."""

    def __init__(self, base: Any, entries: list[TriggerEntry]) -> None:
        self.base = base
        self.entries = entries
        self._sentinels = [(w, ids) for w in SENTINEL_CANDIDATES if (ids := single_token_id(base, w)) is not None]

    def __getattr__(self, name: str) -> Any:  # only called for attributes we do not define
        return getattr(self.__dict__["base"], name)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict:
        for e in self.entries:  # word edits too: their edit needs the word itself in the prompt
            if embedding_reference(e.pattern, text):
                raise ConceptError(f"the prompt writes 'embedding:{e.trigger}', but '{e.trigger}' is a Perfusion "
                                   "trigger, not an embedding file; write the trigger as a plain word")
        tokens = self._embed(text, [e for e in self.entries if e.embeddings], return_word_ids, **kwargs)
        replaced = [e for e in self.entries if e.superclass_prompt and e.pattern.search(text)]
        if replaced:
            super_text = text
            for e in replaced:
                super_text = e.pattern.sub(e.superclass, super_text)
            local = [e for e in self.entries if e.embeddings and e not in replaced]
            tokens[SUPERCLASS_TOKENS] = self._embed(super_text, local, return_word_ids, **kwargs)
        return tokens

    def _embed(self, text: str, entries: list[TriggerEntry], return_word_ids: bool, **kwargs: Any) -> dict:
        present = [e for e in entries if e.pattern.search(text)]
        if not present:
            return self.base.tokenize_with_weights(text, return_word_ids, **kwargs)
        # A sentinel is free if the prompt's other words do not use it: the triggers themselves are
        # replaced, so a trigger that is a sentinel word ("sks") does not take one from the pool.
        rest = text
        for e in present:
            rest = e.pattern.sub(" ", rest)
        used = token_ids(self.base.tokenize_with_weights(rest, **kwargs))
        free = [(w, ids) for w, ids in self._sentinels if all(ids[k] not in used.get(k, ()) for k in ids)]
        if len(free) < len(present):
            raise ConceptError(f"prompt uses too many Perfusion triggers at once ({len(present)}); at most {len(free)}")
        # One pass over all triggers: substituting one after another could turn a trigger into a
        # sentinel word that the next substitution then takes for its own trigger. Each trigger is a
        # named group, so the match itself says whose it is (no lookup by a lowered spelling).
        word_of = {f"t{n}": w for n, (_, (w, _)) in enumerate(zip(present, free))}
        either = re.compile("|".join(f"(?P<t{n}>{e.pattern.pattern})" for n, e in enumerate(present)), re.IGNORECASE)
        text = either.sub(lambda m: word_of[m.lastgroup], text)
        swap: dict[tuple[str, int], torch.Tensor] = {}
        for entry, (_, ids) in zip(present, free):
            for key, tid in ids.items():
                swap[(key, tid)] = entry.embeddings[key]
        tokens = self.base.tokenize_with_weights(text, return_word_ids, **kwargs)
        for key, batches in tokens.items():
            for batch in batches:
                for i, tok in enumerate(batch):
                    emb = swap.get((key, tok[0])) if isinstance(tok[0], int) else None
                    if emb is not None:
                        batch[i] = (emb,) + tuple(tok[1:])
        return tokens


class SuperclassContextEncoder:
    """Object patch for ``encode_token_weights``: attaches the superclass prompt's encoding."""

    def __init__(self, base_encode: Callable) -> None:
        self.base_encode = base_encode

    def __call__(self, tokens: Any) -> tuple:
        import comfy.conds

        super_tokens = None
        if isinstance(tokens, dict) and SUPERCLASS_TOKENS in tokens:
            super_tokens = tokens[SUPERCLASS_TOKENS]
            tokens = {k: v for k, v in tokens.items() if k != SUPERCLASS_TOKENS}
        out = self.base_encode(tokens)
        cond = out[0]
        # A prompt without such a trigger (e.g. the negative) still gets a K
        # input equal to its own encoding, so cond and uncond batch together.
        k_cond = self.base_encode(super_tokens)[0] if super_tokens is not None else cond
        if k_cond.shape != cond.shape:
            log.warning("Perfusion: superclass prompt encodes to %s, prompt to %s; using local lock",
                        tuple(k_cond.shape), tuple(cond.shape))
            k_cond = cond
        extra = dict(out[2]) if len(out) > 2 else {}
        model_conds = dict(extra.get("model_conds", {}))
        model_conds[K_CONTEXT_COND] = comfy.conds.CONDCrossAttn(k_cond)
        extra["model_conds"] = model_conds
        return (out[0], out[1], extra)


def check_embeddings(concept: Concept, sizes: dict[str, int], source: str) -> None:
    """A trained concept must carry one embedding per text encoder, of the right width."""
    if not concept.embeddings:
        return
    for key, size in sizes.items():
        emb = concept.embeddings.get(key)
        if emb is None:
            raise ConceptError(f"{source}: concept '{concept.trigger}' has no embedding for text encoder '{key}' "
                               f"(it has {sorted(concept.embeddings)})")
        if emb.shape[-1] != size:
            raise ConceptError(f"{source}: concept '{concept.trigger}' embedding '{key}' has width {emb.shape[-1]}; "
                               f"this CLIP expects {size}")


def install(clip: Any, concepts: list[Concept], source: str) -> Any:
    """A clone of ``clip`` that knows the triggers of ``concepts`` (added to any it already knows)."""
    patched = clip.clone()
    base = patched.tokenizer
    previous: list[TriggerEntry] = []
    if isinstance(base, TriggerTokenizer):
        previous, base = base.entries, base.base
    sizes = embedding_sizes(base)
    entries = [e for e in previous if not any(words_match(e.trigger, c.trigger) for c in concepts)]
    for c in concepts:
        check_embeddings(c, sizes, source)
        needs_superclass_prompt = lock_mode(c.gate.lock).superclass_prompt
        entries.append(TriggerEntry(c.trigger, c.superclass, dict(c.embeddings), needs_superclass_prompt))
    patched.tokenizer = TriggerTokenizer(base, entries)
    if any(e.superclass_prompt for e in entries):
        current = patched.patcher.get_model_object("encode_token_weights")
        if not isinstance(current, SuperclassContextEncoder):
            patched.patcher.add_object_patch("encode_token_weights", SuperclassContextEncoder(current))
    return patched
