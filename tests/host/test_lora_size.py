"""The benchmarks' LoRA sizes: their count of what TrainLoraNode trains, checked against the node."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from harness.comfy_host import REPO_ROOT


def bench_overhead():
    spec = importlib.util.spec_from_file_location("bench_overhead", REPO_ROOT / "bench" / "bench_overhead.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_lora_count_matches_what_train_lora_node_returns(pack, tiny_sd1_checkpoint: Path):
    import comfy.sd

    from harness.lora_baseline import train_lora_node

    count = bench_overhead().train_lora_node_floats
    with torch.inference_mode():  # as the server runs nodes
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_sd1_checkpoint), output_clip=True)
        tokens = clip.tokenize("a photo of a zorb")
        positive = [[clip.encode_from_tokens(tokens), {}]]
        for rank in (4, 8):
            lora = train_lora_node(model, [torch.zeros(1, 4, 8, 8)] * 2, positive, steps=1, learning_rate=1e-4,
                                   rank=rank, training_dtype="fp32", lora_dtype="fp32", algorithm="LoRA",
                                   gradient_checkpointing=False)
            trained = sum(t.numel() for t in lora.values())
            assert count(model.model.diffusion_model, rank) == trained
