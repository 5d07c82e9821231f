"""Timestep-aware concepts in the real host (docs/method.md §8).

S1: a concept acts only inside its [start_percent, end_percent] window of
denoising; ComfyUI's own percent_to_sigma gives the window's sigmas
(percent 0 -> no upper limit, 1 -> sigma 0), as for ControlNet's window.
S2: a concept with S value-target sets uses set floor(t * S / 1000) for model
timestep t, chosen per sample from that sample's sigma.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import comfy.sample
import comfy.samplers
import pytest
import torch

from host_helpers import apply, encode, ksample, word_edit_of

PROMPT = "a photo of a cat"
TRIGGER_POSITION = 5  # "cat" in PROMPT, BOS counted
STEPS = 4
# ComfyUI's "normal" schedule for SD1 at 4 steps, and percent_to_sigma(0.5) between its 2nd and 3rd sigma.
SIGMAS_4 = (14.6146, 2.9183, 0.9324, 0.0292)
HALFWAY_SIGMA = 1.6156


def run(model: Any, clip: Any, steps: int = STEPS) -> torch.Tensor:
    """KSampler (euler, normal, cfg 1) on PROMPT, 8x8 latent, seed 0."""
    return ksample(model, encode(clip, PROMPT), encode(clip, ""), steps=steps)


def runtime_of(pack: Any, patched: Any) -> Any:
    hooks = [v for v in patched.object_patches.values() if isinstance(v, pack.nodes.model_patch.ProjectionHook)]
    return hooks[0].runtime


class OutputSpy:
    """Object patch around a ProjectionHook: records the step state it saw, its output and the unedited output."""

    def __init__(self, hook: Any, log: list) -> None:
        self.hook, self.log = hook, log

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.hook(x, *args, **kwargs)
        step = self.hook.runtime.step
        self.log.append({"layer": self.hook.layer, "kind": self.hook.kind, "out": out.detach().clone(),
                         "plain": self.hook.base_forward(x, *args, **kwargs).detach().clone(),
                         "scale": None if step is None else step.scale.clone(),
                         "set": None if step is None else step.set_index.clone()})
        return out


def spied(pack: Any, patched: Any, log: list) -> Any:
    spy = patched.clone()
    for name, obj in patched.object_patches.items():
        if isinstance(obj, pack.nodes.model_patch.ProjectionHook):
            spy.add_object_patch(name, OutputSpy(obj, log))
    return spy


@pytest.fixture(scope="module")
def word_edit(pack, tiny_sd1):
    return word_edit_of(pack, *tiny_sd1)


@pytest.fixture(scope="module")
def unpatched_4(tiny_sd1) -> torch.Tensor:
    return run(*tiny_sd1)


def test_schedule_facts(tiny_sd1):
    """The numbers the window tests rely on, read from ComfyUI itself."""
    sampling = tiny_sd1[0].model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", STEPS)
    torch.testing.assert_close(sigmas[:-1], torch.tensor(SIGMAS_4), rtol=1e-4, atol=1e-4)
    assert sampling.percent_to_sigma(0.5) == pytest.approx(HALFWAY_SIGMA, rel=1e-4)
    assert sampling.percent_to_sigma(0.0) > SIGMAS_4[0] and sampling.percent_to_sigma(1.0) == 0.0


@pytest.mark.parametrize("start, end", [(0.0, 0.6), (0.6, 1.0), (0.25, 0.5), (0.1, 0.9)])
def test_s1_training_timesteps_are_those_the_hosts_window_admits(tiny_sd1, start, end):
    """S1 trains on the timesteps whose sigma the applied concept's window admits, by ComfyUI's own
    percent_to_sigma: every one of the 1000 training timesteps is in both or in neither."""
    from perfusion_core.schedule import window_timesteps

    sampling = tiny_sd1[0].model.model_sampling
    sigma = sampling.sigma(torch.arange(1000, dtype=torch.float32)).double()
    admitted = (sigma <= sampling.percent_to_sigma(start)) & (sigma >= sampling.percent_to_sigma(end))
    low, high = window_timesteps(start, end)
    assert torch.equal(admitted, (torch.arange(1000) >= low) & (torch.arange(1000) < high))


def test_window_second_half(pack, tiny_sd1, word_edit, unpatched_4):
    """Window (0.5, 1.0): scale 0 on the two early steps, the strength on the two late ones, per sample."""
    model, clip = tiny_sd1
    strength = 0.75  # exact in float32
    concept = word_edit.with_gate(start_percent=0.5, end_percent=1.0, strength=strength)
    patched, pclip = apply(pack, model, clip, concept)
    runtime = runtime_of(pack, patched)
    steps: list = []
    original = runtime.step_state

    def recording_step_state(sigmas, model_sampling, device=None):
        state = original(sigmas, model_sampling, device)
        steps.append((sigmas.detach().float().cpu().clone(), state.scale.cpu().clone()))
        return state

    runtime.step_state = recording_step_state  # this runtime belongs to this test's patched model only
    log: list = []
    out = run(spied(pack, patched, log), pclip)
    assert torch.isfinite(out).all()
    assert len(steps) == STEPS
    for (sigma, scale), expected_sigma, active in zip(steps, SIGMAS_4, (False, False, True, True)):
        assert sigma.tolist() == pytest.approx([expected_sigma], abs=1e-4)
        assert scale.tolist() == [[strength if active else 0.0]]
    # The hooks honour it: no change at all on early steps, an edit on late ones.
    layers = len(pack.nodes.host_model.cross_attention_layers(model))
    assert len(log) == STEPS * layers * 2
    for i, entry in enumerate(log):
        active = i // (layers * 2) >= 2
        assert entry["scale"].tolist() == [[strength if active else 0.0]]
        changed = (entry["out"] - entry["plain"]).abs().max().item()
        assert (changed > 1e-3) if active else (changed == 0.0), (i, changed)
    assert not torch.allclose(out, unpatched_4)


@pytest.mark.parametrize("lock", ["local", "global", "context"])
@pytest.mark.parametrize("window", [(0.0, 0.0), (1.0, 1.0)], ids=["at_start_only", "at_end_only"])
def test_closed_window_is_bit_identical(pack, tiny_sd1, word_edit, unpatched_4, window, lock):
    """A window that contains no sampled sigma (the model is never called at sigma > 1e9 or at sigma 0)
    leaves the output bit-identical to the unpatched model, in every lock mode (the global lock's
    superclass prompt must not reach the keys while its concept is idle)."""
    model, clip = tiny_sd1
    concept = word_edit.with_gate(start_percent=window[0], end_percent=window[1], lock=lock)
    patched, pclip = apply(pack, model, clip, concept)
    assert torch.equal(run(patched, pclip), unpatched_4)


def two_set_concept(concept: Any, other: Any) -> Any:
    """``concept`` with S = 2 value-target sets: set 0 its own targets, set 1 those of ``other``."""
    v_targets = {layer: torch.cat([t[:1], other.v_targets[layer][:1]]) for layer, t in concept.v_targets.items()}
    return dataclasses.replace(concept, v_targets=v_targets)


def test_value_set_chosen_per_sample_from_sigma(pack, tiny_sd1, word_edit):
    """One model call on a batch of 4 latents with 4 different sigmas: each sample uses the value-target
    set of its own timestep (t = 900, 100, 500, 499 -> sets 1, 0, 1, 0)."""
    model, clip = tiny_sd1
    other = word_edit_of(pack, model, clip, "cat", "car")
    concept = two_set_concept(word_edit, other).with_gate(tau=1e-4, beta=0.5)  # sharp: trigger value = target
    assert concept.timestep_sets == 2
    patched, pclip = apply(pack, model, clip, concept)
    sampling = model.model.model_sampling
    timesteps = torch.tensor([900.0, 100.0, 500.0, 499.0])
    sigmas = sampling.sigma(timesteps)
    assert sampling.timestep(sigmas).tolist() == timesteps.tolist()
    expected_sets = [1, 0, 1, 0]

    # A custom sampler function making a single model call with a different sigma per sample (the
    # stock samplers share one sigma across the batch); ComfyUI passes per-sample sigmas through.
    def one_call(model_k, x, sigma_schedule, extra_args=None, callback=None, disable=None):
        return model_k(x, sigmas, **(extra_args or {}))

    log: list = []
    latent = torch.zeros(4, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sampler = comfy.samplers.KSAMPLER(one_call)
    schedule = torch.tensor([float(sigmas[0]), 0.0])  # only used for the initial noise scaling
    out = comfy.sample.sample_custom(spied(pack, patched, log), noise, 1.0, sampler, schedule,
                                     encode(pclip, PROMPT), encode(pclip, ""), latent)
    assert torch.isfinite(out).all()
    values = [e for e in log if e["kind"] == "v"]
    assert len(values) == len(concept.v_targets)
    for entry in values:
        assert entry["set"].flatten().tolist() == expected_sets
        targets = concept.v_targets[entry["layer"]]
        assert (targets[0] - targets[1]).abs().max().item() > 1e-2  # the two sets are distinguishable
        for b, s in enumerate(expected_sets):
            torch.testing.assert_close(entry["out"][b, TRIGGER_POSITION], targets[s], rtol=1e-4, atol=1e-4)


def test_an_idle_concept_leaves_the_others_as_if_alone(pack, tiny_sd1, word_edit, unpatched_4):
    """A second concept whose window holds no sampled step takes no part in the joint edit: the
    first one's projection is its own span's, exactly as with the first concept alone."""
    model, clip = tiny_sd1
    idle = word_edit_of(pack, model, clip, "dog", "car").with_gate(start_percent=1.0, end_percent=1.0)
    alone = run(*apply(pack, model, clip, word_edit))
    assert not torch.allclose(alone, unpatched_4)
    patched, pclip = apply(pack, *apply(pack, model, clip, word_edit), idle)
    # Measured on this model (outputs up to ~320): 1.1e-4 apart (float32 round-off of the wider
    # matrix product, grown over 4 steps); with the idle concept inside the projection, 7.7e-3.
    torch.testing.assert_close(run(patched, pclip), alone, rtol=0, atol=1e-3)
