"""Bad input, round two (issue 18), through the real nodes in the host (tiny random-weight models)."""

from __future__ import annotations

import os
import re

import pytest
import torch

from host_helpers import apply, encode, word_edit_of
from perfusion_core.concept import ConceptError
from perfusion_core.training import TrainingError


@pytest.fixture(scope="module")
def cat(pack, tiny_sd1):
    return word_edit_of(pack, *tiny_sd1)


@pytest.mark.parametrize("name, message", [
    ("a\0b", "contains control character U+0000"), ("two\nlines", "contains control character U+000A"),
    ("sub\\x", "contains a backslash"), ("training\\x", "contains a backslash"), ("../x", "plain file name"),
    ("é" * 120, "bytes long in UTF-8"),
])
def test_training_output_name_is_refused_before_any_work(pack, name: str, message: str) -> None:
    """Refused by the input check: the model, images and CLIP are never touched (None here)."""
    with pytest.raises(TrainingError, match=r"^TrainPerfusion: .*" + re.escape(message)):
        pack.nodes.nodes_train.train_perfusion(None, None, None, None, "zorbix", "teddy", 2, 1, 1, 0.03, 0.006, 0.75, 0.1, 0, 64, 1, False,
                   "none", 0, name, 100)


@pytest.mark.parametrize("prefix, message", [
    ("a\0b", "control character U+0000"), ("x\ny", "control character U+000A"),
    ("training\\fake", "contains a backslash"), ("statistics/x", "reserved"), ("ok/.hidden", "hidden"),
])
def test_save_node_refuses_bad_names_and_writes_nothing(pack, cat, perfusion_folder, prefix: str, message: str) -> None:
    before = sorted(os.listdir(perfusion_folder))
    with pytest.raises(ConceptError, match=r"^SavePerfusionConcept: .*" + re.escape(message)):
        pack.nodes.nodes_concept.save_concept_file(cat, prefix)
    assert sorted(os.listdir(perfusion_folder)) == before


def test_same_concept_twice_is_refused_naming_both(pack, tiny_sd1, cat) -> None:
    model, clip = tiny_sd1
    m1, c1 = apply(pack, model, clip, cat)
    with pytest.raises(ConceptError, match=r"concept 'kitty' and concept 'cat' applied upstream have nearly the "
                                           r"same input direction"):
        apply(pack, m1, c1, cat.with_gate(beta=0.4), trigger_word="kitty")
    near = cat.with_trigger("kitty")
    import dataclasses
    near = dataclasses.replace(near, i_star=cat.i_star * (1 + 1e-3 * torch.randn(cat.i_star.shape,
                                                                                 generator=torch.Generator().manual_seed(0))))
    with pytest.raises(ConceptError, match=r"nearly the same input direction"):
        apply(pack, m1, c1, near)


def test_shared_trigger_is_refused(pack, tiny_sd1, cat) -> None:
    model, clip = tiny_sd1
    chair = word_edit_of(pack, model, clip, "chair", "table")
    m1, c1 = apply(pack, model, clip, cat)
    with pytest.raises(ConceptError, match=r"has the same trigger as concept 'cat' applied upstream"):
        apply(pack, m1, c1, chair, trigger_word="CAT")


@pytest.mark.parametrize("trigger, prompt", [("ſks", "a photo of a SKS"), ("οδός", "a photo of ΟΔΌΣ"),
                                             ("İx", "a photo of ix")])
def test_unicode_case_folding_triggers_encode(pack, tiny_sd1, cat, trigger: str, prompt: str) -> None:
    """str.lower() disagrees with the matcher for these: the tokenizer used to raise a bare KeyError."""
    model, clip = tiny_sd1
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    emb = {"l": table[320].detach().float().clone()}
    import dataclasses
    _, pclip = apply(pack, model, clip, dataclasses.replace(cat, trigger=trigger, embeddings=emb).with_gate(strength=0.0))
    tokens = pclip.tokenize(prompt)
    assert any(isinstance(t[0], torch.Tensor) for t in tokens["l"][0]), "the trigger got its embedding"


def test_embedding_syntax_on_a_trigger_is_refused(pack, tiny_sd1, cat) -> None:
    model, clip = tiny_sd1
    _, pclip = apply(pack, model, clip, cat)
    with pytest.raises(ConceptError, match=r"writes 'embedding:cat', but 'cat' is a Perfusion trigger"):
        encode(pclip, "a photo of embedding:cat")


def test_clip_layer_minus_one_is_the_default_layer_of_sd1(pack, tiny_sd1, cat) -> None:
    model, clip = tiny_sd1
    last = clip.clone()
    last.clip_layer(-1)
    apply(pack, model, last, cat)  # accepted: encodes exactly as the default layer
    other = clip.clone()
    other.clip_layer(-2)
    with pytest.raises(ConceptError, match=r"made with CLIP the default layer but this CLIP uses layer -2"):
        apply(pack, model, other, cat)


@pytest.mark.parametrize("trigger, template, message", [
    ("a", "a photo of a {}", "is a common word"),
    ("housecat", "a photo of a {}", "trigger_word 'housecat' is 2 tokens"),
    ("cat", "a photo of a ({}:1.2)", "prompt-syntax character '('"),
    ("cat", "a photo of embedding:{}", "contains 'embedding:'"),
    ("cat", "word " * 80 + "{}", "longer than one 77-token chunk"),
])
def test_word_edit_inputs_fail_clearly(pack, tiny_sd1, trigger: str, template: str, message: str) -> None:
    model, clip = tiny_sd1
    with pytest.raises(ConceptError, match=r"^PerfusionWordEdit: .*" + re.escape(message)):
        pack.nodes.nodes_word_edit.word_edit(model, clip, trigger, "dog", template, 0)


def test_concept_file_replaced_with_same_size_and_mtime_is_noticed(pack, cat, perfusion_folder) -> None:
    node = pack.nodes.nodes_concept
    path = os.path.join(perfusion_folder, "same_stat.safetensors")
    from perfusion_core.concept_file import save_concept
    save_concept(cat, path)
    st = os.stat(path)
    first = node.LoadPerfusionConcept.fingerprint_inputs("same_stat.safetensors")
    other = os.path.join(perfusion_folder, "same_stat_other.safetensors")
    save_concept(cat.with_gate(beta=0.3), other)
    assert os.path.getsize(other) == st.st_size
    os.replace(other, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert node.LoadPerfusionConcept.fingerprint_inputs("same_stat.safetensors") != first


def test_combo_values_are_checked_before_anything_runs(pack, cat, perfusion_folder) -> None:
    """V3 combos are not checked by ComfyUI 0.3.75 itself: each node's validate_inputs refuses a value
    it does not offer, in the host's words, and the loader refuses a name outside its list."""
    nodes = pack.nodes
    assert nodes.nodes_concept.ConceptGate.validate_inputs(lock_mode="local") is True
    assert nodes.nodes_concept.ConceptGate.validate_inputs() is True  # linked: checked when it runs
    assert nodes.nodes_concept.ConceptGate.validate_inputs(lock_mode="both").startswith(
        "Value not in list: lock_mode: 'both' not in ['concept default', 'local', 'global', 'context']")
    problem = nodes.nodes_train.TrainPerfusion.validate_inputs(mask_source="bogus", resume_from="training/nope")
    assert "mask_source: 'bogus'" in problem and "resume_from: 'training/nope'" in problem
    assert nodes.nodes_train.TrainPerfusion.validate_inputs(mask_source="none", what_to_train=nodes.nodes_train.TRAIN_PERFUSION,
                                                            resume_from="none") is True
    name = os.path.basename(nodes.nodes_concept.save_concept_file(cat, "listed"))
    assert nodes.nodes_concept.LoadPerfusionConcept.validate_inputs(concept_name=name) is True
    outside = "../checkpoints/model.safetensors"
    assert "concept_name: '../checkpoints/" in nodes.nodes_concept.LoadPerfusionConcept.validate_inputs(concept_name=outside)
    with pytest.raises(ConceptError, match=r"^LoadPerfusionConcept: Value not in list: concept_name: '\.\./checkpoints/"):
        nodes.nodes_concept.load_concept_file(outside)
