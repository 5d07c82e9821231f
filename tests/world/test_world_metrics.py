"""Fidelity, alignment and the evaluation prompts, on scenes whose truth is known."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from world.metrics import (
    alignment,
    attribute_hits,
    both_correct,
    companion_requests,
    composite_scenes,
    fidelity,
    in_slot,
    mean_ci,
    median_ci,
    part_hits,
    placed_hits,
    requests,
    training_scenes,
)
from world.scenes import (
    BACKGROUNDS,
    CATEGORIES,
    CONCEPTS,
    HIDDEN_COLOURS,
    SLOTS,
    Scene,
    WorldObject,
    caption,
    concept_object,
)

TEDDY, CUP = CONCEPTS[0], CONCEPTS[1]


def test_requests_cover_every_setting_and_place_once() -> None:
    asked = requests("sks")
    assert len(asked) == len(BACKGROUNDS) * len(SLOTS) == len({r.prompt for r in asked})
    assert all(r.prompt.startswith("a photo of a sks ") for r in asked)
    assert {r.slot for r in requests("sks", places=False)} == {None}


def test_fidelity_and_alignment_count_the_right_things() -> None:
    [request] = [r for r in requests("sks") if r.background == "beach" and r.slot == "left"]
    right = Scene("beach", (concept_object(TEDDY, "left", "big"),))
    generic = Scene("beach", (WorldObject("teddy", "brown", "left", "big"),))
    misplaced = Scene("snow", (concept_object(TEDDY, "right", "big"),))
    assert (fidelity(right, TEDDY), alignment(right, request)) == (1.0, 1.0)
    assert (fidelity(generic, TEDDY), alignment(generic, request)) == (0.0, 1.0)
    assert (fidelity(misplaced, TEDDY), alignment(misplaced, request)) == (1.0, 0.0)
    assert fidelity(right, CUP) == 0.0


def test_companion_requests_ask_every_other_category_in_a_colour_that_shows() -> None:
    asked = companion_requests("sks", "teddy")
    assert len(asked) == len(BACKGROUNDS) * (len(CATEGORIES) - 1) == len({r.prompt for r in asked})
    for r in asked:
        want = r.companion
        assert want.category != "teddy" and want.colour not in HIDDEN_COLOURS[r.background] and want.slot == "right"
        assert r.prompt.startswith(f"a photo of a sks and a {want.colour} {want.category} ")
    per_setting = {bg: {r.companion.colour for r in asked if r.background == bg} for bg in BACKGROUNDS}
    assert all(len(colours) == len(CATEGORIES) - 1 for colours in per_setting.values())


def test_alignment_with_a_companion_counts_its_place_category_and_colour() -> None:
    asked = companion_requests("sks", "teddy")
    [request] = [r for r in asked if r.background == "grass" and r.companion.category == "chair"]
    want = request.companion
    teddy = concept_object(TEDDY, "left", "small")
    assert want.colour != TEDDY.colour  # so a teddy drawn over the companion misses both
    right = Scene("grass", (teddy, WorldObject("chair", want.colour, "right", "small")))
    other_colour = next(c for c in ("red", "blue") if c != want.colour)
    recoloured = Scene("grass", (teddy, WorldObject("chair", other_colour, "right", "small")))
    taken_over = Scene("grass", (teddy, concept_object(TEDDY, "right", "small")))
    alone = Scene("snow", (teddy,))
    assert [alignment(s, request) for s in (right, recoloured, taken_over, alone)] == [1.0, 2 / 3, 1 / 3, 0.0]
    assert fidelity(right, TEDDY) == 1.0


def test_part_hits_count_each_part_on_an_object_of_the_concepts_category_only() -> None:
    whole = Scene("beach", (concept_object(TEDDY, "left", "big"),))
    hat_only = Scene("beach", (WorldObject("teddy", "red", "left", "big", accessory=TEDDY.accessory),))
    on_a_cup = Scene("beach", (WorldObject("cup", TEDDY.colour, "left", "big", pattern=TEDDY.pattern,
                                           accessory=TEDDY.accessory),))
    # Parts spread over two teddies still count per part (fidelity, which wants one object, does not).
    spread = Scene("beach", (WorldObject("teddy", TEDDY.colour, "left", "small"),
                             WorldObject("teddy", "red", "right", "small", pattern=TEDDY.pattern)))
    assert part_hits(whole, TEDDY) == {"colour": 1.0, "pattern": 1.0, "accessory": 1.0}
    assert part_hits(hat_only, TEDDY) == {"colour": 0.0, "pattern": 0.0, "accessory": 1.0}
    assert part_hits(on_a_cup, TEDDY) == {"colour": 0.0, "pattern": 0.0, "accessory": 0.0}
    assert part_hits(spread, TEDDY) == {"colour": 1.0, "pattern": 1.0, "accessory": 0.0}
    assert fidelity(spread, TEDDY) == 0.0 and fidelity(whole, TEDDY) == 1.0


def test_attribute_hits_count_worn_parts_only_where_the_prompt_asks_one() -> None:
    plain = Scene("snow", (WorldObject("cup", "red", "left", "big"),))
    dotted = Scene("snow", (WorldObject("cup", "red", "left", "big", pattern="white dots"),))
    assert attribute_hits(dotted, plain) == {"category": 1.0, "colour": 1.0, "setting": 1.0, "place": 1.0}
    assert attribute_hits(plain, dotted) == {"category": 1.0, "colour": 1.0, "setting": 1.0, "place": 1.0,
                                             "pattern": 0.0}
    hatted = Scene("grass", (WorldObject("chair", "blue", "right", "big", pattern="white dots", accessory="top hat"),))
    assert attribute_hits(hatted, dotted) == {"category": 0.0, "colour": 0.0, "setting": 0.0, "place": 0.0,
                                              "pattern": 1.0}


def test_placed_hits_want_each_object_in_its_place_with_its_category_and_colour() -> None:
    cup, chair = WorldObject("cup", "red", "left", "small"), WorldObject("chair", "blue", "right", "small")
    asked = Scene("grass", (cup, chair))
    swapped = Scene("grass", (replace(cup, slot="right"), replace(chair, slot="left")))
    recoloured = Scene("snow", (cup, replace(chair, colour="red")))
    assert placed_hits(asked, asked) == {"left object": 1.0, "right object": 1.0, "both": 1.0}
    assert placed_hits(swapped, asked) == {"left object": 0.0, "right object": 0.0, "both": 0.0}
    assert placed_hits(recoloured, asked) == {"left object": 1.0, "right object": 0.0, "both": 0.0}
    assert placed_hits(Scene("grass", (cup,)), asked)["both"] == 0.0


def test_two_concepts_must_each_be_in_their_own_slot() -> None:
    good = Scene("grass", (concept_object(TEDDY, "left", "small"), concept_object(CUP, "right", "small")))
    swapped = Scene("grass", (concept_object(CUP, "left", "small"), concept_object(TEDDY, "right", "small")))
    one = Scene("grass", (concept_object(TEDDY, "left", "small"), WorldObject("cup", "white", "right", "small")))
    assert [both_correct(s, TEDDY, CUP) for s in (good, swapped, one)] == [1.0, 0.0, 0.0]
    assert [in_slot(s, "right", CUP) for s in (good, swapped, one)] == [1.0, 0.0, 0.0]
    assert [in_slot(s, "left", TEDDY) for s in (good, swapped, one)] == [1.0, 0.0, 1.0]


def test_mean_ci_matches_the_textbook_formula() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(1.96 * math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4))
    assert math.isnan(mean_ci([1.0])[1])


def test_median_ci_uses_the_binomial_order_statistics_and_covers_the_median() -> None:
    # n = 10: [x_(2), x_(9)] covers with 1 - 2 * 11/1024 = 97.9%; [x_(3), x_(8)] only with 89.1%.
    values = [float(v) for v in (7, 3, 9, 1, 5, 8, 2, 10, 4, 6)]
    assert median_ci(values) == (5.5, 2.0, 9.0)
    assert median_ci(values, level=0.89) == (5.5, 3.0, 8.0)
    assert median_ci([1.0, 2.0, 3.0]) == (2.0, -math.inf, math.inf)  # three values cannot give 95%
    # Its defining property, by simulation on a skewed distribution with a known median (ln 2).
    rng = random.Random(0)
    trials, covered = 4000, 0
    for _ in range(trials):
        _, lo, hi = median_ci([rng.expovariate(1.0) for _ in range(20)])
        covered += lo <= math.log(2) <= hi
    assert 0.95 <= covered / trials <= 0.975  # n = 20 gives [x_(6), x_(15)]: 95.9%


def test_training_scenes_vary_the_setting_first() -> None:
    scenes = training_scenes(TEDDY, 5, seed=0)
    assert sorted(s.background for s in scenes) == sorted(BACKGROUNDS)
    assert all(o.concept == TEDDY.name for s in scenes for o in s.objects)
    assert training_scenes(TEDDY, 5, seed=0) == scenes != training_scenes(TEDDY, 5, seed=1)


def test_composite_scenes_put_the_concept_left_and_right_beside_another_category() -> None:
    scenes = composite_scenes(TEDDY, 6, seed=0)
    assert [next(o.slot for o in s.objects if o.concept) for s in scenes] == ["left", "right"] * 3
    assert len({s.background for s in scenes}) == len(BACKGROUNDS), "every setting before any repeats"
    for s in scenes:
        other = next(o for o in s.objects if o.concept is None)
        assert [o.slot for o in s.objects] == ["left", "right"] and other.category != TEDDY.category
        assert other.colour not in HIDDEN_COLOURS[s.background]
    words = {TEDDY.name: "{}"}
    assert caption(scenes[0], words=words).startswith("a photo of a {} and a ")
    assert " and a {} " in caption(scenes[1], words=words)  # the right-hand object is named second
    assert composite_scenes(TEDDY, 6, seed=0) == scenes != composite_scenes(TEDDY, 6, seed=1)


def test_scatter_puts_each_point_where_its_values_say() -> None:
    from world.plot import PALETTE, Point, scatter

    img = scatter({"a": [Point(0.25, 0.75)], "b": [Point(0.9, 0.1)]}, "alignment", "fidelity", "t")
    w, h = img.size
    # the plot area spans x 70..w-190 and y 40..h-60 (see scatter)
    def at(x: float, y: float) -> tuple:
        return img.getpixel((round(70 + x * (w - 260)), round(h - 60 - y * (h - 100))))
    assert at(0.25, 0.75) == PALETTE[0] and at(0.9, 0.1) == PALETTE[1]
    assert at(0.5, 0.5) != PALETTE[0]
