"""Every model family in the pack's family table, through apply and one training step.

The table (``perfusion_core/families.py``) is the one place that says what a
family is; this test checks each entry against the real ComfyUI classes of that
family (tiny random-weight models: real widths, tokenizers and key layouts)
and runs what a user runs on it: a word edit applied and sampled, and one
TrainPerfusion step with gradient checkpointing (the family's block layout).
"""

from __future__ import annotations

import pytest
import torch

from harness import random_models
from host_helpers import STATS_CAPTIONS, apply, encode, ksample, word_edit_of
from perfusion_core.families import MODEL_FAMILIES, ModelFamily
from test_train import RESOLUTION, load_images


@pytest.mark.parametrize("spec", MODEL_FAMILIES, ids=lambda spec: spec.name)
def test_family_table_matches_the_host_and_the_family_applies_and_trains(pack, request, spec: ModelFamily) -> None:
    model, clip = request.getfixturevalue(f"tiny_{spec.name}")  # conftest builds each family's tiny pipeline
    host_model = pack.nodes.host_model
    assert host_model.model_family(model) == spec.name
    assert host_model.family_of_clip(clip) == spec.name
    assert host_model.context_dim(model) == spec.context_dim
    assert host_model.text_encoder_id(clip).name == spec.encoder_id
    assert pack.nodes.clip_patch.embedding_sizes(clip.tokenizer) == spec.embedding_widths

    layers = host_model.cross_attention_layers(model)
    concept = word_edit_of(pack, model, clip)
    patched, patched_clip = apply(pack, model, clip, concept)
    hooked = {name for name in patched.object_patches
              if type(patched.object_patches[name]).__name__ == "ProjectionHook"}
    assert hooked == {f"diffusion_model.{layer}.{projection}.forward" for layer in layers
                      for projection in (spec.key_projection, spec.value_projection)}
    prompt = "a photo of a cat"
    base = ksample(model, encode(clip, prompt), encode(clip, ""))
    edited = ksample(patched, encode(patched_clip, prompt), encode(patched_clip, ""))
    assert torch.isfinite(edited).all() and not torch.allclose(base, edited)

    vae = random_models.build_vae(spec.name)
    with torch.inference_mode():  # as ComfyUI runs a node
        trained = pack.nodes.nodes_train.train_perfusion(
            model, clip, vae, images=load_images()[:2], trigger_word="zorb", superclass="teddy", steps=1,
            batch_size=1, grad_accumulation=1, lr_values=0.03, lr_embedding=0.006, train_beta=0.75, train_tau=0.1,
            seed=0, resolution=RESOLUTION, timestep_sets=1, gradient_checkpointing=True, mask_source="none",
            checkpoint_every=0, output_name=f"family_{spec.name}", statistics_captions=STATS_CAPTIONS,
            preview_every=0)["result"][0]
    assert trained.family == spec.name and trained.training["steps"] == 1
    assert {key: int(t.shape[0]) for key, t in trained.embeddings.items()} == spec.embedding_widths
    assert trained.layer_dims == layers
    assert trained.context_dim == spec.context_dim
