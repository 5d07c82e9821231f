"""The family table and the lock-mode table are consistent in themselves (the host tests check
the families against ComfyUI's classes, tests/host/test_families.py)."""

from __future__ import annotations

import pytest

from perfusion_core.concept import ConceptError, Gate
from perfusion_core.families import FAMILIES, MODEL_FAMILIES, family, family_of_tokenizer_keys, label, supported_labels
from perfusion_core.lock_modes import DEFAULT_LOCK_MODE, LOCK_MODE_TABLE, LOCK_MODES, lock_mode


def test_each_family_is_found_by_name_and_by_its_text_encoders() -> None:
    assert len({f.name for f in MODEL_FAMILIES}) == len(MODEL_FAMILIES) == len(FAMILIES)
    for spec in MODEL_FAMILIES:
        assert family(spec.name) is spec and label(spec.name) == spec.label
        assert family_of_tokenizer_keys(reversed(spec.tokenizer_keys)) is spec
        assert spec.context_dim > 0 and all(width > 0 for width in spec.embedding_widths.values())
    assert supported_labels() == "SD1.x, SD2.x and SDXL"
    assert family_of_tokenizer_keys({"t5xxl"}) is None


def test_an_unknown_family_is_refused_by_name() -> None:
    with pytest.raises(ConceptError, match=r"unknown base family 'sd3' \(known: sd1, sd2, sdxl\)"):
        family("sd3")
    assert label("sd3") == "sd3"


def test_no_two_families_share_text_encoders() -> None:
    keys = [spec.tokenizer_keys for spec in MODEL_FAMILIES]
    assert len(set(keys)) == len(keys)  # else a CLIP's family would be ambiguous


def test_each_lock_mode_asks_for_what_it_uses() -> None:
    assert LOCK_MODES == tuple(m.name for m in LOCK_MODE_TABLE) and DEFAULT_LOCK_MODE in LOCK_MODES
    for mode in LOCK_MODE_TABLE:
        assert lock_mode(mode.name) is mode
        # Reading or blending towards the superclass prompt needs the CLIP side to encode it.
        assert mode.superclass_prompt == (mode.k_reads_superclass_prompt or mode.blends_superclass_keys)
        # A lock mode locks the keys somehow: by the rank-1 edit or by blending.
        assert mode.rank1_key_edit or mode.blends_superclass_keys
        assert Gate(lock=mode.name).lock == mode.name
    with pytest.raises(KeyError, match="unknown lock mode 'loose'"):
        lock_mode("loose")
    with pytest.raises(ConceptError, match="lock mode"):
        Gate(lock="loose")
