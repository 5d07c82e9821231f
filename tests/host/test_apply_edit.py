"""ApplyKeyLockedEdit inside the real ComfyUI host (in-process, tiny random-weight models)."""

from __future__ import annotations

import pytest
import torch

from perfusion_core.concept import ConceptError


def sample(model, clip, prompt: str, seed: int = 0, steps: int = 1, negative: str | None = None) -> torch.Tensor:
    """One deterministic KSampler run (euler, cfg 1 unless a negative is given) on an 8x8 latent."""
    import nodes as comfy_nodes

    positive = comfy_nodes.CLIPTextEncode().encode(clip, prompt)[0]
    neg = comfy_nodes.CLIPTextEncode().encode(clip, negative or "")[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    cfg = 1.0 if negative is None else 5.0
    out = comfy_nodes.common_ksampler(model, seed, steps, cfg, "euler", "normal", positive, neg, latent, denoise=1.0)
    return out[0]["samples"].clone()


@pytest.fixture(scope="module")
def word_edit(pack, tiny_sd1):
    model, clip = tiny_sd1
    return pack.nodes.nodes_word_edit.PerfusionWordEdit().build(model, clip, "cat", "dog", "a photo of a {}")[0]


def apply(pack, model, clip, concept, **kw):
    return pack.nodes.nodes_apply.ApplyKeyLockedEdit().apply(model, clip, concept, **kw)


def test_hooks_every_cross_attention_projection(pack, tiny_sd1, word_edit):
    model, clip = tiny_sd1
    patched, _ = apply(pack, model, clip, word_edit)
    layers = pack.nodes.host_model.cross_attention_layers(model)
    hooks = [k for k, v in patched.object_patches.items() if isinstance(v, pack.nodes.model_patch.ProjectionHook)]
    assert sorted(hooks) == sorted(f"diffusion_model.{l}.to_{kind}.forward" for l in layers for kind in "kv")
    assert not model.object_patches, "the input MODEL must not be changed"
    assert "attn2" not in str(patched.model_options["transformer_options"].get("patches_replace", {}))


def test_clone_isolation_and_strength_zero(pack, tiny_sd1, word_edit):
    model, clip = tiny_sd1
    before = sample(model, clip, "a photo of a cat")
    patched, pclip = apply(pack, model, clip, word_edit)
    edited = sample(patched, pclip, "a photo of a cat")
    after = sample(model, clip, "a photo of a cat")
    assert torch.equal(before, after), "the unpatched model must give bit-identical output after the patched ran"
    assert not torch.allclose(edited, before)
    zero, zclip = apply(pack, model, clip, word_edit.with_gate(strength=0.0))
    assert torch.equal(sample(zero, zclip, "a photo of a cat"), before)


def test_key_of_trigger_equals_superclass_key(pack, tiny_sd1, word_edit):
    """Key-locking in the real model: to_k maps i* onto W_K i_super (tau -> 0 opens the gate fully)."""
    import comfy.model_management as mm

    model, clip = tiny_sd1
    sharp = word_edit.with_gate(tau=1e-4, beta=0.5)
    patched, _ = apply(pack, model, clip, sharp)
    mm.load_models_gpu([patched])
    layer = next(iter(pack.nodes.host_model.cross_attention_layers(model)))
    to_k = patched.model.diffusion_model.get_submodule(layer).to_k
    i_star, i_super = word_edit.i_star.reshape(1, 1, -1), word_edit.i_super.reshape(1, 1, -1)
    locked = to_k(i_star)
    plain = torch.nn.functional.linear(i_super, to_k.weight.float())
    torch.testing.assert_close(locked.float(), plain, rtol=1e-4, atol=1e-4)
    mm.load_models_gpu([model])  # unpatch again for the other tests


def test_two_concepts_form_one_joint_edit(pack, tiny_sd1, word_edit):
    model, clip = tiny_sd1
    other = pack.nodes.nodes_word_edit.PerfusionWordEdit().build(model, clip, "chair", "table", "a photo of a {}")[0]
    m1, c1 = apply(pack, model, clip, word_edit)
    m2, c2 = apply(pack, m1, c1, other)
    hooks = {id(v.runtime) for v in m2.object_patches.values() if isinstance(v, pack.nodes.model_patch.ProjectionHook)}
    assert len(hooks) == 1
    runtime = next(v.runtime for v in m2.object_patches.values() if isinstance(v, pack.nodes.model_patch.ProjectionHook))
    assert [c.trigger for c in runtime.concepts] == ["cat", "chair"]
    assert len(m2.get_wrappers("apply_model", "perfusion")) == 1
    # the first patched model still holds only its own concept
    first = next(v.runtime for v in m1.object_patches.values() if isinstance(v, pack.nodes.model_patch.ProjectionHook))
    assert [c.trigger for c in first.concepts] == ["cat"]
    assert torch.isfinite(sample(m2, c2, "a photo of a cat and a chair")).all()


def test_concept_for_another_family_is_rejected(pack, tiny_sd1, tiny_sdxl):
    model, clip = tiny_sd1
    xl_model, xl_clip = tiny_sdxl
    xl_concept = pack.nodes.nodes_word_edit.PerfusionWordEdit().build(xl_model, xl_clip, "cat", "dog", "a photo of a {}")[0]
    with pytest.raises(ConceptError, match="SDXL"):
        apply(pack, model, clip, xl_concept)


@pytest.mark.parametrize("fixture", ["tiny_sd2", "tiny_sdxl"])
def test_other_families_apply_and_sample(pack, request, fixture):
    model, clip = request.getfixturevalue(fixture)
    concept = pack.nodes.nodes_word_edit.PerfusionWordEdit().build(model, clip, "cat", "dog", "a photo of a {}")[0]
    patched, pclip = apply(pack, model, clip, concept)
    base = sample(model, clip, "a photo of a cat")
    edited = sample(patched, pclip, "a photo of a cat")
    assert torch.isfinite(edited).all() and not torch.allclose(base, edited)
