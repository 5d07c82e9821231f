"""Inference overhead of Perfusion concepts in a real ComfyUI host (in-process, CPU).

    .venv/bin/python bench/bench_overhead.py [--size full|tiny] [--steps N] [--repeats R] [--threads T]

Measures, in one run, on the real ComfyUI SD1.5 UNet and CLIP-L with random
weights (full layout by default):

1. KSampler time with 0 (plain), 1 and 4 concepts. The four concepts are
   training-free word edits chained through ApplyKeyLockedEdit, i.e. one joint
   edit. Same seed and prompt (containing every trigger) for all three; the
   runs are interleaved round by round (rotating which goes first) so drift in
   machine load hits all three alike. The first round is a discarded warm-up.
   Wall time and this process's CPU time are both recorded: on a shared
   machine CPU time is less disturbed by other processes.
2. Where the time goes: every hooked to_k/to_v projection timed against its
   own base forward, both in isolation (best of many passes on the sampler's
   context) and in situ (clocked inside the timed samples): the low-noise
   estimate of the extra cost per UNet call. Plus the ATen ops dispatched per
   UNet call, which set the cost wherever each op has a fixed price (GPU
   kernel launches, CPU threads that are woken per op).
3. ApplyKeyLockedEdit.apply and LoadPerfusionConcept.load times (medians).
4. Concept file sizes (fp16 / fp32) for the full SD1.5, SD2 and SDXL layouts
   (layer widths read from UNets built on the meta device: no weights in RAM),
   beside the size of a rank-8 LoRA from ComfyUI's TrainLoraNode on the same UNet.

Why a small latent: the edit only touches the text side of cross-attention
(77 tokens per prompt, whatever the image size), so its absolute cost per
UNet call is fixed while the UNet's own work grows with the latent. A small
latent is therefore the worst case for the relative overhead, and keeps the
whole run within minutes on two CPU cores.

With --write-doc (the default for --size full) the results replace the
generated section of docs/benchmarks.md. A run during which other processes
competed for the cores is flagged there: its timings are not trustworthy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.comfy_host import import_host, import_pack  # noqa: E402
from world.metrics import median_ci  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_overhead: begin generated -->", "<!-- bench_overhead: end generated -->"
# (trigger, target): common one-token words, so every trigger is an ordinary prompt word.
WORD_EDITS = (("cat", "dog"), ("chair", "table"), ("car", "bus"), ("tree", "house"))
PROMPT = "a photo of a cat next to a chair, a car and a tree"
NEGATIVE = "blurry, low quality"
TEMPLATE = "a photo of a {}"
LIMITS = {"1 concept": 1.03, "4 concepts": 1.06}  # the limits on time relative to plain
LORA_RANK = 8  # the rank the evidence's LoRA baseline trains (docs/evidence.md)


# ----------------------------------------------------------------------------- helpers

def quiet_host() -> None:
    """No progress bars or info logs in the timed loop (they cost time and clutter the output)."""
    import logging

    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    logging.getLogger().setLevel(logging.WARNING)


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """'median (min..max)' of ``values`` times ``scale``."""
    v = [x * scale for x in values]
    return f"{median(v):.{digits}f} ({min(v):.{digits}f}..{max(v):.{digits}f})"


def paired(ratios: list[float]) -> str:
    """'median [lo..hi]': the per-round ratios' median and its distribution-free 95% interval
    (how far the median of this many rounds can be trusted; one outlier round cannot stretch it)."""
    med, lo, hi = median_ci(ratios)
    return f"{med:.3f} [{lo:.3f}..{hi:.3f}]"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def encode_pair(clip: Any) -> tuple[Any, Any]:
    import nodes as comfy_nodes

    encode = comfy_nodes.CLIPTextEncode().encode
    return encode(clip, PROMPT)[0], encode(clip, NEGATIVE)[0]


def hooks_of(pack: ModuleType, model: Any) -> list[Any]:
    """The ProjectionHooks currently patched into the loaded UNet."""
    hook_type = pack.nodes.model_patch.ProjectionHook
    return [m.forward for m in model.model.diffusion_model.modules()
            if isinstance(getattr(m, "forward", None), hook_type)]


@dataclass
class Config:
    """One model/CLIP pair to sample with, its encoded prompt and its timings."""

    name: str
    model: Any
    clip: Any
    positive: Any = None
    negative: Any = None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    switch_times: list[float] = field(default_factory=list)
    output: torch.Tensor | None = None
    probe: dict[str, float] | None = None  # seconds in hooks / base forwards during the current sample
    in_situ: list[tuple[float, float]] = field(default_factory=list)  # per UNet call, per timed sample


# ----------------------------------------------------------------------------- measurements

def build_concepts(pack: ModuleType, model: Any, clip: Any, captions: int) -> list[Any]:
    word_edit = pack.nodes.nodes_word_edit.word_edit
    return [word_edit(model, clip, trigger, target, TEMPLATE, captions) for trigger, target in WORD_EDITS]


def apply_all(pack: ModuleType, model: Any, clip: Any, concepts: list[Any]) -> tuple[Any, Any]:
    for concept in concepts:
        model, clip = pack.nodes.nodes_apply.apply_edit(model, clip, concept)
    return model, clip


def sample(cfg: Config, args: argparse.Namespace) -> tuple[float, float, float, torch.Tensor]:
    """(seconds to make the model current, wall seconds, CPU seconds, latent) of one KSampler run.

    Loading is timed apart: switching between clones unpatches one and patches
    the next, a cost that a graph which keeps one model does not pay per run.
    """
    import comfy.model_management as mm
    import nodes as comfy_nodes

    switch, _ = timed(lambda: mm.load_models_gpu([cfg.model]))
    latent = {"samples": torch.zeros(1, 4, args.latent, args.latent)}
    cpu = time.process_time()
    seconds, out = timed(lambda: comfy_nodes.common_ksampler(
        cfg.model, args.seed, args.steps, args.cfg, "euler", "normal", cfg.positive, cfg.negative, latent))
    return switch, seconds, time.process_time() - cpu, out[0]["samples"]


def run_sampling(configs: list[Config], args: argparse.Namespace) -> list[float]:
    """A warm-up round, then ``repeats`` interleaved rounds; each round rotates the starting config.

    Returns the 1-minute load average seen after each timed sample (other processes show up there).
    """
    loads = []
    for cfg in configs:
        cfg.positive, cfg.negative = encode_pair(cfg.clip)
    for rnd in range(args.repeats + 1):
        order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
        for cfg in order:
            if cfg.probe is not None:
                cfg.probe.update(hooked=0.0, base=0.0)
            switch, seconds, cpu, out = sample(cfg, args)
            if rnd == 0:
                cfg.output = out
                print(f"  warm-up  {cfg.name:>10}: {seconds:6.2f} s", flush=True)
                continue
            if not torch.equal(out, cfg.output):
                raise RuntimeError(f"{cfg.name}: the same seed gave a different latent; the comparison is void")
            cfg.times.append(seconds)
            cfg.cpu_times.append(cpu)
            cfg.switch_times.append(switch)
            loads.append(os.getloadavg()[0])
            if cfg.probe is not None:
                cfg.in_situ.append((cfg.probe["hooked"] / args.steps, cfg.probe["base"] / args.steps))
            print(f"  round {rnd:2d} {cfg.name:>10}: {seconds:6.2f} s wall, {cpu:6.2f} s CPU "
                  f"(switch {switch * 1e3:5.1f} ms, load avg {loads[-1]:.2f})", flush=True)
    return loads


class OpCounter(TorchDispatchMode):
    """Counts ATen ops as they are dispatched: compute ops (each one a kernel) and views."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.views = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func.is_view:
            self.views += 1
        else:
            self.ops += 1
        return func(*args, **(kwargs or {}))


def ops_per_unet_call(cfg: Config, args: argparse.Namespace) -> tuple[int, int]:
    """(compute ops, view ops) of one UNet call including the wrapper: a 2-step minus a 1-step sample.

    Op counts do not depend on the machine's load; they are what a per-op fixed cost
    (a GPU kernel launch, a thread-pool hand-off on an oversubscribed CPU) multiplies.
    """
    import comfy.model_management as mm
    import nodes as comfy_nodes

    mm.load_models_gpu([cfg.model])
    counts = []
    for steps in (1, 2):
        counter = OpCounter()
        with counter:
            comfy_nodes.common_ksampler(cfg.model, args.seed, steps, args.cfg, "euler", "normal", cfg.positive,
                                        cfg.negative, {"samples": torch.zeros(1, 4, args.latent, args.latent)})
        counts.append((counter.ops, counter.views))
    return counts[1][0] - counts[0][0], counts[1][1] - counts[0][1]


def instrument(pack: ModuleType, cfg: Config) -> Callable[[], None]:
    """Time every hook and its base forward while ``cfg`` samples; returns the function that undoes it.

    The object patches themselves are wrapped, because every load (sampling loads
    too) re-applies them. Two clock reads per projection call add about 0.1 ms to a
    UNet call of seconds; in return the edit's cost is seen with the caches, threads
    and memory traffic of real sampling.
    """
    import comfy.model_management as mm

    cfg.probe = {"hooked": 0.0, "base": 0.0}
    probe = cfg.probe

    def clock(fn: Callable, key: str) -> Callable:
        def run(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                probe[key] += time.perf_counter() - start
        return run

    hook_type = pack.nodes.model_patch.ProjectionHook
    hooks = {k: v for k, v in cfg.model.object_patches.items() if isinstance(v, hook_type)}
    bases = {k: hook.base_forward for k, hook in hooks.items()}
    for key, hook in hooks.items():
        hook.base_forward = clock(bases[key], "base")
        cfg.model.object_patches[key] = clock(hook, "hooked")

    def restore() -> None:
        for key, hook in hooks.items():
            hook.base_forward = bases[key]
            cfg.model.object_patches[key] = hook
        cfg.probe = None
        mm.load_models_gpu([cfg.model])  # re-apply the unwrapped hooks

    return restore


def hook_costs(pack: ModuleType, cfg: Config, loops: int) -> dict[str, float]:
    """Per UNet call: seconds in all hooked projections and in their base forwards, on the real
    cond+uncond context (batch 2), plus the APPLY_MODEL wrapper's per-call step state."""
    import comfy.model_management as mm

    mm.load_models_gpu([cfg.model])
    context = torch.cat([cfg.positive[0][0], cfg.negative[0][0]])  # (2, 77, D), as the sampler batches it
    hooks = hooks_of(pack, cfg.model)
    if not hooks:
        raise RuntimeError(f"{cfg.name}: no Perfusion hooks found on the loaded model")

    def best(calls: list[Callable]) -> tuple[float, float]:
        """(wall, CPU) seconds of one pass over ``calls``, best of ``loops``: the cost without interference."""
        wall, cpu = float("inf"), float("inf")
        for _ in range(loops):
            start, start_cpu = time.perf_counter(), time.process_time()
            for call in calls:
                call(context)
            wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
        return wall, cpu

    hooked, hooked_cpu = best(hooks)
    base, base_cpu = best([h.base_forward for h in hooks])
    runtime, sigmas, sampling = hooks[0].runtime, torch.tensor([5.0, 5.0]), cfg.model.model.model_sampling
    step = min(timed(lambda: runtime.step_state(sigmas, sampling))[0] for _ in range(loops * 10))
    return {"hooks": len(hooks), "hooked": hooked, "base": base, "hooked_cpu": hooked_cpu, "base_cpu": base_cpu,
            "step_state": step}


def profile_hooks(pack: ModuleType, cfg: Config, loops: int = 20) -> str:
    """torch.profiler table (self CPU time by op) of ``loops`` passes over the hooked projections."""
    import comfy.model_management as mm

    mm.load_models_gpu([cfg.model])
    context = torch.cat([cfg.positive[0][0], cfg.negative[0][0]])
    hooks = hooks_of(pack, cfg.model)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(loops):
            for hook in hooks:
                hook(context)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)


def apply_times(pack: ModuleType, model: Any, clip: Any, concepts: list[Any], repeats: int) -> dict[str, list[float]]:
    one = [timed(lambda: apply_all(pack, model, clip, concepts[:1]))[0] for _ in range(repeats)]
    four = [timed(lambda: apply_all(pack, model, clip, concepts))[0] for _ in range(repeats)]
    return {"ApplyKeyLockedEdit.apply, 1 concept": one, f"ApplyKeyLockedEdit.apply x{len(concepts)}, chained": four}


def synthetic_concept(family: str, layers: dict[str, int], context_dim: int, sets: int = 1) -> Any:
    """A concept with the shapes a trained one has (embeddings included); values are irrelevant here."""
    from perfusion_core.concept import Concept, TextEncoderId
    from perfusion_core.families import family as family_spec

    vec = torch.randn(context_dim)
    return Concept(trigger="sks", superclass="cat", family=family, text_encoder=TextEncoderId("bench"),
                   i_star=vec, u=vec.clone(), i_super=torch.randn(context_dim),
                   v_targets={name: torch.randn(sets, width) for name, width in layers.items()},
                   embeddings={k: torch.randn(w) for k, w in family_spec(family).embedding_widths.items()},
                   statistics="bench")


def train_lora_node_floats(diffusion_model: torch.nn.Module, rank: int) -> int:
    """How many numbers ComfyUI's TrainLoraNode trains (and saves) for ``diffusion_model`` at ``rank``.

    Counted from shapes, by the node's own rule (ComfyUI 0.3.75): every module with a
    ``weight_function`` gets a LoRA pair (out x rank, rank x in, in = all other weight dims) and
    its alpha when its weight has 2+ dims, else a full-size weight difference; every bias a full-size
    difference. Counting works on the meta device, where the node itself cannot run; a host
    test checks the count against what the node returns.
    """
    floats = 0
    for module in diffusion_model.modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "weight_function") or weight is None:
            continue
        floats += rank * (weight.shape[0] + weight.shape[1:].numel()) + 1 if weight.ndim >= 2 else weight.numel()
        if getattr(module, "bias", None) is not None:
            floats += module.bias.numel()
    return floats


def concept_files(pack: ModuleType, folder: str, word_edit: Any, size: str) -> list[dict[str, Any]]:
    """Write concept files per layout and storage dtype; rows with their sizes and file names."""
    from perfusion_core.concept_file import save_concept
    from harness import random_models

    cases = [(f"SD1.5 word edit from this run ({size} layout, no embedding)", word_edit)]
    for family, label in (("sd1", "SD1.5"), ("sd2", "SD2.x"), ("sdxl", "SDXL")):
        meta = random_models.build_unet(family, "full", device="meta")  # shapes only, no memory
        layers = pack.nodes.host_model.cross_attention_layers(meta)
        dim = random_models.CONTEXT_DIM[family]
        lora = 2 * train_lora_node_floats(meta.model.diffusion_model, LORA_RANK)  # float16, as the node saves
        cases.append((f"{label} trained concept", synthetic_concept(family, layers, dim), lora))
        if family == "sdxl":
            cases.append((f"{label} trained, 2 timestep sets", synthetic_concept(family, layers, dim, sets=2), lora))
    rows = []
    for n, (label, concept, *lora) in enumerate(cases):
        tensors = (concept.i_star, concept.u, concept.i_super, *concept.v_targets.values(),
                   *concept.embeddings.values())
        row = {"label": label, "layers": len(concept.v_targets), "floats": sum(t.numel() for t in tensors),
               "lora_bytes": lora[0] if lora else None}
        for dtype in ("float16", "float32"):
            name = f"concept_{n}_{dtype}.safetensors"
            path = save_concept(concept, Path(folder) / name, dtype=getattr(torch, dtype), overwrite=True)
            row[dtype], row[dtype + "_name"] = path.stat().st_size, name
        rows.append(row)
    return rows


def load_times(pack: ModuleType, files: list[dict[str, Any]], repeats: int) -> dict[str, list[float]]:
    """LoadPerfusionConcept's load_concept_file (read + full validation) of the fp16 word edit and SDXL files."""
    load = pack.nodes.nodes_concept.load_concept_file
    out = {}
    for row in (files[0], next(r for r in files if r["label"] == "SDXL trained concept")):
        name = row["float16_name"]
        load(name)  # warm the page cache: what is timed is parsing and checking
        out[f"LoadPerfusionConcept.load, {row['label'].split(' (')[0]} (fp16)"] = \
            [timed(lambda n=name: load(n))[0] for _ in range(repeats)]
    return out


# ----------------------------------------------------------------------------- report

def machine_facts(threads: int) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import comfyui_version

    return {"cpu": cpu, "cores": str(os.cpu_count()), "threads": str(threads), "torch": torch.__version__,
            "python": platform.python_version(), "comfyui": comfyui_version.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def busy_warning(max_load: float, cores: int) -> list[str]:
    """A warning paragraph when other processes competed for the cores during the timed rounds.

    Our own threads contribute up to ``--threads`` to the load; beyond the core count
    (with some slack for the smoothing of the load average) someone else was running.
    """
    if max_load <= cores + 0.5:
        return []
    return [(f"**Warning: the machine was busy during the timed rounds (load average up to {max_load:.2f} on "
             f"{cores} cores). Timings from such a run are unreliable, the small ops of the edit most of all; "
             f"rerun on an idle machine, or with --threads 1.**"), ""]


def verdict(ratio: float, name: str) -> str:
    limit = LIMITS.get(name)
    return "" if limit is None else ("met" if ratio <= limit else "MISSED")


def sampling_table(args: argparse.Namespace, configs: list[Config]) -> list[str]:
    plain = configs[0]
    lines = [
        ("| configuration | wall s, median (min..max) | CPU s, median (min..max) | wall / plain, paired "
         "[95% CI] | CPU / plain, paired [95% CI] | limit | verdict (wall, CPU) |"),
        "|---|---|---|---|---|---|---|",
    ]
    for cfg in configs:
        wall = [t / p for t, p in zip(cfg.times, plain.times)]
        cpu = [t / p for t, p in zip(cfg.cpu_times, plain.cpu_times)]
        limit = f"<= {LIMITS[cfg.name]:.2f}" if cfg.name in LIMITS else ""
        checks = f"{verdict(median(wall), cfg.name)}, {verdict(median(cpu), cfg.name)}" if limit else ""
        lines.append(f"| {cfg.name} | {spread(cfg.times)} | {spread(cfg.cpu_times)} | {paired(wall)} | "
                     f"{paired(cpu)} | {limit} | {checks} |")
    return lines


def hook_table(configs: list[Config], hooks: dict[str, dict[str, float]], unet_calls: int) -> list[str]:
    plain = configs[0]
    per_call = {"wall": median(plain.times) / unet_calls, "cpu": median(plain.cpu_times) / unet_calls}
    lines = [
        ("| configuration | measurement | hooks ms | their base forwards ms | extra ms (incl. step state) | "
         "extra / plain UNet call | verdict |"),
        "|---|---|---|---|---|---|---|",
    ]
    for name, h in hooks.items():
        rows = (("isolated, wall", h["hooked"], h["base"], "wall"),
                ("isolated, CPU", h["hooked_cpu"], h["base_cpu"], "cpu"),
                ("in situ, wall (median of rounds)", h["situ_hooked"], h["situ_base"], "wall"))
        for label, hooked, base, clock in rows:
            extra = hooked - base + h["step_state"]
            lines.append(f"| {name} ({h['hooks']} hooks) | {label} | {hooked * 1e3:.2f} | {base * 1e3:.2f} | "
                         f"{extra * 1e3:.2f} | {extra / per_call[clock]:.2%} | {verdict(1 + extra / per_call[clock], name)} |")
    return lines


def report(args: argparse.Namespace, command: str, facts: dict[str, str], configs: list[Config],
           hooks: dict[str, dict[str, float]], op_counts: dict[str, tuple[int, int]],
           ops: dict[str, list[float]], files: list[dict[str, Any]],
           setup: dict[str, float], load_avg: tuple[float, float, float]) -> str:
    plain = configs[0]
    unet_calls = args.steps  # euler: one UNet call (cond + uncond batched) per step
    switches = [s for cfg in configs for s in cfg.switch_times]
    step_ms = ", ".join(f"{h['step_state'] * 1e3:.2f}" for h in hooks.values())
    lines = [
        f"Command: `{command}`",
        "",
        (f"Machine: {facts['cpu']}, {facts['cores']} cores, torch.set_num_threads({facts['threads']}); "
         f"torch {facts['torch']}, Python {facts['python']}, ComfyUI {facts['comfyui']}; {facts['date']}. "
         f"Load average (1 min): {load_avg[0]:.2f} at the start, at most {load_avg[1]:.2f} during the timed "
         f"rounds, {load_avg[2]:.2f} at the end."),
        "",
        *busy_warning(load_avg[1], int(facts["cores"])),
        "### Sampling time",
        "",
        (f"ComfyUI SD1.5 UNet + CLIP-L, {args.size} layout, random weights, float32, CPU. KSampler euler/normal, "
         f"{args.steps} steps, cfg {args.cfg:g} with a negative prompt (cond and uncond batched: batch 2 per UNet "
         f"call), latent {args.latent}x{args.latent} ({args.latent * 8} px), seed {args.seed}, prompt "
         f"\"{PROMPT}\". {args.repeats} interleaved rounds after one warm-up round, each round rotating which "
         f"configuration goes first. The model is made current before the timer starts. \"paired\" = median of the "
         f"per-round ratios (each run against the plain run of the same round) and its distribution-free 95% "
         f"confidence interval (binomial order statistics over rounds). CPU = this "
         f"process's CPU time (all threads), less disturbed than wall time by other processes on the machine."),
        "",
        *sampling_table(args, configs),
        "",
        (f"Making a configuration current (unpatch the previous clone, patch this one): median "
         f"{median(switches) * 1e3:.1f} ms, max {max(switches) * 1e3:.1f} ms."),
        "",
        "### Where the time goes",
        "",
        (f"\"isolated\": each hooked to_k/to_v timed against its own base forward on the sampler's context "
         f"(cond + uncond, batch 2, 77 tokens), summed over the hooks, best of {args.hook_loops} passes. "
         f"\"in situ\": the same split timed inside the timed samples above (per UNet call; two clock reads "
         f"per projection call), with the caches and threads of real sampling. \"step state\" ({step_ms} ms) is the APPLY_MODEL wrapper's work per call. One plain UNet call here takes "
         f"{median(plain.times) / unet_calls:.2f} s wall, {median(plain.cpu_times) / unet_calls:.2f} s CPU."),
        "",
        *hook_table(configs, hooks, unet_calls),
        "",
        ("ATen ops dispatched per UNet call (wrapper included; counted, so independent of machine load). "
         "Compute ops are kernels; views only change tensor metadata. Time that is a fixed cost per op (a GPU "
         "kernel launch, a hand-off to busy threads) grows with these counts, not with the FLOPs above."),
        "",
        "| configuration | compute ops | view ops | compute ops / plain |",
        "|---|---|---|---|",
        *[f"| {name} | {c} | {v} | {c / op_counts[configs[0].name][0]:.2f} |" for name, (c, v) in op_counts.items()],
        "",
        "### Applying and loading",
        "",
        "| operation | median ms (min..max) | runs |",
        "|---|---|---|",
        *[f"| {name} | {spread(times, 1e3)} | {len(times)} |" for name, times in ops.items()],
        "",
        (f"One-off setup in this run: model build {setup['build']:.1f} s; four word-edit concepts "
         f"{setup['concepts']:.1f} s (includes text-encoder statistics over {args.statistics_captions} captions, "
         f"computed once per CLIP and cached)."),
        "",
        "### Concept file sizes",
        "",
        "Full layouts; \"trained\" = with the trigger embedding(s), one timestep set unless stated. "
        f"The last columns: a rank-{LORA_RANK} LoRA from ComfyUI's TrainLoraNode on the same UNet (float16, "
        "as the node saves it), and how many times larger it is than the fp16 concept file.",
        "",
        f"| concept | layers | stored floats | fp16 file | fp32 file | TrainLoraNode rank {LORA_RANK} | ratio |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['label']} | {r['layers']} | {r['floats']:,} | {r['float16'] / 1024:.1f} KiB | "
          f"{r['float32'] / 1024:.1f} KiB | {_lora_cells(r)} |" for r in files],
    ]
    return "\n".join(lines) + "\n"


def _lora_cells(row: dict[str, Any]) -> str:
    if row["lora_bytes"] is None:
        return "- | -"
    return f"{row['lora_bytes'] / 2**20:.1f} MiB | {row['lora_bytes'] / row['float16']:.0f}x"


def write_doc(section: str, path: Path = DOC) -> None:
    """Replace the generated section of ``path`` (append one, or create the file, if missing)."""
    block = f"{BEGIN}\n{section}{END}\n"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmarks\n\n## Inference overhead (bench/bench_overhead.py)\n\n" + block)
        return
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        path.write_text(head + block + ("\n" + tail if tail else ""))
    else:
        path.write_text(text.rstrip("\n") + "\n\n" + block)


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="SD1.5 layout (default full)")
    p.add_argument("--steps", type=int, default=2, help="sampling steps (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed interleaved rounds (default 10)")
    p.add_argument("--latent", type=int, default=16, help="latent side, pixels / 8 (default 16 = 128 px)")
    p.add_argument("--cfg", type=float, default=5.0, help="CFG scale (default 5, with a negative prompt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--statistics-captions", type=int, default=200,
                   help="captions for the word edits' text statistics (timings do not depend on it; default 200)")
    p.add_argument("--hook-loops", type=int, default=20, help="passes over the hooks (best one counts)")
    p.add_argument("--op-repeats", type=int, default=50, help="runs of apply and of load (default 50)")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of the hooks")
    p.add_argument("--write-doc", dest="write_doc", action="store_true", default=None,
                   help="replace the generated section of docs/benchmarks.md (default for --size full)")
    p.add_argument("--no-write-doc", dest="write_doc", action="store_false")
    args = p.parse_args(argv)
    if args.write_doc is None:
        args.write_doc = args.size == "full"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/bench_overhead.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    import_host()
    import folder_paths

    from harness import random_models

    pack = import_pack()
    quiet_host()
    load_start = os.getloadavg()[0]
    # inference_mode as ComfyUI's executor runs nodes; models/perfusion in a throw-away folder
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        folder_paths.folder_names_and_paths["perfusion"] = ([folder], {".safetensors"})
        build, (model, clip) = timed(lambda: random_models.build_pipeline("sd1", args.size, seed=0))
        print(f"built SD1.5 {args.size} in {build:.1f} s", flush=True)
        concept_time, concepts = timed(lambda: build_concepts(pack, model, clip, args.statistics_captions))
        print(f"built {len(concepts)} word-edit concepts in {concept_time:.1f} s", flush=True)
        configs = [Config("plain", model, clip), Config("1 concept", *apply_all(pack, model, clip, concepts[:1])),
                   Config(f"{len(concepts)} concepts", *apply_all(pack, model, clip, concepts))]
        restores = [instrument(pack, cfg) for cfg in configs[1:]]
        loads = run_sampling(configs, args)
        for restore in restores:
            restore()
        if not all(h for cfg in configs[1:] for h, _ in cfg.in_situ):
            raise RuntimeError("the hooks did not run during sampling")
        if torch.equal(configs[0].output, configs[1].output) or torch.equal(configs[1].output, configs[2].output):
            raise RuntimeError("a concept did not change the sample: the edit is not active, timings are void")
        hooks = {cfg.name: {**hook_costs(pack, cfg, args.hook_loops),
                            "situ_hooked": median([h for h, _ in cfg.in_situ]),
                            "situ_base": median([b for _, b in cfg.in_situ])} for cfg in configs[1:]}
        op_counts = {cfg.name: ops_per_unet_call(cfg, args) for cfg in configs}
        if args.profile:
            print(profile_hooks(pack, configs[2]))
        files = concept_files(pack, folder, concepts[0], args.size)
        ops = {**apply_times(pack, model, clip, concepts, args.op_repeats),
               **load_times(pack, files, args.op_repeats)}
    section = report(args, command, machine_facts(args.threads), configs, hooks, op_counts, ops, files,
                     {"build": build, "concepts": concept_time}, (load_start, max(loads), os.getloadavg()[0]))
    print("\n" + section)
    if args.write_doc:
        write_doc(section)
        print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
