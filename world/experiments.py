"""Experiments on the world model: train concepts with the pack's nodes, sample, judge.

Each trained concept is cached under ``.cache/world/perfusion`` by a name that
spells its training settings, so re-running an experiment only samples.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from world.host import WorldHost
from world.metrics import Request, alignment, fidelity, mean_ci, requests, training_scenes
from world.scenes import CONCEPT_BY_NAME, Concept

TRIGGER = "sks"


@dataclass(frozen=True)
class TrainSpec:
    concept: str = "polka_teddy"
    shots: int = 5
    steps: int = 200
    seed: int = 0
    train_beta: float = 0.75
    masked: bool = True
    timestep_sets: int = 1
    batch_size: int = 4
    grad_accumulation: int = 1
    statistics_captions: int = 500

    def name(self) -> str:
        return "world_" + "_".join(f"{k}{v}" for k, v in asdict(self).items())


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

    nodes = host.pack.nodes
    name = spec.name()
    if folder_paths.get_full_path("perfusion", name + ".safetensors") is not None:
        return nodes.nodes_concept.LoadPerfusionConcept().load(name + ".safetensors")[0]
    concept = CONCEPT_BY_NAME[spec.concept]
    images, masks = host.images_of(training_scenes(concept, spec.shots, seed=spec.seed))
    with torch.inference_mode():
        result = nodes.nodes_train.TrainPerfusion().train(
            host.model, host.clip, host.vae, images=images, trigger_word=TRIGGER, superclass=concept.category,
            steps=spec.steps, batch_size=min(spec.batch_size, spec.shots), grad_accumulation=spec.grad_accumulation,
            lr_values=0.03, lr_embedding=0.006, train_beta=spec.train_beta, train_tau=0.1, seed=spec.seed,
            resolution=64, timestep_sets=spec.timestep_sets, gradient_checkpointing=False,
            mask_source="mask input if connected" if spec.masked else "none", checkpoint_every=0,
            output_name=name, statistics_captions=spec.statistics_captions, preview_every=0,
            mask=masks if spec.masked else None)["result"]
    return result[0]


def apply(host: WorldHost, concept: Any, gate: GateSpec) -> tuple[Any, Any]:
    nodes = host.pack.nodes
    gated = nodes.nodes_concept.ConceptGate().gate(concept, gate.beta, gate.tau, gate.strength,
                                                  gate.start_percent, gate.end_percent, gate.lock)[0]
    return nodes.nodes_apply.ApplyKeyLockedEdit().apply(host.model, host.clip, gated)


@dataclass(frozen=True)
class Score:
    fidelity: float
    alignment: float
    images: int


def score(host: WorldHost, model: Any, clip: Any, concept: Concept, asked: list[Request], seeds: list[int]) -> Score:
    fid, ali = [], []
    for request in asked:
        seen = host.read(host.sample(request.prompt, seeds, model=model, clip=clip))
        fid += [fidelity(s, concept) for s in seen]
        ali += [alignment(s, request) for s in seen]
    return Score(sum(fid) / len(fid), sum(ali) / len(ali), len(fid))


def front(host: WorldHost, base: TrainSpec, train_seeds: list[int], betas: list[float], locks: list[str],
          sample_seeds: list[int], tau: float = 0.15) -> list[dict]:
    """Fidelity and alignment for every (lock, beta), from one trained concept per training seed."""
    concept = CONCEPT_BY_NAME[base.concept]
    asked = requests(TRIGGER)
    rows: list[dict] = []
    per_seed: dict[tuple[str, float], list[Score]] = {}
    for seed in train_seeds:
        trained = train_concept(host, replace(base, seed=seed))
        for lock in locks:
            for beta in betas:
                model, clip = apply(host, trained, GateSpec(beta=beta, tau=tau, lock=lock))
                per_seed.setdefault((lock, beta), []).append(score(host, model, clip, concept, asked, sample_seeds))
    for (lock, beta), scores in per_seed.items():
        f, fci = mean_ci([s.fidelity for s in scores])
        a, aci = mean_ci([s.alignment for s in scores])
        rows.append({"lock": lock, "beta": beta, "tau": tau, "fidelity": f, "fidelity_ci": fci,
                     "alignment": a, "alignment_ci": aci, "seeds": len(scores), "images": sum(s.images for s in scores)})
    return rows


def dump(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1)
