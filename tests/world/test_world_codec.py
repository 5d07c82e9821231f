"""The world codec's training: what each recipe field asks for, and the second phase's fine-tune."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from world.autoencoder import WORLD_V2, new_taesd, reconstruction_loss, training_images
from world.codec_finetune import (
    PatchDiscriminator,
    balanced_weight,
    discriminator_loss,
    finetune_codec,
)
from world.judge_report import contrast_kept, look_alike_scenes, taken_off
from world.render import parts_mask, render, without_parts
from world.scenes import CONCEPTS, Scene


def test_weighted_loss_counts_an_error_on_a_heavy_pixel_that_much_more_than_the_same_error_beside_it() -> None:
    x = torch.rand(2, 3, 8, 8)
    weights = torch.ones(2, 1, 8, 8)
    weights[:, :, 2:4, 2:4] = 4
    on_object, beside = x.clone(), x.clone()
    on_object[:, :, 2, 2] += 0.3
    beside[:, :, 6, 6] += 0.3
    ratio = reconstruction_loss(on_object, x, weights) / reconstruction_loss(beside, x, weights)
    assert abs(float(ratio) - 4.0) < 1e-4
    # No weights is the plain mean (the first world's loss, computed as it always was).
    assert torch.equal(reconstruction_loss(on_object, x, None), F.l1_loss(on_object, x) + F.mse_loss(on_object, x))
    # A weight that is the same everywhere changes nothing.
    assert torch.allclose(reconstruction_loss(on_object, x, torch.full_like(weights, 3.0)),
                          reconstruction_loss(on_object, x, None))


def test_training_images_weigh_objects_and_parts_as_the_recipe_says() -> None:
    recipe = replace(WORLD_V2, object_weight=4.0, parts_weight=10.0)
    rgb, weights = training_images(40, random.Random(3), recipe)
    assert rgb.shape == (40, 3, 64, 64) and weights.shape == (40, 1, 64, 64)
    # Background 1, whole object pixels 4, pixels a part changes 4 + 9 = 13 (partly covered pixels between).
    assert weights.min() == 1 and torch.isclose(weights.max(), torch.tensor(13.0))
    assert ((weights > 3.99) & (weights < 4.01)).any() and (weights > 12.99).any()
    # The same draws with uniform weights: the same images, and no weights to apply.
    plain_rgb, plain_weights = training_images(40, random.Random(3), replace(WORLD_V2, parts_weight=1.0))
    assert torch.equal(plain_rgb, rgb) and plain_weights is None


def test_parts_mask_marks_exactly_what_the_parts_change() -> None:
    scene = look_alike_scenes(CONCEPTS[0], 1)["the concept itself"][0]
    mask = np.asarray(parts_mask(scene)) > 0
    image = np.asarray(render(scene)[0], dtype=np.int16)
    bare = Scene(scene.background, tuple(replace(o, concept=None, pattern=None, accessory=None,
                                                 colour=CONCEPTS[0].colour) for o in scene.objects), scene.jitter_seed)
    plain = np.asarray(render(bare)[0], dtype=np.int16)
    assert 20 < mask.sum() < 400  # the dots and the hat: a few dozen to a few hundred of 4096 pixels
    assert np.abs(image - plain).max(-1)[~mask].max() <= 8  # outside the mask nothing visible changes


def test_contrast_kept_is_one_for_a_perfect_codec_zero_for_one_that_drops_the_part_and_linear_between() -> None:
    torch.manual_seed(0)
    clean, bare = torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.rand(3, 3, 8, 8, dtype=torch.float64)
    mask = (torch.rand(3, 1, 8, 8) < 0.3).double()
    assert abs(contrast_kept(clean, bare, clean, bare, mask) - 1) < 1e-12
    assert contrast_kept(clean, bare, bare, bare, mask) == 0
    half = bare + 0.5 * (clean - bare)
    assert abs(contrast_kept(clean, bare, half, bare, mask) - 0.5) < 1e-12
    # Independent: the projection written as a sum over the masked pixels.
    trip_c, trip_b = torch.rand_like(clean), torch.rand_like(bare)
    on = mask.expand_as(clean).bool()
    want = (clean - bare)[on]
    assert abs(contrast_kept(clean, bare, trip_c, trip_b, mask) - float((trip_c - trip_b)[on] @ want / (want @ want))) < 1e-12


def test_taking_a_concepts_parts_off_one_at_a_time_leaves_the_other_and_both_leave_the_plain_object() -> None:
    for concept in CONCEPTS:
        scene = look_alike_scenes(concept, 1)["the concept itself"][0]
        no_pattern, no_accessory = taken_off(scene, "pattern"), taken_off(scene, "accessory")
        first = no_pattern.objects[0]
        assert first.concept is None and first.pattern is None and first.accessory == concept.accessory
        assert first.colour == concept.colour and no_accessory.objects[0].pattern == concept.pattern
        assert taken_off(no_pattern, "accessory") == without_parts(scene)
        assert no_pattern.objects[1:] == scene.objects[1:] and no_pattern.jitter_seed == scene.jitter_seed


def test_balanced_weight_gives_the_adversarial_term_the_asked_share_of_the_last_layers_pull() -> None:
    torch.manual_seed(0)
    last = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    out = x @ last.T
    rec, adv = out.pow(2).mean(), -(3 * out).sin().mean()
    weight = balanced_weight(rec, adv, last, 0.5)
    # Independent: the two gradients written out by hand.
    g_rec = 2 * out.detach().T @ x / out.numel()
    g_adv = -3 * (3 * out.detach()).cos().T @ x / out.numel()
    assert torch.allclose(weight, 0.5 * g_rec.norm() / g_adv.norm())
    # Its defining property: weighted, the adversarial gradient is half as large as the reconstruction's.
    assert torch.allclose((weight * g_adv).norm(), 0.5 * g_rec.norm())
    assert not weight.requires_grad


def test_discriminator_hinge_loss_is_zero_only_beyond_the_margins() -> None:
    assert discriminator_loss(torch.full((2, 1, 4, 4), 1.5), torch.full((2, 1, 4, 4), -2.0)) == 0
    assert torch.isclose(discriminator_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)), torch.tensor(1.0))
    # A confident wrong call costs in proportion to how wrong it is.
    assert torch.isclose(discriminator_loss(torch.full((1, 1, 2, 2), -1.0), torch.full((1, 1, 2, 2), -1.0)),
                         torch.tensor(1.0))


@pytest.mark.parametrize("adversarial_weight", [0.0, 0.5])
def test_the_finetune_trains_the_codec_and_leaves_it_ready_to_use(adversarial_weight: float) -> None:
    taesd = new_taesd(0, WORLD_V2.residual_gain)
    before = {k: v.clone() for k, v in taesd.state_dict().items()}
    recipe = replace(WORLD_V2, finetune_steps=3, batch=2, parts_weight=10.0, adversarial_weight=adversarial_weight)
    finetune_codec(taesd, recipe, log=lambda _m: None, pool=8)
    after = taesd.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "taesd_decoder" in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if "taesd_encoder" in k)
    assert not any(p.requires_grad for p in taesd.parameters()) and not taesd.training
    assert float(taesd.vae_scale) != float(before["vae_scale"])  # the latent scale is set for the new encoder


def test_the_discriminator_judges_patches() -> None:
    logits = PatchDiscriminator()(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 1, 8, 8)
