"""Bad input, round two (issue 18): the pure checks behind each refused class."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from perfusion_core import concept_file as cf
from perfusion_core.concept import ConceptError
from perfusion_core.concept_checks import concept_problem
from perfusion_core.concept_file import load_concept, save_concept
from perfusion_core.trigger_words import trigger_problem, words_match
from perfusion_core.edit import MAX_DIRECTION_COSINE, joint_directions, parallel_pairs

from test_concept_file import good_parts, make_concept


# ----------------------------------------------------------------------------- triggers

@pytest.mark.parametrize("a, b", [("sam", "ſam"), ("SAM", "ſam"), ("οδός", "ΟΔΌΣ"), ("οδόσ", "οδός"),
                                  ("İstanbul", "istanbul"), ("Cat", "cAT")])
def test_words_match_uses_the_prompt_matchers_case_folding(a: str, b: str) -> None:
    """Exactly the pairs where str.lower() disagrees with the trigger pattern (or agrees)."""
    assert words_match(a, b) and words_match(b, a)


@pytest.mark.parametrize("a, b", [("cat", "cats"), ("cat", "dog"), ("sam", "sa")])
def test_words_match_refuses_other_words(a: str, b: str) -> None:
    assert not words_match(a, b)


@pytest.mark.parametrize("word", ["a", "The", "OF", "and"])
def test_stop_word_trigger_is_refused(word: str) -> None:
    problem = trigger_problem(word, "trigger_word")
    assert problem is not None and "common word" in problem and repr(word) in problem


def test_rare_trigger_is_accepted() -> None:
    assert trigger_problem("zorbix") is None


def test_stop_word_trigger_in_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConceptError, match=r"^s\.safetensors: cannot save concept: trigger 'the' is a common word"):
        save_concept(make_concept().with_trigger("the"), tmp_path / "s.safetensors")


# ----------------------------------------------------------------------------- duplicates

def test_same_direction_twice_is_refused_before_the_solve_not_singular() -> None:
    c = make_concept()
    i_stars, us = torch.stack([c.i_star, c.i_star]), torch.stack([c.u, c.u])
    with pytest.raises(ValueError, match=r"concepts 0 and 1 have nearly the same input direction"):
        joint_directions(i_stars, us)


def test_near_duplicate_directions_are_found_and_distinct_ones_are_not() -> None:
    a, b = make_concept(seed=0), make_concept(seed=1)
    near = a.i_star * (1 + 1e-3 * torch.randn(a.i_star.shape, generator=torch.Generator().manual_seed(3)))
    pairs = parallel_pairs(torch.stack([a.i_star, near, b.i_star]), torch.stack([a.u, a.u, b.u]))
    assert [(m, n) for m, n, _ in pairs] == [(0, 1)]
    assert pairs[0][2] > MAX_DIRECTION_COSINE
    joint_directions(torch.stack([a.i_star, b.i_star]), torch.stack([a.u, b.u]))  # distinct: fine


# ----------------------------------------------------------------------------- reading files

def test_deeply_nested_header_json_names_the_file(tmp_path: Path) -> None:
    body = b"[" * 100_000 + b"]" * 100_000  # inside the 256 KiB header limit
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(ConceptError, match=r"^deep\.safetensors: .*nested too deeply"):
        load_concept(path)


def test_deeply_nested_metadata_names_the_file(tmp_path: Path) -> None:
    tensors, meta = good_parts()
    text = json.dumps(meta).replace('"training": {', '"training": {"x": ' + "[" * 30_000 + "]" * 30_000 + ", ", 1)
    path = tmp_path / "deepmeta.safetensors"
    path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"perfusion": text}))
    with pytest.raises(ConceptError, match=r"^deepmeta\.safetensors: 'perfusion' metadata is nested too deeply"):
        load_concept(path)


def test_moderately_nested_training_info_is_bounded(tmp_path: Path) -> None:
    tensors, meta = good_parts()
    nested: object = 1
    for _ in range(40):
        nested = [nested]
    meta["training"]["x"] = nested
    path = tmp_path / "nested.safetensors"
    path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"perfusion": json.dumps(meta)}))
    with pytest.raises(ConceptError, match=r"metadata field 'training' is nested 41 levels deep \(at most 16\)"):
        load_concept(path)


def test_link_to_a_kernel_pseudo_file_is_refused_without_reading(tmp_path: Path) -> None:
    link = tmp_path / "proc.safetensors"
    link.symlink_to("/proc/self/environ")
    with pytest.raises(ConceptError, match=r"^proc\.safetensors: not a safetensors file: only 0 bytes$"):
        load_concept(link)


def test_link_to_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "dev.safetensors"
    link.symlink_to("/dev/zero")
    with pytest.raises(ConceptError, match=r"^dev\.safetensors: not a file"):
        load_concept(link)


def test_unreadable_file_gives_a_reason_not_a_bare_oserror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.safetensors"
    path.write_bytes(b"x" * 100)
    # The refusal the OS gives a user without read permission (made here for every user: root,
    # who runs CI, may read any file, so chmod alone would not refuse it).
    real_open = Path.open

    def refuse(self: Path, *args, **kwargs):
        if self.name == path.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ConceptError, match=r"^locked\.safetensors: cannot be read \(Permission denied\)$"):
        load_concept(path)


@pytest.mark.parametrize("secret", [b"root:x:0:0:root:/root:/bin/bash\n", b"ab\0\0\0\0\0\0" + b"z" * 40])
def test_foreign_file_bytes_never_appear_in_the_message(tmp_path: Path, secret: bytes) -> None:
    """The length field is the first 8 bytes: as a number it would spell them out."""
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(secret)
    with pytest.raises(ConceptError) as err:
        load_concept(path)
    text = str(err.value)
    (as_number,) = struct.unpack("<Q", secret[:8])
    assert str(as_number) not in text and "root" not in text, text


def test_non_utf8_header_does_not_quote_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "bin.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xfe\xed\xfa\xce" + b"\0" * 8)
    with pytest.raises(ConceptError) as err:
        load_concept(path)
    assert "0xfe" not in str(err.value) and "header is not UTF-8 text" in str(err.value)


# ----------------------------------------------------------------------------- value bounds

def _with(**tensors: torch.Tensor):
    return dataclasses.replace(make_concept(), **tensors)


def _nearly_orthogonal(i_star: torch.Tensor, cosine: float) -> torch.Tensor:
    """A u with u.i* > 0 but only ``cosine`` of |u||i*| (built in float64, well above float32 rounding)."""
    i = i_star.double() / i_star.double().norm()
    w = torch.randn(i.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = w - (w @ i) * i
    w = w / w.norm()
    return (w + cosine * i).float()


def test_bounds_refuse_what_renders_black_or_noise() -> None:
    c = make_concept()
    cases = {
        "subnormal u": (_with(u=c.u * 1e-38), "tensor 'u' has norm"),
        "i* near float32 max": (_with(i_star=c.i_star * 1e37, u=c.u * 1e-37), "tensor 'i_star' has values up to"),
        "u nearly orthogonal to i*": (_with(u=_nearly_orthogonal(c.i_star, 1e-7)), "of |u||i*|"),
        "value target at fp16 max": (_with(v_targets={k: v * 0 + 6e4 for k, v in c.v_targets.items()}),
                                     "has values up to 6e+04 (at most 1000"),
        "embedding at fp16 max": (_with(embeddings={"l": c.embeddings["l"] * 0 + 6e4}), "tensor 'embedding.l'"),
        "strength 1e6": (c.with_gate(strength=1e6), "gate strength is 1e+06; must be in [0, 2]"),
        "beta 1e30": (c.with_gate(beta=1e30), "gate beta is 1e+30; must be in [0, 2]"),
    }
    for name, (concept, message) in cases.items():
        problem = concept_problem(concept)
        assert problem is not None and message in problem, (name, problem)


def test_bounds_accept_a_normal_concept_and_the_edges() -> None:
    c = make_concept()
    assert concept_problem(c) is None
    assert concept_problem(_with(v_targets={k: v.clamp(-1, 1) * 1e3 for k, v in c.v_targets.items()})) is None
    assert concept_problem(c.with_gate(beta=2.0, strength=2.0, tau=1.0)) is None


@pytest.mark.parametrize("field, value", [("strength", -0.5), ("strength", 1e6), ("beta", 1e30), ("tau", 5.0)])
def test_stored_gate_defaults_are_range_checked_like_conceptgate(tmp_path: Path, field: str, value: float) -> None:
    tensors, meta = good_parts()
    meta["defaults"][field] = value
    path = tmp_path / "gate.safetensors"
    path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"perfusion": json.dumps(meta)}))
    with pytest.raises(ConceptError, match=rf"^gate\.safetensors: default gate {field} is .*; must be in \[0, "):
        load_concept(path)


def test_save_error_from_a_nul_name_is_a_concept_error(tmp_path: Path) -> None:
    with pytest.raises(ConceptError, match="could not write the file"):
        cf._write_atomic(tmp_path / "a\0b.safetensors", b"data", overwrite=False)
    assert list(tmp_path.iterdir()) == []
