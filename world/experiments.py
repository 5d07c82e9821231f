"""Experiments on the world model: train concepts with the pack's nodes, sample, judge.

Each trained concept is cached under ``.cache/world/perfusion`` by a name that
spells its training settings, so re-running an experiment only samples.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from types import ModuleType
from typing import Any

import torch

from world.host import WorldHost
from world.metrics import (
    CONCEPT_PARTS,
    Request,
    alignment,
    both_correct,
    composite_scenes,
    fidelity,
    in_slot,
    mean_ci,
    part_hits,
    requests,
    training_scenes,
)
from world.scenes import (
    BACKGROUNDS,
    CONCEPT_BY_NAME,
    SETTING_PHRASE,
    Concept,
    Scene,
    caption,
)

TRIGGER = "sks"
SECOND_TRIGGER = "zwx"


_SHORT = {"concept": "", "trigger": "", "train_beta": "tbeta", "lr_values": "lr", "timestep_sets": "tsets", "batch_size": "batch",
          "grad_accumulation": "accum", "statistics_captions": "stat", "embedding_only": "ti", "lr_embedding": "lremb",
          "train_keys": "nolock", "fp8_base": "fp8", "composites": "comp", "start_percent": "from",
          "end_percent": "to", "world": "world"}
# TrainSpec fields added after concepts were cached, with their defaults.
_LATER_FIELDS = {"embedding_only": False, "lr_embedding": 0.006, "train_keys": False, "fp8_base": False,
                 "composites": 0, "start_percent": 0.0, "end_percent": 1.0, "world": "v1"}


@dataclass(frozen=True)
class TrainSpec:
    concept: str = "polka_teddy"
    trigger: str = TRIGGER
    shots: int = 5
    steps: int = 200
    seed: int = 0
    lr_values: float = 0.03
    train_beta: float = 0.75
    masked: bool = True
    timestep_sets: int = 1
    batch_size: int = 4
    grad_accumulation: int = 1
    statistics_captions: int = 500
    embedding_only: bool = False  # textual inversion: TrainPerfusion's "embedding only"
    lr_embedding: float = 0.006
    train_keys: bool = False  # the no-key-lock ablation: TrainPerfusion's "no key-lock"
    fp8_base: bool = False  # train (and sample) on the world model loaded with float8 weights
    # Two-object renders of the concept beside another object, added to the shots; with any, every
    # image is trained in its own caption (TrainPerfusion's captions input) instead of the templates.
    composites: int = 0
    # S1: trained only on this window of denoising progress (TrainPerfusion's start/end_percent).
    start_percent: float = 0.0
    end_percent: float = 1.0
    # The world it is trained on (``world.worlds``): part of its cached name, so no world reuses
    # another's concepts.
    world: str = "v1"

    def what_to_train(self, train_node: ModuleType) -> str:
        """TrainPerfusion's what_to_train value: Perfusion, textual inversion or no key-lock."""
        return (train_node.TRAIN_EMBEDDING_ONLY if self.embedding_only else
                train_node.TRAIN_NO_KEY_LOCK if self.train_keys else train_node.TRAIN_PERFUSION)

    def name(self) -> str:
        """A file name (under TrainPerfusion's 150-character limit) that spells every setting;
        fields added later are spelt only when they differ from their default (older names stay)."""
        fields = asdict(self)
        later = {k: fields.pop(k) for k in _LATER_FIELDS}
        name = "world_" + "_".join(f"{_SHORT.get(k, k)}{v}" for k, v in fields.items())
        return name + "".join(f"_{_SHORT.get(k, k)}{v}" for k, v in later.items() if v != _LATER_FIELDS[k])


@dataclass(frozen=True)
class GateSpec:
    beta: float = 0.7
    tau: float = 0.15
    lock: str = "local"
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0


def train_concept(host: WorldHost, spec: TrainSpec) -> Any:
    """The CONCEPT trained by TrainPerfusion on ``spec.shots`` renders (cached by settings)."""
    import folder_paths

    if spec.world != host.world.name:
        raise ValueError(f"a concept for world {spec.world} asked of world {host.world.name}'s host")
    nodes = host.pack.nodes
    name = spec.name()
    if folder_paths.get_full_path("perfusion", name + ".safetensors") is not None:
        return nodes.nodes_concept.load_concept_file(name + ".safetensors")
    concept = CONCEPT_BY_NAME[spec.concept]
    scenes = training_scenes(concept, spec.shots, seed=spec.seed) + composite_scenes(concept, spec.composites, spec.seed)
    images, masks = host.images_of(scenes)
    captions = "\n".join(caption(s, words={concept.name: "{}"}) for s in scenes) if spec.composites else ""
    with torch.inference_mode():
        result = nodes.nodes_train.train_perfusion(
            host.base(spec.fp8_base), host.clip, host.vae, images=images, trigger_word=spec.trigger, superclass=concept.category,
            steps=spec.steps, batch_size=min(spec.batch_size, len(scenes)), grad_accumulation=spec.grad_accumulation,
            lr_values=spec.lr_values, lr_embedding=spec.lr_embedding, train_beta=spec.train_beta, train_tau=0.1, seed=spec.seed,
            resolution=64, timestep_sets=spec.timestep_sets, gradient_checkpointing=False,
            mask_source="mask input if connected" if spec.masked else "none", checkpoint_every=0,
            output_name=name, statistics_captions=spec.statistics_captions, preview_every=0,
            mask=masks if spec.masked else None,
            what_to_train=spec.what_to_train(nodes.nodes_train), captions=captions,
            start_percent=spec.start_percent, end_percent=spec.end_percent)["result"]
    return result[0]


def apply(host: WorldHost, concept: Any, gate: GateSpec, model: Any = None, clip: Any = None) -> tuple[Any, Any]:
    """(MODEL, CLIP) with the gated concept applied on top of ``model``/``clip`` (default: the base)."""
    nodes = host.pack.nodes
    gated = nodes.nodes_concept.gate_concept(concept, gate.beta, gate.tau, gate.strength,
                                             gate.start_percent, gate.end_percent, gate.lock)
    return nodes.nodes_apply.apply_edit(model or host.model, clip or host.clip, gated)


@dataclass(frozen=True)
class Score:
    fidelity: float
    alignment: float
    images: int
    parts: dict[str, float]  # share of images with each concept part (``part_hits``)


def score(host: WorldHost, model: Any, clip: Any, concept: Concept, asked: list[Request], seeds: list[int]) -> Score:
    fid, ali, parts = [], [], []
    for request in asked:
        seen = host.read(host.sample(request.prompt, seeds, model=model, clip=clip))
        fid += [fidelity(s, concept) for s in seen]
        ali += [alignment(s, request) for s in seen]
        parts += [part_hits(s, concept) for s in seen]
    return Score(sum(fid) / len(fid), sum(ali) / len(ali), len(fid),
                 {p: sum(h[p] for h in parts) / len(parts) for p in CONCEPT_PARTS})


def front(host: WorldHost, base: TrainSpec, train_seeds: list[int], betas: list[float], locks: list[str],
          sample_seeds: list[int], tau: float = 0.15, asked: list[Request] | None = None) -> list[dict]:
    """Fidelity and alignment for every (lock, beta), from one trained concept per training seed,
    on ``asked`` (default: the concept alone in every setting and place)."""
    concept = CONCEPT_BY_NAME[base.concept]
    asked = asked or requests(base.trigger)
    per_seed: dict[tuple[str, float], list[Score]] = {}
    for seed in train_seeds:
        trained = train_concept(host, replace(base, seed=seed))
        for lock in locks:
            for beta in betas:
                model, clip = apply(host, trained, GateSpec(beta=beta, tau=tau, lock=lock))
                per_seed.setdefault((lock, beta), []).append(score(host, model, clip, concept, asked, sample_seeds))
    return [{"lock": lock, "beta": beta, "tau": tau} | _stats(scores) for (lock, beta), scores in per_seed.items()]


@dataclass(frozen=True)
class LoraSpec:
    """ComfyUI's own TrainLoraNode on the same renders, prompt 'a photo of a <trigger>' for every image."""

    concept: str = "polka_teddy"
    shots: int = 5
    steps: int = 200
    seed: int = 0
    rank: int = 8
    lr: float = 5e-4
    batch_size: int = 4


def train_lora(host: WorldHost, spec: LoraSpec) -> tuple[Any, int]:
    """(MODEL with the trained LoRA, the LoRA's size in bytes as float16)."""
    from comfy_extras.nodes_train import TrainLoraNode

    from world.sampling import conditioning

    images, _ = host.images_of(training_scenes(CONCEPT_BY_NAME[spec.concept], spec.shots, seed=spec.seed))
    with torch.inference_mode():  # as the server runs nodes
        latents = host.vae.encode(images).float()
        positive = conditioning(host.clip, f"a photo of a {TRIGGER}")
        # One latent dict per image: with a single dict, 0.3.75's node trips over an unset variable.
        out = TrainLoraNode.execute(
            model=[host.model], latents=[{"samples": x[None]} for x in latents], positive=[positive],
            batch_size=[min(spec.batch_size, spec.shots)], grad_accumulation_steps=[1], steps=[spec.steps],
            learning_rate=[spec.lr], rank=[spec.rank], optimizer=["AdamW"], loss_function=["MSE"], seed=[spec.seed],
            training_dtype=["fp32"], lora_dtype=["fp32"], algorithm=["LoRA"], gradient_checkpointing=[False],
            existing_lora=["[None]"]).args
    model, weights = out[0], out[1]
    return model, sum(t.numel() * 2 for t in weights.values())


def lora_baseline(host: WorldHost, spec: LoraSpec, train_seeds: list[int], sample_seeds: list[int],
                  asked: list[Request] | None = None) -> dict:
    concept = CONCEPT_BY_NAME[spec.concept]
    scores, size = [], 0
    for seed in train_seeds:
        model, size = train_lora(host, replace(spec, seed=seed))
        scores.append(score(host, model, host.clip, concept, asked or requests(TRIGGER), sample_seeds))
    return _row(f"LoRA rank {spec.rank}, lr {spec.lr}, {spec.steps} steps", scores) | {"bytes": size}


def concept_bytes(spec: TrainSpec) -> int:
    """Size of the trained concept file (after ``train_concept`` made it)."""
    import folder_paths

    return os.path.getsize(folder_paths.get_full_path("perfusion", spec.name() + ".safetensors"))


def _stats(scores: list[Score]) -> dict:
    """Mean and 95% interval over training seeds of fidelity, alignment and each part's share."""
    f, fci = mean_ci([s.fidelity for s in scores])
    a, aci = mean_ci([s.alignment for s in scores])
    parts = {p: mean_ci([s.parts[p] for s in scores]) for p in CONCEPT_PARTS}
    return {"fidelity": f, "fidelity_ci": fci, "alignment": a, "alignment_ci": aci, "parts": parts,
            "seeds": len(scores), "images": sum(s.images for s in scores)}


def _row(label: str, scores: list[Score]) -> dict:
    return {"variant": label} | _stats(scores)


def variants(host: WorldHost, runs: dict[str, tuple[TrainSpec, GateSpec]], train_seeds: list[int],
             sample_seeds: list[int], asked: list[Request] | None = None) -> list[dict]:
    """Fidelity and alignment of each labelled (training, gate) setting, one concept per training seed,
    on ``asked`` (default: the concept alone in every setting and place)."""
    rows = []
    for label, (spec, gate) in runs.items():
        concept = CONCEPT_BY_NAME[spec.concept]
        scores = []
        for seed in train_seeds:
            model, clip = apply(host, train_concept(host, replace(spec, seed=seed)), gate, host.base(spec.fp8_base))
            scores.append(score(host, model, clip, concept, asked or requests(spec.trigger), sample_seeds))
        rows.append(_row(label, scores))
    return rows


def _both_applied(host: WorldHost, first: TrainSpec, second: TrainSpec, gate: GateSpec, seed: int) -> tuple[Any, Any]:
    """(MODEL, CLIP) with the two concepts of one training seed stacked, both at ``gate``."""
    model, clip = apply(host, train_concept(host, replace(first, seed=seed)), gate)
    return apply(host, train_concept(host, replace(second, seed=seed)), gate, model, clip)


def two_concepts(host: WorldHost, first: TrainSpec, second: TrainSpec, gate: GateSpec, train_seeds: list[int],
                 sample_seeds: list[int]) -> list[dict]:
    """With the two edits stacked, how often 'a photo of a <A> and a <B> <setting>' shows each concept
    in its own slot (the world draws the first-named object on the left), for both orders of naming:
    whether a failure follows the concept or the slot."""
    specs = {first.trigger: first, second.trigger: second}
    stacked = [_both_applied(host, first, second, gate, seed) for seed in train_seeds]
    rows = []
    for a, b in ((first.trigger, second.trigger), (second.trigger, first.trigger)):
        left, right = CONCEPT_BY_NAME[specs[a].concept], CONCEPT_BY_NAME[specs[b].concept]
        seen = [[s for bg in BACKGROUNDS for s in host.read(host.sample(
            f"a photo of a {a} and a {b} {SETTING_PHRASE[bg]}", sample_seeds, model=model, clip=clip))]
            for model, clip in stacked]
        rows.append(placement_row(f"`a photo of a {a} and a {b}` ({left.name} left, {right.name} right)",
                                  seen, left, right))
    return rows


def placement_row(label: str, seen_by_seed: list[list[Scene]], left: Concept, right: Concept) -> dict:
    """How often both concepts, the left one and the right one stand in their places: mean and
    confidence interval over training seeds (one list of judged images per seed)."""
    row = {"prompt": label, "seeds": len(seen_by_seed), "images": sum(len(seen) for seen in seen_by_seed)}
    hits = {"both_correct": lambda s: both_correct(s, left, right), "left_correct": lambda s: in_slot(s, "left", left),
            "right_correct": lambda s: in_slot(s, "right", right)}
    for key, hit in hits.items():
        row[key], row[key + "_ci"] = mean_ci([sum(map(hit, seen)) / len(seen) for seen in seen_by_seed])
    return row


def regional_prompt(clip: Any, prompts: dict[str, str], size: int = 64) -> list:
    """ComfyUI's regional prompting with its stock nodes: each prompt (which names one place, 'left'
    or 'right') conditions its half of the image (ConditioningSetMask), the halves combined
    (ConditioningCombine). Each prompt names one concept, so no trigger's encoding sees another's."""
    from harness.comfy_host import host_module
    from world.sampling import conditioning

    nodes = host_module("nodes")  # ComfyUI's nodes.py, not the pack's nodes/ folder

    halves = {"left": slice(0, size // 2), "right": slice(size // 2, size)}
    combined: list = []
    with torch.inference_mode():
        for place, text in prompts.items():
            mask = torch.zeros(1, size, size)
            mask[:, :, halves[place]] = 1.0
            part = nodes.ConditioningSetMask().append(conditioning(clip, text), mask, "default", 1.0)[0]
            combined = nodes.ConditioningCombine().combine(combined, part)[0] if combined else part
    return combined


def two_concepts_regional(host: WorldHost, first: TrainSpec, second: TrainSpec, gate: GateSpec,
                          train_seeds: list[int], sample_seeds: list[int]) -> dict:
    """Two concepts in one image through regional prompting: 'a photo of a <A> <setting>, on the left'
    on the left half and '... <B> ..., on the right' on the right half, both edits applied; how often
    each concept stands in its half."""
    left, right = CONCEPT_BY_NAME[first.concept], CONCEPT_BY_NAME[second.concept]
    seen = []
    for seed in train_seeds:
        model, clip = _both_applied(host, first, second, gate, seed)
        seen.append([s for bg in BACKGROUNDS for s in host.read(host.sample(regional_prompt(clip, {
            "left": f"a photo of a {first.trigger} {SETTING_PHRASE[bg]}, on the left",
            "right": f"a photo of a {second.trigger} {SETTING_PHRASE[bg]}, on the right"}), sample_seeds,
            model=model, clip=clip))])
    return placement_row(f"`a photo of a {first.trigger} <setting>, on the left` + `a photo of a {second.trigger} "
                         f"<setting>, on the right` ({left.name} left, {right.name} right)", seen, left, right)


def dump(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1)
