"""Shared test setup.

Makes the repository importable, loads the development ComfyUI host in-process
(forced to CPU) before any test module imports ``comfy``, and provides real
ComfyUI models with random weights. Session-scoped models are shared by all
tests: clone them (``model.clone()``, ``clip.clone()``) before patching.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.comfy_host import import_host  # noqa: E402

import_host()

from harness import random_models  # noqa: E402

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP

    Pipeline = tuple[ModelPatcher, CLIP]


@pytest.fixture(scope="session")
def tiny_sd1() -> "Pipeline":
    """(ModelPatcher, CLIP): tiny SD1.5 (context 768, 7 cross-attention layers), seed 0."""
    return random_models.build_pipeline("sd1", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sd2() -> "Pipeline":
    """(ModelPatcher, CLIP): tiny SD2 (context 1024, OpenCLIP-H penultimate layer), seed 0."""
    return random_models.build_pipeline("sd2", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl() -> "Pipeline":
    """(ModelPatcher, CLIP): tiny SDXL (context 2048 = CLIP-L 768 ++ CLIP-G 1280, 12 cross-attention layers), seed 0."""
    return random_models.build_pipeline("sdxl", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sd1_checkpoint() -> Path:
    """Path of the cached tiny SD1.5 checkpoint for seed 0 (same UNet weights as ``tiny_sd1``, fp16)."""
    return random_models.cached_checkpoint("sd1", "tiny", seed=0)
