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

# The shipped workflows are set for a real SD1.5 checkpoint (512 px, 25 sampling steps, training
# at the paper's recipe, statistics from 20000 captions): far too slow for a test on 2 CPU cores,
# and the tiny random model shows no more with more. Everything that runs them on it applies these
# settings. The statistics come from 100 captions, TrainPerfusion's minimum, so one count is valid
# for both nodes that estimate them and a server computes them once (cached per text encoder and
# count); the UI's statistics_captions widgets step by 100, so the count also survives the UI.
QUICK_STATISTICS_CAPTIONS = 100
TINY_MODEL = wf.Settings(size=64, sampler_steps=4, statistics_captions=QUICK_STATISTICS_CAPTIONS, train_steps=4,
                         train_batch_size=2, train_grad_accumulation=1, train_lr_values=0.1,
                         train_gradient_checkpointing=False)
# The same settings as widget values, for a run from the web UI (4 training steps show the whole
# train -> save -> apply -> sample path).
QUICK_UI_WIDGETS: dict[str, dict[str, Any]] = TINY_MODEL.widgets()


def install_demo_models(server: ComfyServer) -> None:
    """Install checkpoint, LoRA, ControlNet and training images under the workflows' names."""
    models = server.models_dir
    install_file(cached_checkpoint("sd1", "tiny", seed=0), models / "checkpoints" / wf.CHECKPOINT)
    write_lora(models / "loras" / wf.LORA, "sd1", seed=1, size="tiny")
    write_controlnet(models / "controlnet" / wf.CONTROLNET, seed=2, family="sd1", size="tiny")
    install_training_images(server.input_dir)
