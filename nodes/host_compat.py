"""Where ComfyUI releases differ for this pack, in one place.

Tested hosts: 0.3.75 (CI) and 0.33.0 (by hand); docs/compatibility.md has the runs. Each
function asks the host for the feature it needs instead of comparing version numbers, so the
releases in between and after behave by what they actually have.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from ..perfusion_core.host_version import host_comfyui_version

log = logging.getLogger(__name__)
TESTED_HOSTS = ("0.3.75", "0.33.0")


def log_host_version() -> None:
    """One line at start-up: which ComfyUI this is, and which ones the pack was tested on."""
    found = host_comfyui_version() or "(version unknown)"
    log.info("Perfusion: running on ComfyUI %s (tested on %s)", found, ", ".join(TESTED_HOSTS))


def clone_for_training(model: Any) -> Any:
    """A clone of ``model`` whose weights autograd can train through.

    Newer hosts load models "dynamically" on NVIDIA GPUs (weights streamed into reused cast
    buffers); a dynamic clone's weights are not the parameters the trainer makes visible to
    autograd, so training asks for an ordinary ModelPatcher, as core's TrainLoraNode does.
    Hosts without dynamic loading (0.3.75, any CPU run) get a plain clone."""
    is_dynamic = getattr(model, "is_dynamic", None)
    if callable(is_dynamic) and is_dynamic():
        return model.clone(disable_dynamic=True)
    return model.clone()


@contextlib.contextmanager
def training_mode() -> Iterator[None]:
    """The host's "a training loop is running" flag, where it has one (newer hosts' kernels and
    ops take their autograd-friendly paths while it is set); restored afterwards."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    previous = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous


def load_for_training(model: Any) -> bool:
    """Load ``model`` for a training run, before the run's sampler loads it again (that second
    load keeps what is loaded). Fully, unless ComfyUI runs in a low-VRAM mode: then the host
    offloads as it would for sampling, which is correct for Perfusion (only activations carry
    gradients, never the base weights; tests/host/test_train_host_paths.py trains both ways).
    Returns whether a full load was asked for."""
    import comfy.model_management as mm

    low_memory = mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM)
    # memory_required as TrainLoraNode asks: free the device of every other model first.
    mm.load_models_gpu([model], memory_required=1e20, force_full_load=not low_memory)
    return not low_memory
