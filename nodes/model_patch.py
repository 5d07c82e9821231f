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

import functools
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from einops import einsum

from ..perfusion_core.concept import Concept
from ..perfusion_core.edit import JointDirections, context_locked_keys, gate_values, gated_edit, joint_directions
from ..perfusion_core.fused_edit import FusedEdit, fuse, fused_edit
from ..perfusion_core.lock_modes import lock_mode
from ..perfusion_core.schedule import interval_index, window_active

from . import host_model

PATCH_KEY = "perfusion"
K_CONTEXT_COND = "perfusion_k_context"  # model cond: the superclass prompt's encoding (global, context lock)
log = logging.getLogger(__name__)
# (context, superclass-prompt encoding) of the block about to call to_k: set by SuperclassKeyContext.
_superclass_for = threading.local()


@dataclass
class StepState:
    """What one model call tells the hooks, built once per call on the model's device.

    scale (B, N) strength x window per sample and concept, set_index (B, N) the value-target set;
    ``active``: whether any scale is non-zero, a Python bool worked out when the state is built,
    so that no hook needs a device sync to skip an inactive step."""

    scale: torch.Tensor
    set_index: torch.Tensor
    active: bool
    concepts_active: tuple[bool, ...]  # per concept: acts on some sample of this call
    unit: bool  # every scale is exactly 1 (the usual case: the edit needs no per-sample scaling)


class _ThisCall(threading.local):
    """Per thread: the step state and the diffusion model of the model call running in it.

    Per thread because hosts run model calls in several threads at once (ComfyUI's multi-GPU
    clones share one runtime through deep-copied model options; servers embedding ComfyUI
    sample prompts side by side)."""

    step: StepState | None = None
    model: torch.nn.Module | None = None


class PerfusionRuntime:
    """The joint edit of N concepts on one model, shared by all its layer hooks."""

    def __init__(self, concepts: list[Concept]) -> None:
        self._call = _ThisCall()
        # The step that training holds for the whole forward and backward of one micro-batch: with
        # gradient checkpointing, autograd may recompute the forward in its own device threads.
        self.held_step: StepState | None = None
        # {running diffusion model: {module path: its own forward}} for models the host rebuilt.
        self._forwards: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.load(concepts)

    @property
    def step(self) -> StepState | None:
        """The step state of the model call running in this thread, else the one training holds."""
        step = self._call.step
        return step if step is not None else self.held_step

    def load(self, concepts: list[Concept]) -> None:
        """(Re)build from ``concepts``. Training calls this every step with live
        parameters as value targets, so gradients flow through the same hooks."""
        self.concepts = [c for c in concepts if c.gate.strength != 0.0]
        self.all_concepts = list(concepts)  # kept so chaining keeps zero-strength concepts around
        active = self.concepts
        self.n = len(active)
        # Read by every projection call: worked out here, once per (re)build.
        modes = self.lock_modes = [lock_mode(c.gate.lock) for c in active]
        self.swaps_k_input = any(m.k_reads_superclass_prompt for m in modes)
        self.blends_keys = any(m.blends_superclass_keys for m in modes)
        self.no_rank1_key_edit = bool(modes) and not any(m.rank1_key_edit for m in modes)
        self._cache: dict[tuple, Any] = {}
        if self.n:
            self.i_star = torch.stack([c.i_star for c in active])
            self.u = torch.stack([c.u for c in active])
            self.i_super = torch.stack([c.i_super for c in active])
            self.beta = torch.tensor([c.gate.beta for c in active])
            self.tau = torch.tensor([c.gate.tau for c in active])
            self.strength = torch.tensor([c.gate.strength for c in active])
            self.rank1_keys = torch.tensor([m.rank1_key_edit for m in modes])
            self.blended_keys = torch.tensor([m.blends_superclass_keys for m in modes])
            self.sets = max(c.timestep_sets for c in active)
            self.unit_strength = all(c.gate.strength == 1.0 for c in active)
            self.joint_edit((True,) * self.n, torch.device("cpu"))  # a bad set of concepts fails here, not mid-sampling

    def __deepcopy__(self, memo: dict) -> "PerfusionRuntime":
        # ComfyUI deep-copies model/transformer options (which hold our wrapper)
        # on clone and at sampling; the hooks and the wrapper must keep sharing
        # one runtime, and its concept data is immutable.
        return self

    # -- per-device copies (concept tensors live on CPU in float32) ----------
    def on(self, device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        """The concepts' constants on ``device``; the anchor rows (i*, and i* plus i_super for
        to_k) also in ``dtype``, the projection's input dtype, so no call casts them."""
        key = ("consts", device, dtype)
        if key not in self._cache:
            i_star = self.i_star.to(device)
            self._cache[key] = {
                "i_star": i_star, "i_super": self.i_super.to(device),
                "beta": self.beta.to(device), "tau": self.tau.to(device), "strength": self.strength.to(device),
                "rank1_keys": self.rank1_keys.to(device), "blended_keys": self.blended_keys.to(device),
                "anchors_v": i_star.to(dtype), "anchors_k": torch.cat([i_star, self.i_super.to(device)]).to(dtype),
            }
        return self._cache[key]

    def joint_edit(self, concepts_active: tuple[bool, ...], device: torch.device) -> tuple[JointDirections, FusedEdit]:
        """The joint edit of the concepts acting in this call (docs/method.md §4), on ``device``.

        A concept outside its window must not shape the others: the projection is that of the
        active concepts' span alone. The result keeps all N slots (an inactive concept's are
        zero, and its scale is zero too), so the hooks index concepts the same way every call."""
        key = ("edit", concepts_active, device)
        if key not in self._cache:
            idx = [i for i, a in enumerate(concepts_active) if a]
            sub = joint_directions(self.i_star[idx], self.u[idx])
            U = torch.zeros(self.u.shape[1], self.n)
            gram_inv, energy = torch.zeros(self.n, self.n), torch.ones(self.n)
            U[:, idx] = sub.U
            gram_inv[torch.tensor(idx).unsqueeze(1), torch.tensor(idx)] = sub.gram_inv
            energy[idx] = sub.energy
            directions = JointDirections(U=U, gram_inv=gram_inv, energy=energy)
            fused = fuse(directions, self.beta, self.tau)
            self._cache[key] = (directions.to(device), FusedEdit(fused.M.to(device), fused.b.to(device), fused.n))
        return self._cache[key]

    def value_targets(self, layer: str, device: torch.device) -> torch.Tensor:
        """Value targets of one layer: (N, d_out) when every concept has one set (the usual case),
        else (N, S_max, d_out) with shorter S padded by repeating the last set."""
        key = ("v", layer, device)
        if key not in self._cache:
            rows = []
            for c in self.concepts:
                t = c.v_targets[layer]
                rows.append(torch.cat([t, t[-1:].expand(self.sets - t.shape[0], -1)]) if t.shape[0] < self.sets else t)
            targets = torch.stack(rows).to(device)
            self._cache[key] = targets[:, 0] if self.sets == 1 else targets
        return self._cache[key]

    # -- per model call --------------------------------------------------------
    def step_state(self, sigmas: torch.Tensor, model_sampling: Any, device: torch.device | None = None) -> StepState:
        """Per-sample scale (strength x window) and timestep-interval index for each concept.

        Worked out on the CPU from a copy of the B sigmas (one small read per model call), for all
        concepts at once, then moved to ``device`` once, so that the hooks of that call copy nothing."""
        sigmas = sigmas.detach().float().cpu()
        start, end = self._window_sigmas(model_sampling)
        scale = window_active(sigmas.unsqueeze(1), start, end).float() * self.strength  # (B, N)
        if self.sets == 1:
            index = torch.zeros(scale.shape, dtype=torch.long)
        else:
            timesteps = model_sampling.timestep(sigmas).float()
            index = torch.stack([interval_index(timesteps, c.timestep_sets) for c in self.concepts], dim=1)
        acting = tuple((scale != 0).any(dim=0).tolist())
        return StepState(scale=scale.to(device), set_index=index.to(device), active=any(acting),
                         concepts_active=acting, unit=bool((scale == 1).all()))

    def _window_sigmas(self, model_sampling: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) sigmas at each concept's start and end percent: fixed per model, so worked out once."""
        windows = self._cache.setdefault(("windows",), weakref.WeakKeyDictionary())
        if model_sampling not in windows:
            windows[model_sampling] = tuple(
                torch.tensor([float(model_sampling.percent_to_sigma(getattr(c.gate, f"{edge}_percent")))
                              for c in self.concepts]) for edge in ("start", "end"))
        return windows[model_sampling]

    def apply_model_wrapper(self, executor: Callable, x, t, c_concat=None, c_crossattn=None, control=None,
                            transformer_options={}, **kwargs):  # noqa: B006 (ComfyUI's own signature)
        k_context = kwargs.pop(K_CONTEXT_COND, None)
        if k_context is not None:
            transformer_options[K_CONTEXT_COND] = k_context
        base_model, call = executor.class_obj, self._call
        previous = call.step, call.model  # a nested model call (e.g. a sampler inside a sampler) restores it
        call.step = self.step_state(t, base_model.model_sampling, x.device) if self.n else None
        call.model = base_model.diffusion_model
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            call.step, call.model = previous

    def forward_of(self, path: str, installed_on: torch.nn.Module) -> Callable | None:
        """The class forward of module ``path`` in the diffusion model running in this thread, if
        that model is not the one the hooks were installed on (the host rebuilt or deep-copied it:
        multi-GPU clones, ``clone(force_deepcopy=True)``); None otherwise."""
        running = self._call.model
        if running is None:
            return None
        forwards = self._forwards.get(running)
        if forwards is None:
            forwards = self._forwards[running] = {}
        if path not in forwards:
            module = running.get_submodule(path)
            forwards[path] = None if module is installed_on else functools.partial(type(module).forward, module)
        return forwards[path]

    def scale_for(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, StepState | None]:
        """(B, N) scale and set index for a projection call of batch size ``batch``, and the step."""
        step = self.step
        if step is None:  # called outside sampling (no sigma known): whole strength, first set
            return (self.on(device)["strength"].expand(batch, -1),
                    torch.zeros(batch, self.n, dtype=torch.long, device=device), None)
        scale, index = step.scale, step.set_index
        if scale.shape[0] != batch:  # a pack re-batched the context; sigma is shared at inference
            scale, index = scale[:1].expand(batch, -1), index[:1].expand(batch, -1)
        if scale.device != device:  # a layer on another device than the model's input (rare)
            scale, index = scale.to(device), index.to(device)
        return scale, index, step


class ProjectionHook:
    """Replaces ``forward`` of one cross-attention to_k or to_v."""

    def __init__(self, runtime: PerfusionRuntime, layer: str, kind: str, path: str, base_forward: Callable) -> None:
        """``kind``: "k" or "v"; ``path``: the projection's module path under diffusion_model."""
        self.runtime, self.layer, self.kind, self.path, self.base_forward = runtime, layer, kind, path, base_forward
        # The module whose own forward ``base_forward`` is (None when it is another pack's patch,
        # which we cannot re-aim at a rebuilt model and call as it is).
        owner = getattr(base_forward, "__self__", None)
        own = isinstance(owner, torch.nn.Module) and getattr(base_forward, "__func__", None) is type(owner).forward
        self.installed_on = owner if own else None

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rt = self.runtime
        base_forward = self.base_forward
        if self.installed_on is not None:  # follow the module that actually runs, if the host rebuilt it
            base_forward = rt.forward_of(self.path, self.installed_on) or base_forward
        if rt.n == 0 or x.ndim != 3:
            return base_forward(x, *args, **kwargs)
        step = rt.step
        if step is not None and not step.active:
            return base_forward(x, *args, **kwargs)  # every concept outside its window: exactly the base
        batch, tokens, _ = x.shape
        scale, index, step = rt.scale_for(batch, x.device)
        consts = rt.on(x.device, x.dtype)
        directions, fused = rt.joint_edit(step.concepts_active if step else (True,) * rt.n, x.device)
        # W e, and W i* (and W_K i_super for to_k) from separate calls of the layer's own forward:
        # the prompt's tokens go through the layer exactly as without the pack (a quantizing
        # layer quantizes them on their own), and nothing is concatenated per call.
        base = base_forward(x, *args, **kwargs)
        w_anchor = base_forward(consts["anchors_k" if self.kind == "k" else "anchors_v"], *args, **kwargs)
        w_istar = w_anchor[: rt.n]
        if self.kind == "k":
            targets = w_anchor[rt.n:]  # key lock: W_K i_super, (N, d_out)
        else:
            targets = rt.value_targets(self.layer, x.device)  # (N, d_out), or (N, S, d_out)
            if targets.ndim == 3:
                targets = targets[torch.arange(rt.n, device=x.device).unsqueeze(0), index]  # (B, N, d_out)
        # Keys blended towards the superclass prompt's, but no such prompt (a cond from another
        # CLIP, a call outside sampling): those concepts fall back to the rank-1 edit to W_K i_super.
        superclass = _superclass_context(x) if self.kind == "k" and rt.blends_keys else None
        if superclass is None:
            unit = step.unit if step else rt.unit_strength
            return fused_edit(base, x, fused, w_istar, targets, None if unit else scale)
        if targets.ndim == 2:
            targets = targets.unsqueeze(0).expand(batch, -1, -1)
        rank1, blended = consts["rank1_keys"].to(scale.dtype), consts["blended_keys"].to(scale.dtype)  # (N,)
        own = base if rt.no_rank1_key_edit else gated_edit(
            base, x, directions, w_istar, targets, consts["beta"], consts["tau"], scale * rank1)
        r = einsum(x.float(), directions.U, "b t d, d n -> b t n") / directions.energy
        openness = einsum(gate_values(r, consts["beta"], consts["tau"]), scale * blended, "b t n, b n -> b t")
        keys_of_superclass = base_forward(superclass, *args, **kwargs)
        return context_locked_keys(own, keys_of_superclass, openness)


class GlobalKeyContext:
    """attn2_patch: feed to_k the superclass prompt's encoding (global key-locking), while a
    globally locked concept acts in this model call (outside its window the prompt is the
    prompt, as without the pack). Holds its runtime, which deep copies share (see above)."""

    def __init__(self, runtime: PerfusionRuntime) -> None:
        self.runtime = runtime

    def __call__(self, n, context, value, extra_options):
        k_context = extra_options.get(K_CONTEXT_COND)
        if k_context is None or context is None or value is None:
            return n, context, value
        step = self.runtime.step
        if step is not None and not any(a and mode.k_reads_superclass_prompt
                                        for a, mode in zip(step.concepts_active, self.runtime.lock_modes)):
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


def projection_paths(model: Any, layers: list[str]) -> dict[tuple[str, str], str]:
    """{(layer, "k" | "v"): module path under diffusion_model} of the projections the edit hooks."""
    spec = host_model.model_spec(model)
    return {(layer, kind): host_model.projection_path(spec, layer, kind) for layer in layers for kind in ("k", "v")}


def find_runtime(model: Any, layers: list[str]) -> tuple[PerfusionRuntime | None, dict[tuple[str, str], Callable]]:
    """The runtime already installed on ``model`` (if any) and the base forwards under its hooks,
    by (layer, "k" | "v")."""
    base: dict[tuple[str, str], Callable] = {}
    runtime = None
    for key, path in projection_paths(model, layers).items():
        current = model.get_model_object(f"diffusion_model.{path}.forward")
        if isinstance(current, ProjectionHook):
            runtime = current.runtime
            current = current.base_forward
        base[key] = current
    return runtime, base


def install(model: Any, layers: list[str], concepts: list[Concept]) -> Any:
    """Return a clone of ``model`` whose cross-attention K/V apply the joint edit
    of ``concepts`` plus any concepts already installed on it."""
    import comfy.patcher_extension as ext

    patched = model.clone()
    previous, base = find_runtime(patched, layers)
    runtime = PerfusionRuntime((previous.all_concepts if previous else []) + list(concepts))
    paths = projection_paths(patched, layers)
    for (layer, kind), forward in base.items():
        path = paths[(layer, kind)]
        patched.add_object_patch(f"diffusion_model.{path}.forward", ProjectionHook(runtime, layer, kind, path, forward))
    patched.remove_wrappers_with_key(ext.WrappersMP.APPLY_MODEL, PATCH_KEY)
    patched.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, PATCH_KEY, runtime.apply_model_wrapper)
    attn2_patches = patched.model_options.get("transformer_options", {}).get("patches", {}).get("attn2_patch", [])
    # A chained Apply replaces the previous runtime: drop our patches bound to it (the clone's own list).
    attn2_patches[:] = [p for p in attn2_patches if not isinstance(p, (GlobalKeyContext, SuperclassKeyContext))]
    if runtime.swaps_k_input:
        patched.set_model_attn2_patch(GlobalKeyContext(runtime))
    if runtime.blends_keys:
        patched.set_model_attn2_patch(SuperclassKeyContext())
    log.info("Perfusion: %d concept(s) [%s] on %d cross-attention layers (%d K/V projections hooked)",
             runtime.n, ", ".join(c.trigger for c in runtime.concepts), len(layers), len(base))
    return patched
