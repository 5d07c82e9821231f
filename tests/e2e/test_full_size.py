"""Full-size SD1.5 and SDXL checkpoints (random weights, real layout) through the stock loader.

The tiny models used elsewhere have fewer cross-attention layers; these tests
prove on the real layouts, in a real server, that a concept made in-graph
hooks every cross-attention layer: 16 for SD1.5, 70 for SDXL, with both the
K and the V projection of each. The layer count comes from the pack's own
log line and is checked against the concept file the same graph saves.

Costs are bounded: few captions for the text-encoder statistics, 64x64 px,
one or two steps, and one server at a time (full SDXL runs with
``--fp16-unet``, about half the RAM of fp32). Disk too: each checkpoint is
written for its test and deleted after it (never cached), and the SDXL one is
stored in fp8 (3.6 GB instead of 6.9 GB; the loader casts it to fp16), so the
suite's peak disk use stays near the virtual environment's size plus 4 GB.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perfusion_core.concept_file import load_concept
from harness.comfy_server import ComfyServer
from tools.demo import install_file
from harness.random_models import cache_dir, write_checkpoint

HOOK_LINE = re.compile(r"Perfusion: (\d+) concept\(s\) \[([^\]]*)\] on (\d+) cross-attention layers "
                       r"\((\d+) K/V projections hooked\)")


def word_edit_prompt(ckpt_name: str, captions: int, steps: int, cfg: float) -> dict[str, Any]:
    """Checkpoint -> word edit (cat -> dog) -> save + apply -> sample 64x64 -> save image."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "PerfusionWordEdit", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "trigger_word": "cat", "target_word": "dog",
            "template": "a photo of a {}", "statistics_captions": captions}},
        "3": {"class_type": "SavePerfusionConcept", "inputs": {"concept": ["2", 0], "filename_prefix": "full_cat"}},
        "4": {"class_type": "ApplyKeyLockedEdit", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "concept": ["2", 0], "trigger_word": ""}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a photo of a cat on a sofa"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 1, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["7", 0],
            "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "full"}},
    }


def run_full_size(family: str, layers: int, extra_args: list[str], captions: int, steps: int,
                  cfg: float, dtype: torch.dtype = torch.float16) -> None:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"full-{family}-", dir=cache_dir()) as scratch:
        check_full_size(Path(scratch), family, layers, extra_args, captions, steps, cfg, dtype)


def check_full_size(scratch: Path, family: str, layers: int, extra_args: list[str], captions: int,
                    steps: int, cfg: float, dtype: torch.dtype) -> None:
    name = f"random_{family}_full.safetensors"
    t0 = time.perf_counter()
    checkpoint = write_checkpoint(scratch / name, family, "full", seed=0, dtype=dtype)
    t_ckpt = time.perf_counter() - t0
    with ComfyServer(extra_args=extra_args) as server:
        assert server.pack_loaded(), server.pack_error()
        install_file(checkpoint, server.models_dir / "checkpoints" / name)
        t1 = time.perf_counter()
        history = server.run(word_edit_prompt(name, captions, steps, cfg), timeout=900)
        t_run = time.perf_counter() - t1
        log = server.log_text()
        images = server.images(history)
        saved = sorted((server.models_dir / "perfusion").rglob("full_cat*.safetensors"))
        assert len(saved) == 1, (f"expected one saved concept, found {saved}; perfusion folder: "
                                 f"{sorted(p.name for p in (server.models_dir / 'perfusion').rglob('*'))}\n"
                                 f"{log[-4000:]}")
        concept = load_concept(saved[0])
        start_s = server.start_seconds
    print(f"\n{family} full: checkpoint written {t_ckpt:.1f} s ({checkpoint.stat().st_size / 1e9:.2f} GB), "
          f"server start {start_s:.1f} s, "
          f"prompt {t_run:.1f} s (load, {captions}-caption statistics, word edit, {steps} steps)")

    if dtype == torch.float8_e4m3fn:  # fp8 only on disk: the hooks must see the fp16 UNet the flag asks for
        assert "model weight dtype torch.float16" in log, log[-3000:]
    hooks = HOOK_LINE.findall(log)
    assert len(hooks) == 1, log[-3000:]
    n_concepts, triggers, n_layers, n_hooked = hooks[0]
    assert (int(n_concepts), triggers) == (1, "cat")
    assert int(n_layers) == layers
    assert int(n_hooked) == 2 * layers  # K and V of every cross-attention layer
    assert len(concept.v_targets) == layers and concept.family == family

    assert len(images) == 1 and images[0].size == (64, 64)
    pixels = np.asarray(images[0].convert("RGB"), dtype=np.float64)
    assert pixels.std() > 1.0, "constant image: the sampler or the VAE produced nothing"


def test_full_sd15_hooks_all_16_cross_attention_layers() -> None:
    run_full_size("sd1", 16, extra_args=[], captions=48, steps=2, cfg=5.0)


def test_full_sdxl_hooks_all_70_cross_attention_layers() -> None:
    # fp32 full SDXL peaked at 19.6 GiB in-process; the fp16 UNet keeps the server near half of that.
    # The statistics come from one encoder call (16 captions; CLIP-G is the slow part on a CPU),
    # and cfg 1 skips the unconditional pass: one UNet evaluation in all. Stored in fp8 for the disk.
    run_full_size("sdxl", 70, extra_args=["--fp16-unet"], captions=16, steps=1, cfg=1.0,
                  dtype=torch.float8_e4m3fn)
