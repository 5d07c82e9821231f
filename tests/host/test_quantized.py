"""Quantized checkpoints in the real host: the tiny SD1.5 UNet with every Linear weight in fp8
(ComfyUI's ``TensorCoreFP8Layout``: float8_e4m3fn values and a per-tensor scale), loaded by the
stock loaders (``harness.quantized_models``), applied, sampled and trained on.

On CPU both tested hosts (0.3.75, 0.33) run fp8 layers by dequantizing the weight (no fp8 matrix
multiply there), so a quantized model computes with the dequantized weights exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from host_helpers import STATS_CAPTIONS, apply, encode, ksample, word_edit_of
from PIL import Image
from safetensors import safe_open

from harness import quantized_models as qm
from harness import random_models
from tools.sample_images import IMAGES_DIR

PROMPT = "a photo of a cat"
STEPS = 2
FP8_UNIT_ROUNDOFF = 2.0 ** -4  # e4m3: 3 mantissa bits; round-to-nearest moves a value by at most this, relatively


def quantized_tensor_class() -> type:
    import comfy.quant_ops

    return comfy.quant_ops.QuantizedTensor  # 0.33 re-exports comfy-kitchen's class under this name


def run(model: Any, clip: Any) -> torch.Tensor:
    return ksample(model, encode(clip, PROMPT), encode(clip, ""), steps=STEPS)


@pytest.fixture(scope="module")
def quantized() -> tuple[Any, Any, Any]:
    """(model, clip, vae): fp8 UNet by the diffusion-model loader, CLIP/VAE by the checkpoint loader,
    in inference mode as nodes run."""
    with torch.inference_mode():
        return qm.load_quantized()


@pytest.fixture(scope="module")
def full_precision(tiny_sd1_checkpoint: Path) -> tuple[Any, Any, Any]:
    """The checkpoint the fp8 UNet was quantized from (fp16 on disk, float32 on CPU)."""
    import comfy.sd

    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_sd1_checkpoint), output_vae=True,
                                                                    output_clip=True)
    return model, clip, vae


@pytest.fixture(scope="module")
def word_edit(pack, quantized) -> Any:
    return word_edit_of(pack, quantized[0], quantized[1])


@pytest.fixture(scope="module")
def unpatched(quantized) -> torch.Tensor:
    return run(quantized[0], quantized[1])


def file_weight(layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized fp8 weight in the quantized file, full-precision weight it came from) of one layer."""
    with safe_open(str(qm.cached_quantized_unet()), "pt") as f:
        dequantized = qm.dequantize_fp8(f.get_tensor(f"{layer}.weight"), f.get_tensor(f"{layer}.weight_scale"))
    with safe_open(str(random_models.cached_checkpoint("sd1", "tiny", seed=0)), "pt") as f:
        full = f.get_tensor(f"{random_models.UNET_PREFIX}{layer}.weight").float()
    return dequantized, full


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- loading ------------------------------------------------------------------------------------


def test_every_linear_loads_as_a_quantized_layer(pack, quantized):
    unet = quantized[0].model.diffusion_model
    layers = qm.unet_linear_layers()
    assert any(name.endswith("attn2.to_k") for name in layers) and any(".ff." in name for name in layers)
    for name in layers:
        weight = unet.get_submodule(name).weight
        assert isinstance(weight, quantized_tensor_class()), name
    # value_weight reads the stored weight dequantized: exactly the file's fp8 values times scale.
    layer = next(iter(pack.nodes.host_model.cross_attention_layers(quantized[0])))
    dequantized, full = file_weight(f"{layer}.to_v")
    assert torch.equal(pack.nodes.host_model.value_weight(quantized[0], layer), dequantized)
    assert 0 < relative(dequantized, full) < FP8_UNIT_ROUNDOFF


def test_checkpoint_form_loads_quantized_layers():
    """The whole checkpoint, declared the way this host reads it (metadata on 0.3.7x, per-layer
    ``comfy_quant`` tensors on 0.33+: the two disagree on layer names), loads with fp8 layers.
    Not sampled: 0.3.75's checkpoint loader gives quantized layers no compute dtype when the UNet
    runs in float32 (they fail at their first forward); its diffusion-model loader sets one."""
    import comfy.sd

    path = qm.cached_quantized_checkpoint()
    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)
    to_k = model.model.diffusion_model.get_submodule("input_blocks.1.1.transformer_blocks.0.attn2.to_k")
    assert isinstance(to_k.weight, quantized_tensor_class())
    assert clip is not None


# -- applying -----------------------------------------------------------------------------------


def test_concept_changes_the_image(pack, quantized, word_edit, unpatched):
    model, clip, _ = quantized
    patched, pclip = apply(pack, model, clip, word_edit)
    out = run(patched, pclip)
    assert torch.isfinite(out).all()
    assert (out - unpatched).abs().max().item() > 1e-2


@pytest.mark.parametrize("gate", [{"strength": 0.0}, {"start_percent": 0.0, "end_percent": 0.0},
                                  {"start_percent": 1.0, "end_percent": 1.0}],
                         ids=["zero_strength", "window_at_start_only", "window_at_end_only"])
def test_inactive_concept_is_bit_identical(pack, quantized, word_edit, unpatched, gate):
    """Zero strength, or a window containing no sampled sigma, leaves the quantized model's output
    bit-identical to the unpatched one."""
    model, clip, _ = quantized
    patched, pclip = apply(pack, model, clip, word_edit.with_gate(**gate))
    assert torch.equal(run(patched, pclip), unpatched)


# -- training -----------------------------------------------------------------------------------


def test_thaw_keeps_quantized_weights(pack):
    """thaw on inference-mode fp8 weights: still the quantized class on the same fp8 data (no copy),
    same outputs, and autograd can differentiate through the layer."""
    import comfy.sd

    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(qm.cached_quantized_unet()))
    layer = model.model.diffusion_model.get_submodule("input_blocks.1.1.transformer_blocks.0.attn2.to_v")
    x = torch.randn(2, 3, layer.weight.shape[1])
    before, data = layer(x), layer.weight._qdata.data_ptr()
    assert pack.nodes.trainable_host.thaw(model.model) > 0
    assert isinstance(layer.weight, quantized_tensor_class()) and layer.weight._qdata.data_ptr() == data
    x.requires_grad_(True)
    out = layer(x)
    assert torch.equal(out.detach(), before)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert pack.nodes.trainable_host.thaw(model.model) == 0  # nothing left frozen


def teddy_images() -> torch.Tensor:
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
              for p in sorted(IMAGES_DIR.glob("teddy_?.png"))]
    return torch.from_numpy(np.stack(arrays))


def train(pack: Any, pipeline: tuple[Any, Any, Any], name: str) -> Any:
    """TrainPerfusion as ComfyUI runs it (inference mode), 2 steps at 64 px, seed 0."""
    model, clip, vae = pipeline
    with torch.inference_mode():
        return pack.nodes.nodes_train.train_perfusion(model, clip, vae, images=teddy_images(), trigger_word="zorb", superclass="teddy", steps=2,
                          batch_size=2, grad_accumulation=1, lr_values=0.03, lr_embedding=0.006, train_beta=0.75,
                          train_tau=0.1, seed=0, resolution=64, timestep_sets=1, gradient_checkpointing=False,
                          mask_source="none", checkpoint_every=0, output_name=name,
                          statistics_captions=STATS_CAPTIONS, preview_every=0)["result"][0]


def test_concept_trained_on_fp8_is_close_to_full_precision(pack, quantized, full_precision):
    """Same images, seed and CLIP; only the UNet's Linear weights differ, by fp8 rounding.

    Tolerance: a value target starts at W_V i_super, so its relative difference starts at the
    relative weight error eps_w of W_V (measured here, ~2.6%; at most 2^-4 per weight); the steps
    then move both by gradients of UNets that differ by that same error. We allow 2 eps_w per layer
    (measured: 1.1-1.25 eps_w on 0.3.75); a wrong scale, a lost quantization or a broken gradient
    gives differences of order 1."""
    concept_fp8 = train(pack, quantized, "fp8_concept")
    concept_full = train(pack, full_precision, "full_concept")
    for layer, targets in concept_fp8.v_targets.items():
        dequantized, full = file_weight(f"{layer}.to_v")
        eps_w = relative(dequantized, full)
        assert torch.isfinite(targets).all()
        assert relative(targets, concept_full.v_targets[layer]) < 2 * eps_w, layer
    assert all(torch.isfinite(e).all() for e in concept_fp8.embeddings.values())
