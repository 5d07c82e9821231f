"""Node ids and input names are a public contract: saved workflows reference them.

Adding nodes or inputs is fine; renaming or removing one breaks users' graphs, so
this list may only grow.
"""

from __future__ import annotations

import pytest

CONTRACT = {
    "LoadPerfusionConcept": ["concept_name"],
    "ConceptGate": ["concept", "beta", "tau", "strength", "start_percent", "end_percent", "lock_mode"],
    "ApplyKeyLockedEdit": ["model", "clip", "concept", "trigger_word"],
    "SavePerfusionConcept": ["concept", "filename_prefix"],
    "PerfusionWordEdit": ["model", "clip", "trigger_word", "target_word", "template", "statistics_captions"],
    "PerfusionLabelledGrid": ["images", "labels", "columns"],
    "TrainPerfusion": ["model", "clip", "vae", "images", "trigger_word", "superclass", "steps", "batch_size",
                       "grad_accumulation", "lr_values", "lr_embedding", "train_beta", "train_tau", "seed",
                       "resolution", "timestep_sets", "gradient_checkpointing", "mask_source", "checkpoint_every",
                       "output_name", "statistics_captions", "resume_from", "preview_every", "preview_prompt",
                       "mask"],
}


@pytest.mark.parametrize("node_id", sorted(CONTRACT))
def test_node_ids_and_inputs_are_stable(pack, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    names = [*spec.get("required", {}), *spec.get("optional", {})]
    missing = [n for n in CONTRACT[node_id] if n not in names]
    assert not missing, f"{node_id} lost inputs {missing}"
    assert getattr(cls, "CATEGORY", "") == "perfusion"


def test_every_input_has_a_tooltip_and_every_node_a_description(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert getattr(cls, "DESCRIPTION", ""), node_id
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (_, *options) in spec.get(section, {}).items():
                assert options and options[0].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_load_reports_bad_and_missing_files(pack, perfusion_folder):
    import os

    from perfusion_core.concept import ConceptError

    bad = os.path.join(perfusion_folder, "garbage.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x80\x04this is a pickle, not a concept")
    node = pack.NODE_CLASS_MAPPINGS["LoadPerfusionConcept"]()
    with pytest.raises(ConceptError, match="garbage.safetensors"):
        node.load("garbage.safetensors")
    with pytest.raises(FileNotFoundError):
        node.load("no_such_concept.safetensors")
    os.remove(bad)


def test_statistics_cache_is_not_offered_as_a_concept(pack, perfusion_folder):
    import os

    os.makedirs(os.path.join(perfusion_folder, "statistics"), exist_ok=True)
    for name in ("statistics/x.safetensors", "mine.safetensors"):
        with open(os.path.join(perfusion_folder, name), "wb") as f:
            f.write(b"0")
    try:
        choices = pack.NODE_CLASS_MAPPINGS["LoadPerfusionConcept"].INPUT_TYPES()["required"]["concept_name"][0]
        assert "mine.safetensors" in choices and not any(c.startswith("statistics") for c in choices)
    finally:
        for name in ("statistics/x.safetensors", "mine.safetensors"):
            os.remove(os.path.join(perfusion_folder, name))
