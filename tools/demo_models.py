"""Put the models the shipped workflows reference into a test server.

Shared by the end-to-end tests (API and browser) and ``tools/screenshots.py``,
so every server that runs the workflows sees the same files under the same
names: the tiny random-weight SD1.5 checkpoint, a random LoRA and ControlNet,
and the bundled training images in the input folder.
"""

from __future__ import annotations

from typing import Any

from tools import make_workflows as wf
from harness.comfy_server import ComfyServer
from tools.demo import install_file, install_training_images
from harness.random_models import cached_checkpoint, write_controlnet, write_lora

# The shipped workflows estimate the text-encoder statistics from 500 captions
# (minutes on 2 CPU cores); quick runs use fewer. Same node, same code path.
QUICK_STATISTICS_CAPTIONS = 48
# Widget values that make the slow workflows quick when run from the UI: the UI rounds
# statistics_captions to its step of 100 (and TrainPerfusion's minimum is 100), and a few
# training steps show the whole train -> save -> apply -> sample path.
QUICK_UI_WIDGETS: dict[str, dict[str, Any]] = {
    "PerfusionWordEdit": {"statistics_captions": 100},
    "TrainPerfusion": {"statistics_captions": 100, "steps": 4},
}


def install_demo_models(server: ComfyServer) -> None:
    """Install checkpoint, LoRA, ControlNet and training images under the workflows' names."""
    models = server.models_dir
    install_file(cached_checkpoint("sd1", "tiny", seed=0), models / "checkpoints" / wf.CHECKPOINT)
    write_lora(models / "loras" / wf.LORA, "sd1", seed=1, size="tiny")
    write_controlnet(models / "controlnet" / wf.CONTROLNET, seed=2, family="sd1", size="tiny")
    install_training_images(server.input_dir)
