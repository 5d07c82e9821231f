"""Hooks Perfusion concepts into a ComfyUI MODEL (a ModelPatcher clone).

How it is wired, and why:
- Every cross-attention ``to_k`` / ``to_v`` gets an object patch on its
  ``forward`` only (module and state-dict keys stay, so LoRA weight patches,
  low-VRAM casting and fp8 weights still apply). The hook calls the layer's
  own forward once on the tokens plus a few anchor rows (i*, i_super), so the
  base term W e, W i* and the key target W_K i_super all come from the weights
  actually in use, then adds the gated edit from ``perfusion_core.edit``.
- ``to_k``/``to_v`` never see the sampling step, so an APPLY_MODEL wrapper
  publishes per-call state (per-sample window activity and the active
  timestep-interval set) to the hooks for the duration of that call.
- Global key-locking needs a different K input (the prompt with the
  superclass word); the CLIP side ships it as a model cond, the wrapper moves
  it into transformer_options and an ``attn2_patch`` feeds it to ``to_k``.
  Context key-locking needs the same prompt beside the K input: its
  ``attn2_patch`` leaves the input alone and hands the encoding to the hook
  for exactly the tensor the block then projects (matched by identity).
- Several concepts on one model form ONE runtime (one joint edit per layer);
  applying another concept rebuilds the runtime from the union.
The attn2_replace slot is never used, so attention-replacing packs compose.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
from einops import einsum

from perfusion_core.concept import Concept
from perfusion_core.edit import context_locked_keys, gate_values, gated_edit, joint_directions
from perfusion_core.schedule import interval_index, window_active

PATCH_KEY = "perfusion"
K_CONTEXT_COND = "perfusion_k_context"  # model cond: the superclass prompt's encoding (global, context lock)
log = logging.getLogger(__name__)
# (context, superclass-prompt encoding) of the block about to call to_k: set by SuperclassKeyContext.
_superclass_for = threading.local()


@dataclass
class StepState:
    """What one model call tells the hooks: per-sample scale (B, N) and set index (B, N)."""

    scale: torch.Tensor
    set_index: torch.Tensor


class PerfusionRuntime:
    """The joint edit of N concepts on one model, shared by all its layer hooks."""

    def __init__(self, concepts: list[Concept]) -> None:
        self.step: StepState | None = None
        self.load(concepts)

    def load(self, concepts: list[Concept]) -> None:
        """(Re)build from ``concepts``. Training calls this every step with live
        parameters as value targets, so gradients flow through the same hooks."""
        self.concepts = [c for c in concepts if c.gate.strength != 0.0]
        self.all_concepts = list(concepts)  # kept so chaining keeps zero-strength concepts around
        active = self.concepts
        self.n = len(active)
        # Read by every projection call: worked out here, once per (re)build.
        locks = [c.gate.lock for c in active]
        self.uses_global_lock = "global" in locks
        self.uses_context_lock = "context" in locks
        self.all_context_locked = bool(locks) and set(locks) == {"context"}
        if self.n:
            self.directions = joint_directions(torch.stack([c.i_star for c in active]), torch.stack([c.u for c in active]))
            self.i_star = torch.stack([c.i_star for c in active])
            self.i_super = torch.stack([c.i_super for c in active])
            self.beta = torch.tensor([c.gate.beta for c in active])
            self.tau = torch.tensor([c.gate.tau for c in active])
            self.strength = torch.tensor([c.gate.strength for c in active])
            self.context_lock = torch.tensor([c.gate.lock == "context" for c in active])
        self._cache: dict[tuple, Any] = {}

    def __deepcopy__(self, memo: dict) -> "PerfusionRuntime":
        # ComfyUI deep-copies model/transformer options (which hold our wrapper)
        # on clone and at sampling; the hooks and the wrapper must keep sharing
        # one runtime, and its concept data is immutable.
        return self

    # -- per-device copies (concept tensors live on CPU in float32) ----------
    def on(self, device: torch.device) -> dict[str, Any]:
        key = ("consts", device)
        if key not in self._cache:
            self._cache[key] = {
                "directions": self.directions.to(device=device),
                "i_star": self.i_star.to(device), "i_super": self.i_super.to(device),
                "beta": self.beta.to(device), "tau": self.tau.to(device), "strength": self.strength.to(device),
                "context_lock": self.context_lock.to(device),
            }
        return self._cache[key]

    def value_targets(self, layer: str, device: torch.device) -> torch.Tensor:
        """(N, S_max, d_out) value targets of one layer; shorter S are padded by repeating the last set."""
        key = ("v", layer, device)
        if key not in self._cache:
            s_max = max(c.timestep_sets for c in self.concepts)
            rows = []
            for c in self.concepts:
                t = c.v_targets[layer]
                rows.append(torch.cat([t, t[-1:].expand(s_max - t.shape[0], -1)]) if t.shape[0] < s_max else t)
            self._cache[key] = torch.stack(rows).to(device)
        return self._cache[key]

    # -- per model call --------------------------------------------------------
    def step_state(self, sigmas: torch.Tensor, model_sampling: Any) -> StepState:
        """Per-sample scale (strength x window) and timestep-interval index for each concept."""
        sigmas = sigmas.detach().float().cpu()
        timesteps = model_sampling.timestep(sigmas).float()
        scale, index = [], []
        for c in self.concepts:
            start = model_sampling.percent_to_sigma(c.gate.start_percent)
            end = model_sampling.percent_to_sigma(c.gate.end_percent)
            scale.append(window_active(sigmas, start, end).float() * c.gate.strength)
            index.append(interval_index(timesteps, c.timestep_sets))
        return StepState(scale=torch.stack(scale, dim=1), set_index=torch.stack(index, dim=1))

    def apply_model_wrapper(self, executor: Callable, x, t, c_concat=None, c_crossattn=None, control=None,
                            transformer_options={}, **kwargs):  # noqa: B006 (ComfyUI's own signature)
        k_context = kwargs.pop(K_CONTEXT_COND, None)
        if k_context is not None:
            transformer_options[K_CONTEXT_COND] = k_context
        previous = self.step  # None at inference; training holds its step across backward recomputation
        self.step = self.step_state(t, executor.class_obj.model_sampling) if self.n else None
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            self.step = previous

    def scale_for(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) scale and set index for a projection call of batch size ``batch``."""
        step = self.step
        if step is None:  # called outside sampling (no sigma known): whole strength, first set
            return (self.on(device)["strength"].expand(batch, -1),
                    torch.zeros(batch, self.n, dtype=torch.long, device=device))
        scale, index = step.scale, step.set_index
        if scale.shape[0] != batch:  # a pack re-batched the context; sigma is shared at inference
            scale, index = scale[:1].expand(batch, -1), index[:1].expand(batch, -1)
        return scale.to(device), index.to(device)


class ProjectionHook:
    """Replaces ``forward`` of one cross-attention to_k or to_v."""

    def __init__(self, runtime: PerfusionRuntime, layer: str, kind: str, base_forward: Callable) -> None:
        self.runtime, self.layer, self.kind, self.base_forward = runtime, layer, kind, base_forward

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rt = self.runtime
        if rt.n == 0 or x.ndim != 3:
            return self.base_forward(x, *args, **kwargs)
        if rt.step is not None and not bool(rt.step.scale.any()):  # (CPU tensor: no device sync)
            return self.base_forward(x, *args, **kwargs)  # every concept outside its window: exactly the base
        batch, tokens, _ = x.shape
        scale, index = rt.scale_for(batch, x.device)
        consts = rt.on(x.device)
        # Context lock without the superclass prompt (a cond from another CLIP, a call outside
        # sampling): those concepts fall back to the local lock's W_K i_super.
        superclass = _superclass_context(x) if self.kind == "k" and rt.uses_context_lock else None
        rows = [t.reshape(batch * tokens, -1) for t in (x, superclass) if t is not None]
        anchors = consts["i_star"] if self.kind == "v" else torch.cat([consts["i_star"], consts["i_super"]])
        # One call of the layer's own forward for tokens and anchors: weights are cast once.
        y = self.base_forward(torch.cat(rows + [anchors.to(x.dtype)]), *args, **kwargs)
        base, w_anchor = y[: batch * tokens].reshape(batch, tokens, -1), y[len(rows) * batch * tokens:]
        w_istar = w_anchor[: rt.n]
        if self.kind == "k":
            targets = w_anchor[rt.n:].unsqueeze(0).expand(batch, -1, -1)  # key lock: W_K i_super
        else:
            v = rt.value_targets(self.layer, x.device)  # (N, S, d_out)
            targets = v[torch.arange(rt.n, device=x.device).unsqueeze(0), index]  # (B, N, d_out)
        if superclass is None:
            return gated_edit(base, x, consts["directions"], w_istar, targets, consts["beta"], consts["tau"], scale)
        in_context = consts["context_lock"].to(scale.dtype)  # (N,): these concepts make no rank-1 K edit
        own = base if rt.all_context_locked else gated_edit(
            base, x, consts["directions"], w_istar, targets, consts["beta"], consts["tau"], scale * (1 - in_context))
        r = einsum(x.float(), consts["directions"].U, "b t d, d n -> b t n") / consts["directions"].energy
        openness = einsum(gate_values(r, consts["beta"], consts["tau"]), scale * in_context, "b t n, b n -> b t")
        keys_of_superclass = y[batch * tokens: 2 * batch * tokens].reshape(batch, tokens, -1)
        return context_locked_keys(own, keys_of_superclass, openness)


class GlobalKeyContext:
    """attn2_patch: feed to_k the superclass prompt's encoding (global key-locking).

    Stateless, so ComfyUI's deep copy of model_options on clone is harmless.
    """

    def __call__(self, n, context, value, extra_options):
        k_context = extra_options.get(K_CONTEXT_COND)
        if k_context is None or context is None or value is None:
            return n, context, value
        k_context = k_context.to(device=context.device, dtype=context.dtype)
        if k_context.shape != context.shape:  # e.g. a ConditioningConcat after encoding: fall back to local
            return n, context, value
        return n, k_context, value


class SuperclassKeyContext:
    """attn2_patch for context key-locking: records the superclass prompt's encoding for the
    context this block will project, which to_k's hook reads back (the K input is unchanged).

    Stateless itself (the record is thread-local), so ComfyUI's deep copy on clone is harmless.
    Beside a GlobalKeyContext, in either order, to_k then gets the superclass prompt as input,
    which is what context-locked concepts ask for too."""

    def __call__(self, n, context, value, extra_options):
        k_context = extra_options.get(K_CONTEXT_COND)
        usable = k_context is not None and context is not None and k_context.shape == context.shape
        _superclass_for.pair = (context, k_context.to(device=context.device, dtype=context.dtype)) if usable else None
        return n, context, value


def _superclass_context(x: torch.Tensor) -> torch.Tensor | None:
    """The superclass prompt's encoding recorded for exactly this K input, if any."""
    pair = getattr(_superclass_for, "pair", None)
    return pair[1] if pair is not None and pair[0] is x else None


def find_runtime(model: Any, layers: list[str]) -> tuple[PerfusionRuntime | None, dict[str, Callable]]:
    """The runtime already installed on ``model`` (if any) and the base forwards under its hooks."""
    base: dict[str, Callable] = {}
    runtime = None
    for layer in layers:
        for kind in ("k", "v"):
            name = f"diffusion_model.{layer}.to_{kind}.forward"
            current = model.get_model_object(name)
            if isinstance(current, ProjectionHook):
                runtime = current.runtime
                current = current.base_forward
            base[name] = current
    return runtime, base


def install(model: Any, layers: list[str], concepts: list[Concept]) -> Any:
    """Return a clone of ``model`` whose cross-attention K/V apply the joint edit
    of ``concepts`` plus any concepts already installed on it."""
    import comfy.patcher_extension as ext

    patched = model.clone()
    previous, base = find_runtime(patched, layers)
    runtime = PerfusionRuntime((previous.all_concepts if previous else []) + list(concepts))
    for name, forward in base.items():
        layer, kind = name[len("diffusion_model."):].rsplit(".to_", 1)
        patched.add_object_patch(name, ProjectionHook(runtime, layer, kind[0], forward))
    patched.remove_wrappers_with_key(ext.WrappersMP.APPLY_MODEL, PATCH_KEY)
    patched.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, PATCH_KEY, runtime.apply_model_wrapper)
    attn2_patches = patched.model_options.get("transformer_options", {}).get("patches", {}).get("attn2_patch", [])
    wanted = ((runtime.uses_global_lock, GlobalKeyContext), (runtime.uses_context_lock, SuperclassKeyContext))
    for needed, kind in wanted:
        if needed and not any(isinstance(p, kind) for p in attn2_patches):
            patched.set_model_attn2_patch(kind())
    log.info("Perfusion: %d concept(s) [%s] on %d cross-attention layers (%d K/V projections hooked)",
             runtime.n, ", ".join(c.trigger for c in runtime.concepts), len(layers), len(base))
    return patched
