"""The trigger's place in a prompt: the '{}' slot rule and the whole-word trigger pattern."""

from __future__ import annotations

import pytest

from perfusion_core.prompt_text import slot_problem, text_before_slot, trigger_pattern


@pytest.mark.parametrize("text, ok", [
    ("a photo of a {}", True), ("{}", True), ("a {} with {braces} kept", True),
    ("no slot", False), ("a {} and a {}", False), ("a { } photo", False), ("", False),
])
def test_slot_must_appear_exactly_once(text: str, ok: bool) -> None:
    problem = slot_problem(text, "preview_prompt")
    if ok:
        assert problem is None
    else:
        assert problem == f"preview_prompt must contain '{{}}' exactly once (the trigger's place), got {text!r}"


def test_slot_problem_names_the_role_it_is_given() -> None:
    assert slot_problem("x", "template", "where the word goes") == \
        "template must contain '{}' exactly once (where the word goes), got 'x'"


def test_text_before_slot_drops_the_trailing_space() -> None:
    assert text_before_slot("a photo of a {} on the beach") == "a photo of a"
    assert text_before_slot("{} alone") == ""


@pytest.mark.parametrize("text, found", [
    ("a photo of sks", ["sks"]), ("SKS, Sks and sks.", ["SKS", "Sks", "sks"]), ("(sks:1.2)", ["sks"]),
    ("sksdog and dogsks", []), ("sks_dog", []), ("ſks", ["ſks"]),  # long s folds to s, as CLIP reads it
])
def test_trigger_pattern_matches_whole_words_in_any_case(text: str, found: list[str]) -> None:
    assert trigger_pattern(" sks ").findall(text) == found


def test_trigger_pattern_escapes_the_trigger() -> None:
    assert trigger_pattern("a.b").findall("a.b axb") == ["a.b"]
