"""The committed world model and judge: they load through ComfyUI and do what they claim."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from harness.random_models import UNET_PREFIX, VAE_PREFIX, build_clip
from world.autoencoder import round_trip
from world.dataset import images
from world.judge import (
    PARTS_JUDGE_WEIGHTS,
    V2_PARTS_JUDGE,
    accuracy,
    judge_scenes,
    like_generated,
    load_judge,
    read_scenes,
)
from world.judge_report import (
    look_alike_scenes,
    part_contrast,
    parts_read,
    share_called,
)
from world.metrics import attribute_hits
from world.model import (
    V2_CODEC,
    V2_UNET,
    WEIGHTS,
    load_world_taesd,
    new_unet,
    world_checkpoint,
)
from world.sampling import generate, load
from world.scenes import (
    BACKGROUNDS,
    CATEGORIES,
    CONCEPTS,
    V2_PART_SCALE,
    Scene,
    WorldObject,
    caption,
)


@pytest.fixture(scope="module")
def world() -> tuple:
    """(model, clip, vae) of the world checkpoint, through ComfyUI's stock checkpoint loader."""
    return load(world_checkpoint())


def test_fresh_world_unet_is_detected_as_sd15_and_small() -> None:
    model = new_unet()
    assert type(model.model_config).__name__ == "SD15"
    assert 15e6 < sum(p.numel() for p in model.diffusion_model.parameters()) < 25e6


def test_committed_weights_fit_the_size_limit() -> None:
    assert WEIGHTS.stat().st_size < 60 * 2**20


def test_checkpoint_loads_as_sd15_with_the_committed_weights_and_seeded_text_encoder(world: tuple) -> None:
    model, clip, vae = world
    assert type(model.model.model_config).__name__ == "SD15"
    weights = load_file(str(WEIGHTS))
    unet = model.model.diffusion_model.state_dict()
    unet_keys = [k for k in weights if k.startswith(UNET_PREFIX)]
    assert len(unet_keys) == len(unet)
    assert all(torch.equal(unet[k[len(UNET_PREFIX):]].half(), weights[k]) for k in unet_keys)
    assert float(vae.first_stage_model.vae_scale.detach()) == pytest.approx(float(weights[VAE_PREFIX + "vae_scale"]))
    reference = build_clip("sd1", "full", seed=0)
    text = "a photo of a red cup on the grass"
    got = clip.encode_from_tokens(clip.tokenize(text))
    want = reference.encode_from_tokens(reference.tokenize(text))
    assert torch.allclose(got.float(), want.float(), atol=2e-2)  # the checkpoint stores float16


def test_judge_reads_renders_it_never_saw(world: tuple) -> None:
    judge = load_judge()
    scenes = judge_scenes(300, seed=987654)  # the judge trained on seed 1000
    clean = images(scenes)
    for x in (clean, like_generated(world[2].first_stage_model, clean)):
        acc = accuracy(judge, x, scenes)
        assert min(acc["background"], acc["what"], acc["colour"], acc["identity"]) > 0.9, acc


def test_parts_judge_rejects_clean_look_alikes_it_never_saw() -> None:
    """On clean renders from a seed no judge trained on or was measured with: it finds each concept,
    and calls one of its partial look-alikes the concept rarely (docs/evidence.md: the first parts
    judge called a striped cup without its star the concept 0.84 of the time). Through the world's
    VAE it does not hold yet; the evidence says so."""
    judge = load_judge(PARTS_JUDGE_WEIGHTS)
    for concept in CONCEPTS:
        rows = look_alike_scenes(concept, per_kind=40, seed=31337)
        rates = {kind: share_called(judge, images(scenes), concept) for kind, scenes in rows.items()}
        found = rates.pop("the concept itself")
        assert found >= 0.95, (concept.name, found)
        assert sum(rates.values()) / len(rates) <= 0.02 and max(rates.values()) <= 0.15, (concept.name, rates)


@pytest.fixture(scope="module")
def held_out_v2() -> dict:
    """World v2's concepts and their look-alikes, 30 renders a kind (each a round trip of about
    60 ms), from a seed that neither its judge (trained on seed 1000) nor the evidence's judge
    report (seed 424242, 100 a kind) used."""
    return {c.name: look_alike_scenes(c, 30, seed=31337, part_scale=V2_PART_SCALE) for c in CONCEPTS}


def test_world_v2s_codec_keeps_each_part_readable_and_more_of_it_than_the_first_worlds(held_out_v2: dict) -> None:
    """Round trips through the committed v2 codec: its parts judge reads each part of each concept
    in at least 95% of them (the issue's aim), and, judged by no network, each part keeps more of
    its contrast than the first world's codec keeps of it on the same renders."""
    v2, v1, judge = load_world_taesd(V2_CODEC), load_world_taesd(WEIGHTS), load_judge(V2_PARTS_JUDGE)
    for concept in CONCEPTS:
        scenes = held_out_v2[concept.name]["the concept itself"]
        clean = images(scenes)
        trips = {"v2": round_trip(v2, clean), "first world": round_trip(v1, clean)}
        read = parts_read(judge, trips["v2"], scenes)
        assert min(read.values()) >= 0.95, (concept.name, read)
        kept = {name: part_contrast(codec, scenes, clean, trips[name]) for name, codec in
                (("v2", v2), ("first world", v1))}
        assert all(kept["v2"][part] > kept["first world"][part] for part in kept["v2"]), (concept.name, kept)


def test_world_v2s_judge_through_its_codec_finds_each_concept_and_rejects_its_look_alikes(held_out_v2: dict) -> None:
    """The issue's bar for the judge, through the codec as generated images are (the first world's
    parts judge misses it there): the full concept found in at least 95% of the images, a partial
    look-alike called the concept in at most 2% on average over the kinds and 10% in any one (the
    evidence's table, 100 a kind: at most 2%)."""
    taesd, judge = load_world_taesd(V2_CODEC), load_judge(V2_PARTS_JUDGE)
    for concept in CONCEPTS:
        rates = {kind: share_called(judge, like_generated(taesd, images(scenes)), concept)
                 for kind, scenes in held_out_v2[concept.name].items()}
        assert rates.pop("the concept itself") >= 0.95, concept.name
        assert sum(rates.values()) / len(rates) <= 0.02 and max(rates.values()) <= 0.10, (concept.name, rates)


def test_world_v2_draws_what_its_captions_ask_and_the_parts_they_name() -> None:
    """World v2 assembled from its three files (UNet, codec, text encoder), through ComfyUI's stock
    loader and Euler sampler, read by its parts judge: one-object captions' category, colour and
    setting, and on every other caption the concept part the object wears ('a photo of a big red
    cup with white dots on the snow'). The base model knows each part by name before any concept
    is learned, so a concept has only to bind them to its trigger."""
    from world.evidence import base_model_report
    from world.host import WorldHost
    from world.worlds import WORLDS

    assert V2_UNET.stat().st_size < 60 * 2**20
    rates, _ = base_model_report(WorldHost.open(world=WORLDS["v2"]), 16, [0])
    means = {k: mean for k, (mean, _) in rates.items()}
    assert min(means[k] for k in ("category", "colour", "setting", "place")) >= 0.75, means
    # Measured when committed: every asked pattern drawn, an asked accessory in a third of the
    # images (the evidence says so); the accessories' share is not yet a property to hold.
    assert means["pattern"] >= 0.5, means


def test_stock_sampler_draws_what_the_prompt_says(world: tuple) -> None:
    """Short end-to-end run: stock loader, Euler sampler, VAE decode, read back by the judge."""
    model, clip, vae = world
    judge = load_judge()
    rng = random.Random(0)
    hits: dict[str, float] = {}
    trials = 8
    for i in range(trials):
        asked = Scene(rng.choice(BACKGROUNDS), (WorldObject(rng.choice(CATEGORIES), "red", "middle", "big"),))
        picture = generate(model, clip, vae, caption(asked), seeds=[i]).permute(0, 3, 1, 2)
        for key, hit in attribute_hits(read_scenes(judge, picture)[0], asked).items():
            hits[key] = hits.get(key, 0.0) + hit / trials
    assert hits["category"] >= 0.5 and hits["setting"] >= 0.5, hits


def test_regional_prompting_draws_each_half_as_asked(world: tuple) -> None:
    """Regional prompting through the stock conditioning nodes (how the evidence puts two concepts in one
    image): each prompt conditions its half; the judge finds each half's object where it was asked."""
    from world.experiments import regional_prompt

    model, clip, vae = world
    prompts = {"left": "a photo of a red cup on the grass, on the left",
               "right": "a photo of a blue chair on the grass, on the right"}
    cond = regional_prompt(clip, prompts)
    assert [float(c[1]["mask"][0, :, :32].mean()) for c in cond] == [1.0, 0.0]
    assert [float(c[1]["mask"][0, :, 32:].mean()) for c in cond] == [0.0, 1.0]
    judge = load_judge()
    seen = read_scenes(judge, generate(model, clip, vae, cond, seeds=[0, 1, 2, 3]).permute(0, 3, 1, 2))
    left = [s.object_in("left") for s in seen]
    right = [s.object_in("right") for s in seen]
    assert sum(o is not None and (o.category, o.colour) == ("cup", "red") for o in left) >= 3, seen
    assert sum(o is not None and (o.category, o.colour) == ("chair", "blue") for o in right) >= 3, seen
