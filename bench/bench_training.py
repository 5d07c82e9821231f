"""Training cost of TrainPerfusion against ComfyUI's own TrainLoraNode (in-process, CPU by default).

    .venv/bin/python bench/bench_training.py [--size full|tiny] [--resolution 128] [--steps 6]
                                             [--batch 1] [--rank 16] [--threads T] [--no-write-doc]

Same host, same checkpoint (the full SD1.5 layout with random weights by
default), same four bundled images, steps, batch, resolution and gradient
checkpointing for every run. Each run is a fresh child process, so its peak
memory is its own:

- ``lora``: TrainLoraNode (rank ``--rank``, AdamW, fp32 compute and weights,
  as on a CPU), on latents and a "a photo of a teddy" conditioning made by
  the stock nodes beforehand;
- ``perfusion``: the TrainPerfusion node as a server runs it (under inference
  mode), 100 statistics captions, no previews;
- ``perfusion_fp8``: the same with the UNet weights stored as fp8_e4m3fn (what
  UNETLoader's ``weight_dtype`` does), for the memory-efficient variant.

Step time: the median interval between the training progress-bar updates,
first step excluded (both nodes update the same ComfyUI progress hook once per
optimizer step); wall time and this process's CPU time. Memory: resident set
size sampled every 5 ms; "training memory" is the peak during the node call
minus the resident size just before it (model, images and conditioning already
loaded), so it is what training itself adds.

Perfusion's step includes what LoRA's does not: a text-encoder forward and
backward per micro-batch (the trigger embedding is trained through CLIP).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_training: begin generated -->", "<!-- bench_training: end generated -->"
VARIANTS = ("lora", "perfusion", "perfusion_fp8")


# ----------------------------------------------------------------------------- measuring, in the child

class MemorySampler:
    """Peak resident set size of this process, sampled on a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> "MemorySampler":
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


class StepClock:
    """Wall and CPU time at every progress update (one per optimizer step in both nodes)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, value: int, total: int, preview: Any = None, node_id: Any = None) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    @staticmethod
    def _median_interval(stamps: list[float]) -> float:
        gaps = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
        return statistics.median(gaps) if gaps else float("nan")

    def summary(self) -> dict[str, float]:
        return {"step_wall_s": self._median_interval(self.wall), "step_cpu_s": self._median_interval(self.cpu),
                "updates": len(self.wall)}


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from harness.comfy_host import import_host, import_pack

    import_host()
    torch.set_num_threads(args.threads)
    pack = import_pack()
    import comfy.sd
    import comfy.utils
    import folder_paths
    import nodes as comfy_nodes
    import numpy as np
    from PIL import Image

    from perfusion_core.training import square_crop
    from harness import random_models
    from tools.sample_images import IMAGES_DIR

    work = tempfile.mkdtemp(prefix="bench_training_")
    folder_paths.folder_names_and_paths["perfusion"] = ([work], {".safetensors"})
    options = {"dtype": torch.float8_e4m3fn} if args.variant == "perfusion_fp8" else {}
    ckpt = random_models.cached_checkpoint("sd1", args.size, seed=0)
    images = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
                                        for p in sorted(IMAGES_DIR.glob("teddy_?.png"))]))
    clock = StepClock()
    comfy.utils.set_progress_bar_global_hook(clock)
    with torch.inference_mode():  # as the server runs nodes
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clip=True,
                                                                    model_options=options)
        if args.variant == "lora":
            latents = vae.encode(square_crop(images, args.resolution)).float()
            positive = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a teddy")[0]
        before = MemorySampler.rss()
        started = time.perf_counter()
        with MemorySampler() as memory:
            if args.variant == "lora":
                from harness.lora_baseline import train_lora_node

                train_lora_node(model, [x[None] for x in latents], positive, batch_size=args.batch,
                                grad_accumulation_steps=1, steps=args.steps, learning_rate=1e-4, rank=args.rank,
                                optimizer="AdamW", loss_function="MSE", seed=0, training_dtype="fp32",
                                lora_dtype="fp32", algorithm="LoRA", gradient_checkpointing=True)
            else:
                pack.nodes.nodes_train.train_perfusion(
                    model, clip, vae, images=images, trigger_word="zorb", superclass="teddy", steps=args.steps,
                    batch_size=args.batch, grad_accumulation=1, lr_values=0.03, lr_embedding=0.006,
                    train_beta=0.75, train_tau=0.1, seed=0, resolution=args.resolution, timestep_sets=1,
                    gradient_checkpointing=True, mask_source="none", checkpoint_every=0, output_name="bench",
                    statistics_captions=100, preview_every=0)
        wall = time.perf_counter() - started
    return {"variant": args.variant, **clock.summary(), "call_wall_s": wall,
            "rss_before_mib": before / 2**20, "rss_peak_mib": memory.peak / 2**20,
            "training_mib": (memory.peak - before) / 2**20}


# ----------------------------------------------------------------------------- the parent

def run_child(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--size", args.size, "--resolution", str(args.resolution),
           "--steps", str(args.steps), "--batch", str(args.batch), "--rank", str(args.rank),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, rows: dict[str, dict[str, Any]], load: tuple[float, float]) -> str:
    lora = rows["lora"]
    lines = [f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores "
             f"({args.threads} threads), {args.size} SD1.5 layout (random weights), {args.resolution} px, "
             f"batch {args.batch}, {args.steps} steps, gradient checkpointing on, LoRA rank {args.rank}. "
             f"Load average before/after: {load[0]:.1f}/{load[1]:.1f}.", "",
             "| run | step (wall) | step (CPU) | vs LoRA (wall / CPU) | training memory | vs LoRA | peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['step_wall_s']:.2f} s | {r['step_cpu_s']:.2f} s | "
            f"{r['step_wall_s'] / lora['step_wall_s']:.2f} / {r['step_cpu_s'] / lora['step_cpu_s']:.2f} | "
            f"{r['training_mib']:.0f} MiB | {r['training_mib'] / lora['training_mib']:.2f} | "
            f"{r['rss_peak_mib']:.0f} MiB |")
    if "perfusion_fp8" in rows:
        full, fp8 = rows["perfusion"], rows["perfusion_fp8"]
        lines += ["", f"fp8 base: peak RSS {fp8['rss_peak_mib']:.0f} MiB vs {full['rss_peak_mib']:.0f} MiB in full "
                      f"precision ({fp8['rss_peak_mib'] / full['rss_peak_mib']:.2f}x)."]
    return "\n".join(lines) + "\n"


def write_doc(section: str, path: Path = DOC) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-write-doc", action="store_true")
    parser.add_argument("--child", choices=VARIANTS, dest="variant")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    load_before = os.getloadavg()[0]
    rows = {}
    for variant in args.variants.split(","):
        rows[variant] = run_child(args, variant)
        print(variant, json.dumps(rows[variant]), flush=True)
    section = report(args, rows, (load_before, os.getloadavg()[0]))
    print(section)
    if args.size == "full" and not args.no_write_doc:
        write_doc(section)


if __name__ == "__main__":
    main()
