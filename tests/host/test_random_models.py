"""The random-weight models are real ComfyUI models that the stock loaders accept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import comfy.model_detection
import comfy.sample
import comfy.supported_models as sm
import folder_paths
import nodes

from harness import random_models as rm

EXPECTED_CONFIG = {"sd1": sm.SD15, "sd2": sm.SD20, "sdxl": sm.SDXL}


def one_step(model, positive, negative, seed: int = 0, size: int = 8) -> torch.Tensor:
    """One Euler step from pure noise: returns the model's denoised prediction (KSampler path)."""
    latent = torch.zeros(1, 4, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, 1, 2.0, "euler", "normal", positive, negative, latent,
                               seed=seed, disable_pbar=True)


def encode(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


@pytest.mark.parametrize("family", rm.FAMILIES)
def test_tiny_pipeline_encodes_and_samples(family: str, request: pytest.FixtureRequest) -> None:
    model, clip = request.getfixturevalue(f"tiny_{family}")
    assert isinstance(model.model.model_config, EXPECTED_CONFIG[family])

    positive = encode(clip, "a photo of a teddy bear on a beach")
    cond, extra = positive[0]
    assert cond.shape == (1, 77, rm.CONTEXT_DIM[family])
    assert torch.isfinite(cond).all()
    if family == "sdxl":
        assert extra["pooled_output"].shape == (1, 1280)

    negative = encode(clip, "")
    out = one_step(model, positive, negative)
    assert out.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()
    # Samples come back in the VAE's scale (divided by the latent scale factor);
    # in model units a random denoiser's one-step output stays near sigma_max.
    assert 1.0 < out.std().item() * model.model.latent_format.scale_factor < 100.0

    # Cross-attention must carry the prompt: Perfusion edits exactly that path.
    other = one_step(model, encode(clip, "a red sports car"), negative)
    assert (other - out).abs().max().item() > 1e-3


def test_weights_are_a_function_of_the_seed(tiny_sd1) -> None:
    same = rm.build_unet("sd1", "tiny", seed=0).model.diffusion_model.state_dict()
    other = rm.build_unet("sd1", "tiny", seed=1).model.diffusion_model.state_dict()
    ref = tiny_sd1[0].model.diffusion_model.state_dict()
    key = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert all(torch.equal(same[k], ref[k]) for k in ref)
    assert not torch.equal(other[key], ref[key])
    # Norms start as identity, matrices at unit gain: activations keep their scale.
    assert torch.equal(ref["input_blocks.1.1.norm.weight"], torch.ones(320))
    assert abs(ref[key].std().item() * 768 ** 0.5 - 1.0) < 0.05


@pytest.mark.parametrize("size", rm.SIZES)
@pytest.mark.parametrize("family", rm.FAMILIES)
def test_unet_layout_is_detected_as_its_family(family: str, size: str) -> None:
    template = rm.build_unet(family, size, device="meta").model.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(template, "")
    assert {k: detected[k] for k in rm.unet_config(family, size)} == rm.unet_config(family, size)
    config = comfy.model_detection.model_config_from_unet(template, "")
    assert isinstance(config, EXPECTED_CONFIG[family])


@pytest.mark.parametrize(
    "family,size,layers,total_d_out",
    [("sd1", "full", 16, 12480), ("sd2", "full", 16, 12480), ("sdxl", "full", 70, 83200),
     ("sd1", "tiny", 7, 7 * 320), ("sdxl", "tiny", 12, 12 * 320)],
)
def test_cross_attention_layer_inventory(family: str, size: str, layers: int, total_d_out: int) -> None:
    model = rm.build_unet(family, size, device="meta")  # structure only: no memory for weights
    names = rm.attn2_layer_names(model)
    assert len(names) == layers
    assert len(set(names)) == layers
    modules = dict(model.model.diffusion_model.named_modules())
    assert sum(modules[n].to_k.weight.shape[0] for n in names) == total_d_out
    assert all(modules[n].to_k.weight.shape[1] == rm.CONTEXT_DIM[family] for n in names)
    if family in ("sd1", "sd2"):
        assert names[0] == "input_blocks.1.1.transformer_blocks.0.attn2"
    if size == "full" and family in ("sd1", "sd2"):
        assert names[-1] == "output_blocks.11.1.transformer_blocks.0.attn2"
    if (family, size) == ("sdxl", "full"):
        assert "middle_block.1.transformer_blocks.9.attn2" in names


@pytest.mark.parametrize("family,expected_key", [
    ("sd1", "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight"),
    ("sd2", "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"),
    ("sdxl", "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"),
])
def test_checkpoint_text_encoder_layout_is_real_and_complete(family: str, expected_key: str) -> None:
    template = rm._clip_template(family, "full")
    assert expected_key in template
    if family == "sdxl":
        assert "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in template
        assert template["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
    # Everything ComfyUI's text encoder needs comes back out of the checkpoint layout.
    config = rm.model_config(family, "full")
    loaded = set(config.process_clip_state_dict(dict(template)))
    target = config.clip_target()
    with torch.device("meta"):
        module = target.clip(device="meta", dtype=torch.float32, model_options={})
    missing = {k for k in module.state_dict() if k not in loaded}
    assert all(k.endswith(("clip_l.transformer.text_projection.weight", "clip_l.logit_scale")) for k in missing), missing


def test_tiny_sd1_checkpoint_loads_through_stock_loader(tiny_sd1, tiny_sd1_checkpoint: Path) -> None:
    folder_paths.add_model_folder_path("checkpoints", str(tiny_sd1_checkpoint.parent))
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(tiny_sd1_checkpoint.name)
    assert isinstance(model.model.model_config, sm.SD15)
    assert rm.attn2_layer_names(model) == rm.attn2_layer_names(tiny_sd1[0])

    # Same weights as the in-process build, up to the file's fp16 rounding.
    loaded = model.model.diffusion_model.state_dict()
    built = tiny_sd1[0].model.diffusion_model.state_dict()
    assert loaded.keys() == built.keys()
    assert all(torch.equal(loaded[k].float(), built[k].half().float()) for k in built)
    key = "clip_l.transformer.text_model.embeddings.token_embedding.weight"
    assert torch.equal(clip.cond_stage_model.state_dict()[key].float(),
                       tiny_sd1[1].cond_stage_model.state_dict()[key].half().float())

    positive, negative = encode(clip, "a teddy bear"), encode(clip, "")
    assert positive[0][0].shape == (1, 77, 768)
    out = one_step(model, positive, negative)
    assert torch.isfinite(out).all()
    image = vae.decode(out)
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(image).all()
    # A usable picture of noise: mostly neither clipped black nor clipped white.
    assert ((image <= 0) | (image >= 1)).float().mean().item() < 0.5
    assert image.std().item() > 0.01


def test_lora_patches_exactly_the_cross_attention_kv(tiny_sd1, tmp_path: Path) -> None:
    model, clip = tiny_sd1
    path = rm.write_lora(tmp_path / "random_lora.safetensors", "sd1", seed=3, rank=4)
    folder_paths.add_model_folder_path("loras", str(tmp_path))
    model_lora, _ = nodes.LoraLoader().load_lora(model, clip, path.name, 1.0, 1.0)
    expected = {f"diffusion_model.{n}.{p}.weight" for n in rm.attn2_layer_names(model) for p in ("to_k", "to_v")}
    assert set(model_lora.patches) == expected

    positive, negative = encode(clip, "a teddy bear"), encode(clip, "")
    base, patched = one_step(model, positive, negative), one_step(model_lora, positive, negative)
    assert torch.isfinite(patched).all()
    assert (patched - base).abs().max().item() > 1e-3
    assert torch.equal(one_step(model, positive, negative), base)  # the shared model is untouched


def test_controlnet_loads_and_steers(tiny_sd1, tmp_path: Path) -> None:
    model, clip = tiny_sd1
    path = rm.write_controlnet(tmp_path / "random_controlnet.safetensors", seed=5)
    folder_paths.add_model_folder_path("controlnet", str(tmp_path))
    (control,) = nodes.ControlNetLoader().load_controlnet(path.name)
    positive, negative = encode(clip, "a teddy bear"), encode(clip, "")
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    cpos, cneg = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint, 1.0, 0.0, 1.0)
    base, steered = one_step(model, positive, negative), one_step(model, cpos, cneg)
    assert torch.isfinite(steered).all()
    assert (steered - base).abs().max().item() > 1e-3


def test_host_location_errors_point_to_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness import comfy_host

    monkeypatch.setenv(comfy_host.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="tools/setup.sh"):
        comfy_host.host_dir()
    # Without the variable: the default folder (a stand-in here, since the suite may be running
    # against another host named by the variable, with no default host installed).
    monkeypatch.delenv(comfy_host.ENV_VAR)
    monkeypatch.setattr(comfy_host, "_DEFAULT_HOST", tmp_path / "default")
    with pytest.raises(FileNotFoundError, match="default location"):
        comfy_host.host_dir()
    (tmp_path / "default" / "comfy").mkdir(parents=True)
    (tmp_path / "default" / "comfy" / "model_management.py").touch()
    assert comfy_host.host_dir() == (tmp_path / "default").resolve()


def test_import_host_is_idempotent() -> None:
    import sys

    import comfy.cli_args
    from harness import comfy_host

    before = list(sys.path)
    comfy_host.import_host()
    comfy_host.import_host()
    assert sys.path == before
    assert comfy.cli_args.args.cpu
