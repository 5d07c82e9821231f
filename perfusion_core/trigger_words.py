"""Words a concept puts into prompts (its trigger and superclass): what ComfyUI's prompt parser
keeps as one plain word, and when two spellings are the same word to it."""

from __future__ import annotations

import re
import unicodedata

MAX_WORD_CHARS = 64
# Prompt-syntax characters (weights, escapes, embedding:, wildcards, separators).
_PROMPT_SYNTAX = set("()[]{}:,\\|\"")


def word_problem(word: object, what: str = "trigger", allow_spaces: bool = False) -> str | None:
    """Why ``word`` cannot be used inside a prompt, or None if it can.

    A trigger must survive ComfyUI's prompt parser as one plain word: no
    whitespace, no control characters, none of the weighting/escape/embedding
    syntax characters, and at least one letter or digit.
    """
    if not isinstance(word, str):
        return f"{what} must be a string, got {type(word).__name__}"
    if not word.strip():
        return f"{what} is empty or only whitespace"
    if len(word) > MAX_WORD_CHARS:
        return f"{what} is {len(word)} characters long (at most {MAX_WORD_CHARS})"
    if word != word.strip():
        return f"{what} {word!r} has leading or trailing whitespace"
    for ch in word:
        if ch.isspace() and not (allow_spaces and ch == " "):
            return f"{what} {word!r} cannot be a prompt word: it contains whitespace"
        if unicodedata.category(ch).startswith("C"):
            return f"{what} {word!r} cannot be a prompt word: it contains control character U+{ord(ch):04X}"
        if ch in _PROMPT_SYNTAX:
            return f"{what} {word!r} cannot be a prompt word: it contains prompt-syntax character {ch!r}"
    if not any(ch.isalnum() for ch in word):
        return f"{what} {word!r} cannot be a prompt word: it has no letter or digit"
    return None


# English function words that fill almost every prompt: a trigger among them would take over every
# article or preposition ("a" -> the concept in "a photo of a dog on a sofa"). Checked ignoring case.
STOP_WORDS = frozenset(
    "a an the of in on at to and or but with without for from by as is are be was this that these those "
    "it its his her their my your our some any no not into onto over under near".split())


def words_match(a: str, b: str) -> bool:
    """Whether a prompt matcher would read one word as the other: equal under Unicode simple case
    folding, the rule of the trigger pattern (re.IGNORECASE). str.lower() differs for letters such
    as 'ſ' (long s), final sigma or the Turkish dotted capital I, so it is never used to compare."""
    a, b = a.strip(), b.strip()
    return bool(re.fullmatch(re.escape(a), b, re.IGNORECASE) or re.fullmatch(re.escape(b), a, re.IGNORECASE))


def trigger_problem(word: object, what: str = "trigger") -> str | None:
    """word_problem for a concept's trigger, which must also not be a stop word."""
    problem = word_problem(word, what)
    if problem is None and any(words_match(str(word), stop) for stop in STOP_WORDS):
        problem = (f"{what} {word!r} is a common word (it would take over every {word!r} in a prompt); "
                   "choose a rare word")
    return problem
