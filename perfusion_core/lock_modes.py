"""Key-lock modes (docs/method.md §3): each is one small record of what it asks of the pack.

A mode says what the CLIP side must emit and what the K projection's hook
does; ``nodes/clip_patch.py`` and ``nodes/model_patch.py`` read these flags and
never compare mode names. A new mode that combines these behaviours is one
more entry in ``LOCK_MODE_TABLE`` (plus tests); a mode that needs a new
behaviour adds a flag here and the code that honours it there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LockMode:
    """What one key-lock mode needs.

    superclass_prompt   the CLIP also encodes the prompt with the trigger replaced by the superclass
                        word, and ships that encoding to the UNet beside the conditioning
    k_reads_superclass_prompt  to_k projects that encoding instead of the prompt (an attn2 patch
                        swaps the K input while the concept acts)
    rank1_key_edit      the K hook makes the gated rank-1 edit that maps i* to W_K i_super
    blends_superclass_keys  the K hook moves each token's key towards the superclass prompt's key
                        at the same position, by the concept's gate (an attn2 patch records that
                        encoding for the hook)
    """

    name: str
    summary: str
    superclass_prompt: bool
    k_reads_superclass_prompt: bool
    rank1_key_edit: bool
    blends_superclass_keys: bool


LOCK_MODE_TABLE: tuple[LockMode, ...] = (
    LockMode("local", "the trigger's keys are locked to the superclass word's keys",
             superclass_prompt=False, k_reads_superclass_prompt=False, rank1_key_edit=True,
             blends_superclass_keys=False),
    LockMode("global", "the whole prompt's keys come from the prompt with the superclass word in the trigger's place "
             "(richer scenes, more variation; use a lower beta)",
             superclass_prompt=True, k_reads_superclass_prompt=True, rank1_key_edit=True,
             blends_superclass_keys=False),
    LockMode("context", "only the trigger's keys come from that prompt, so they are the superclass word's keys "
             "in this very sentence (its place among other objects included; one more text-encoder pass)",
             superclass_prompt=True, k_reads_superclass_prompt=False, rank1_key_edit=False,
             blends_superclass_keys=True),
)
LOCK_MODE_BY_NAME: dict[str, LockMode] = {m.name: m for m in LOCK_MODE_TABLE}
LOCK_MODES: tuple[str, ...] = tuple(m.name for m in LOCK_MODE_TABLE)  # the names a gate may store
DEFAULT_LOCK_MODE = "local"


def lock_mode(name: str) -> LockMode:
    """The mode called ``name`` (a KeyError naming the known ones otherwise; gates validate first)."""
    try:
        return LOCK_MODE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown lock mode {name!r} (known: {', '.join(LOCK_MODES)})") from None
