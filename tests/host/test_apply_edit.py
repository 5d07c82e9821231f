"""ApplyKeyLockedEdit inside the real ComfyUI host (in-process, tiny random-weight models)."""

from __future__ import annotations

import pytest
import torch

from perfusion_core.concept import ConceptError
from host_helpers import apply, word_edit_of


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
    return word_edit_of(pack, *tiny_sd1)


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
    other = word_edit_of(pack, model, clip, "chair", "table")
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


def stand_in(pack, clip, concept, trigger: str, word: str):
    """``concept`` with ``trigger`` whose learned embedding is ``word``'s own token row, idle in the UNet:
    a prompt with the trigger must then encode exactly as the prompt with the word."""
    import dataclasses

    (token,) = pack.nodes.clip_patch.single_token_id(clip.tokenizer, word).values()
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    embedding = table[token].detach().float().clone()
    return dataclasses.replace(concept, trigger=trigger, embeddings={"l": embedding}).with_gate(strength=0.0)


def test_two_triggers_that_are_sentinel_words_each_get_their_own_embedding(pack, tiny_sd1, word_edit):
    """'sks' and 'zwx' are themselves the usual placeholder tokens: both in one prompt must still
    encode as their two learned embeddings, in either order ('dog' and 'table' stand in for them)."""
    import nodes as comfy_nodes

    model, clip = tiny_sd1
    _, c1 = apply(pack, model, clip, stand_in(pack, clip, word_edit, "sks", "dog"))
    _, c2 = apply(pack, model, c1, stand_in(pack, clip, word_edit, "zwx", "table"))
    encode = comfy_nodes.CLIPTextEncode().encode
    for prompt, plain in (("a sks and a zwx", "a dog and a table"), ("a zwx and a sks", "a table and a dog")):
        torch.testing.assert_close(encode(c2, prompt)[0][0][0], encode(clip, plain)[0][0][0], rtol=1e-5, atol=1e-5)


def test_four_triggers_fit_in_one_prompt_that_also_uses_the_usual_placeholder_words(pack, tiny_sd1, word_edit):
    """Every trigger in a prompt needs a free one-token sentinel; 'sks' and 'ohwx' typed as ordinary
    words take two. Four triggers beside them still each encode as their learned embedding, and
    every candidate sentinel is one token for the real tokenizer."""
    import nodes as comfy_nodes

    model, clip = tiny_sd1
    candidates = pack.nodes.clip_patch.SENTINEL_CANDIDATES
    assert all(pack.nodes.clip_patch.single_token_id(clip.tokenizer, w) is not None for w in candidates)
    patched = clip
    for trigger, word in {"zorb": "dog", "blick": "table", "mytoy": "car", "fren": "tree"}.items():
        _, patched = apply(pack, model, patched, stand_in(pack, clip, word_edit, trigger, word))
    encode = comfy_nodes.CLIPTextEncode().encode
    prompt, plain = "a zorb, a blick, a mytoy and a fren, sks ohwx", "a dog, a table, a car and a tree, sks ohwx"
    torch.testing.assert_close(encode(patched, prompt)[0][0][0], encode(clip, plain)[0][0][0], rtol=1e-5, atol=1e-5)


def test_concept_for_another_family_is_rejected(pack, tiny_sd1, tiny_sdxl):
    model, clip = tiny_sd1
    xl_model, xl_clip = tiny_sdxl
    xl_concept = word_edit_of(pack, xl_model, xl_clip)
    with pytest.raises(ConceptError, match="SDXL"):
        apply(pack, model, clip, xl_concept)


def swap_position(cond, donor, position: int):
    """``cond`` with one token row taken from ``donor`` (the same conditioning list layout)."""
    tensor = cond[0][0].clone()
    tensor[0, position] = donor[0][0][0, position]
    return [[tensor, dict(cond[0][1])]]


def test_word_edit_renders_cat_as_dog(pack, tiny_sd1, word_edit):
    """Semantic check of the whole pipeline with the word edit "cat -> dog".

    Reference: the unpatched model on "a photo of a cat" whose 'cat' token row is
    replaced by the 'dog' row of "a photo of a dog" -- exactly what the edit claims
    to do (keys and values of the trigger become the target's). The literal
    "a photo of a dog" also differs in the positions after the word (a causal text
    encoder carries the word into EOS and padding), which no token-level edit can
    or should reproduce; that comparison is asserted in its weaker, honest form.

    Margins (measured: ratio 0.016 with the sharp gate, 0.28 with the paper's
    default gate; 0.67 for the literal prompt): the edited prediction is within
    10% (sharp gate) and 50% (default gate) of the cat-to-dog-token distance from
    the reference, and closer to the dog prompt than the unedited cat prompt is.
    """
    import nodes as comfy_nodes

    model, clip = tiny_sd1
    encode = comfy_nodes.CLIPTextEncode().encode
    cat, dog = encode(clip, "a photo of a cat")[0], encode(clip, "a photo of a dog")[0]
    position = pack.nodes.encoding.last_token_position(clip.tokenizer, "a photo of a", "cat")
    assert position == 5  # BOS counted
    reference_cond = swap_position(cat, dog, position)

    def run(m, cond):
        neg = encode(clip, "")[0]
        return comfy_nodes.common_ksampler(m, 0, 1, 1.0, "euler", "normal", cond, neg,
                                           {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"].clone()

    plain_cat, reference, plain_dog = run(model, cat), run(model, reference_cond), run(model, dog)
    token_distance = (plain_cat - reference).norm()
    for gate, margin in (({"beta": 0.5, "tau": 0.02}, 0.10), ({"beta": 0.7, "tau": 0.15}, 0.50)):
        patched, pclip = apply(pack, model, clip, word_edit.with_gate(**gate))
        edited = run(patched, encode(pclip, "a photo of a cat")[0])
        assert (edited - reference).norm() < margin * token_distance, gate
        if gate["tau"] < 0.1:
            assert (edited - plain_dog).norm() < (plain_cat - plain_dog).norm()


def test_input_clip_is_untouched(pack, tiny_sd1, word_edit):
    import nodes as comfy_nodes

    model, clip = tiny_sd1
    tokenizer = clip.tokenizer
    before = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0][0][0].clone()
    _, pclip = apply(pack, model, clip, word_edit.with_gate(lock="global"))
    comfy_nodes.CLIPTextEncode().encode(pclip, "a photo of a cat")  # the patched CLIP runs first
    after = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
    assert clip.tokenizer is tokenizer and not isinstance(tokenizer, pack.nodes.clip_patch.TriggerTokenizer)
    assert torch.equal(after[0][0], before)
    assert "model_conds" not in after[0][1], "the global-lock encoder patch must not leak into the input CLIP"


@pytest.mark.parametrize("fixture", ["tiny_sd1", "tiny_sdxl"])
def test_trigger_gets_the_learned_embedding_in_every_text_encoder(pack, request, fixture):
    """Defining property of the CLIP side: with the token embedding(s) of "dog" as the
    concept's learned embedding, "a photo of a sks" encodes exactly as "a photo of a dog"
    (SDXL: both encoders), and the input CLIP still reads "sks" as before."""
    import dataclasses

    import nodes as comfy_nodes

    model, clip = request.getfixturevalue(fixture)
    base = word_edit_of(pack, model, clip)
    dog_ids = pack.nodes.clip_patch.single_token_id(clip.tokenizer, "dog")
    embeddings = {key: getattr(clip.cond_stage_model, f"clip_{key}").transformer.get_input_embeddings()
                  .weight[token].detach().float().clone() for key, token in dog_ids.items()}
    assert set(embeddings) == ({"l"} if fixture == "tiny_sd1" else {"l", "g"})
    concept = dataclasses.replace(base, trigger="sks", embeddings=embeddings).with_gate(strength=0.0)
    _, pclip = apply(pack, model, clip, concept)
    encode = comfy_nodes.CLIPTextEncode().encode
    plain_sks = encode(clip, "a photo of a sks")[0][0][0]
    dog = encode(clip, "a photo of a dog")[0][0][0]
    learned = encode(pclip, "a photo of a SKS")[0][0][0]
    torch.testing.assert_close(learned, dog, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain_sks, dog)
    torch.testing.assert_close(encode(clip, "a photo of a sks")[0][0][0], plain_sks, rtol=0, atol=0)


def hook_and_weight(pack, patched, layer: str, kind: str):
    hook = patched.get_model_object(f"diffusion_model.{layer}.to_{kind}.forward")
    assert isinstance(hook, pack.nodes.model_patch.ProjectionHook)
    return hook, patched.model.diffusion_model.get_submodule(f"{layer}.to_{kind}").weight


def test_hook_agrees_with_float64_reference_to_1e6(pack, tiny_sd1, word_edit):
    """The hook path (float32, the layer's own forward) against the edit in float64 on the real
    encodings of a prompt with the trigger: they agree to ~1e-6 of the output's scale. On an encoder
    whose C is singular (a final LayerNorm without bias) u is noise and they agreed only to ~5e-4."""
    import comfy.model_management as mm

    model, clip = tiny_sd1
    concept = word_edit.with_gate(beta=0.5, tau=0.2)
    patched, pclip = apply(pack, model, clip, concept)
    mm.load_models_gpu([patched])
    e = pclip.encode_from_tokens(pclip.tokenize("a photo of a cat on a sofa")).float()
    e64 = e.double()[0]
    u, i_star = concept.u.double(), concept.i_star.double()
    energy = float(u @ i_star)
    r = e64 @ u / energy
    gate = torch.sigmoid((r - concept.gate.beta) / concept.gate.tau)
    assert float(gate.max()) > 0.5, "the trigger must open the gate for this test to mean anything"
    worst = 0.0
    for layer in pack.nodes.host_model.cross_attention_layers(model):
        for kind in "kv":
            hook, weight = hook_and_weight(pack, patched, layer, kind)
            w = weight.double()
            target = w @ concept.i_super.double() if kind == "k" else concept.v_targets[layer][0].double()
            expected = e64 @ w.T - r[:, None] * (w @ i_star)[None, :] + gate[:, None] * target[None, :]
            got = hook(e)[0].double()
            worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))
    mm.load_models_gpu([model])
    assert worst < 2e-6, worst


def test_tiny_encoder_statistics_are_not_singular(pack, tiny_sd1):
    """The tiny test encoders' final LayerNorm has a bias, so encodings do not all sum to zero and
    C needs no ridge beyond a sliver: its null direction is gone."""
    from host_helpers import STATS_CAPTIONS

    from perfusion_core.caption_grammar import generate_captions
    from perfusion_core.covariance import Whitener

    _, clip = tiny_sd1
    C, _ = pack.nodes.statistics.clip_statistics(clip, generate_captions(STATS_CAPTIONS))
    sums = clip.encode_from_tokens(clip.tokenize("a photo of a cat")).float().sum(-1)
    assert float(sums.abs().min()) > 1e-2, "encodings sum to zero: the final LayerNorm has no bias"
    eigs = torch.linalg.eigvalsh(C.double())
    assert float(eigs[0]) > 0
    assert Whitener(C).ridge < 1e-4 * float(eigs.mean())


def test_statistics_key_is_this_clips_weights_whichever_clone_ran_last(pack, tiny_sd1):
    """A clone with a LoRA-style patch, once it has encoded, leaves its weights in the encoder
    module every clone shares; the cache key must still name the plain CLIP's weights (it was
    the LoRA's, so the plain CLIP's statistics were computed again, and filed under the LoRA's)."""
    _, clip = tiny_sd1
    digest = pack.nodes.statistics._weights_digest
    plain = digest(clip)
    patched = clip.clone()
    key = next(k for k in patched.patcher.model.state_dict() if k.endswith("q_proj.weight"))
    weight = patched.patcher.model.state_dict()[key]
    patched.add_patches({key: (torch.full_like(weight, 0.5),)}, 1.0, 1.0)
    patched.encode_from_tokens(patched.tokenize("a photo of a cat"))
    assert digest(clip) == plain
    assert digest(patched) != plain
    assert digest(clip) == plain  # and back, after the patched clone was loaded again
