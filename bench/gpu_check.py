"""One prepared GPU check: sampling overhead, training cost and 400-step wall time, in one run.

    .venv/bin/python bench/gpu_check.py                # on one GPU: full layouts, rewrites the gpu_check section
    .venv/bin/python bench/gpu_check.py --smoke        # CPU smoke run: tiny layouts, 64 px, prints only
    .venv/bin/python bench/gpu_check.py --insert FILE  # put a section saved with --out into docs/benchmarks.md

In a real ComfyUI host (in-process), on random-weight models in the real layouts (harness/random_models:
no network, no real weights; timings do not depend on the values), it measures:

1. Sampling with 1 and 4 concepts against plain, full SD1.5 layout at 512 px and full SDXL at 1024 px,
   fp16: bench_overhead's word edits chained through ApplyKeyLockedEdit, KSampler runs interleaved
   round by round after a warm-up round, median of the per-round ratios to plain.
2. TrainPerfusion against core TrainLoraNode (harness/lora_baseline), SD1.5 at 512 px, same images,
   batch and steps: median step time and peak VRAM (torch.cuda.max_memory_allocated; models unloaded
   and the peak reset before each run; "steps" counts from the end of the first step on, i.e. what
   training holds without the one-off VAE encode and statistics pass).
3. The wall time of 400 TrainPerfusion steps with the node's own recipe (batch 4 x 4 accumulation):
   run in full when the estimate fits, else a short run's median step times 400, labelled extrapolated.

Why budgets: a session gets 15 minutes of device time for all tries, so the full run must end within
8 minutes, model building included. Each stage has its own budget and reports "skipped (budget)"
rather than running over; a watchdog writes what was measured and exits if a stage still runs at the
hard limit. The device comes from the harness (harness/comfy_host): the full run sets
PERFUSION_DEVICE=auto so ComfyUI picks the GPU; --smoke keeps its default (CPU). On the device
machine pass --out $OUT: gpu_check.md comes back, for --insert here.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T0 = time.monotonic()  # the 8 minutes count from process start: imports and model builds included

import torch

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_overhead as bo  # word-edit concepts, their application, timed KSampler runs
from bench_training import StepClock

from harness.comfy_host import DEVICE_ENV_VAR, import_host, import_pack

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- gpu_check: begin generated -->", "<!-- gpu_check: end generated -->"
COMMAND = ".venv/bin/python bench/gpu_check.py"
FAMILIES = {"sd1": "SD1.5", "sdxl": "SDXL"}
MIB = 2 ** 20


@dataclass(frozen=True)
class Plan:
    """What one run measures, and how many seconds each stage may take."""

    size: str                   # harness/random_models layout
    px: dict[str, int]          # sampling resolution per family
    sample_steps: int
    rounds: int                 # timed rounds, fewer when the budget runs out (at least 2)
    train_px: int
    train_steps: int            # per run of the TrainPerfusion / TrainLoraNode comparison
    probe_steps: int            # the short run a 400-step time is extrapolated from
    budgets: dict[str, float]
    hard_limit: float           # the watchdog, in seconds after process start
    batch: int = 4              # TrainPerfusion's default, used for TrainLoraNode too
    long_accumulation: int = 4  # TrainPerfusion's default: 4 x 4 = the paper's 16 images per step
    edit_captions: int = 100    # statistics captions of the word edits (timings do not depend on C)
    long_steps: int = 400


FULL = Plan("full", {"sd1": 512, "sdxl": 1024}, sample_steps=20, rounds=8, train_px=512, train_steps=12,
            probe_steps=6, hard_limit=465,  # the last stage may use whatever time is left
            budgets={"SD1.5 sampling": 75, "training comparison": 100, "SDXL sampling": 130, "400 steps": 465})
# The smoke run only has to pass through every code path: batch 1, no accumulation and C = identity
# for the word edits keep it within minutes on two CPU cores (the checkpoint's full-size CLIP-L dominates).
SMOKE = Plan("tiny", {"sd1": 64, "sdxl": 64}, sample_steps=2, rounds=2, train_px=64, train_steps=2,
             probe_steps=2, hard_limit=900, batch=1, long_accumulation=1, edit_captions=0,
             budgets={"SD1.5 sampling": 150, "training comparison": 240, "SDXL sampling": 150, "400 steps": 120})


class OverBudget(Exception):
    """A stage ran out of its time budget; what it measured so far is kept."""


class PeakClock(StepClock):
    """StepClock that waits for the GPU before each stamp (intervals are step times, not launch times)
    and resets the VRAM peak after the first step, keeping the whole call's peak apart."""

    def __init__(self, cuda: bool) -> None:
        super().__init__()
        self.cuda, self.first_peak = cuda, 0

    def __call__(self, value: int, total: int, preview: Any = None, node_id: Any = None) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            if not self.wall:
                self.first_peak = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
        super().__call__(value, total, preview, node_id)


@dataclass
class Run:
    plan: Plan
    smoke: bool
    pack: Any = None
    cuda: bool = False
    results: dict[str, Any] = field(default_factory=lambda: {"stages": {}, "sampling": {}})
    sd1: dict[str, Any] | None = None  # checkpoint and training inputs, shared by the training stages

    def stage(self, name: str, fn: Callable[[float], None]) -> None:
        """Run ``fn(deadline)`` within the stage's budget; record done / skipped (budget) / failed."""
        left = self.plan.hard_limit - 15 - (time.monotonic() - T0)  # 15 s kept for the report
        allowed, start = min(self.plan.budgets[name], left), time.monotonic()
        record = self.results["stages"][name] = {"status": "running", "seconds": 0.0}
        print(f"== {name} (budget {allowed:.0f} s)", flush=True)
        try:
            if allowed < 10:
                raise OverBudget(f"{max(allowed, 0):.0f} s left")
            fn(start + allowed)
            record["status"] = "done"
        except OverBudget as err:
            record["status"] = f"skipped (budget): {err}"
        except Exception as err:  # noqa: BLE001  one broken stage must not cost the others their results
            traceback.print_exc()
            record["status"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
        record["seconds"] = time.monotonic() - start
        print(f"   {record['status']} ({record['seconds']:.0f} s)", flush=True)


def log(text: str) -> None:
    print("   " + text, flush=True)


# ----------------------------------------------------------------------------- stages

def sampling_stage(run: Run, family: str, deadline: float) -> None:
    """Plain, 1 and 4 concepts on one family: a warm-up round, then interleaved timed rounds."""
    import comfy.model_management as mm

    from harness import random_models

    px, plan = run.plan.px[family], run.plan
    out = run.results["sampling"][family] = {"px": px, "steps": plan.sample_steps, "rounds": 0}
    mm.unload_all_models()  # the previous stage's models leave the GPU first
    build, (model, clip) = bo.timed(lambda: random_models.build_pipeline(
        family, plan.size, seed=0, dtype=torch.float16 if run.cuda else torch.float32))
    log(f"built {FAMILIES[family]} {plan.size} in {build:.0f} s")
    concepts = bo.build_concepts(run.pack, model, clip, plan.edit_captions)
    configs = [bo.Config("plain", model, clip), bo.Config("1 concept", *bo.apply_all(run.pack, model, clip, concepts[:1])),
               bo.Config("4 concepts", *bo.apply_all(run.pack, model, clip, concepts))]
    out.update(build_s=build, dtype=str(model.model.get_dtype()).replace("torch.", ""))
    settings = argparse.Namespace(latent=px // 8, seed=0, steps=plan.sample_steps, cfg=5.0)
    round_s = 0.0
    for cfg in configs:  # warm-up: first load onto the device, kernel selection, caches
        cfg.positive, cfg.negative = bo.encode_pair(cfg.clip)
        if time.monotonic() > deadline:
            raise OverBudget("the warm-up round did not fit")
        _, seconds, _, cfg.output = bo.sample(cfg, settings)
        round_s += seconds
        log(f"warm-up {cfg.name}: {seconds:.2f} s")
    if torch.equal(configs[0].output, configs[1].output):
        raise RuntimeError("one concept did not change the sample: the edit is not active, timings are void")
    for rnd in range(plan.rounds):
        if time.monotonic() + round_s > deadline:
            break
        started = time.monotonic()
        for cfg in configs[rnd % 3:] + configs[:rnd % 3]:  # rotate who goes first: drift hits all alike
            cfg.times.append(bo.sample(cfg, settings)[1])  # wall s; the latent's copy to the CPU waits for the GPU
        round_s, out["rounds"] = time.monotonic() - started, rnd + 1
        log(f"round {rnd + 1}: " + ", ".join(f"{c.name} {c.times[-1]:.3f} s" for c in configs))
    out["times"] = {cfg.name: cfg.times for cfg in configs}
    if out["rounds"] < 2:
        raise OverBudget(f"{out['rounds']} timed round(s) fit, 2 needed")


def load_sd1(run: Run) -> dict[str, Any]:
    """The SD1.5 checkpoint through ComfyUI's own loader (TrainPerfusion needs its VAE), LoRA's inputs."""
    if run.sd1 is not None:
        return run.sd1
    import comfy.sd
    import numpy as np
    from PIL import Image

    import nodes as comfy_nodes
    from perfusion_core.training import square_crop
    from harness import random_models
    from tools.sample_images import IMAGES_DIR

    start = time.monotonic()
    ckpt = random_models.cached_checkpoint("sd1", run.plan.size, seed=0)  # written once (2 GB for full)
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(ckpt), output_vae=True, output_clip=True, model_options={"dtype": torch.float16} if run.cuda else {})
    images = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
                                        for p in sorted(IMAGES_DIR.glob("teddy_?.png"))]))
    latents = vae.encode(square_crop(images, run.plan.train_px)).float()  # LoRA trains on latents made beforehand
    run.sd1 = {"model": model, "clip": clip, "vae": vae, "images": images, "latents": [x[None] for x in latents],
               "positive": comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a teddy")[0],
               "dtype": str(model.model.get_dtype()).replace("torch.", "")}
    log(f"SD1.5 {run.plan.size} checkpoint written/loaded, images encoded in {time.monotonic() - start:.0f} s")
    return run.sd1


def train_run(run: Run, node: str, steps: int, accumulation: int) -> dict[str, float]:
    """One training node call: median step time; VRAM (MiB) before, at the steps' peak, at the call's peak."""
    import comfy.model_management as mm
    import comfy.utils

    from harness.lora_baseline import train_lora_node

    data, plan = load_sd1(run), run.plan
    mm.unload_all_models()  # each run loads its model itself: its peak is its own
    gc.collect()
    mm.soft_empty_cache()
    if run.cuda:
        torch.cuda.reset_peak_memory_stats()
    before, clock = torch.cuda.memory_allocated() if run.cuda else 0, PeakClock(run.cuda)
    comfy.utils.set_progress_bar_global_hook(clock)  # both nodes update it once per optimizer step
    start = time.perf_counter()
    try:
        if node == "TrainLoraNode":
            dtype = "bf16" if run.cuda else "fp32"  # the node's default on a GPU; a CPU has no fast bf16
            train_lora_node(data["model"], data["latents"], data["positive"], batch_size=plan.batch,
                            grad_accumulation_steps=accumulation, steps=steps, learning_rate=1e-4, rank=16,
                            optimizer="AdamW", loss_function="MSE", seed=0, training_dtype=dtype, lora_dtype=dtype,
                            algorithm="LoRA", gradient_checkpointing=True)
        else:
            run.pack.nodes.nodes_train.train_perfusion(
                data["model"], data["clip"], data["vae"], images=data["images"], trigger_word="zorb",
                superclass="teddy", steps=steps, batch_size=plan.batch, grad_accumulation=accumulation,
                lr_values=0.03, lr_embedding=0.006, train_beta=0.75, train_tau=0.1, seed=0,
                resolution=plan.train_px, timestep_sets=1, gradient_checkpointing=True, mask_source="none",
                checkpoint_every=0, output_name="gpu_check", statistics_captions=100, preview_every=0)
        if run.cuda:
            torch.cuda.synchronize()
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    peak = torch.cuda.max_memory_allocated() if run.cuda else 0
    result = {"call_s": time.perf_counter() - start, "step_s": clock.summary()["step_wall_s"], "steps": len(clock.wall),
              "before_mib": before / MIB, "peak_steps_mib": peak / MIB, "peak_call_mib": max(peak, clock.first_peak) / MIB}
    log(f"{node}, {steps} steps x {accumulation}: {json.dumps(result)}")
    return result


def training_stage(run: Run, deadline: float) -> None:
    out = run.results["training"] = {"px": run.plan.train_px, "batch": run.plan.batch, "steps": run.plan.train_steps,
                                     "dtype": load_sd1(run)["dtype"], "runs": {}}
    for node in ("TrainLoraNode", "TrainPerfusion"):
        if time.monotonic() > deadline:
            raise OverBudget(f"no time left for {node}")
        out["runs"][node] = train_run(run, node, run.plan.train_steps, accumulation=1)


def long_stage(run: Run, deadline: float) -> None:
    """400 steps of the node's recipe if the estimate fits, else a short run, extrapolated (and said so)."""
    plan, done = run.plan, run.results.get("training", {}).get("runs", {}).get("TrainPerfusion")
    per_step = done["step_s"] * plan.long_accumulation if done else float("inf")  # the comparison ran 1 micro-batch
    estimate = per_step * plan.long_steps * 1.1 + 10
    full = estimate < deadline - time.monotonic()
    steps = plan.long_steps if full else plan.probe_steps
    if not full and done and per_step * (steps + 1) > deadline - time.monotonic():  # without an estimate: try
        raise OverBudget(f"not even {steps} steps fit (estimate for {plan.long_steps}: {estimate:.0f} s)")
    log(f"{steps} steps ({'measured' if full else 'to extrapolate from'}; estimate for {plan.long_steps}: {estimate:.0f} s)")
    result = train_run(run, "TrainPerfusion", steps, plan.long_accumulation)
    run.results["long"] = {**result, "kind": "measured" if full else "extrapolated",
                           "seconds": result["call_s"] if full else result["step_s"] * plan.long_steps}


# ----------------------------------------------------------------------------- report

def facts(run: Run) -> dict[str, str]:
    import comfyui_version

    return {"device": torch.cuda.get_device_name() if run.cuda else f"CPU, {os.cpu_count()} cores",
            "torch": torch.__version__, "cuda": torch.version.cuda or "none", "comfyui": comfyui_version.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def sampling_lines(family: str, s: dict[str, Any]) -> list[str]:
    if s.get("rounds", 0) < 2:
        return [f"{FAMILIES[family]}: not measured (see the stages above).", ""]
    times = s["times"]
    lines = [(f"{FAMILIES[family]}, {s['dtype']}, {s['px']} px, KSampler euler/normal, {s['steps']} steps, cfg 5 with a "
             f"negative prompt (batch 2 per UNet call), {s['rounds']} interleaved rounds after a warm-up round."), "",
             "| configuration | s per sample, median (min..max) | / plain, paired median (quartiles) | limit | verdict |",
             "|---|---|---|---|---|"]
    for name, t in times.items():
        ratios, limit = [a / b for a, b in zip(t, times["plain"])], bo.LIMITS.get(name)
        lines.append(f"| {name} | {bo.spread(t, digits=3)} | {bo.quartiles(ratios)} | "
                     f"{f'<= {limit:.2f}' if limit else ''} | {bo.verdict(bo.median(ratios), name)} |")
    return lines + [""]


def training_lines(run: Run) -> list[str]:
    t, long, plan = run.results.get("training"), run.results.get("long"), run.plan
    vram = (lambda mib: f"{mib:.0f} MiB") if run.cuda else (lambda mib: "n/a (CPU)")
    lines = ["TrainPerfusion vs TrainLoraNode: not measured (see the stages above).", ""]
    if t and len(t["runs"]) == 2:
        lora = t["runs"]["TrainLoraNode"]
        lines = [(f"SD1.5, {t['dtype']} weights, {t['px']} px, batch {t['batch']}, {t['steps']} steps, gradient "
                 "checkpointing on. TrainLoraNode: rank 16, AdamW, bf16 (its default; fp32 on a CPU). Peak VRAM "
                 "\"steps\": from the end of the first step on; \"call\": the whole node call."), "",
                 "| node | step, median | vs LoRA | peak VRAM, steps | peak VRAM, call | VRAM before |", "|---|---|---|---|---|---|",
                 *[f"| {name} | {r['step_s']:.3f} s | {r['step_s'] / lora['step_s']:.2f} | {vram(r['peak_steps_mib'])} | "
                   f"{vram(r['peak_call_mib'])} | {vram(r['before_mib'])} |" for name, r in t["runs"].items()], ""]
    recipe = f"batch {plan.batch} x {plan.long_accumulation} accumulation" + (
        ", the node's default" if (plan.batch, plan.long_accumulation) == (4, 4) else "")
    if not long:
        return lines + [f"{plan.long_steps} TrainPerfusion steps: not measured (see the stages above)."]
    how = ("measured, one node call" if long["kind"] == "measured" else
           f"EXTRAPOLATED: {plan.long_steps} x the median of {long['steps']} measured steps, setup not included")
    return lines + [(f"{plan.long_steps} TrainPerfusion steps ({recipe}; statistics cached): **{long['seconds']:.0f} s** "
                    f"({how}); median step {long['step_s']:.3f} s, peak VRAM {vram(long['peak_steps_mib'])}.")]


def report(run: Run, note: str = "") -> str:
    f = run.results["facts"]
    return "\n".join([
        "## On a GPU (bench/gpu_check.py)", "",
        (f"Command: `{COMMAND}{' --smoke' if run.smoke else ''}`; {run.plan.size} layouts, random weights. "
        f"{f['device']}; torch {f['torch']}, CUDA {f['cuda']}, ComfyUI {f['comfyui']}, Python {f['python']}; "
        f"{f['date']}; whole run {time.monotonic() - T0:.0f} s.{note}"), "",
        "| stage | status | seconds |", "|---|---|---|",
        *[f"| {k} | {v['status']} | {v['seconds']:.0f} |" for k, v in run.results["stages"].items()], "",
        "### Sampling overhead", "",
        *[line for fam in FAMILIES for line in sampling_lines(fam, run.results["sampling"].get(fam, {}))],
        "### Training, SD1.5", "", *training_lines(run)]) + "\n"


def write_doc(section: str, path: Path = DOC) -> None:
    """Replace the gpu_check section; if it is missing, insert it after the training benchmark's section."""
    text, block = path.read_text(), f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        anchor = "<!-- bench_training: end generated -->\n"
        text = text.replace(anchor, anchor + "\n" + block, 1) if anchor in text else text.rstrip() + "\n\n" + block
    path.write_text(text)


def finish(run: Run, out_dir: str | None, note: str = "") -> None:
    section = report(run, note)
    print("\n" + section, flush=True)
    if out_dir:  # what comes back from the device machine
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "gpu_check.md").write_text(section)
        (Path(out_dir) / "gpu_check.json").write_text(json.dumps(run.results, indent=1, default=str))
    if not run.smoke:
        write_doc(section)
        print(f"wrote {DOC.relative_to(REPO)}", flush=True)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny layouts, 64 px, a few steps; prints only")
    p.add_argument("--out", default=os.environ.get("OUT"), help="also save gpu_check.md/.json here (default $OUT)")
    p.add_argument("--insert", metavar="FILE", help="write a saved gpu_check.md into docs/benchmarks.md and exit")
    args = p.parse_args(argv)
    if args.insert:
        write_doc(Path(args.insert).read_text())
        return 0
    run = Run(SMOKE if args.smoke else FULL, args.smoke)
    if not args.smoke:
        os.environ.setdefault(DEVICE_ENV_VAR, "auto")  # read when the host is imported, which picks the device
    import_host()
    import comfy.model_management as mm
    import folder_paths

    run.cuda = mm.get_torch_device().type == "cuda"
    if not run.cuda and not args.smoke:
        print("gpu_check: ComfyUI found no CUDA device; on a CPU run --smoke", file=sys.stderr)
        return 2
    run.pack = import_pack()
    bo.quiet_host()
    run.results["facts"] = facts(run)

    def on_timeout() -> None:  # a stage outran its checks: keep what was measured, then stop
        for record in run.results["stages"].values():
            if record["status"] == "running":
                record["status"] = "skipped (budget): still running at the hard limit"
        finish(run, args.out, note=" Stopped by the watchdog.")
        os._exit(3)

    watchdog = threading.Timer(run.plan.hard_limit - (time.monotonic() - T0), on_timeout)
    watchdog.daemon = True
    watchdog.start()
    # inference_mode as ComfyUI's executor runs nodes; models/perfusion in a throw-away folder
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        folder_paths.folder_names_and_paths["perfusion"] = ([folder], {".safetensors"})
        run.stage("SD1.5 sampling", lambda d: sampling_stage(run, "sd1", d))
        run.stage("training comparison", lambda d: training_stage(run, d))
        run.stage("SDXL sampling", lambda d: sampling_stage(run, "sdxl", d))
        run.stage("400 steps", lambda d: long_stage(run, d))
        watchdog.cancel()
    finish(run, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
