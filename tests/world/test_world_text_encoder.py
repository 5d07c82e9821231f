"""World v2's text encoder: the computation it trains is what ComfyUI runs on the checkpoint it makes."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.random_models import UNET_PREFIX, VAE_PREFIX, build_clip
from world.captions import CLIP_SEED
from world.model import V2_TEXT_ENCODER, WEIGHTS, world_checkpoint
from world.sampling import load
from world.text_encoder import (
    ACTIVE_LAYERS,
    context_measures,
    encode_captions,
    load_text_encoder,
    new_text_encoder,
    save_text_encoder,
    token_ids,
)

CAPTIONS = ["a photo of a red cup on the grass, on the left",
            "a photo of a small brown teddy with white dots and wearing a top hat",
            "a photo of a blue chair and a yellow cat in the snow"]


@pytest.fixture(scope="module")
def encoder():
    """A text encoder as training might leave it: every trained tensor moved off its seeded value
    (the active layers' residual writes too, which start near zero)."""
    enc = new_text_encoder(CAPTIONS)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in [enc.rows, enc.positions, *enc.layers.parameters(), *enc.final_layer_norm.parameters()]:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    enc.write_rows_into_clip()
    return enc


def _reference(tensors: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """CLIP-L's SD1 text encoding in float64 dense math, from the stored tensors alone: embeddings,
    ``ACTIVE_LAYERS`` pre-norm causal layers (12 heads, quick GELU), final LayerNorm."""
    t = {k.split("text_model.", 1)[1]: v.double() for k, v in tensors.items()}
    table = dict(zip(t.pop("embeddings.token_embedding.ids").long().tolist(), t.pop("embeddings.token_embedding.rows")))
    x = torch.stack([torch.stack([table[i] for i in row.tolist()]) for row in ids]) + t["embeddings.position_embedding.weight"]

    def norm(v: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(v, (768,), t[name + ".weight"], t[name + ".bias"], 1e-5)

    def linear(v: torch.Tensor, name: str) -> torch.Tensor:
        return v @ t[name + ".weight"].T + t[name + ".bias"]

    n = ids.shape[1]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    for i in range(ACTIVE_LAYERS):
        p = f"encoder.layers.{i}."
        h = norm(x, p + "layer_norm1")
        q, k, v = (linear(h, p + f"self_attn.{w}_proj").reshape(len(ids), n, 12, 64).transpose(1, 2) for w in "qkv")
        scores = (q @ k.transpose(-1, -2) / math.sqrt(64)).masked_fill(future, float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(len(ids), n, 768)
        x = x + linear(attended, p + "self_attn.out_proj")
        h = linear(norm(x, p + "layer_norm2"), p + "mlp.fc1")
        x = x + linear(h * torch.sigmoid(1.702 * h), p + "mlp.fc2")
    return norm(x, "final_layer_norm")


def test_the_encoder_is_two_clip_layers_in_float64_dense_math(encoder) -> None:
    ids = token_ids(encoder.clip, CAPTIONS)
    got = encoder(ids).double()
    want = _reference(encoder.trained_tensors(), ids)
    assert (got - want).abs().max() < 1e-4
    assert (got[0] - got[1]).abs().mean() > 0.1  # different captions, different encodings


def test_comfyui_encodes_with_all_twelve_layers_what_the_encoder_computes_with_two(encoder) -> None:
    """The silenced layers are exactly the identity in ComfyUI's own CLIPTextEncode path."""
    clip = encoder.clip
    for text, ids in zip(CAPTIONS, token_ids(clip, CAPTIONS)):
        comfy = clip.encode_from_tokens(clip.tokenize(text))
        assert torch.allclose(comfy[0].float(), encoder(ids[None])[0], atol=1e-5)


def test_a_checkpoint_with_the_stored_encoder_loads_as_sd15_and_encodes_the_same(encoder, tmp_path: Path) -> None:
    """... and the stored encoder loaded as the module (``load_text_encoder``), which encodes world
    v2's pretraining captions, gives what ComfyUI's CLIPTextEncode gives on that checkpoint. The
    UNet and the VAE come from files of their own, as world v2's stages are stored."""
    stored = tmp_path / "text-encoder.safetensors"
    save_text_encoder(stored, encoder)
    assert stored.stat().st_size < 32 * 2**20  # two layers in float16 and the world's rows, not CLIP-L
    weights = load_file(str(WEIGHTS))
    stages = (tmp_path / "unet.safetensors", tmp_path / "vae.safetensors")
    for path, prefix in zip(stages, (UNET_PREFIX, VAE_PREFIX)):
        save_file({k: v for k, v in weights.items() if k.startswith(prefix)}, str(path))
    model, clip, vae = load(world_checkpoint(tmp_path, stages, text_encoder=stored, name="v2.safetensors"))
    assert type(model.model.model_config).__name__ == "SD15"
    unet = model.model.diffusion_model.state_dict()
    assert all(torch.equal(unet[k[len(UNET_PREFIX):]].half(), v) for k, v in weights.items() if k.startswith(UNET_PREFIX))
    assert torch.equal(vae.first_stage_model.taesd_decoder[1].weight.half(), weights[VAE_PREFIX + "taesd_decoder.1.weight"])
    ours, seeded = encode_captions(load_text_encoder(stored), CAPTIONS), build_clip("sd1", "full", seed=CLIP_SEED)
    for text, ids, loaded in zip(CAPTIONS, token_ids(clip, CAPTIONS), ours):
        got = clip.encode_from_tokens(clip.tokenize(text))[0].float()
        assert (got - encoder(ids[None])[0]).abs().max() < 0.05  # the checkpoint stores float16
        assert torch.allclose(loaded, got, atol=1e-4)
        assert (seeded.encode_from_tokens(seeded.tokenize(text))[0] - got).abs().max() > 0.5


def test_context_measures_read_zero_mixing_from_a_lookup_and_little_from_the_first_worlds_encoder(encoder) -> None:
    """The first world's seeded 12-layer encoder moves later words by 12-15% and keeps padding
    almost constant (cosine 0.998): the measures must read that, and exactly 0 / 1 from a lookup."""
    clip = encoder.clip
    table = torch.randn(49408, 768, generator=torch.Generator().manual_seed(0))
    lookup = context_measures(lambda ids: table[ids] + torch.arange(77)[:, None] / 77, clip)
    assert lookup == {"later_words": 0.0, "padding_cosine": pytest.approx(1.0)}
    first = build_clip("sd1", "full", seed=CLIP_SEED).cond_stage_model.clip_l

    def first_world(ids: torch.Tensor) -> torch.Tensor:
        return first.encode_token_weights([[(int(t), 1.0) for t in row] for row in ids])[0].reshape(len(ids), 77, 768)

    measured = context_measures(first_world, clip)
    assert 0.1 < measured["later_words"] < 0.2 and measured["padding_cosine"] > 0.99, measured


def test_caption_picture_training_teaches_the_encoder_which_picture_a_caption_describes() -> None:
    """A few steps of world.text_pretrain on a small pool: captions find their own pictures among
    others far better than the untrained towers do, and only the trained tensors change."""
    from world.text_pretrain import (
        CaptionPictureModel,
        caption_picture_pool,
        train_text_encoder,
    )

    text = new_text_encoder()
    silenced_before = text.clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[5].mlp.fc1.weight.clone()
    table_row = text.clip.cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight[0].clone()
    tokens, pictures = caption_picture_pool(text.clip, 32, random.Random(5))
    torch.manual_seed(0)
    before = CaptionPictureModel(text).loss(tokens, pictures).item()
    model = train_text_encoder(text, steps=40, batch=32, lr=1e-3, pool=32, seed=5, log=lambda m: None)
    with torch.no_grad():
        after = model.loss(tokens, pictures).item()
    assert after < 0.5 * before, (before, after)
    layers = text.clip.cond_stage_model.clip_l.transformer.text_model
    assert torch.equal(layers.encoder.layers[5].mlp.fc1.weight, silenced_before)
    assert torch.equal(layers.embeddings.token_embedding.weight[0], table_row)  # not a world token
    ids = token_ids(text.clip, CAPTIONS)
    assert torch.allclose(text.clip.encode_from_tokens(text.clip.tokenize(CAPTIONS[0]))[0], text(ids[:1])[0], atol=1e-5)


def test_world_v2s_trained_encoder_mixes_context_as_the_first_worlds_does_not(tmp_path: Path) -> None:
    """The committed encoder, read by ComfyUI from an assembled checkpoint: a one-word swap moves
    the later words far more than in the first world's encoder (0.14; measured above as 0.1-0.2),
    and padding differs between captions (the first world's: cosine 0.998)."""
    _, clip, _ = load(world_checkpoint(tmp_path, WEIGHTS, text_encoder=V2_TEXT_ENCODER, name="v2.safetensors"))
    inner = clip.cond_stage_model.clip_l

    def comfyui(ids: torch.Tensor) -> torch.Tensor:
        return inner.encode_token_weights([[(int(t), 1.0) for t in row] for row in ids])[0].reshape(len(ids), 77, 768)

    measured = context_measures(comfyui, clip)
    assert measured["later_words"] > 0.3 and measured["padding_cosine"] < 0.9, measured
