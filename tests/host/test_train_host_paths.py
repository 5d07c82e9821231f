"""TrainPerfusion on the host's training path, on every tested host (0.3.75 and 0.33).

- The gradients of one real training step (float32, the node's whole path: in-training flag,
  explicit load, ComfyUI's guider and model management) against central finite differences of
  the same loss computed with the UNet in float64: independent of autograd and of whatever the
  host does to weights between the parameters and the kernels.
- Training with the host offloading the model (partial loading, weights cast per call) gives the
  concept of a fully loaded run.
- The host's "training" flag is set while the loop runs, and restored.

The UNet and VAE come from the stock checkpoint loader; the text encoder is the in-process tiny
CLIP-L (real widths and tokenizer, 3 layers), as in ``test_train.py``: the full-size encoder's
forward and backward would dominate every step, and the e2e tier trains through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from harness import random_models
from host_helpers import STATS_CAPTIONS
from perfusion_core.training import TrainingSettings
from test_train import RESOLUTION, load_images, train

SETTINGS = dict(steps=1, batch_size=2, grad_accumulation=1, lr_values=0.03, lr_embedding=0.006, beta=0.75, tau=0.1,
                seed=3, resolution=RESOLUTION, timestep_sets=1)


def _load(checkpoint: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any, Any]:
    import comfy.sd

    options = {} if dtype is None else {"dtype": dtype}
    with torch.inference_mode():  # as a loader node runs
        model, _, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True,
                                                                 output_clip=False, model_options=options)
        clip = random_models.build_clip("sd1", "tiny", seed=0)
    return model, clip, vae


@pytest.fixture(scope="module")
def pipeline(tiny_sd1_checkpoint: Path) -> tuple[Any, Any, Any]:
    return _load(tiny_sd1_checkpoint)


def _trainer(pack: Any, model: Any, clip: Any, vae: Any, tmp_path: Path, data: Any = None) -> Any:
    t = pack.nodes.training
    with torch.inference_mode(False), torch.enable_grad():
        data = data or pack.nodes.training_data.prepare_data(model, vae, load_images(), None, RESOLUTION)
        files = t.RunFiles(concept=str(tmp_path / "c.safetensors"), state=str(tmp_path / "s.safetensors"),
                           checkpoint_every=0)
        return t.PerfusionTrainer(model, clip, data, "zorb", "teddy", TrainingSettings(**SETTINGS), STATS_CAPTIONS,
                                  False, files)


def _parameters(trainer: Any) -> dict[str, torch.nn.Parameter]:
    return dict(trainer.trainables.named_parameters())


def test_one_step_gradients_match_float64_finite_differences(pack, pipeline, tiny_sd1_checkpoint, tmp_path):
    model, clip, vae = pipeline
    trainer = _trainer(pack, model, clip, vae, tmp_path)
    start = {k: p.detach().clone() for k, p in _parameters(trainer).items()}
    grads: dict[str, torch.Tensor] = {}

    def record_then_step(step=trainer.optimizer.step):
        grads.update({k: p.grad.detach().clone() for k, p in _parameters(trainer).items()})
        return step()

    trainer.optimizer.step = record_then_step
    trainer.run()
    assert set(grads) == set(start) and all(bool(g.abs().sum() > 0) for g in grads.values())

    # The same loss with the UNet in float64 (same checkpoint, same text encoder, same data and draws).
    model64 = _load(tiny_sd1_checkpoint, torch.float64)[0]
    ref = _trainer(pack, model64, clip, vae, tmp_path / "f64", data=trainer.data)
    with torch.no_grad():
        for k, p in _parameters(ref).items():
            p.copy_(start[k])
    # Along each group's own gradient: the directional derivative is then |g| (no cancellation
    # between terms, which would leave the finite difference at the level of float32 round-off).
    checks = {}
    for group in ("values.", "embedding."):
        part = {k: g.double() for k, g in grads.items() if k.startswith(group)}
        norm = float(torch.cat([g.flatten() for g in part.values()]).norm())
        checks[group[:-1]] = {k: g / norm for k, g in part.items()}
    found: dict[str, tuple[float, float]] = {}

    def body(base_model: Any, model_options: dict) -> None:
        data = ref.data_on(ref.patched.load_device)
        params = _parameters(ref)

        def loss_at(step_size: float, direction: dict[str, torch.Tensor]) -> float:
            with torch.no_grad():
                for k, d in direction.items():
                    params[k].copy_(start[k].double().add(d, alpha=step_size).float())
                loss = ref.micro_batch_loss(base_model, model_options, data, 0, 0)[0]
                ref.runtime.held_step = None
                return float(loss.double())

        assert base_model.get_dtype() == torch.float64
        for name, direction in checks.items():
            # A unit direction; the float64 UNet sees float32 parameters: steps far above their rounding.
            h = 1e-2 * max(float(torch.cat([start[k].flatten() for k in direction]).abs().max()), 1.0)
            numeric = (loss_at(h, direction) - loss_at(-h, direction)) / (2 * h)
            analytic = sum(float((grads[k].double() * d).sum()) for k, d in direction.items())
            found[name] = (analytic, numeric)

    ref.clip.load_model()
    with torch.inference_mode(False):
        with torch.no_grad():
            positive = pack.nodes.host_sampling.encode(ref.clip, "teddy")
        pack.nodes.host_sampling.run_in_guider(ref.patched, positive, tuple(trainer.data.latents.shape[1:]), body)
    for name, (analytic, numeric) in found.items():
        # float32 autograd against float64 differences with a finite step: 1% (the embedding's path
        # also runs the host's float32 text encoder, hence its looser bound). A gradient that lost a
        # path or a scale (cast weights outside autograd, a stale step state) is off by far more.
        rel = 1e-2 if name == "values" else 5e-2
        assert abs(analytic - numeric) <= rel * max(abs(numeric), 1e-8), (name, analytic, numeric)


def test_the_hosts_training_flag_is_set_while_training_and_restored(pack, pipeline, tmp_path, monkeypatch):
    import comfy.model_management as mm

    model, clip, vae = pipeline
    trainer = _trainer(pack, model, clip, vae, tmp_path)
    seen: list[Any] = []
    original = trainer.micro_batch_loss

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(mm, "in_training", "absent"))
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "micro_batch_loss", spy)
    before = getattr(mm, "in_training", "absent")
    trainer.run()
    # 0.3.75 has no such flag (nothing is added to the host); newer hosts have it and see it set.
    assert seen == ["absent"] if before == "absent" else seen == [True]
    assert getattr(mm, "in_training", "absent") == before


def test_dynamic_models_are_trained_on_an_ordinary_clone(pack):
    """Newer hosts' dynamically loaded models (NVIDIA only, so no CPU host makes one) are cloned with
    dynamic loading off, as core's TrainLoraNode does; ordinary models get a plain clone."""

    class Patcher:
        def __init__(self, dynamic: bool) -> None:
            self.dynamic, self.asked = dynamic, None

        def is_dynamic(self) -> bool:
            return self.dynamic

        def clone(self, **kwargs: Any) -> dict:
            self.asked = kwargs
            return kwargs

    clone_for_training = pack.nodes.host_compat.clone_for_training
    assert clone_for_training(Patcher(True)) == {"disable_dynamic": True}
    assert clone_for_training(Patcher(False)) == {}


def test_offloaded_training_gives_the_fully_loaded_concept(pack, pipeline, tiny_sd1_checkpoint, monkeypatch):
    """Every load of a freshly loaded model made partial (a one-byte budget: ComfyUI's low-VRAM
    path, which casts each weight when its layer runs), as ComfyUI does on a small GPU. CPU hosts
    never choose it themselves, so the budget is forced where ComfyUI applies it."""
    import comfy.model_management as mm

    full = train(pack, pipeline, steps=3, output_name="full")[0]
    fresh = _load(tiny_sd1_checkpoint)  # never loaded in full: a load only ever adds weights
    original = mm.LoadedModel.model_load
    partial: list[bool] = []

    def offloading_load(self: Any, lowvram_model_memory: float = 0, force_patch_weights: bool = False) -> Any:
        out = original(self, 1, force_patch_weights=force_patch_weights)
        if hasattr(self.model.model, "diffusion_model"):  # the UNet (0.33 loads text encoders its own way)
            partial.append(self.model.loaded_size() < self.model.model_size())
        return out

    monkeypatch.setattr(mm.LoadedModel, "model_load", offloading_load)
    offloaded = train(pack, fresh, steps=3, output_name="offloaded")[0]
    monkeypatch.undo()
    assert partial and all(partial), "the host did not offload the model"
    for layer, target in full.v_targets.items():
        torch.testing.assert_close(offloaded.v_targets[layer], target, rtol=1e-4, atol=1e-5)
    for key, embedding in full.embeddings.items():
        torch.testing.assert_close(offloaded.embeddings[key], embedding, rtol=1e-4, atol=1e-5)
