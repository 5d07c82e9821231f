"""Measure the world model and Perfusion on it; write ``docs/evidence.md`` and its figures.

    python -m world.evidence [--quick]

Everything runs in-process on the committed world model and judge: concepts
are trained with the TrainPerfusion node, applied with ConceptGate and
ApplyKeyLockedEdit, sampled with the stock Euler sampler and read by the judge.
``--quick`` uses one training seed and fewer samples (a smoke run, not evidence).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from tools.comfy_host import REPO_ROOT
from world.dataset import images
from world.experiments import TrainSpec, front
from world.host import WorldHost
from world.judge import accuracy, judge_scenes, like_generated
from world.metrics import attribute_hits, mean_ci
from world.plot import Point, scatter
from world.sampling import grid
from world.scenes import BACKGROUNDS, CATEGORIES, COLOURS, HIDDEN_COLOURS, SLOTS, Scene, WorldObject, caption

DOCS = REPO_ROOT / "docs"
FIGURES = DOCS / "evidence"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def judge_report(host: WorldHost, n: int = 1000) -> dict[str, dict[str, float]]:
    """The judge's accuracy on renders it never trained on, clean and through the world VAE."""
    scenes = judge_scenes(n, seed=424242)
    clean = images(scenes)
    taesd = host.vae.first_stage_model
    return {"clean renders": accuracy(host.judge, clean, scenes),
            "through the VAE": accuracy(host.judge, like_generated(taesd, clean), scenes)}


def base_model_report(host: WorldHost, prompts: int, seeds: list[int]) -> tuple[dict[str, tuple[float, float]], list]:
    """How often the base model draws what a full one-object caption asks (per attribute, mean and CI
    over prompts), and a few (prompt, images) pairs for a sample grid."""
    rng = random.Random(7)
    per_prompt: dict[str, list[float]] = {}
    shown = []
    for i in range(prompts):
        bg = rng.choice(BACKGROUNDS)
        colour = rng.choice([c for c in COLOURS if c not in HIDDEN_COLOURS[bg]])
        asked = Scene(bg, (WorldObject(rng.choice(CATEGORIES), colour, rng.choice(SLOTS), "big"),))
        text = caption(asked)
        pictures = host.sample(text, seeds)
        hits = [attribute_hits(s, asked) for s in host.read(pictures)]
        for key in hits[0]:
            per_prompt.setdefault(key, []).append(sum(h[key] for h in hits) / len(hits))
        if i < 8:
            shown.append((text, pictures))
    return {k: mean_ci(v) for k, v in per_prompt.items()}, shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    host = WorldHost.open()
    results: dict = {}

    _log("judge accuracy")
    results["judge"] = judge_report(host, 200 if args.quick else 1000)
    _log(json.dumps(results["judge"]))

    _log("base model")
    base, shown = base_model_report(host, 8 if args.quick else 40, [0, 1] if args.quick else [0, 1, 2, 3])
    results["base_model"] = base
    import torch

    grid(torch.cat([p for _, p in shown]), columns=len(shown[0][1]) * 2, scale=3).save(args.out / "base_samples.png")
    _log(json.dumps(base))

    _log("Pareto front")
    seeds = [0] if args.quick else [0, 1, 2]
    rows = front(host, TrainSpec(steps=50 if args.quick else 200), seeds, betas=[0.5, 0.6, 0.7, 0.8, 0.9],
                 locks=["local", "global"], sample_seeds=[0] if args.quick else [0, 1])
    results["front"] = rows
    series: dict[str, list[Point]] = {}
    for r in rows:
        series.setdefault(f"{r['lock']} lock", []).append(
            Point(r["alignment"], r["fidelity"], r["alignment_ci"] or 0, r["fidelity_ci"] or 0, f"b={r['beta']}"))
    scatter(series, "prompt alignment", "concept fidelity", "Perfusion by inference beta (tau 0.15)").save(
        args.out / "front.png")
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
