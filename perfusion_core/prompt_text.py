"""Text users write around a trigger: caption files and lines, prompts with the
trigger's '{}' slot, and the trigger as a whole word of a prompt."""

from __future__ import annotations

import os
import re
from pathlib import Path


class CaptionFileError(ValueError):
    """A caption file is unusable; the message names the file and says why."""


def caption_lines(text: str) -> list[tuple[int, str]]:
    """(line number, caption) for every line of ``text`` that holds one: runs of whitespace collapse
    to one space; blank lines and lines starting with '#' are skipped."""
    lines = ((n, " ".join(line.split())) for n, line in enumerate(text.splitlines(), 1))
    return [(n, c) for n, c in lines if c and not c.startswith("#")]


def read_caption_file(path: str | os.PathLike[str]) -> list[str]:
    """Captions from a UTF-8 text file: one per line; blank lines and lines
    starting with '#' are skipped; runs of whitespace collapse to one space."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CaptionFileError(f"caption file '{p}' does not exist") from None
    except IsADirectoryError:
        raise CaptionFileError(f"caption file '{p}' is a directory, not a text file") from None
    except OSError as exc:
        raise CaptionFileError(f"caption file '{p}' cannot be read: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise CaptionFileError(f"caption file '{p}' looks binary (it contains NUL bytes; "
                               f"UTF-16 text does too): save it as UTF-8 text, one caption per line")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaptionFileError(f"caption file '{p}' is not UTF-8 text (invalid byte at offset "
                               f"{exc.start}): save it as UTF-8, one caption per line") from None
    captions = [c for _, c in caption_lines(text)]
    if not captions:
        raise CaptionFileError(f"caption file '{p}' contains no captions "
                               f"(only blank lines or '#' comments)")
    return captions


# ---------------------------------------------------------------- the trigger in a prompt
SLOT = "{}"  # where a prompt template or caption puts the trigger (or the word being encoded)


def slot_problem(text: str, what: str, role: str = "the trigger's place") -> str | None:
    """Why ``text`` cannot serve as a prompt with one place for the word, or None.

    Exactly one '{}': with none the word never appears, and with two its token
    positions (and so the encoding read out at them) would be ambiguous.
    """
    if text.count(SLOT) == 1:
        return None
    return f"{what} must contain '{{}}' exactly once ({role}), got {text!r}"


def trigger_pattern(trigger: str) -> re.Pattern[str]:
    """The trigger as a whole word, case-insensitive (CLIP lowercases anyway).

    Which spellings count as the trigger is decided by this pattern alone (Unicode simple case
    folding: 'ſ' and 'S' match 's', 'Σ' matches 'ς' and 'σ'); nothing else compares triggers with
    str.lower(), whose answer differs for such letters.
    """
    return re.compile(r"(?<![\w])" + re.escape(trigger.strip()) + r"(?![\w])", re.IGNORECASE)


def text_before_slot(template: str) -> str:
    """The text in front of the template's '{}', trailing spaces dropped: the prefix after
    which the word's tokens are found (the word is tokenized as ``prefix + ' ' + word``)."""
    return template.split(SLOT)[0].rstrip()
