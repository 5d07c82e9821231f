"""TrainPerfusion in the real host: tiny SD1.5 checkpoint loaded the way a server loads it
(under torch.inference_mode), the bundled teddy images at 64 px."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from perfusion_core.concept_file import load_concept
from perfusion_core.training import TrainingError
from harness import random_models
from host_helpers import STATS_CAPTIONS
from tools.sample_images import IMAGES_DIR

RESOLUTION = 64


def load_images(masks: bool = False) -> torch.Tensor:
    names = sorted(p for p in IMAGES_DIR.glob("teddy_?.png"))
    if masks:
        names = [p.with_name(p.stem + "_mask.png") for p in names]
    arrays = [np.asarray(Image.open(p).convert("L" if masks else "RGB"), dtype=np.float32) / 255.0 for p in names]
    return torch.from_numpy(np.stack(arrays))


@pytest.fixture(scope="module")
def pipeline(tiny_sd1_checkpoint: Path):
    """(model, clip, vae), made in inference mode like a node's: the UNet and VAE from the stock
    checkpoint loader, the text encoder the in-process tiny CLIP-L (3 layers, real widths and
    tokenizer). The checkpoint's full-size CLIP-L, whose forward and backward would dominate
    every step here, is trained through in the e2e tier (the training workflow and the demo)."""
    import comfy.sd

    with torch.inference_mode():
        model, _, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_sd1_checkpoint), output_vae=True,
                                                                 output_clip=False)
        clip = random_models.build_clip("sd1", "tiny", seed=0)
    return model, clip, vae


def train(pack, pipeline, model=None, inference_mode: bool = True, **overrides):
    """Run the TrainPerfusion node as ComfyUI does (inside inference mode); returns its result tuple."""
    base_model, clip, vae = pipeline
    kwargs = dict(images=load_images(), trigger_word="zorb", superclass="teddy", steps=4, batch_size=2,
                  grad_accumulation=1, lr_values=0.03, lr_embedding=0.006, train_beta=0.75, train_tau=0.1, seed=0,
                  resolution=RESOLUTION, timestep_sets=1, gradient_checkpointing=False, mask_source="none",
                  checkpoint_every=0, output_name="test_concept", statistics_captions=STATS_CAPTIONS,
                  preview_every=0)
    kwargs.update(overrides)
    with torch.inference_mode(inference_mode):
        return pack.nodes.nodes_train.train_perfusion(model or base_model, clip, vae, **kwargs)["result"]


def perfusion_path(name: str) -> str:
    import folder_paths

    return folder_paths.get_full_path_or_raise("perfusion", name)


# -- what training may touch ----------------------------------------------------------------------


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {k: v.clone() for k, v in module.state_dict().items()}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same bits: SD1's CLIP keeps a never-loaded, uninitialised text_projection (unused), whose
    NaNs would make torch.equal call an untouched tensor changed."""
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().reshape(-1).view(torch.uint8)

    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(raw(a), raw(b))


def test_base_untouched_and_only_concept_trained(pack, pipeline):
    model, clip, _ = pipeline
    unet_before, clip_before = snapshot(model.model), snapshot(clip.cond_stage_model)
    # Compared with what the host itself put there: 0.33's CLIP loader adds a "manual_cast_dtype"
    # object patch to every CLIP (0.3.75 adds none).
    patches_before = dict(model.object_patches), dict(clip.patcher.object_patches)
    concept, graph, name, previews, masks = train(pack, pipeline, steps=3)
    for before, module in ((unet_before, model.model), (clip_before, clip.cond_stage_model)):
        after = module.state_dict()
        assert before.keys() == after.keys()
        changed = [k for k in before if not bitwise_equal(before[k], after[k])]
        assert not changed, f"base weights changed: {changed[:3]}"
        assert all(p.grad is None for p in module.parameters()), "the base model received gradients"
    assert (model.object_patches, clip.patcher.object_patches) == patches_before
    assert graph.shape[0] == 1 and graph.shape[-1] == 3
    init = pack.nodes.training.word_embeddings(clip, "teddy")["l"]
    assert not torch.equal(concept.embeddings["l"], init), "the embedding was not trained"
    layers = pack.nodes.host_model.cross_attention_layers(model)
    assert set(concept.v_targets) == set(layers)
    loaded = load_concept(perfusion_path(name))
    assert torch.allclose(loaded.v_targets[next(iter(layers))].float(),
                          concept.v_targets[next(iter(layers))], atol=1e-2)
    assert os.path.getsize(perfusion_path(name)) < 64 * 1024


def test_text_encoder_patch_matches_stock_encoding(pack, pipeline):
    """The out-of-place CLIP layer used for training gives bit-identical encodings."""
    _, clip, _ = pipeline
    tokens = clip.tokenize("a photo of a teddy on the grass")
    stock = clip.encode_from_tokens(tokens)
    patched = clip.clone()
    pack.nodes.trainable_host.differentiable_text_encoder(patched)
    assert any(k.endswith("layers.0.forward") for k in patched.patcher.object_patches)
    assert torch.equal(patched.encode_from_tokens(tokens), stock)


def test_thaw_shares_storage(pack):
    """Inference tensors become ordinary ones autograd can save, without copying a byte."""
    with torch.inference_mode():
        layer = torch.nn.Linear(3, 2)
    pointer = layer.weight.data_ptr()
    assert pack.nodes.trainable_host.thaw(layer) == 2
    assert not layer.weight.is_inference() and layer.weight.data_ptr() == pointer
    x = torch.randn(4, 3, requires_grad=True)
    layer(x).sum().backward()  # refused for inference weights: they would be saved for backward
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(4, 3))


def test_thaw_frees_weights_moved_after_an_inference_mode_load(pack):
    """What ComfyUI's move to a GPU leaves: ``param.data`` swapped outside inference mode. The
    parameter is no longer an inference tensor but still has no version counter (found on CUDA)."""
    with torch.inference_mode():
        layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.data = torch.randn(2, 3)  # as Module.to(device) does
    assert not layer.weight.is_inference()
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="version counter"):
        layer(x)
    assert pack.nodes.trainable_host.thaw(layer) == 2  # the bias is still an inference tensor
    layer(x).sum().backward()
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(4, 3))


# -- it learns, and the lock holds -------------------------------------------------------------------


def denoising_loss(model, clip, vae, prompt: str, images: torch.Tensor, draws: int = 6) -> float:
    """Mean noise-prediction error on ``images`` at fixed timesteps and noise, through a stock guider."""
    import comfy.samplers
    import nodes as comfy_nodes

    from perfusion_core.training import square_crop

    with torch.inference_mode():
        latents = vae.encode(square_crop(images, RESOLUTION)).float()
        positive = comfy_nodes.CLIPTextEncode().encode(clip, prompt)[0]
    result = {}

    class Probe(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            sampling = model_wrap.inner_model.model_sampling
            gen = torch.Generator().manual_seed(1234)
            losses = []
            for t in torch.linspace(50, 950, draws):
                sigma = sampling.sigma(t.reshape(1)).expand(latent_image.shape[0])
                eps = torch.randn(latent_image.shape, generator=gen)
                x_t = latent_image + eps * sigma.view(-1, 1, 1, 1)
                denoised = model_wrap(x_t, sigma, **extra_args)
                losses.append(float((((x_t - denoised) / sigma.view(-1, 1, 1, 1) - eps) ** 2).mean()))
            result["loss"] = sum(losses) / len(losses)
            return latent_image

    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": positive})
    guider.set_cfg(1.0)
    with torch.inference_mode():
        guider.sample(torch.zeros_like(latents), latents, Probe(), torch.ones(2), seed=0)
    return result["loss"]


def gated(pack, pipeline, concept, beta=0.75, tau=0.1, lock="local"):
    model, clip, _ = pipeline
    gate = pack.nodes.nodes_concept.gate_concept(concept, beta, tau, 1.0, 0.0, 1.0, lock)
    return pack.nodes.nodes_apply.apply_edit(model, clip, gate)


@pytest.fixture(scope="module")
def trained(pack, pipeline):
    """50 optimizer steps (batch 2) on the four teddy images, masked loss."""
    concept, _, name, _, _ = train(pack, pipeline, steps=50, mask=load_images(masks=True), mask_source="mask input if connected",
                             output_name="trained50")
    return concept, name


def test_denoising_loss_falls_within_50_steps(pack, pipeline, trained):
    model, clip, vae = pipeline
    images = load_images()
    before = denoising_loss(model, clip, vae, "a photo of a teddy", images)  # = the untrained starting point
    pmodel, pclip = gated(pack, pipeline, trained[0])
    after = denoising_loss(pmodel, pclip, vae, "a photo of a zorb", images)
    print(f"denoising loss on the training images: superclass {before:.4f}, trained concept {after:.4f}")
    assert after < 0.95 * before  # measured: 1.334 -> 1.198 (-10%)


@pytest.fixture(scope="module")
def trained_long(pack, pipeline):
    """150 single-image steps: long enough for the i* EMA (decay 0.99) to track the trigger's encoding."""
    return train(pack, pipeline, steps=150, batch_size=1, output_name="trained150")[0]


def test_key_lock_holds_after_training(pack, pipeline, trained_long):
    """The trained concept's K edit maps i* onto the superclass key W_K i_super (scaled by the open
    gate), and pulls the trigger token's key in a real prompt towards it."""
    model, clip, _ = pipeline
    concept = trained_long
    pmodel, pclip = gated(pack, pipeline, concept, beta=0.75, tau=0.1)
    cosine = torch.nn.functional.cosine_similarity
    pos = pack.nodes.encoding.last_token_position(clip.tokenizer, "a photo of a", "teddy")
    cond = pclip.encode_from_tokens(pclip.tokenize("a photo of a zorb"))
    open_gate = torch.sigmoid(torch.tensor((1.0 - 0.75) / 0.1))
    for layer in pack.nodes.host_model.cross_attention_layers(model):
        hook = pmodel.object_patches[f"diffusion_model.{layer}.to_k.forward"]
        with torch.no_grad():
            k_super = hook.base_forward(concept.i_super[None, None])[0, 0]
            k_istar = hook(concept.i_star[None, None])[0, 0]
            k_trigger, k_unlocked = hook(cond)[0, pos], hook.base_forward(cond)[0, pos]
        assert torch.allclose(k_istar, open_gate * k_super, rtol=1e-3, atol=1e-4 * k_super.norm())
        locked, unlocked = cosine(k_trigger, k_super, dim=0), cosine(k_unlocked, k_super, dim=0)
        print(f"{layer}: cos(trigger key, superclass key) {locked:.3f} locked vs {unlocked:.3f} unlocked")
        assert locked > unlocked + 0.1


def test_context_lock_gives_the_trained_trigger_the_superclass_key_of_its_prompt(pack, pipeline, trained_long):
    """The lock stated literally, on a trained concept: with lock mode "context" and an open gate, the
    trigger token's K output in a real prompt equals the superclass word's key at that place in the
    same prompt, in every layer (the local lock only pulls it towards W_K i_super; test above)."""
    model, clip, _ = pipeline
    concept = trained_long
    model_patch = pack.nodes.model_patch
    prompt, superclass_prompt = "a photo of a zorb on the grass", "a photo of a teddy on the grass"
    pos = pack.nodes.encoding.last_token_position(clip.tokenizer, "a photo of a", "teddy")
    pmodel, pclip = gated(pack, pipeline, concept, beta=0.3, tau=0.01, lock="context")
    cond = pclip.encode_from_tokens(pclip.tokenize(prompt))
    superclass = clip.encode_from_tokens(clip.tokenize(superclass_prompt))
    r = float(cond[0, pos] @ concept.u / (concept.i_star @ concept.u))
    assert r > 0.5, f"precondition: the trigger's gate (beta 0.3, tau 0.01) must be open; r = {r:.3f}"
    for layer in pack.nodes.host_model.cross_attention_layers(model):
        hook = pmodel.object_patches[f"diffusion_model.{layer}.to_k.forward"]
        model_patch.SuperclassKeyContext()(None, cond, cond, {model_patch.K_CONTEXT_COND: superclass})
        with torch.no_grad():
            k_trigger, k_superclass = hook(cond)[0, pos], hook.base_forward(superclass)[0, pos]
            k_local = gated(pack, pipeline, concept, beta=0.3, tau=0.01)[0].object_patches[
                f"diffusion_model.{layer}.to_k.forward"](cond)[0, pos]
        tol = 1e-4 * k_superclass.norm().item()
        torch.testing.assert_close(k_trigger, k_superclass, rtol=1e-4, atol=tol)
        assert (k_local - k_superclass).norm().item() > 100 * tol, f"{layer}: the local lock is not this literal"


def test_textual_inversion_trains_the_embedding_alone(pack, pipeline):
    """'embedding only': value targets stay at their superclass start, the embedding moves, and the
    concept ships switched off (strength 0), so applying it changes nothing but the trigger's token."""
    model, clip, _ = pipeline
    ti = train(pack, pipeline, steps=3, output_name="ti", what_to_train="embedding only (textual inversion)")[0]
    full = train(pack, pipeline, steps=3, output_name="full")[0]
    host_model = pack.nodes.host_model
    for layer in host_model.cross_attention_layers(model):
        start = host_model.value_weight(model, layer) @ ti.i_super
        assert torch.allclose(ti.v_targets[layer][0], start, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(full.v_targets[layer][0], start, rtol=1e-5, atol=1e-6)
    superclass = pack.nodes.training.word_embeddings(clip, "teddy")
    assert all(not torch.equal(ti.embeddings[k], superclass[k].float()) for k in superclass)
    assert (ti.gate.strength, ti.training["kind"]) == (0.0, "textual inversion")
    pmodel, pclip = pack.nodes.nodes_apply.apply_edit(model, clip, ti)
    cond = pclip.encode_from_tokens(pclip.tokenize("a photo of a zorb"))
    assert not torch.equal(cond, clip.encode_from_tokens(clip.tokenize("a photo of a zorb")))
    layer = next(iter(host_model.cross_attention_layers(model)))
    for proj in ("to_k", "to_v"):
        hook = pmodel.object_patches[f"diffusion_model.{layer}.{proj}.forward"]
        with torch.no_grad():
            assert torch.equal(hook(cond), hook.base_forward(cond)), f"{proj}: the edit must be off"


def test_no_key_lock_ablation_moves_the_keys(pack, pipeline):
    """'no key-lock': the key target's input i_super leaves the superclass encoding it starts from,
    so the trigger's keys are no longer the superclass's; the default run keeps it exactly."""
    locked = train(pack, pipeline, steps=3, output_name="locked")[0]
    free = train(pack, pipeline, steps=3, output_name="nolock", what_to_train="embedding, values and keys (no key-lock)")[0]
    assert (locked.training["kind"], free.training["kind"]) == ("perfusion", "perfusion without key-lock")
    assert free.training["settings"]["train_keys"] and free.gate.strength == 1.0
    moved = (free.i_super - locked.i_super).norm() / locked.i_super.norm()
    print(f"no key-lock: i_super moved by {moved:.4f} of its norm in 3 steps")
    assert moved > 1e-3  # both runs start from the same superclass encoding, which the locked one keeps


CAPTIONS = ("a photo of a {} on the beach", "a photo of a zorb and a red chair", "a photo of a cup and a {}",
            "a {} in the snow")


def test_captions_train_each_image_in_its_own_prompt(pack, pipeline):
    """With per-image captions the key lock's i_super is the superclass's mean encoding over those
    captions (not the templates), the captions are part of the run's settings, and nothing is flipped."""
    _, clip, _ = pipeline
    concept = train(pack, pipeline, steps=2, output_name="captioned", captions="\n".join(CAPTIONS))[0]
    encode_word = pack.nodes.encoding.encode_word
    with torch.inference_mode():
        want = torch.stack([encode_word(clip, c.replace("zorb", "{}"), "teddy") for c in CAPTIONS]).mean(0)
        templates = torch.stack([encode_word(clip, t, "teddy") for t in ("a photo of a {}", "a rendering of a {}")])
    assert torch.allclose(concept.i_super, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(concept.i_super, templates.mean(0), rtol=1e-2, atol=1e-3)
    settings = concept.training["settings"]
    assert settings["captions"] == [c.replace("zorb", "{}") for c in CAPTIONS] and settings["flip_probability"] == 0.0


def test_encode_batch_rows_are_the_texts(pack, pipeline):
    _, clip, _ = pipeline
    texts = ["a photo of a cup", "a teddy", "a photo of a cup"]
    host_sampling = pack.nodes.host_sampling
    with torch.inference_mode():
        cond, extras = host_sampling.encode_batch(clip, texts)[0]
        for k, text in enumerate(texts):
            one, one_extras = host_sampling.encode(clip, text)[0]
            assert torch.equal(cond[k:k + 1], one)
            assert torch.equal(extras["pooled_output"][k:k + 1], one_extras["pooled_output"])


# -- reproducible, resumable -------------------------------------------------------------------------


def test_same_seed_same_bytes(pack, pipeline):
    a = train(pack, pipeline, steps=2, output_name="repro")[2]
    b = train(pack, pipeline, steps=2, output_name="repro")[2]
    assert a != b, "the second run must not overwrite the first file"
    assert Path(perfusion_path(a)).read_bytes() == Path(perfusion_path(b)).read_bytes()


def test_interrupt_then_resume_is_bit_identical(pack, pipeline):
    import comfy.model_management as mm
    import comfy.utils

    straight = train(pack, pipeline, steps=4, output_name="straight")[2]

    def cancel_after_two(value, total, preview, node_id=None):
        mm.throw_exception_if_processing_interrupted()
        if value == 2:
            mm.interrupt_current_processing(True)  # what the UI's cancel button does

    comfy.utils.set_progress_bar_global_hook(cancel_after_two)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(pack, pipeline, steps=4, output_name="cancelled")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    partial = load_concept(perfusion_path("cancelled_step00002.safetensors"))
    assert partial.training["steps"] == 2, "the interrupted run keeps a usable concept"
    checkpoints = pack.nodes.folders.training_checkpoints()
    state = next(c for c in checkpoints if Path(c).stem == "cancelled")
    assert state not in pack.nodes.folders.concept_files()
    resumed = train(pack, pipeline, steps=4, output_name="resumed", resume_from=state)[2]
    assert Path(perfusion_path(resumed)).read_bytes() != b""
    a, b = (load_concept(perfusion_path(n)) for n in (straight, resumed))
    for layer in a.v_targets:
        assert torch.equal(a.v_targets[layer], b.v_targets[layer])
    assert torch.equal(a.embeddings["l"], b.embeddings["l"]) and torch.equal(a.i_star, b.i_star)
    with pytest.raises(TrainingError, match="resume_from: .*different training settings"):
        train(pack, pipeline, steps=4, lr_values=0.01, output_name="bad_resume", resume_from=state)


# -- variants ----------------------------------------------------------------------------------------


def test_timestep_sets_train_only_the_drawn_intervals(pack, pipeline):
    from perfusion_core.training import TrainingSettings, micro_batch

    sets = 4
    concept = train(pack, pipeline, steps=1, timestep_sets=sets)[0]
    settings = TrainingSettings(steps=1, batch_size=2, grad_accumulation=1, resolution=RESOLUTION, timestep_sets=sets)
    drawn = {int(t) * sets // 1000 for t in micro_batch(settings, 0, 0, 4).timesteps}
    layer = next(iter(concept.v_targets))
    init = pack.nodes.host_model.value_weight(pipeline[0], layer) @ concept.i_super
    for s in range(sets):
        moved = not torch.allclose(concept.v_targets[layer][s], init, atol=1e-6)
        assert moved == (s in drawn), f"set {s}: moved={moved}, drawn sets {sorted(drawn)}"


def test_s1_window_trains_and_applies_on_the_same_interval(pack, pipeline):
    """start/end_percent: only timesteps inside the window are drawn (their sigmas lie in the window
    by ComfyUI's percent_to_sigma), and the saved concept's gate carries the same window."""
    from perfusion_core.training import TrainingSettings, micro_batch

    concept = train(pack, pipeline, steps=2, end_percent=0.5)[0]
    assert (concept.gate.start_percent, concept.gate.end_percent) == (0.0, 0.5)
    assert concept.training["settings"]["end_percent"] == 0.5
    settings = TrainingSettings(steps=2, batch_size=2, grad_accumulation=1, resolution=RESOLUTION, end_percent=0.5)
    sampling = pipeline[0].model.model_sampling
    drawn = torch.cat([micro_batch(settings, step, 0, 4).timesteps for step in range(2)])
    assert bool((sampling.sigma(drawn.float()) >= sampling.percent_to_sigma(0.5)).all())
    whole = train(pack, pipeline, steps=2, output_name="test_concept_whole")[0]
    assert (whole.gate.start_percent, whole.gate.end_percent) == (0.0, 1.0)
    layer = next(iter(concept.v_targets))
    assert not torch.equal(concept.v_targets[layer], whole.v_targets[layer]), "other timesteps, other training"


def test_trains_on_fp8_loaded_base(pack, pipeline, tmp_path_factory, tiny_sd1_checkpoint):
    import folder_paths
    import nodes as comfy_nodes

    from harness import random_models as rm

    folder = tmp_path_factory.mktemp("diffusion_models_train")
    with safetensors.safe_open(str(tiny_sd1_checkpoint), "pt") as f:
        unet = {k[len(rm.UNET_PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(rm.UNET_PREFIX)}  # noqa: SIM118
    safetensors.torch.save_file(unet, str(folder / "train_unet.safetensors"))
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    with torch.inference_mode():
        fp8 = comfy_nodes.UNETLoader().load_unet("train_unet.safetensors", "fp8_e4m3fn")[0]
    layer = next(iter(pack.nodes.host_model.cross_attention_layers(fp8)))
    assert fp8.get_model_object(f"diffusion_model.{layer}.to_v").weight.dtype == torch.float8_e4m3fn
    concept = train(pack, pipeline, model=fp8, steps=2, output_name="fp8")[0]
    assert all(torch.isfinite(v).all() for v in concept.v_targets.values())
    assert fp8.get_model_object(f"diffusion_model.{layer}.to_v").weight.dtype == torch.float8_e4m3fn


def test_gradient_checkpointing_gives_the_same_concept(pack, pipeline, monkeypatch):
    plain = train(pack, pipeline, steps=2, output_name="ckpt_off")[0]
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    ckpt = train(pack, pipeline, steps=2, gradient_checkpointing=True, output_name="ckpt_on")[0]
    assert len(calls) > 0, "no layer was checkpointed"
    for layer in plain.v_targets:
        assert torch.allclose(plain.v_targets[layer], ckpt.v_targets[layer], atol=1e-5)


# -- masks from the model's own attention, previews ---------------------------------------------------


def test_attention_probe_reads_the_hosts_attention(pack, pipeline):
    """The probe's map equals the host's own attention kernel applied to indicator values,
    and the patched forward returns exactly the stock output."""
    from comfy.ldm.modules.attention import optimized_attention

    model = pipeline[0]
    layer = next(iter(pack.nodes.host_model.cross_attention_layers(model)))
    module = model.get_model_object(f"diffusion_model.{layer}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, module.to_q.weight.shape[1], generator=gen)
    context = torch.randn(2, 77, module.to_k.weight.shape[1], generator=gen)
    sink, tokens = [], [5, 6]
    probe = pack.nodes.attention_masks.AttentionProbe(module, module.forward, tokens, sink)
    with torch.no_grad():
        assert torch.equal(probe(x, context=context), module.forward(x, context=context))
        q, k = module.to_q(x), module.to_k(context)
        heads, d = module.heads, q.shape[-1] // module.heads
        indicator = torch.zeros(2, 77, q.shape[-1])
        indicator[:, tokens, ::d] = 1.0  # channel 0 of every head: 1 on the superclass tokens
        reference = optimized_attention(q, k, indicator, heads)[..., ::d].mean(-1)
    assert len(sink) == 1 and torch.allclose(sink[0], reference, atol=1e-5)


def test_superclass_attention_masks(pack, pipeline):
    model, clip, vae = pipeline
    data = pack.nodes.training_data.prepare_data(model, vae, load_images(), None, RESOLUTION)
    masks = pack.nodes.attention_masks.superclass_masks(model, clip, data.latents, "teddy", seed=0)
    again = pack.nodes.attention_masks.superclass_masks(model, clip, data.latents, "teddy", seed=0)
    assert masks.shape == (4, 8, 8) and torch.equal(masks, again)
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and bool((masks.sum((1, 2)) > 0).all())
    assert not model.object_patches, "the probe must live on a private clone"
    concept, _, name, _, loss_masks = train(pack, pipeline, steps=1, mask_source="superclass attention",
                                            output_name="attn_mask")
    assert concept.training["masked"] is True
    assert torch.equal(loss_masks, masks.repeat_interleave(8, 1).repeat_interleave(8, 2))


def test_previews_sample_without_changing_the_training(pack, pipeline):
    quiet = train(pack, pipeline, steps=2, preview_every=0, output_name="no_previews")
    shown = train(pack, pipeline, steps=2, preview_every=1, output_name="previews")
    assert torch.equal(quiet[3], torch.zeros(1, RESOLUTION, RESOLUTION, 3)), "previews off: one black image"
    assert shown[3].shape == (2, RESOLUTION, RESOLUTION, 3), "after steps 1 and 2"
    assert torch.isfinite(shown[3]).all() and float(shown[3].std()) > 0
    assert not torch.equal(shown[3][0], shown[3][1]), "the concept changed between the two previews"
    assert Path(perfusion_path(quiet[2])).read_bytes() == Path(perfusion_path(shown[2])).read_bytes()
    assert torch.equal(quiet[4], torch.ones(4, RESOLUTION, RESOLUTION)), "no mask: every pixel weighs 1"


# -- clear errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"trigger_word": "teddy"}, "trigger_word equals the superclass"),
    ({"trigger_word": "  "}, "trigger_word is empty"),
    ({"superclass": "te(ddy"}, "superclass .* prompt-syntax"),
    ({"images": torch.zeros(0, 64, 64, 3)}, "images: expected a batch"),
    ({"mask": torch.ones(4, 32, 32), "mask_source": "mask input if connected"}, "mask: size"),
    ({"mask": torch.zeros(4, 128, 128), "mask_source": "mask input if connected"}, "mask: the mask of image"),
    ({"steps": 0}, "steps must be"),
    ({"lr_values": 50.0}, "lr_values must be"),
    ({"output_name": "../evil"}, "output_name must be a plain file name"),
    ({"resume_from": "training/nope.safetensors"}, "resume_from .* not found"),
    ({"preview_prompt": "no placeholder"}, "preview_prompt must contain"),
    ({"what_to_train": "keys too"}, "what_to_train must be one of"),
    ({"captions": "a {}\nb {}"}, "captions: 2 caption.* for 4 image"),
    ({"captions": "a photo"}, "captions: line 1 names neither"),
    ({"captions": "a {} and a {}"}, "caption 1 must contain"),
    ({"start_percent": 0.7, "end_percent": 0.3}, "start_percent must be below end_percent"),
    ({"end_percent": 0.6, "timestep_sets": 2}, "needs timestep_sets 1"),
])
def test_bad_inputs_are_named(pack, pipeline, overrides, message):
    with pytest.raises(TrainingError, match=message):
        train(pack, pipeline, **overrides)
