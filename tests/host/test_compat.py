"""ApplyKeyLockedEdit composed with what users stack on the same MODEL in the real host.

Stock LoRA loading (both orders), ControlNet, an attention-replacing pack (the
attn2_replace slot), fp8 weights through the stock UNETLoader, two concepts in
one joint edit (checked against independent float64 math) and global
key-locking. Tiny random-weight models; every check compares against a value
computed without the pack's code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import folder_paths
import pytest
import safetensors.torch
import torch

import nodes as comfy_nodes
from host_helpers import apply, encode, ksample, word_edit_of
from harness import random_models as rm

PROMPT = "a photo of a cat"
TRIGGER_POSITION = 5  # "cat" in PROMPT, BOS counted
SHARP = {"tau": 1e-4, "beta": 0.5}  # gate fully open at r = 1 and shut far below: exact key lock


def layers_of(pack: Any, model: Any) -> list[str]:
    return list(pack.nodes.host_model.cross_attention_layers(model))


def module(model: Any, layer: str, kind: str) -> torch.nn.Module:
    return model.model.diffusion_model.get_submodule(layer).get_submodule(f"to_{kind}")


def far(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-3) -> bool:
    return (a.float() - b.float()).abs().max().item() > tol


@pytest.fixture(scope="module")
def word_edit(pack, tiny_sd1):
    return word_edit_of(pack, *tiny_sd1)


@pytest.fixture
def unload(tiny_sd1):
    """Tests that load a patched clone put the shared model back to its stored weights afterwards."""
    yield
    mm.unload_all_models()


@pytest.fixture(scope="module")
def base_keys(pack, tiny_sd1) -> dict[str, torch.Tensor]:
    """W_K of every layer as stored (no patch applied)."""
    model, _ = tiny_sd1
    mm.unload_all_models()
    return {layer: module(model, layer, "k").weight.detach().clone() for layer in layers_of(pack, model)}


# -- 1. LoRA ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_name(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("loras")
    path = rm.write_lora(folder / "kv_lora.safetensors", "sd1", seed=3, rank=4)
    folder_paths.add_model_folder_path("loras", str(folder))
    return path.name


def test_lora_stacks_and_key_lock_uses_lora_weights(pack, tiny_sd1, word_edit, lora_name, base_keys, unload):
    model, clip = tiny_sd1
    load_lora = comfy_nodes.LoraLoader().load_lora
    lora_model, lora_clip = load_lora(model, clip, lora_name, 1.0, 1.0)
    # W_K' independently: the weights the stock loader puts into the LoRA-only model.
    mm.load_models_gpu([lora_model])
    lora_keys = {layer: module(model, layer, "k").weight.detach().clone() for layer in base_keys}
    mm.unload_all_models()
    assert all(far(lora_keys[layer], base_keys[layer], 1e-2) for layer in base_keys), "the LoRA must touch every to_k"

    sharp = word_edit.with_gate(**SHARP)
    lora_then_concept = apply(pack, lora_model, lora_clip, sharp)[0]
    concept_then_lora = load_lora(apply(pack, model, clip, sharp)[0], clip, lora_name, 1.0, 1.0)[0]
    i_star, i_super = sharp.i_star.reshape(1, 1, -1), sharp.i_super
    for patched in (lora_then_concept, concept_then_lora):
        mm.load_models_gpu([patched])
        for layer in base_keys:
            locked = module(patched, layer, "k")(i_star)[0, 0].float()
            target = lora_keys[layer] @ i_super
            # float32 round-off of W i* - r W i* + W_K i_super (terms of norm ~20): up to 1.8e-4 per
            # element on some CPUs; the LoRA moves the key by more than 1e-2 of its norm (next line).
            torch.testing.assert_close(locked, target, rtol=1e-4, atol=2e-5 * float(target.norm()))
            assert far(locked, base_keys[layer] @ i_super, 1e-2), layer
        mm.unload_all_models()

    positive, negative = encode(clip, PROMPT), encode(clip, "")
    both = ksample(lora_then_concept, positive, negative)
    concept_only = ksample(apply(pack, model, clip, sharp)[0], positive, negative)
    lora_only = ksample(lora_model, positive, negative)
    assert torch.isfinite(both).all()
    assert far(both, concept_only) and far(both, lora_only)
    # The order of LoraLoader and ApplyKeyLockedEdit does not matter (same weights, same hooks).
    torch.testing.assert_close(ksample(concept_then_lora, positive, negative), both)
    mm.unload_all_models()
    for layer in base_keys:  # unloading puts the shared model back to its stored weights
        assert torch.equal(module(model, layer, "k").weight, base_keys[layer])


# -- 2. ControlNet --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnet")
    path = rm.write_controlnet(folder / "random_cn.safetensors", seed=5)
    folder_paths.add_model_folder_path("controlnet", str(folder))
    return comfy_nodes.ControlNetLoader().load_controlnet(path.name)[0]


def test_controlnet_and_concept_in_one_sampling(pack, tiny_sd1, word_edit, controlnet):
    model, clip = tiny_sd1
    patched, pclip = apply(pack, model, clip, word_edit)
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    control = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet

    def with_cn(c):
        return control(encode(c, PROMPT), encode(c, ""), controlnet, hint, 1.0, 0.0, 1.0)

    both = ksample(patched, *with_cn(pclip))
    concept_only = ksample(patched, encode(pclip, PROMPT), encode(pclip, ""))
    cn_only = ksample(model, *with_cn(clip))
    assert torch.isfinite(both).all()
    assert far(both, concept_only) and far(both, cn_only)


# -- 3. An attention-replacing pack ------------------------------------------------------------------------------


def replace_key(layer: str) -> tuple[str, int, int]:
    """(block name, block number, transformer index) that attn2_replace uses for a layer path."""
    parts = layer.split(".")
    index = int(parts[parts.index("transformer_blocks") + 1])
    if parts[0] == "middle_block":
        return "middle", 0, index
    return parts[0].split("_")[0], int(parts[1]), index


def recording_attention(log: list) -> Callable:
    """A foreign attn2_replace function: plain attention, recording the projected keys it receives.

    A closure, not an object: ComfyUI deep-copies model_options on clone, and a
    function survives that as itself, so the log stays shared.
    """
    from comfy.ldm.modules.attention import optimized_attention

    def attention(q, k, v, extra_options):
        block = extra_options["block"]
        log.append(((block[0], block[1], extra_options["block_index"]), k.detach().clone()))
        return optimized_attention(q, k, v, extra_options["n_heads"])

    return attention


@pytest.mark.parametrize("order", ["replace_then_concept", "concept_then_replace"])
def test_foreign_attn2_replace_keeps_working(pack, tiny_sd1, word_edit, order):
    model, clip = tiny_sd1
    layers = layers_of(pack, model)
    log: list = []
    foreign = recording_attention(log)

    def add_replace(m):
        m = m.clone()
        for layer in layers:
            m.set_model_attn2_replace(foreign, *replace_key(layer))
        return m

    sharp = word_edit.with_gate(**SHARP)
    if order == "replace_then_concept":
        replaced = add_replace(model)
        patched, pclip = apply(pack, replaced, clip, sharp)
        before = replaced.model_options["transformer_options"]["patches_replace"]
        assert patched.model_options["transformer_options"]["patches_replace"] == before
    else:
        concept_model, pclip = apply(pack, model, clip, sharp)
        patched = add_replace(concept_model)
    replace_slot = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replace_slot) == {replace_key(layer) for layer in layers}
    assert all(f is foreign for f in replace_slot.values()), "our node must never take the attn2_replace slot"

    out = ksample(patched, encode(pclip, PROMPT), encode(pclip, ""))
    assert torch.isfinite(out).all()
    by_key = {}
    for key, k in log:
        by_key.setdefault(key, k)  # first (only) step
    assert set(by_key) == {replace_key(layer) for layer in layers}, "the foreign function must run for every block"
    for layer in layers:
        k = by_key[replace_key(layer)]
        expected = module(model, layer, "k").weight.float() @ sharp.i_super
        torch.testing.assert_close(k[0, TRIGGER_POSITION].float(), expected, rtol=1e-4, atol=1e-4)
    assert far(ksample(model, encode(clip, PROMPT), encode(clip, "")), out), "the edit must reach the output"


# -- 4. fp8 weights ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory, tiny_sd1_checkpoint: Path):
    """The tiny SD1 UNet loaded by the stock UNETLoader with weight_dtype fp8_e4m3fn."""
    folder = tmp_path_factory.mktemp("diffusion_models")
    unet = {}
    with safetensors.safe_open(str(tiny_sd1_checkpoint), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.startswith(rm.UNET_PREFIX):
                unet[key[len(rm.UNET_PREFIX):]] = f.get_tensor(key)
    safetensors.torch.save_file(unet, str(folder / "tiny_sd1_unet.safetensors"))
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    return comfy_nodes.UNETLoader().load_unet("tiny_sd1_unet.safetensors", "fp8_e4m3fn")[0]


def test_fp8_weights(pack, tiny_sd1, fp8_model, word_edit, unload):
    """fp8 weights: CPU torch has no fp8 matmul, ComfyUI stores the weights in fp8 and casts them per
    call (its manual-cast ops). The hook calls the layer's own forward, so it inherits that cast."""
    model, clip = tiny_sd1
    layer = layers_of(pack, model)[0]
    to_k = module(fp8_model, layer, "k")
    assert to_k.weight.dtype == torch.float8_e4m3fn and fp8_model.model.manual_cast_dtype == torch.float32
    x = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(0))

    concept_fp8 = word_edit_of(pack, fp8_model, clip)  # built from the fp8 model's own value weights
    w_v = module(fp8_model, layer, "v").weight.float()
    torch.testing.assert_close(concept_fp8.v_targets[layer][0], w_v @ concept_fp8.i_super, rtol=1e-5, atol=1e-5)

    positive, negative = encode(clip, PROMPT), encode(clip, "")
    plain = ksample(fp8_model, positive, negative)
    for concept in (word_edit, concept_fp8):  # built from the full-precision model, and from the fp8 one
        patched, pclip = apply(pack, fp8_model, clip, concept)
        out = ksample(patched, encode(pclip, PROMPT), encode(pclip, ""))
        assert torch.isfinite(out).all() and far(out, plain)

    patched = apply(pack, fp8_model, clip, word_edit.with_gate(**SHARP))[0]
    mm.load_models_gpu([patched])
    hooked = module(patched, layer, "k")
    assert isinstance(hooked.forward, pack.nodes.model_patch.ProjectionHook)
    assert hooked.weight.dtype == torch.float8_e4m3fn
    y = hooked(x)
    assert y.shape == (2, 77, 320) and y.dtype == torch.float32 and torch.isfinite(y).all()
    locked = hooked(word_edit.i_star.reshape(1, 1, -1))[0, 0]
    torch.testing.assert_close(locked, hooked.weight.float() @ word_edit.i_super, rtol=1e-4, atol=1e-4)


# -- 5. Several concepts: exact joint edit --------------------------------------------------------------------


def joint_edit_reference(x: torch.Tensor, weight: torch.Tensor, concepts: list, targets: torch.Tensor) -> torch.Tensor:
    """Independent float64 joint edit (docs/method.md §4): project x off span{i*} in the C^-1 metric via
    the Gram system G c = U x (G_mn = u_m . i*_n), add every concept's gated target, per-concept strength."""
    x, w = x.double(), weight.double()
    i_star = torch.stack([c.i_star for c in concepts]).double()  # (N, D)
    u = torch.stack([c.u for c in concepts]).double()
    gram = u @ i_star.T
    a = x @ u.T  # (T, N): u_n . x
    coords = torch.linalg.solve(gram, a.T).T
    r = a / torch.diagonal(gram)
    beta = torch.tensor([c.gate.beta for c in concepts], dtype=torch.float64)
    tau = torch.tensor([c.gate.tau for c in concepts], dtype=torch.float64)
    s = torch.tensor([c.gate.strength for c in concepts], dtype=torch.float64)
    gates = torch.sigmoid((r - beta) / tau)
    return x @ w.T - (coords * s) @ (i_star @ w.T) + (gates * s) @ targets.double()


def test_two_concepts_exact_joint_edit(pack, tiny_sd1, word_edit):
    model, clip = tiny_sd1
    first = word_edit.with_gate(beta=0.7, tau=0.15)
    second = word_edit_of(pack, model, clip, "chair", "table").with_gate(beta=0.5, tau=0.3, strength=0.6)
    m1, c1 = apply(pack, model, clip, first)
    patched, _ = apply(pack, m1, c1, second)
    concepts = [first, second]
    g = torch.Generator().manual_seed(1)
    scale = first.i_star.norm() / math.sqrt(first.context_dim)
    x = torch.cat([
        torch.randn(6, first.context_dim, generator=g) * scale,  # ordinary tokens: mostly shut gates
        torch.stack([first.i_star, second.i_star, 0.5 * (first.i_star + second.i_star), 0.8 * first.i_star]),
    ]).unsqueeze(0)
    hooks = patched.object_patches
    for layer in layers_of(pack, model)[:3]:
        for kind in ("k", "v"):
            name = f"diffusion_model.{layer}.to_{kind}.forward"
            hook = hooks[name]
            assert isinstance(hook, pack.nodes.model_patch.ProjectionHook)
            weight = module(model, layer, kind).weight
            if kind == "v":
                targets = torch.stack([c.v_targets[layer][0] for c in concepts])
            else:
                targets = torch.stack([c.i_super for c in concepts]) @ weight.T  # key lock: W_K i_super
            expected = joint_edit_reference(x[0], weight, concepts, targets)
            got = hook(x)[0].double()
            atol = 1e-4 * expected.abs().max().item()
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=atol)
            # Discriminating: the naive sum of two single-concept edits is measurably different here.
            naive = sum(joint_edit_reference(x[0], weight, [c], t.unsqueeze(0)) - x[0].double() @ weight.double().T
                        for c, t in zip(concepts, targets)) + x[0].double() @ weight.double().T
            assert (naive - expected).abs().max().item() > 100 * atol, name


# -- 7. Global key-locking ------------------------------------------------------------------------------------


class InputSpy:
    """Object patch around a ProjectionHook recording what the projection receives."""

    def __init__(self, hook: Any, log: list) -> None:
        self.hook, self.log = hook, log

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.log.append((self.hook.layer, self.hook.kind, x.detach().clone()))
        return self.hook(x, *args, **kwargs)


def spied(pack: Any, patched: Any, log: list) -> Any:
    spy = patched.clone()
    for name, obj in patched.object_patches.items():
        if isinstance(obj, pack.nodes.model_patch.ProjectionHook):
            spy.add_object_patch(name, InputSpy(obj, log))
    return spy


def test_global_lock_feeds_superclass_prompt_to_keys(pack, tiny_sd1, word_edit):
    model, clip = tiny_sd1
    gate = pack.nodes.nodes_concept.gate_concept
    concept = gate(word_edit, -1.0, -1.0, 1.0, 0.0, 1.0, "global")
    assert concept.gate.lock == "global"
    patched, pclip = apply(pack, model, clip, concept)
    assert any(isinstance(p, pack.nodes.model_patch.GlobalKeyContext)
               for p in patched.model_options["transformer_options"]["patches"]["attn2_patch"])
    key = pack.nodes.model_patch.K_CONTEXT_COND

    positive, negative = encode(pclip, PROMPT), encode(pclip, "blurry")
    cat, dog, blurry = (encode(clip, t)[0][0] for t in (PROMPT, "a photo of a dog", "blurry"))
    # The word-edit trigger is an ordinary word: the prompt itself encodes as with the stock CLIP.
    torch.testing.assert_close(positive[0][0], cat)
    torch.testing.assert_close(positive[0][1]["model_conds"][key].cond, dog)
    torch.testing.assert_close(negative[0][1]["model_conds"][key].cond, blurry)
    assert far(dog, cat)

    log: list = []
    out = ksample(spied(pack, patched, log), positive, negative, cfg=5.0)
    assert torch.isfinite(out).all()
    layers = layers_of(pack, model)
    for kind, want in (("k", {"dog": dog, "blurry": blurry}), ("v", {"cat": cat, "blurry": blurry})):
        calls = [x for layer, k, x in log if k == kind]
        assert len(calls) == len(layers), "cond and uncond must run as one batch"
        for x in calls:
            assert x.shape[0] == 2
            matched = set()
            for row in x:
                matched |= {name for name, ref in want.items() if torch.allclose(row, ref[0], atol=1e-5)}
            assert matched == set(want), (kind, matched)
    local = ksample(apply(pack, model, clip, word_edit)[0], encode(clip, PROMPT), encode(clip, "blurry"), cfg=5.0)
    assert far(out, local)


# -- 8. Context key-locking -----------------------------------------------------------------------------


class OutputSpy(InputSpy):
    """Also records what the projection returns (the hook looks up its superclass context by identity
    of its input, which the spy passes through unchanged)."""

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.hook(x, *args, **kwargs)
        self.log.append((self.hook.layer, self.hook.kind, x.detach().clone(), out.detach().clone()))
        return out


def test_context_lock_gives_the_trigger_the_superclass_key_of_its_own_prompt(pack, tiny_sd1, word_edit):
    """Lock mode "context" in a real sampling run: the trigger's key is the superclass word's key at
    the trigger's place in the same prompt (here the second object of two), not the template-averaged
    W_K i_super of the local lock; every key matches an independent float64 computation of the blend."""
    model, clip = tiny_sd1
    prompt, superclass_prompt = "a photo of a chair and a cat", "a photo of a chair and a dog"
    pos = pack.nodes.encoding.last_token_position(clip.tokenizer, "a photo of a chair and a", "cat")
    written, dog = encode(clip, prompt)[0][0], encode(clip, superclass_prompt)[0][0]
    u, i_star = word_edit.u.double(), word_edit.i_star.double()
    r_trigger = float(written[0, pos].double() @ u / (i_star @ u))
    assert r_trigger > 0.3, "precondition: the trigger's gate input in this prompt must be clearly positive"
    beta, tau = r_trigger - 0.2, 0.01  # shut far below the trigger, fully open at it
    concept = pack.nodes.nodes_concept.gate_concept(word_edit, beta, tau, 1.0, 0.0, 1.0, "context")
    patched, pclip = apply(pack, model, clip, concept)
    kinds = {type(p).__name__ for p in patched.model_options["transformer_options"]["patches"]["attn2_patch"]}
    assert kinds == {"SuperclassKeyContext"}, kinds

    positive, negative = encode(pclip, prompt), encode(pclip, "blurry")
    torch.testing.assert_close(positive[0][0], written)  # the word-edit trigger is an ordinary word
    torch.testing.assert_close(positive[0][1]["model_conds"][pack.nodes.model_patch.K_CONTEXT_COND].cond, dog)
    log: list = []
    spy = patched.clone()
    for name, obj in patched.object_patches.items():
        if isinstance(obj, pack.nodes.model_patch.ProjectionHook) and obj.kind == "k":
            spy.add_object_patch(name, OutputSpy(obj, log))
    assert torch.isfinite(ksample(spy, positive, negative, cfg=5.0)).all()

    assert len(log) == len(layers_of(pack, model)), "one batched K call per layer (cond and uncond together)"
    for layer, _, x, keys in log:
        row = next(i for i in range(x.shape[0]) if torch.allclose(x[i], written[0], atol=1e-5))
        hook = patched.object_patches[f"diffusion_model.{layer}.to_k.forward"]
        with torch.no_grad():
            own, superclass = hook.base_forward(x[row:row + 1])[0].double(), hook.base_forward(dog)[0].double()
            template_key = hook.base_forward(word_edit.i_super[None, None])[0, 0].double()
        r = x[row].double() @ u / (i_star @ u)
        g = torch.sigmoid((r - beta) / tau)[:, None]
        expected = own + g * (superclass - own)
        scale = superclass.abs().max().item()
        torch.testing.assert_close(keys[row].double(), expected, rtol=1e-4, atol=1e-4 * scale)
        torch.testing.assert_close(keys[row, pos].double(), superclass[pos], rtol=1e-4, atol=1e-4 * scale)
        # Discriminating: in this prompt the superclass key differs from the local lock's target.
        assert (superclass[pos] - template_key).abs().max().item() > 100 * 1e-4 * scale, layer
