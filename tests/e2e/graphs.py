"""Small API-format prompts for the robustness tests (bad-input corpus, isolation).

Every graph starts from the tiny demo checkpoint; node keys are readable names
(ComfyUI accepts any string id). Each builder returns a fresh dict, so a test
may change inputs freely.
"""

from __future__ import annotations

from typing import Any

from tools import make_workflows as wf

Prompt = dict[str, dict[str, Any]]
GOOD_CONCEPT = "good_cat.safetensors"  # made in the server by PerfusionWordEdit, then saved
PROMPT_TEXT = "a photo of a cat on a sofa"
TRAIN_IMAGE = wf.TRAIN_IMAGES[0]
# Sampling on the tiny random-weight model: small images keep each of the many renders quick
# (the shipped workflows' settings are for a real checkpoint).
SIZE = 64
STEPS = 20


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def checkpoint() -> Prompt:
    return {"ckpt": node("CheckpointLoaderSimple", ckpt_name=wf.CHECKPOINT)}


def gate_inputs(**changes: Any) -> dict[str, Any]:
    inputs = dict(beta=0.6, tau=0.15, strength=1.0, start_percent=0.0, end_percent=1.0, lock_mode="concept default")
    inputs.update(changes)
    return inputs


def render(concept_name: str = GOOD_CONCEPT, gate: dict[str, Any] | None = None, trigger_word: str = "",
           save: str | None = None) -> Prompt:
    """Load a concept, (optionally) gate it, apply it and sample one 64 px image.

    ``save``: a SaveImage prefix (the image goes to output/); otherwise PreviewImage (temp/).
    """
    g = checkpoint()
    g["load"] = node("LoadPerfusionConcept", concept_name=concept_name)
    concept = ["load", 0]
    if gate is not None:
        g["gate"] = node("ConceptGate", concept=concept, **gate)
        concept = ["gate", 0]
    g["apply"] = node("ApplyKeyLockedEdit", model=["ckpt", 0], clip=["ckpt", 1], concept=concept,
                      trigger_word=trigger_word)
    g["pos"] = node("CLIPTextEncode", text=PROMPT_TEXT, clip=["apply", 1])
    g["neg"] = node("CLIPTextEncode", text=wf.NEGATIVE, clip=["apply", 1])
    g["latent"] = node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    g["sample"] = node("KSampler", model=["apply", 0], positive=["pos", 0], negative=["neg", 0],
                       latent_image=["latent", 0], seed=wf.SEED, steps=STEPS, cfg=wf.CFG,
                       sampler_name="euler", scheduler="normal", denoise=1.0)
    g["decode"] = node("VAEDecode", samples=["sample", 0], vae=["ckpt", 2])
    g["out"] = (node("SaveImage", images=["decode", 0], filename_prefix=save) if save
                else node("PreviewImage", images=["decode", 0]))
    return g


def gated(**changes: Any) -> Prompt:
    """The good concept through a ConceptGate with ``changes``."""
    return render(gate=gate_inputs(**changes))


def word_edit(save_as: str = "corpus_never_saved", captions: int = 0, **changes: Any) -> Prompt:
    """PerfusionWordEdit (cat -> dog by default) saved by SavePerfusionConcept."""
    g = checkpoint()
    inputs = dict(trigger_word="cat", target_word="dog", template="a photo of a {}", statistics_captions=captions)
    inputs.update(changes)
    g["edit"] = node("PerfusionWordEdit", model=["ckpt", 0], clip=["ckpt", 1], **inputs)
    g["save"] = node("SavePerfusionConcept", concept=["edit", 0], filename_prefix=save_as)
    return g


def save_concept(filename_prefix: str) -> Prompt:
    """The good concept written again by SavePerfusionConcept under ``filename_prefix``."""
    return {"load": node("LoadPerfusionConcept", concept_name=GOOD_CONCEPT),
            "save": node("SavePerfusionConcept", concept=["load", 0], filename_prefix=filename_prefix)}


def train_inputs(**changes: Any) -> dict[str, Any]:
    """TrainPerfusion settings small enough for the tiny model (64 px, batch 1)."""
    inputs = dict(trigger_word="zorbix", superclass="teddy", steps=2, batch_size=1, grad_accumulation=1,
                  lr_values=0.03, lr_embedding=0.006, train_beta=0.75, train_tau=0.1, seed=0, resolution=64,
                  timestep_sets=1, gradient_checkpointing=False, mask_source="none", checkpoint_every=0,
                  output_name="corpus_never_trained", statistics_captions=100, resume_from="none",
                  preview_every=0, preview_prompt="a photo of a {}")
    inputs.update(changes)
    return inputs


def train(mask: dict[str, Any] | None = None, **changes: Any) -> Prompt:
    """TrainPerfusion on one bundled teddy image; ``mask``: a mask-producing node wired to ``mask``."""
    g = checkpoint()
    g["image"] = node("LoadImage", image=TRAIN_IMAGE)
    inputs = train_inputs(**changes)
    if mask is not None:
        g["mask"] = mask
        inputs["mask"] = ["mask", 0]
    g["train"] = node("TrainPerfusion", model=["ckpt", 0], clip=["ckpt", 1], vae=["ckpt", 2],
                      images=["image", 0], **inputs)
    return g


def trivial() -> Prompt:
    """A prompt that touches no model: used to let the worker apply /free flags."""
    return {"img": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
            "out": node("PreviewImage", images=["img", 0])}
