"""Build the world model from nothing: ``python -m world.build [--steps N]``.

Stages, each cached under ``.cache/world`` so an interrupted build resumes:
VAE -> the two judges -> caption embeddings -> latents of the pretraining
images -> UNet -> ``world/weights/world-sd15-unet-vae.safetensors`` (the
committed artefacts: that file and the judges'). ``--judges-only`` trains
whichever judge file is missing against the committed world's VAE (as it is
stored, in float16), without the other stages. ``--v2-codec`` builds the first
stage of world v2: its codec (``WORLD_V2``, about 75 minutes on 2 idle cores, then the
recipe's fine-tune phase, ``world.codec_finetune``, when it has one) and the parts
judge trained against it (about 30 more); ``--v2-text`` the second, its text
encoder (``world.text_pretrain``, about 40 minutes on 2 idle cores); ``--v2-unet`` the
third, its UNet, from the other two (``V2_UNET_SETTINGS``; its progress is saved every
250 steps and resumed, and ``--until STEP`` stops it early, so a CPU build can take
several sittings).
Deterministic for a given torch build: every random choice comes from a seed.
About 80 minutes on a 2-core CPU for the default 3000 steps, plus about 30 for the judges; ``--device cuda``
runs the caption and UNet stages on a GPU (the VAE, judge and latents stay on
the CPU, so a CPU run's cached stages can be carried over).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.comfy_host import REPO_ROOT, import_host
from world.autoencoder import (
    WORLD_V1,
    WORLD_V2,
    CodecRecipe,
    new_taesd,
    train_autoencoder,
)
from world.captions import cached_encode
from world.codec_finetune import finetune_codec
from world.dataset import EMPTY_CAPTION, PretrainingSet, images, pretraining_set
from world.judge import (
    JUDGE_WEIGHTS,
    PARTS_JUDGE_WEIGHTS,
    V2_PARTS_JUDGE,
    save_judge,
    train_judge,
)
from world.model import (
    V2_CODEC,
    V2_TEXT_ENCODER,
    V2_UNET,
    WEIGHTS,
    load_world_taesd,
    new_unet,
    save_weights,
)
from world.pretrain import PretrainSettings, encode_latents, pretrain
from world.scenes import V2_PART_SCALE, V2_PARTS_SHARE
from world.text_encoder import (
    context_measures,
    encode_captions,
    load_text_encoder,
    new_text_encoder,
    save_text_encoder,
)
from world.text_pretrain import train_text_encoder

CACHE = REPO_ROOT / ".cache" / "world"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _use_fused_attention() -> None:
    """The host is imported for CPU execution, which picks a chunked attention that is slow
    on a GPU; the build's UNet uses PyTorch's fused attention there instead."""
    import_host()
    from comfy.ldm.modules import attention

    attention.optimized_attention = attention.attention_pytorch


# The parts judge has more to read (two more heads, look-alikes that differ in one small part).
PARTS_JUDGE_STEPS, PARTS_JUDGE_SCENES = 4000, 16000


def train_missing_judges(taesd: torch.nn.Module) -> None:
    if not JUDGE_WEIGHTS.is_file():
        save_judge(train_judge(taesd, log=_log))
    train_missing_parts_judge(taesd, PARTS_JUDGE_WEIGHTS)


def train_missing_parts_judge(taesd: torch.nn.Module, path: Path, part_scale: float = 1.0) -> None:
    if not path.is_file():
        judge = train_judge(taesd, steps=PARTS_JUDGE_STEPS, n=PARTS_JUDGE_SCENES, parts=True, log=_log,
                            part_scale=part_scale)
        _log(f"wrote {save_judge(judge, path)}")


def build_v2_codec(recipe: CodecRecipe = WORLD_V2) -> None:
    """World v2's codec (reconstruction steps, cached, then the recipe's fine-tune phase if it has
    one), then the parts judge that reads its round trips, its scenes' parts drawn as the codec's;
    each kept when present."""
    if not V2_CODEC.is_file():
        # The reconstruction phase is long: kept by what it was trained with, so a new recipe retrains it.
        first_phase = replace(recipe, finetune_steps=0, finetune_lr=0.0, adversarial_weight=0.0)
        reconstructed = CACHE / f"v2-codec-{hashlib.sha256(repr(first_phase).encode()).hexdigest()[:12]}.safetensors"
        taesd = new_taesd(0, recipe.residual_gain)
        if reconstructed.is_file():
            taesd.load_state_dict(load_file(str(reconstructed)))
        else:
            taesd = train_autoencoder(recipe, log=_log)
            CACHE.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in taesd.state_dict().items()}, str(reconstructed))
        if recipe.finetune_steps:
            taesd = finetune_codec(taesd, recipe, log=_log)
        _log(f"wrote {save_weights(V2_CODEC, None, taesd)}")
    train_missing_parts_judge(load_world_taesd(V2_CODEC), V2_PARTS_JUDGE, recipe.part_scale)


TEXT_STEPS = 2000


def build_v2_text_encoder(steps: int = TEXT_STEPS) -> None:
    """World v2's text encoder, trained on its own against pictures; kept when present."""
    if V2_TEXT_ENCODER.is_file():
        return
    encoder = new_text_encoder()
    _log(f"untrained: {context_measures(encoder, encoder.clip)}")
    train_text_encoder(encoder, steps, log=_log)
    _log(f"trained: {context_measures(encoder, encoder.clip)}")
    save_text_encoder(V2_TEXT_ENCODER, encoder)
    _log(f"wrote {V2_TEXT_ENCODER}")


def train_unet(data: PretrainingSet, encoder: Callable[[list[str]], torch.Tensor] | None, text_tag: str,
               taesd: torch.nn.Module, image_tag: str, settings: PretrainSettings, device: str = "cpu",
               progress: Path | None = None, until: int | None = None) -> torch.nn.Module | None:
    """A world UNet pretrained on ``data``: its captions encoded by ``encoder`` (None: the first
    world's CLIP) and its images by ``taesd``, each cached under ``CACHE`` in a file named with
    ``text_tag`` / ``image_tag`` (say what made them). None when stopped at ``until``
    (``world.pretrain.pretrain``)."""
    captions = data.all_captions()
    assert captions[0] == EMPTY_CAPTION
    table, index = cached_encode(CACHE / f"captions{text_tag}.safetensors", captions, device=device, encoder=encoder,
                                 log=lambda m: _log(m) if m.split()[1].startswith(("64/", "6400/")) else None)
    _log(f"{len(data.scenes)} scenes, {len(table)} distinct captions")
    latent_path = CACHE / f"latents{image_tag}.safetensors"
    if latent_path.is_file():
        latents = load_file(str(latent_path))["latents"]
    else:
        latents = torch.cat([encode_latents(taesd, images(data.scenes[i:i + 1000]))
                             for i in range(0, len(data.scenes), 1000)])
        save_file({"latents": latents.contiguous()}, str(latent_path))
    _log(f"latents {tuple(latents.shape)} mean {latents.mean():.3f} std {latents.std():.3f}")

    rows = index[1:].reshape(len(data.scenes), -1)  # row 0 is the empty caption
    model = new_unet()
    if device != "cpu":
        _use_fused_attention()

    def snapshot(ema: torch.nn.Module, step: int) -> None:
        save_weights(CACHE / f"snapshot{image_tag}{text_tag}-{step}.safetensors", ema, taesd)

    return pretrain(model, latents, table, rows, int(index[0]), settings, log=_log, snapshot=snapshot,
                    device=device, progress=progress, until=until)


def build(out: Path = WEIGHTS, steps: int = PretrainSettings.steps, vae_steps: int = 2500,
          batch: int = PretrainSettings.batch, device: str = "cpu") -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    vae_path = CACHE / f"taesd-{vae_steps}.safetensors"
    taesd = new_taesd()
    if vae_path.is_file():
        taesd.load_state_dict(load_file(str(vae_path)))
    else:
        taesd = train_autoencoder(replace(WORLD_V1, steps=vae_steps), log=_log)
        save_file({k: v.contiguous() for k, v in taesd.state_dict().items()}, str(vae_path))
    taesd.requires_grad_(False)
    train_missing_judges(taesd)
    ema = train_unet(pretraining_set(), None, "", taesd, f"-{vae_steps}", PretrainSettings(steps=steps, batch=batch),
                     device)
    return save_weights(out, ema, taesd)


# World v2's UNet: the first world's pretraining, longer, on scenes in which half the ordinary
# objects wear concept parts (drawn as the v2 codec was trained on them), captioned by the v2
# text encoder. The progress is kept, so a CPU build can take several sittings (``--until``).
# 8000 steps at batch 32: 2.7 times the first world's CPU build (about 1.5 s a step on 2 cores).
V2_UNET_SETTINGS = PretrainSettings(steps=8000, batch=32)


def _file_tag(path: Path) -> str:
    """A digest of a stage's file: names what is cached from it, so a rebuilt stage is not mixed
    with another's caches."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def build_v2_unet(settings: PretrainSettings = V2_UNET_SETTINGS, device: str = "cpu",
                  until: int | None = None) -> Path | None:
    """World v2's UNet from its codec and text encoder (both must be built); kept when present.
    None when stopped at ``until``."""
    if V2_UNET.is_file():
        return V2_UNET
    missing = [p.name for p in (V2_CODEC, V2_TEXT_ENCODER) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"world v2's UNet learns from its codec's latents and its text encoder's captions; "
                                f"missing: {', '.join(missing)} (--v2-codec and --v2-text build them)")
    CACHE.mkdir(parents=True, exist_ok=True)
    text_tag, image_tag = f"-v2-{_file_tag(V2_TEXT_ENCODER)}", f"-v2-{_file_tag(V2_CODEC)}"

    def encode(captions: list[str]) -> torch.Tensor:  # only when the cache misses captions
        return encode_captions(load_text_encoder(V2_TEXT_ENCODER), captions)

    ema = train_unet(pretraining_set(parts_share=V2_PARTS_SHARE, part_scale=V2_PART_SCALE), encode, text_tag,
                     load_world_taesd(V2_CODEC), image_tag, settings, device,
                     progress=CACHE / f"unet-progress{image_tag}{text_tag}.safetensors", until=until)
    if ema is None:
        _log(f"stopped after step {until}; the same command goes on from there")
        return None
    return save_weights(V2_UNET, ema, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help=f"UNet training steps (first world {PretrainSettings.steps}, "
                                                  f"v2 {V2_UNET_SETTINGS.steps})")
    parser.add_argument("--batch", type=int, help=f"UNet batch size (default {PretrainSettings.batch})")
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--device", default="cpu", help="torch device of the caption and UNet stages")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--judges-only", action="store_true", help="train the missing judge files, nothing else")
    parser.add_argument("--v2-codec", action="store_true", help="build world v2's codec and its parts judge")
    parser.add_argument("--v2-text", action="store_true", help="build world v2's text encoder")
    parser.add_argument("--v2-unet", action="store_true", help="build world v2's UNet (its codec and text encoder first)")
    parser.add_argument("--until", type=int, help="--v2-unet: stop after this step; the same command goes on from it")
    args = parser.parse_args(argv)
    if args.v2_codec:
        build_v2_codec()
    if args.v2_text:
        build_v2_text_encoder()
    if args.v2_unet:
        settings = replace(V2_UNET_SETTINGS, **{k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v})
        path = build_v2_unet(settings, args.device, args.until)
        if path is not None:
            _log(f"world v2's UNet: {path}")
    if args.v2_codec or args.v2_text or args.v2_unet:
        return 0
    if args.judges_only:
        train_missing_judges(load_world_taesd())
        return 0
    path = build(args.out, args.steps or PretrainSettings.steps, args.vae_steps, args.batch or PretrainSettings.batch,
                 args.device)
    _log(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
