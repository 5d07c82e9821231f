"""Measure the world model and Perfusion on it; write ``docs/evidence.md`` and its figures.

    python -m world.evidence [--quick] [--world v2]

The tables in ``docs/evidence.md`` (between its generated-section markers) and
the figures in ``docs/evidence/`` are rewritten; the prose around them is not.
Another world's run (``--world``) has its own markers in the same doc and its
own figures folder (``docs/evidence/v2/``), so the worlds' results never mix.
Everything runs in-process on the world's committed model and judge: concepts
are trained with the TrainPerfusion node, applied with ConceptGate and
ApplyKeyLockedEdit, sampled with the stock Euler sampler and read by the judge.
``--quick`` uses one training seed and fewer samples (a smoke run, not evidence).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from PIL import Image

from harness.comfy_host import REPO_ROOT
from world.dataset import images
from world.experiments import (
    SECOND_TRIGGER,
    GateSpec,
    LoraSpec,
    TrainSpec,
    apply,
    concept_bytes,
    front,
    lora_baseline,
    train_concept,
    two_concepts,
    two_concepts_regional,
    variants,
)
from world.host import WorldHost
from world.judge import accuracy, judge_scenes, like_generated
from world.metrics import attribute_hits, companion_requests, mean_ci, placed_hits
from world.plot import Point, scatter
from world.report import BEGIN, END, world_markers, write_tables
from world.sampling import grid
from world.scenes import (
    BACKGROUNDS,
    CATEGORIES,
    COLOURS,
    CONCEPT_BY_NAME,
    HIDDEN_COLOURS,
    SETTING_PHRASE,
    SLOTS,
    Scene,
    WorldObject,
    caption,
    random_parts,
)
from world.worlds import WORLDS

PARTS = ("judge", "base", "front", "nolock", "ablations", "two", "regional", "lora", "ti", "companion")
DOCS = REPO_ROOT / "docs"
FIGURES = DOCS / "evidence"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def judge_report(host: WorldHost, n: int = 1000) -> dict[str, dict[str, float]]:
    """The judge's accuracy on renders it never trained on (their parts drawn at the world's
    scale), clean and through the world VAE."""
    scenes = judge_scenes(n, seed=424242, part_scale=host.world.part_scale)
    clean = images(scenes)
    taesd = host.vae.first_stage_model
    return {"clean renders": accuracy(host.judge, clean, scenes),
            "through the VAE": accuracy(host.judge, like_generated(taesd, clean), scenes)}


def base_model_report(host: WorldHost, prompts: int, seeds: list[int]) -> tuple[dict[str, tuple[float, float]], list]:
    """How often the base model draws what a full one-object caption asks (per attribute, mean and CI
    over the prompts that ask it), and a few (prompt, images) pairs for a sample grid. In a world
    whose pretraining names concept parts, every other object wears some (never all of a concept's)."""
    rng = random.Random(7)
    per_prompt: dict[str, list[float]] = {}
    shown = []
    for i in range(prompts):
        bg = rng.choice(BACKGROUNDS)
        colour = rng.choice([c for c in COLOURS if c not in HIDDEN_COLOURS[bg]])
        category = rng.choice(CATEGORIES)
        worn = random_parts(rng, category, colour) if host.world.parts_share and i % 2 else (None, None)
        asked = Scene(bg, (WorldObject(category, colour, rng.choice(SLOTS), "big", False, None, *worn),))
        text = caption(asked)
        pictures = host.sample(text, seeds)
        _add_shares(per_prompt, [attribute_hits(s, asked) for s in host.read(pictures)])
        if i < 8:
            shown.append((text, pictures))
    return {k: mean_ci(v) for k, v in per_prompt.items()}, shown


def two_object_base_report(host: WorldHost, prompts: int, seeds: list[int]) -> dict[str, tuple[float, float]]:
    """How often the base model draws both objects of a two-object caption ('a photo of a red cup and
    a blue chair on the grass'), each in its place: mean and CI over prompts of ``placed_hits``."""
    rng = random.Random(8)
    per_prompt: dict[str, list[float]] = {}
    for _ in range(prompts):
        bg = rng.choice(BACKGROUNDS)
        colours = [c for c in COLOURS if c not in HIDDEN_COLOURS[bg]]
        first, second = rng.sample(CATEGORIES, 2)
        asked = Scene(bg, (WorldObject(first, rng.choice(colours), "left", "small"),
                           WorldObject(second, rng.choice(colours), "right", "small")))
        _add_shares(per_prompt, [placed_hits(s, asked) for s in host.read(host.sample(caption(asked), seeds))])
    return {k: mean_ci(v) for k, v in per_prompt.items()}


def _add_shares(per_prompt: dict[str, list[float]], hits: list[dict[str, float]]) -> None:
    """Append one prompt's share of images with each attribute (the keys of its images' hits)."""
    for key in hits[0]:
        per_prompt.setdefault(key, []).append(sum(h[key] for h in hits) / len(hits))


def concept_grid(host: WorldHost, spec: TrainSpec, gate: GateSpec, seeds: list[int]) -> Image.Image:
    """One row per setting: the trained concept asked for on each side, the base model beside it."""
    import torch

    model, clip = apply(host, train_concept(host, spec), gate)
    rows = []
    for bg in BACKGROUNDS:
        prompt = f"a photo of a {spec.trigger} {SETTING_PHRASE[bg]}"
        rows.append(host.sample(prompt, seeds, model=model, clip=clip))
        rows.append(host.sample(f"a photo of a {CONCEPT_BY_NAME[spec.concept].category} {SETTING_PHRASE[bg]}", seeds))
    return grid(torch.cat(rows), columns=2 * len(seeds), scale=3)


def ablation_runs(base: TrainSpec, gate: GateSpec, composites: int) -> dict[str, tuple[TrainSpec, GateSpec]]:
    """The training and timestep ablations, each against the same plain concept."""
    return {
        "Perfusion (5 shots, masked, train beta 0.75)": (base, gate),
        "train beta 0.6": (replace(base, train_beta=0.6), gate),
        "train beta 0.9": (replace(base, train_beta=0.9), gate),
        "one shot": (replace(base, shots=1, batch_size=1), gate),
        "no mask": (replace(base, masked=False), gate),
        "no key-lock (keys trained)": (replace(base, train_keys=True), gate),
        "fp8-loaded base (trained and sampled on it)": (replace(base, fp8_base=True), gate),
        "S1: edit only in the first 60% of denoising": (base, replace(gate, end_percent=0.6)),
        "S1: trained and applied on the first 60% of denoising": (replace(base, end_percent=0.6),
                                                                  replace(gate, end_percent=0.6)),
        "S1: trained and applied on the last 60% of denoising": (replace(base, start_percent=0.4),
                                                                 replace(gate, start_percent=0.4)),
        "S2: 2 timestep intervals": (replace(base, timestep_sets=2), gate),
        "S2: 4 timestep intervals": (replace(base, timestep_sets=4), gate),
        f"captions, {composites} two-object composites added": (replace(base, composites=composites), gate),
    }


def textual_inversion_runs(base: TrainSpec, gate: GateSpec) -> dict[str, tuple[TrainSpec, GateSpec]]:
    """Embedding-only training on the same renders, masks and steps, applied switched off (strength 0):
    the recipe's embedding learning rate and a five times larger one."""
    off = replace(gate, strength=0.0)
    return {f"textual inversion, lr_embedding {lr:g}": (replace(base, embedding_only=True, lr_embedding=lr), off)
            for lr in (0.006, 0.03)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 50 training steps: a smoke run")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=200, help="TrainPerfusion steps per concept")
    parser.add_argument("--lr-values", type=float, default=0.1, help="TrainPerfusion lr_values")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (front, two concepts)")
    parser.add_argument("--ablation-seeds", type=int, default=3, help="training seeds of each ablation")
    parser.add_argument("--sample-seeds", type=int, default=2, help="sampling seeds per prompt")
    parser.add_argument("--betas", default="0.5,0.6,0.7,0.8,0.9", help="inference betas of the front")
    parser.add_argument("--ablations", default="",
                        help="labels of the ablations to run, separated by ';' (default: all); rows of the others stay")
    parser.add_argument("--lora-lrs", default="0.0005,0.005",
                        help="learning rates of the LoRA baseline (TrainLoraNode's default, and a tenfold one)")
    parser.add_argument("--composites", type=int, default=6,
                        help="two-object renders added to the shots of the caption-trained concepts (two, ablations)")
    parser.add_argument("--world", default="v1", choices=sorted(WORLDS), help="the world model (world.worlds)")
    parser.add_argument("--out", type=Path, help="figures and results.json (default: docs/evidence, "
                        "or docs/evidence/<world> for another world)")
    parser.add_argument("--doc", type=Path, default=DOCS / "evidence.md", help="where the tables go")
    args = parser.parse_args(argv)
    args.out = args.out or (FIGURES if args.world == "v1" else FIGURES / args.world)
    parts = set(args.parts.split(","))
    if unknown := parts - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from {','.join(PARTS)}")
    if args.quick:
        args.steps, args.seeds, args.ablation_seeds, args.sample_seeds = 50, 1, 1, 1
    args.out.mkdir(parents=True, exist_ok=True)
    host = WorldHost.open(world=WORLDS[args.world])
    started = time.time()
    train_seeds, sample_seeds = list(range(args.seeds)), list(range(args.sample_seeds))
    base = TrainSpec(steps=args.steps, lr_values=args.lr_values, world=args.world)
    gate = GateSpec()
    # Parts measured by an earlier run stay (a run of some --parts adds to the results).
    saved = args.out / "results.json"
    results: dict = json.loads(saved.read_text()) if saved.is_file() else {}
    command = ("python -m world.evidence " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    results["settings"] = {"train": asdict(base), "gate": asdict(gate), "train_seeds": train_seeds,
                           "ablation_seeds": list(range(args.ablation_seeds)), "sample_seeds": sample_seeds,
                           "commands": list(dict.fromkeys(results.get("settings", {}).get("commands", []) + [command]))}
    import torch

    if "judge" in parts:
        _log("judge accuracy")
        results["judge"] = judge_report(host, 200 if args.quick else 1000)
        _log(json.dumps(results["judge"]))
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "base" in parts:
        _log("base model")
        report, shown = base_model_report(host, 8 if args.quick else 40, [0, 1] if args.quick else [0, 1, 2, 3])
        results["base_model"] = report
        results["base_two_objects"] = two_object_base_report(host, 8 if args.quick else 40,
                                                             [0, 1] if args.quick else [0, 1, 2, 3])
        grid(torch.cat([p for _, p in shown]), columns=len(shown[0][1]) * 2, scale=3).save(args.out / "base_samples.png")
        _log(json.dumps(report | results["base_two_objects"]))
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "front" in parts:
        _log("Pareto front")
        rows = front(host, base, train_seeds, betas=[float(b) for b in args.betas.split(",")],
                     locks=["local", "global", "context"], sample_seeds=sample_seeds)
        results["front"] = rows
        front_plot(results).save(args.out / "front.png")
        concept_grid(host, base, gate, [0, 1]).save(args.out / "concept_samples.png")
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "nolock" in parts:
        _log("front without key-lock")
        results["front_nolock"] = front(host, replace(base, train_keys=True), train_seeds,
                                        betas=[float(b) for b in args.betas.split(",")], locks=["local"],
                                        sample_seeds=sample_seeds)
        front_plot(results).save(args.out / "front.png")
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "ablations" in parts:
        _log("ablations")
        runs = ablation_runs(base, gate, args.composites)
        wanted = [w.strip() for w in args.ablations.split(";") if w.strip()]
        chosen = {k: v for k, v in runs.items() if not wanted or k in wanted}
        if len(chosen) != (len(wanted) or len(runs)):
            parser.error(f"--ablations: choose from {list(runs)}")
        measured = variants(host, chosen, list(range(args.ablation_seeds)), sample_seeds)
        results["ablations"] = _merge_rows(results.get("ablations", []), measured, order=list(runs))
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "two" in parts:
        _log("two concepts")
        results["two_concepts"] = two_concepts_report(host, base, gate, args.composites, train_seeds, sample_seeds)
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "regional" in parts:
        _log("two concepts, one per half of the image")
        second = replace(base, concept="striped_cup", trigger=SECOND_TRIGGER)
        results["two_regional"] = [
            two_concepts_regional(host, a, b, replace(gate, lock=lock, beta=beta), train_seeds, sample_seeds)
            | {"lock": lock, "beta": beta}
            for lock, beta in (("local", 0.7), ("context", 0.7), ("context", 0.5))
            for a, b in ((base, second), (second, base))]
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "lora" in parts:
        _log("LoRA baseline")
        train_concept(host, base)
        rows = [lora_baseline(host, LoraSpec(steps=args.steps, lr=float(lr)), train_seeds, sample_seeds)
                | {"perfusion_bytes": concept_bytes(base)} for lr in args.lora_lrs.split(",")]
        earlier = results.get("lora", [])
        results["lora"] = _merge_rows([earlier] if isinstance(earlier, dict) else earlier, rows)
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "ti" in parts:
        _log("textual inversion baseline")
        results["textual_inversion"] = variants(host, textual_inversion_runs(base, gate), train_seeds, sample_seeds)
    saved.write_text(json.dumps(results, indent=1, default=str))  # a crash keeps the parts done
    if "companion" in parts:
        _log("beside a companion object")
        results["companion"] = companion_report(host, base, gate, train_seeds, sample_seeds,
                                                [float(b) for b in args.betas.split(",")],
                                                max(float(lr) for lr in args.lora_lrs.split(",")))
        companion_plot(results["companion"]).save(args.out / "front_companion.png")
    results["settings"]["minutes"] = round((time.time() - started) / 60, 1)
    saved.write_text(json.dumps(results, indent=1, default=str))
    figures = os.path.relpath(args.out.resolve(), args.doc.resolve().parent)
    write_tables(args.doc, results, Path(figures).as_posix(), world_markers(BEGIN, END, args.world))
    _log(f"wrote {args.out} and {args.doc}")
    return 0


def two_concepts_report(host: WorldHost, base: TrainSpec, gate: GateSpec, composites: int, train_seeds: list[int],
                        sample_seeds: list[int]) -> list[dict]:
    """Two concepts stacked, each lock, for concepts trained on templates and on captioned renders
    that include the concept beside another object, left and right (``composites``)."""
    rows = []
    for training, spec in (("templates", base),
                           (f"captions, {composites} composites", replace(base, composites=composites))):
        second = replace(spec, concept="striped_cup", trigger=SECOND_TRIGGER)
        rows += [row | {"lock": lock, "training": training} for lock in ("local", "context")
                 for row in two_concepts(host, spec, second, replace(gate, lock=lock), train_seeds, sample_seeds)]
    return rows


def companion_report(host: WorldHost, base: TrainSpec, gate: GateSpec, train_seeds: list[int], sample_seeds: list[int],
                     betas: list[float], lora_lr: float) -> list[dict]:
    """Every method on prompts that ask for the concept beside another object of a given colour
    ('a photo of a sks and a red chair on the grass'), where alignment can fall: rows with a
    ``method`` (one series of the plot) and a ``variant`` label."""
    asked = companion_requests(base.trigger, CONCEPT_BY_NAME[base.concept].category)
    rows = [r | {"method": f"{r['lock']} lock", "variant": f"Perfusion, {r['lock']} lock, beta {r['beta']}"}
            for r in front(host, base, train_seeds, betas, ["local", "context"], sample_seeds, asked=asked)]
    rows += [r | {"method": "no key-lock (keys trained)", "variant": f"keys trained, beta {r['beta']}"}
             for r in front(host, replace(base, train_keys=True), train_seeds, betas, ["local"], sample_seeds,
                            asked=asked)]
    rows += [r | {"method": "textual inversion"} for r in
             variants(host, textual_inversion_runs(base, gate), train_seeds, sample_seeds, asked=asked)]
    lora = lora_baseline(host, LoraSpec(steps=base.steps, lr=lora_lr), train_seeds, sample_seeds, asked=asked)
    return rows + [lora | {"method": "LoRA"}]


def companion_plot(rows: list[dict]) -> Image.Image:
    """Fidelity against alignment beside a companion object, one series per method."""
    return scatter(_series([(r["method"], r) for r in rows]),
                   "prompt alignment (setting, companion's place, category, colour)", "concept fidelity",
                   "Beside a companion object")


def front_plot(results: dict) -> Image.Image:
    """Fidelity against alignment by inference beta: each lock mode, and the keys-trained (no lock) concepts."""
    labelled = [(f"{r['lock']} lock", r) for r in results.get("front", [])]
    labelled += [("no key-lock (keys trained)", r) for r in results.get("front_nolock", [])]
    return scatter(_series(labelled), "prompt alignment", "concept fidelity", "Perfusion by inference beta (tau 0.15)")


def _series(labelled: list[tuple[str, dict]]) -> dict[str, list[Point]]:
    """(series name, result row) pairs -> the plot's points per series, labelled by beta where rows have one."""
    series: dict[str, list[Point]] = {}
    for name, r in labelled:
        series.setdefault(name, []).append(Point(r["alignment"], r["fidelity"], _finite(r["alignment_ci"]),
                                                 _finite(r["fidelity_ci"]), f"b={r['beta']}" if "beta" in r else ""))
    return series


def _merge_rows(earlier: list[dict], measured: list[dict], order: list[str] | None = None) -> list[dict]:
    """Rows by variant label: this run's replace earlier ones of the same label, the others stay;
    in ``order`` of labels when given, else earlier rows first."""
    rows = {r["variant"]: r for r in earlier} | {r["variant"]: r for r in measured}
    return [rows[k] for k in order if k in rows] if order else list(rows.values())


def _finite(ci: float) -> float:
    return 0.0 if math.isnan(ci) else ci  # one seed: no error bar


if __name__ == "__main__":
    sys.exit(main())
