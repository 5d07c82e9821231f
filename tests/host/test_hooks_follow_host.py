"""The hooks follow the model call that actually runs, whatever the host does around them.

- A model the host rebuilt (0.33's multi-GPU clones build a fresh model from the loader and copy
  the object patches; 0.3.75 has no such path, so there it is built the same way by hand): the
  hooks run that model's own layers, not the ones they were installed on.
- A conditioning carrying hooks (a LoRA hook on the cond, ComfyUI's own hook mechanism): the
  concept applies on top of the weights the hook patches in, as with a LoRA loaded the usual way.
- Two threads calling models at once (multi-GPU clones share one runtime; an embedding server
  may sample side by side): each call gets the result of a solo call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import folder_paths
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nodes as comfy_nodes
from host_helpers import apply, encode, ksample, word_edit_of
from harness import random_models as rm

PROMPT = "a photo of a cat"


def far(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-3) -> bool:
    return (a.float() - b.float()).abs().max().item() > tol


@pytest.fixture
def unload():
    yield
    mm.unload_all_models()


def _load(checkpoint: Path) -> tuple[Any, Any]:
    import comfy.sd

    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_clip=True)
    return model, clip


def _scale_cross_attention(model: Any, factor: float) -> None:
    """Change every attn2 K/V weight of ``model``'s own modules (so a model is told apart by them)."""
    with torch.inference_mode():
        for name, module in model.model.diffusion_model.named_modules():
            if name.endswith((".attn2.to_k", ".attn2.to_v")):
                module.weight.mul_(factor)


def _rebuilt(patched: Any, checkpoint: Path) -> Any:
    """``patched`` on a freshly built model, the way the host rebuilds one."""
    if hasattr(patched, "deepclone_multigpu"):  # 0.33+: the host's own path (a multi-GPU clone)
        return patched.deepclone_multigpu(new_load_device=patched.load_device)
    # 0.3.75: no such path; the same construction by hand: the clone's patches, options and
    # wrappers on a fresh model, with backups of its own (a clone shares its parent's).
    clone = patched.clone()
    clone.model = _load(checkpoint)[0].model
    clone.backup, clone.object_patches_backup = {}, {}
    return clone


def test_hooks_run_the_layers_of_a_rebuilt_model(pack, tiny_sd1_checkpoint, unload):
    model, clip = _load(tiny_sd1_checkpoint)
    concept = word_edit_of(pack, model, clip)
    patched, pclip = apply(pack, model, clip, concept)
    positive, negative = encode(pclip, PROMPT), encode(pclip, "")
    on_original = ksample(patched, positive, negative)
    mm.unload_all_models()

    rebuilt = _rebuilt(patched, tiny_sd1_checkpoint)
    assert rebuilt.model is not patched.model
    _scale_cross_attention(rebuilt, 1.5)
    # The solo run: the concept applied directly to a model with those weights.
    reference_model = _load(tiny_sd1_checkpoint)[0]
    _scale_cross_attention(reference_model, 1.5)
    solo = ksample(apply(pack, reference_model, clip, concept)[0], positive, negative)
    assert far(solo, on_original), "the changed weights must change the image"
    mm.unload_all_models()
    torch.testing.assert_close(ksample(rebuilt, positive, negative), solo, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def lora_name(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("hook_loras")
    path = rm.write_lora(folder / "hook_lora.safetensors", "sd1", seed=4, rank=4)
    folder_paths.add_model_folder_path("loras", str(folder))
    return path.name


def test_a_lora_hook_on_the_conditioning_composes_like_a_loaded_lora(pack, tiny_sd1, lora_name, unload):
    import comfy.hooks
    import comfy.utils

    model, clip = tiny_sd1
    concept = word_edit_of(pack, model, clip).with_gate(tau=1e-4, beta=0.5)
    patched, pclip = apply(pack, model, clip, concept)
    lora = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("loras", lora_name), safe_load=True)
    hooks = comfy.hooks.create_hook_lora(lora, strength_model=1.0, strength_clip=0.0)
    plain, negative = encode(pclip, PROMPT), encode(pclip, "")
    hooked = comfy.hooks.set_hooks_for_conditioning(plain, hooks)

    with_hook = ksample(patched, hooked, negative)
    lora_model = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora_name, 1.0)[0]
    loaded = ksample(apply(pack, lora_model, clip, concept)[0], plain, negative)
    assert far(with_hook, ksample(patched, plain, negative)), "the hook's LoRA must change the image"
    torch.testing.assert_close(with_hook, loaded, rtol=1e-4, atol=1e-4)


def _in_sampler(pack: Any, patched: Any, clip: Any, body: Any) -> None:
    """Run ``body(call)`` inside ComfyUI's sampler set-up for ``patched`` (model loaded and patched,
    as in a KSampler run); ``call(sigma)`` is one model call on a fixed latent at that sigma."""
    host = pack.nodes.host_sampling
    conditioning = encode(clip, PROMPT)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def loop(base_model: Any, model_options: dict) -> None:
        def call(sigma: float) -> torch.Tensor:
            with torch.no_grad():
                return host.denoise(base_model, model_options, [conditioning], x, torch.tensor([sigma]))[0]

        body(call)

    host.run_in_guider(patched, conditioning, (4, 8, 8), loop)


def _race(calls: dict[str, Any], rounds: int = 12) -> dict[str, list[torch.Tensor]]:
    """Run each call ``rounds`` times, all of them at once in their own threads."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in calls}
    barrier = threading.Barrier(len(calls))

    def worker(name: str) -> None:
        barrier.wait()
        for _ in range(rounds):
            out[name].append(calls[name]())

    threads = [threading.Thread(target=worker, args=(name,)) for name in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert all(len(v) == rounds for v in out.values()), "a thread failed"
    return out


def test_two_threads_on_one_model_each_get_their_solo_result(pack, tiny_sd1, unload):
    """One patched model called at once at a step outside and a step inside the concept's window
    (as ComfyUI's multi-GPU threads call one runtime): each call sees its own step (a shared step
    state would hand one thread the other's)."""
    model, clip = tiny_sd1
    concept = word_edit_of(pack, model, clip).with_gate(start_percent=0.5, end_percent=1.0)
    patched, pclip = apply(pack, model, clip, concept)
    early, late = 14.6, 0.9  # outside and inside the window (percent 0.5 is sigma 1.6 on this model)
    found: dict[str, Any] = {}
    _in_sampler(pack, model, clip, lambda call: found.update(unpatched=call(late)))

    def body(call: Any) -> None:
        found["solo"] = {"early": call(early), "late": call(late)}
        found["race"] = _race({"early": lambda: call(early), "late": lambda: call(late)})

    _in_sampler(pack, patched, pclip, body)
    assert far(found["solo"]["late"], found["unpatched"]), "the concept must act inside its window"
    for name, outputs in found["race"].items():
        for out in outputs:
            torch.testing.assert_close(out, found["solo"][name], rtol=1e-6, atol=1e-6)


def test_two_threads_with_different_concepts_each_get_their_solo_result(pack, tiny_sd1, unload):
    """Two prompts, two concepts, two models (as two loaded checkpoints), sampled at once."""
    model_a, clip = tiny_sd1
    model_b = rm.build_pipeline("sd1", "tiny", seed=0)[0]
    patched = {"a": apply(pack, model_a, clip, word_edit_of(pack, model_a, clip, "cat", "dog")),
               "b": apply(pack, model_b, clip, word_edit_of(pack, model_b, clip, "cat", "car"))}
    found: dict[str, Any] = {}

    def outer(call_a: Any) -> None:
        def inner(call_b: Any) -> None:
            found["solo"] = {"a": call_a(0.9), "b": call_b(0.9)}
            found["race"] = _race({"a": lambda: call_a(0.9), "b": lambda: call_b(0.9)})

        _in_sampler(pack, *patched["b"], inner)

    _in_sampler(pack, *patched["a"], outer)
    assert far(found["solo"]["a"], found["solo"]["b"]), "the two concepts must give different results"
    for name, outputs in found["race"].items():
        for out in outputs:
            torch.testing.assert_close(out, found["solo"][name], rtol=1e-6, atol=1e-6)


COPY_OR_SYNC = ("aten::_to_copy", "aten::copy_", "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")


class _CopyWatch(TorchDispatchMode):
    """Records every copy between tensors (how a host-to-device transfer shows) and every read of
    a tensor's value into Python (a device sync) while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func.overloadpacket._qualified_op_name in COPY_OR_SYNC:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class _Watched:
    """Object patch around a ProjectionHook: runs it under the watch."""

    def __init__(self, hook: Any, watch: _CopyWatch) -> None:
        self.hook, self.watch = hook, watch

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.watch:
            return self.hook(*args, **kwargs)


def test_hooks_copy_nothing_and_never_sync(pack, tiny_sd1, unload):
    """Per-call state is built once per model call on the model's device: inside the hooks nothing
    is copied and no tensor is read back (on a GPU each would be a transfer or a sync per layer)."""
    model, clip = tiny_sd1
    windowed = word_edit_of(pack, model, clip).with_gate(start_percent=0.0, end_percent=0.7, strength=0.8)
    patched, pclip = apply(pack, model, clip, windowed)
    watch = _CopyWatch()
    spied = patched.clone()
    calls = 0
    for name, obj in patched.object_patches.items():
        if isinstance(obj, pack.nodes.model_patch.ProjectionHook):
            spied.add_object_patch(name, _Watched(obj, watch))
            calls += 1
    assert calls
    out = ksample(spied, encode(pclip, PROMPT), encode(pclip, ""), steps=3)
    assert torch.isfinite(out).all()
    assert watch.seen == []
