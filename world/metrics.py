"""Concept fidelity and prompt alignment, counted on what the judge reads in an image.

They stand in for the paper's CLIP image similarity (does it look like the
concept?) and CLIP text similarity (does it show what the prompt asks?):

* fidelity: 1 when the judge finds the concept instance in any slot;
* part hits: per part of the concept (colour, pattern, accessory), 1 when an object of
  its category wears that part (read by a parts judge; with the identity judge they follow fidelity);
* alignment: the share of the prompt's other requests that hold: the setting,
  and, when the prompt names one, the place (an object stands in that slot);
  with a companion object ("a photo of a sks and a red chair"), also that the
  companion stands in its slot (right: the world draws the second-named object
  there) with its category and its colour. Companions keep alignment from
  saturating: a concept that takes over the image costs it.

For two concepts in one prompt (first on the left, second on the right),
``both_correct`` asks for each concept in its own slot.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

from world.scenes import (
    BACKGROUNDS,
    CATEGORIES,
    COLOURS,
    HIDDEN_COLOURS,
    SETTING_PHRASE,
    SLOT_PHRASE,
    SLOTS,
    Concept,
    Scene,
    WorldObject,
    concept_object,
)


@dataclass(frozen=True)
class Request:
    """What one evaluation prompt asks for."""

    prompt: str
    background: str
    slot: str | None  # None: the prompt names no place
    companion: WorldObject | None = None  # a second object asked for beside the concept


def companion_requests(trigger: str, superclass: str) -> list[Request]:
    """One prompt per setting x other category: 'a photo of a <trigger> and a red chair on the grass',
    each companion in a colour that shows on that setting (a different one per category)."""
    out = []
    others = [c for c in CATEGORIES if c != superclass]
    for b, bg in enumerate(BACKGROUNDS):
        colours = [c for c in COLOURS if c not in HIDDEN_COLOURS[bg]]
        for k, category in enumerate(others):
            companion = WorldObject(category, colours[(b + 2 * k) % len(colours)], "right", "small")
            text = f"a photo of a {trigger} and a {companion.colour} {category} {SETTING_PHRASE[bg]}"
            out.append(Request(text, bg, None, companion))
    return out


def requests(trigger: str, places: bool = True) -> list[Request]:
    """One prompt per setting (x place): 'a photo of a <trigger> on the beach, on the left'."""
    out = []
    for bg in BACKGROUNDS:
        for slot in (SLOTS if places else (None,)):
            text = f"a photo of a {trigger} {SETTING_PHRASE[bg]}" + (f", {SLOT_PHRASE[slot]}" if slot else "")
            out.append(Request(text, bg, slot))
    return out


def fidelity(seen: Scene, concept: Concept) -> float:
    return float(any(o.concept == concept.name for o in seen.objects))


CONCEPT_PARTS = ("colour", "pattern", "accessory")


def part_hits(seen: Scene, concept: Concept) -> dict[str, float]:
    """For each of the concept's own parts: 1.0 when an object of its category wears it. Beside
    fidelity (all parts at once) this says which part a generated image loses."""
    kin = [o for o in seen.objects if o.category == concept.category]
    return {p: float(any(getattr(o, p) == getattr(concept, p) for o in kin)) for p in CONCEPT_PARTS}


def alignment(seen: Scene, request: Request) -> float:
    checks = [seen.background == request.background]
    if request.slot is not None:
        checks.append(seen.object_in(request.slot) is not None)
    if (want := request.companion) is not None:
        got = seen.object_in(want.slot)
        checks += [got is not None and got.category == want.category,
                   got is not None and got.colour == want.colour]
    return sum(checks) / len(checks)


def in_slot(seen: Scene, slot: str, concept: Concept) -> float:
    """1.0 when the object the judge sees in ``slot`` is the concept instance."""
    obj = seen.object_in(slot)
    return float(obj is not None and obj.concept == concept.name)


def both_correct(seen: Scene, left: Concept, right: Concept) -> float:
    return in_slot(seen, "left", left) * in_slot(seen, "right", right)


def placed_hits(seen: Scene, asked: Scene) -> dict[str, float]:
    """For a two-object prompt scene (first named left, second right): is each object drawn in its
    place with its category and colour, and are both? Generic objects' ``both_correct``: the most
    two concepts in one prompt can reach where the world draws them."""
    def drawn(want: WorldObject) -> float:
        got = seen.object_in(want.slot)
        return float(got is not None and (got.category, got.colour) == (want.category, want.colour))

    left, right = (drawn(o) for o in asked.objects)
    return {"left object": left, "right object": right, "both": left * right}


def mean_ci(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, z * math.sqrt(var / n)


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Median and a distribution-free confidence interval for it: the order statistics
    ``[x_(k), x_(n+1-k)]`` with the largest ``k`` whose coverage, ``1 - 2 P(B <= k-1)`` for
    ``B ~ Binomial(n, 1/2)``, is still at least ``level``. Needs no assumption about the
    values' distribution (timings are skewed by other processes), only independence."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    k = 0
    while k + 1 <= n - k and 1 - 2 * _binomial_half_cdf(n, k + 1) >= level:
        k += 1
    med = statistics.median(x)
    if k == 0:
        return med, float("-inf"), float("inf")  # too few values for this level
    return med, x[k - 1], x[n - k]


def _binomial_half_cdf(n: int, k: int) -> float:
    """P(B <= k - 1) for B ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k)) / 2**n


def training_scenes(concept: Concept, n: int, seed: int) -> list[Scene]:
    """``n`` single-object renders of the concept, each setting before any repeats, varied place and size."""
    rng = random.Random(seed)
    backgrounds = rng.sample(BACKGROUNDS, len(BACKGROUNDS))
    scenes = []
    for i in range(n):
        obj: WorldObject = concept_object(concept, rng.choice(SLOTS), rng.choice(("small", "big")), rng.random() < 0.5)
        scenes.append(Scene(backgrounds[i % len(backgrounds)], (obj,), jitter_seed=rng.randrange(2**31)))
    return scenes


def composite_scenes(concept: Concept, n: int, seed: int) -> list[Scene]:
    """``n`` renders of the concept beside a generic object of another category, the concept left
    and right in turn (what pasting the user's photos beside other things gives), varied settings."""
    rng = random.Random(f"composite/{seed}")
    others = [c for c in CATEGORIES if c != concept.category]
    first, scenes = rng.randrange(len(BACKGROUNDS)), []
    for i in range(n):
        background = BACKGROUNDS[(first + i) % len(BACKGROUNDS)]
        slot, other_slot = ("left", "right") if i % 2 == 0 else ("right", "left")
        colour = rng.choice([c for c in COLOURS if c not in HIDDEN_COLOURS[background]])
        pair = (concept_object(concept, slot, "small", rng.random() < 0.5),
                WorldObject(rng.choice(others), colour, other_slot, "small", rng.random() < 0.5))
        scenes.append(Scene(background, pair if slot == "left" else pair[::-1], jitter_seed=rng.randrange(2**31)))
    return scenes


def attribute_hits(seen: Scene, asked: Scene) -> dict[str, float]:
    """For a one-object prompt scene: did the image get its category, colour, setting and place right,
    and the pattern and accessory the object wears, where it wears one?"""
    want = asked.objects[0]
    got = seen.object_in(want.slot)
    return {
        "category": float(any(o.category == want.category for o in seen.objects)),
        "colour": float(any(o.colour == want.colour for o in seen.objects)),
        "setting": float(seen.background == asked.background),
        "place": float(got is not None),
    } | {part: float(any(getattr(o, part) == getattr(want, part) for o in seen.objects))
         for part in ("pattern", "accessory") if getattr(want, part)}
