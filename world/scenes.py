"""The world's ground truth: what a scene contains, and the caption that describes it.

A scene is a background plus one or two objects, each in one of three slots
(left, middle, right). Every object is a category (the superclasses), a colour
and a size, or one of the held-out concept instances. Captions come from a small
grammar, with optional parts left out at random so the model also learns
"a photo of a teddy" without a colour or a place.

Concept instances carry a pattern and an accessory that no pretraining object
has; they are what a user personalises, and never appear in pretraining data.
The same parts can be put on any object (``WorldObject.pattern``/``accessory``):
the judge learns from such partial look-alikes that a concept is all of its
parts at once, not any one of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CATEGORIES = ("teddy", "cat", "chair", "cup")
COLOURS = ("red", "yellow", "green", "blue", "purple", "brown", "white")
BACKGROUNDS = ("grass", "beach", "snow", "night", "room")
SLOTS = ("left", "middle", "right")
SIZES = ("small", "big")

SETTING_PHRASE = {
    "grass": "on the grass", "beach": "on the beach", "snow": "in the snow",
    "night": "at night", "room": "in a room",
}
SLOT_PHRASE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
# Colours that would vanish into a background are never used on it.
HIDDEN_COLOURS = {"grass": {"green"}, "beach": {"yellow"}, "snow": {"white"}, "night": {"blue", "purple"}, "room": {"brown"}}


@dataclass(frozen=True)
class Concept:
    """A held-out instance: one particular object of a category, with a look of its own."""

    name: str
    category: str
    colour: str        # its base colour, fixed
    pattern: str       # drawn on the body: never on pretraining objects
    accessory: str     # drawn on top: never on pretraining objects


CONCEPTS = (
    Concept("polka_teddy", "teddy", "brown", pattern="white dots", accessory="top hat"),
    Concept("striped_cup", "cup", "white", pattern="red stripes", accessory="star"),
    Concept("tabby_cat", "cat", "yellow", pattern="dark stripes", accessory="red collar"),
)
CONCEPT_BY_NAME = {c.name: c for c in CONCEPTS}
PATTERNS = tuple(c.pattern for c in CONCEPTS)
ACCESSORIES = tuple(c.accessory for c in CONCEPTS)
# A part in the body's own colour cannot be seen (red stripes on a red cup): never drawn so.
PART_COLOUR = {"white dots": "white", "red stripes": "red", "star": "yellow", "red collar": "red"}
PART_PHRASE = {"white dots": "with white dots", "red stripes": "with red stripes", "dark stripes": "with dark stripes",
               "top hat": "wearing a top hat", "star": "with a star", "red collar": "wearing a red collar"}
# World v2 draws the small parts (dots, dark stripes, star, collar) this much larger: drawn as in
# the first world, 1-2 px wide at 64 px, no codec with SD1's 8 x 8 x 4 latent that we trained
# carried them (docs/evidence.md), and what a person cannot see in a round trip cannot be judged.
V2_PART_SCALE = 1.5
# World v2's pretraining (codec and UNet): this share of the ordinary objects wears concept parts,
# so the parts are known before a concept is learned (``sample_scene``: never all of a concept's).
V2_PARTS_SHARE = 0.5
IDENTITIES = ("generic",) + tuple(c.name for c in CONCEPTS)


def part_shows_on(part: str | None, colour: str) -> bool:
    return part is None or PART_COLOUR.get(part) != colour


@dataclass(frozen=True)
class WorldObject:
    category: str
    colour: str
    slot: str
    size: str
    flipped: bool = False
    concept: str | None = None  # name of a held-out Concept, or None for a generic object
    pattern: str | None = None    # one of PATTERNS drawn on the body, or None
    accessory: str | None = None  # one of ACCESSORIES, or None

    def __post_init__(self) -> None:
        if self.concept is not None:  # a concept instance wears its own parts, whatever was passed
            c = CONCEPT_BY_NAME[self.concept]
            object.__setattr__(self, "pattern", c.pattern)
            object.__setattr__(self, "accessory", c.accessory)

    @property
    def identity(self) -> str:
        return self.concept or "generic"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[WorldObject, ...]
    # Small offsets (fractions of the image) so no two renders of a scene are alike.
    jitter_seed: int = 0
    # How large the small parts are drawn (``world.render``): 1 in the first world, ``V2_PART_SCALE``
    # in world v2.
    part_scale: float = 1.0

    def object_in(self, slot: str) -> WorldObject | None:
        return next((o for o in self.objects if o.slot == slot), None)


def _allowed_colours(background: str) -> list[str]:
    return [c for c in COLOURS if c not in HIDDEN_COLOURS[background]]


def concept_object(concept: Concept, slot: str, size: str, flipped: bool = False) -> WorldObject:
    return WorldObject(concept.category, concept.colour, slot, size, flipped, concept.name,
                       concept.pattern, concept.accessory)


def is_concept(category: str, colour: str, pattern: str | None, accessory: str | None) -> str | None:
    """The concept an object with exactly these parts is, or None: a concept is all of its parts."""
    return next((c.name for c in CONCEPTS
                 if (c.category, c.colour, c.pattern, c.accessory) == (category, colour, pattern, accessory)), None)


def look_alikes(concept: Concept) -> list[tuple[str, str, str | None, str | None]]:
    """Every partial combination of the concept's parts, as (category, colour, pattern, accessory):
    on its own category each subset of {its colour, its pattern, its accessory} but the whole,
    the colour replaced by every other colour when left out; and its pattern and accessory, alone
    and together, on every other category. Combinations where a part would vanish into the body's
    colour are left out (they are not look-alikes, they are the plain object)."""
    out = []
    others = [c for c in COLOURS if c != concept.colour]
    for keep_colour in (True, False):
        for pattern in (concept.pattern, None):
            for accessory in (concept.accessory, None):
                if keep_colour and pattern and accessory:
                    continue
                for colour in ([concept.colour] if keep_colour else others):
                    out.append((concept.category, colour, pattern, accessory))
    for category in CATEGORIES:
        if category != concept.category:
            for pattern, accessory in ((concept.pattern, None), (None, concept.accessory),
                                       (concept.pattern, concept.accessory)):
                out += [(category, colour, pattern, accessory) for colour in COLOURS]
    return [o for o in out if part_shows_on(o[2], o[1]) and part_shows_on(o[3], o[1])]


def look_alike_kind(concept: Concept, look_alike: tuple[str, str, str | None, str | None]) -> str:
    """'pattern + accessory', 'none', or 'on another category: pattern', ...: which of the concept's
    parts a look-alike has."""
    category, colour, pattern, accessory = look_alike
    if category != concept.category:
        return "on another category: " + " + ".join(p for p, on in (("pattern", pattern), ("accessory", accessory)) if on)
    have = [p for p, on in (("colour", colour == concept.colour), ("pattern", pattern), ("accessory", accessory)) if on]
    return " + ".join(have) or "none (another colour)"


def look_alike_kinds(concept: Concept) -> dict[str, list[tuple[str, str, str | None, str | None]]]:
    """``look_alikes(concept)`` grouped by ``look_alike_kind``, in a fixed order."""
    out: dict[str, list] = {}
    for look_alike in look_alikes(concept):
        out.setdefault(look_alike_kind(concept, look_alike), []).append(look_alike)
    return out


def random_parts(rng: random.Random, category: str, colour: str) -> tuple[str | None, str | None]:
    """A pattern and/or accessory for an ordinary object: at least one part, each visible on the
    body's colour, and never all of a concept's (the held-out instances stay out of pretraining)."""
    while True:
        pattern, accessory = rng.choice((None,) + PATTERNS), rng.choice((None,) + ACCESSORIES)
        if ((pattern or accessory) and part_shows_on(pattern, colour) and part_shows_on(accessory, colour)
                and not is_concept(category, colour, pattern, accessory)):
            return pattern, accessory


def sample_scene(rng: random.Random, two_objects: float = 0.3, concepts: tuple[Concept, ...] = (),
                 parts_share: float = 0.0, part_scale: float = 1.0) -> Scene:
    """A random pretraining scene; with ``concepts``, the first object is one of them; with
    ``parts_share``, that share of the ordinary objects carries concept parts (``random_parts``).
    Without it the random draws are those of the first world, so its scenes stay as they were.
    ``part_scale``: how large the scene's parts are drawn (it draws no random numbers)."""
    background = rng.choice(BACKGROUNDS)
    colours = _allowed_colours(background)
    if rng.random() < two_objects:
        slots, size = ("left", "right"), "small"
    else:
        slots, size = (rng.choice(SLOTS),), rng.choice(SIZES)
    objects = []
    for i, slot in enumerate(slots):
        flipped = rng.random() < 0.5
        if i == 0 and concepts:
            objects.append(concept_object(rng.choice(concepts), slot, size, flipped))
        else:
            category, colour = rng.choice(CATEGORIES), rng.choice(colours)
            parts = random_parts(rng, category, colour) if parts_share and rng.random() < parts_share else (None, None)
            objects.append(WorldObject(category, colour, slot, size, flipped, None, *parts))
    return Scene(background, tuple(objects), jitter_seed=rng.randrange(2**31), part_scale=part_scale)


def caption(scene: Scene, rng: random.Random | None = None, words: dict[str, str] | None = None) -> str:
    """The scene in words. With ``rng``, optional parts (colour, size, setting, place) are dropped
    at random; without, the full caption. ``words`` maps a concept name to the phrase that names it
    (e.g. ``{"polka_teddy": "sks teddy"}``); a concept without one is described as its category.
    """
    words = words or {}

    def keep(p: float) -> bool:
        return rng is None or rng.random() < p

    def noun(o: WorldObject) -> str:
        if o.concept in words:
            return words[o.concept]
        parts = []
        if len(scene.objects) == 1 and keep(0.5):
            parts.append(o.size)
        if o.concept is None and keep(0.8):
            parts.append(o.colour)
        text = " ".join(parts + [o.category])
        worn = [PART_PHRASE[p] for p in (o.pattern, o.accessory) if p and o.concept is None]
        if worn and keep(0.8):  # a concept's parts are never named: it is learned from images
            text += " " + " and ".join(worn)
        return text

    nouns = [noun(o) for o in scene.objects]
    text = "a photo of a " + " and a ".join(nouns)
    if keep(0.85):
        text += " " + SETTING_PHRASE[scene.background]
    if len(scene.objects) == 1 and keep(0.7):
        text += ", " + SLOT_PHRASE[scene.objects[0].slot]
    return text


def caption_vocabulary() -> list[str]:
    """Every word ``caption`` can write, as phrases to tokenize: the world's whole language."""
    return ["a photo of a , and", *CATEGORIES, *COLOURS, *SIZES, *SETTING_PHRASE.values(), *SLOT_PHRASE.values(),
            *PART_PHRASE.values()]
