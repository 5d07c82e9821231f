"""The built-in caption corpus for estimating the text-encoder second moment C (docs/method.md §7).

C must cover the directions that real prompts occupy, or C^-1 blows up along
the ones it never saw. No caption data set can be downloaded where this runs,
so the default corpus comes from a small grammar written for this project
over the words of caption_vocabulary.py, in prompt style, sentence style, tag
lists and multi-clause forms, 3 to 40 words long. Generation is deterministic
per seed, so a corpus is identified by (grammar version, n, seed) or by its
content digest. Users may supply their own text file instead
(prompt_text.read_caption_file).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .caption_vocabulary import (
    AIR_ACTIONS, AIRCRAFT, ANIMAL_ADJ, BIRD_ACTIONS, BIRDS, BOAT_ACTIONS, BOATS, COLORS, FOOD, FOOD_ADJ,
    FOOD_PLACES, GARMENTS, HAIR, HANDHELD, INTERACTIONS, LAND_ACTIONS, LAND_ANIMALS, LIGHTING, OBJ_ADJ,
    OBJ_PLACES, OBJECTS, PEOPLE, PERSON_ACTIONS, PERSON_ADJ, PLACE_ADJ, ROAD_ACTIONS, ROAD_VEHICLES, SCENES,
    SETTINGS, STYLE_PREFIX, STYLE_SUFFIX, TRAIN_ACTIONS, TRAINING_TEMPLATES, TRAINS, VEH_ADJ, WATER_ACTIONS,
    WATER_ANIMALS, pluralize, with_article)

GRAMMAR_VERSION = 1  # bump whenever the grammar's output changes
MIN_WORDS, MAX_WORDS = 3, 40


# ---------------------------------------------------------------- grammar
@dataclass(frozen=True)
class _Kind:
    """One subject category: nouns, their adjectives, and what they may be doing."""

    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    actions: tuple[str, ...]
    countable: bool = True
    person: bool = False


_KINDS: dict[str, _Kind] = {
    "person": _Kind(PEOPLE, PERSON_ADJ, PERSON_ACTIONS, person=True),
    "land": _Kind(LAND_ANIMALS, ANIMAL_ADJ, LAND_ACTIONS),
    "bird": _Kind(BIRDS, ANIMAL_ADJ, BIRD_ACTIONS),
    "water": _Kind(WATER_ANIMALS, ANIMAL_ADJ, WATER_ACTIONS),
    "object": _Kind(OBJECTS, OBJ_ADJ, OBJ_PLACES),
    "road": _Kind(ROAD_VEHICLES, VEH_ADJ, ROAD_ACTIONS),
    "boat": _Kind(BOATS, VEH_ADJ, BOAT_ACTIONS),
    "air": _Kind(AIRCRAFT, VEH_ADJ, AIR_ACTIONS),
    "train": _Kind(TRAINS, VEH_ADJ, TRAIN_ACTIONS),
    "food": _Kind(FOOD, FOOD_ADJ, FOOD_PLACES, countable=False),
}
_KIND_NAMES = tuple(_KINDS)
_KIND_WEIGHTS = (30, 16, 6, 5, 14, 8, 4, 3, 2, 12)
_PLURAL_DETS = ("two", "three", "four", "several", "a group of", "a pair of", "some", "many", "")


def _adjectives(rng: random.Random, pool: Sequence[str]) -> list[str]:
    k = rng.choices((0, 1, 2), (45, 40, 15))[0]
    return rng.sample(list(pool), k)


def _subject(rng: random.Random, kind: _Kind) -> tuple[str, bool]:
    """A noun phrase of this kind and whether it is plural."""
    adjs = _adjectives(rng, kind.adjectives)
    if not kind.countable:  # food table entries carry their own article rule
        mark, noun = rng.choice(kind.nouns).split(":", 1)
        head = " ".join([*adjs, noun])
        return (with_article(head) if mark == "a" else head), mark == "-"
    noun = rng.choice(kind.nouns)
    if rng.random() < 0.2:
        det = rng.choice(_PLURAL_DETS)
        return f"{det} {' '.join([*adjs, pluralize(noun)])}".strip(), True
    head = " ".join([*adjs, noun])
    det = rng.choices(("a", "the", "my", "this", "one"), (70, 18, 5, 5, 2))[0]
    phrase = with_article(head) if det == "a" else f"{det} {head}"
    if kind.person and rng.random() < 0.3:
        phrase += " " + _person_feature(rng)
    return phrase, False


def _person_feature(rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        return f"wearing {with_article(rng.choice(COLORS) + ' ' + rng.choice(GARMENTS))}"
    if form == 1:
        return f"in {with_article(rng.choice(COLORS) + ' ' + rng.choice(GARMENTS))}"
    if form == 2:
        return f"with {rng.choice(HAIR)}"
    return f"{rng.choice(('holding', 'carrying'))} {rng.choice(HANDHELD)}"


def _setting(rng: random.Random) -> str:
    prep, art, noun = rng.choice(SETTINGS).split("|")
    if rng.random() < 0.35:
        noun = f"{rng.choice(PLACE_ADJ)} {noun}"
        if art in ("a", "an"):
            return f"{prep} {with_article(noun)}"
    return " ".join(w for w in (prep, art, noun) if w)


def _scene(rng: random.Random) -> str:
    adjs = _adjectives(rng, PLACE_ADJ)[:1]
    return with_article(" ".join([*adjs, rng.choice(SCENES)]))


def _kind(rng: random.Random, exclude: tuple[str, ...] = ()) -> _Kind:
    while True:
        name = rng.choices(_KIND_NAMES, _KIND_WEIGHTS)[0]
        if name not in exclude:
            return _KINDS[name]


def _maybe(rng: random.Random, p: float, make: Callable[[], str]) -> str:
    return make() if rng.random() < p else ""


def _suffixes(rng: random.Random, most: int) -> str:
    k = rng.randint(0, most)
    return "".join(", " + s for s in rng.sample(list(STYLE_SUFFIX), k))


def _clause(rng: random.Random, kind: _Kind | None = None) -> tuple[str, bool]:
    kind = kind or _kind(rng)
    np, plural = _subject(rng, kind)
    return f"{np} {rng.choice(kind.actions)}", plural


def _described(rng: random.Random) -> str:
    prefix = _maybe(rng, 0.45, lambda: rng.choice(STYLE_PREFIX))
    clause = _clause(rng)[0] if rng.random() < 0.8 else _subject(rng, _kind(rng))[0]
    return " ".join(filter(None, (prefix, clause, _maybe(rng, 0.4, lambda: _setting(rng)),
                                  _maybe(rng, 0.3, lambda: rng.choice(LIGHTING))))) + _suffixes(rng, 2)


def _sentence(rng: random.Random) -> str:
    kind = _kind(rng)
    np, plural = _subject(rng, kind)
    verb = "are" if plural else "is"
    tail = " ".join(filter(None, (rng.choice(kind.actions), _maybe(rng, 0.4, lambda: _setting(rng)),
                                  _maybe(rng, 0.25, lambda: rng.choice(LIGHTING)))))
    if rng.random() < 0.3 and not np.startswith(("the ", "my ", "this ", "one ")):
        text = f"there {verb} {np} {tail}"
    else:
        text = f"{np} {verb} {tail}"
    return text[0].upper() + text[1:] + "."


def _multi(rng: random.Random) -> str:
    (c1, _), (np2, plural2) = _clause(rng), _subject(rng, k2 := _kind(rng))
    act2 = rng.choice(k2.actions)
    form = rng.randrange(5)
    if form == 0:
        text = f"{c1} while {np2} {'are' if plural2 else 'is'} {act2}"
    elif form == 1:
        text = f"{c1} {_setting(rng)}, with {np2} {act2} in the background"
    elif form == 2:
        text = f"{_scene(rng)} {rng.choice(LIGHTING)}, with {np2} {act2} in the foreground"
    elif form == 3:
        text = f"{c1}, and {np2} {act2} nearby"
    else:
        s1, s2 = _sentence(rng), _sentence(rng)
        return f"{s1} {s2}"
    return text + _suffixes(rng, 1)


def _scenery(rng: random.Random) -> str:
    lead = rng.choice(("", "", "a view of", "aerial view of", "a wide shot of",
                       "a landscape painting of", "a postcard of", "the interior of"))
    return " ".join(filter(None, (lead, _scene(rng), _maybe(rng, 0.6, lambda: rng.choice(LIGHTING))))) \
        + _suffixes(rng, 2)


def _interaction(rng: random.Random) -> str:
    person, _ = _subject(rng, _KINDS["person"])
    other, _ = _subject(rng, _kind(rng, exclude=("person",)))
    return " ".join(filter(None, (person, rng.choice(INTERACTIONS), other,
                                  _maybe(rng, 0.5, lambda: _setting(rng)),
                                  _maybe(rng, 0.2, lambda: rng.choice(LIGHTING)))))


def _still_life(rng: random.Random) -> str:
    lead = rng.choice(("", "still life of", "a photo of", "a painting of"))
    a = _subject(rng, _KINDS["food"])[0]
    b = _subject(rng, _KINDS[rng.choice(("food", "object"))])[0]
    return " ".join(filter(None, (lead, a, "and", b, rng.choice(FOOD_PLACES)))) + _suffixes(rng, 1)


def _short(rng: random.Random) -> str:
    kind = _kind(rng)
    np = _subject(rng, kind)[0]
    form = rng.randrange(3)
    if form == 0:
        return f"{rng.choice(STYLE_PREFIX)} {np}"
    if form == 1:
        return f"{np} {_setting(rng)}"
    return f"{np}, {rng.choice(STYLE_SUFFIX)}"


def _tags(rng: random.Random) -> str:
    parts = [_clause(rng)[0] if rng.random() < 0.5 else _subject(rng, _kind(rng))[0]]
    parts += rng.sample(list(STYLE_SUFFIX), rng.randint(2, 5))
    if rng.random() < 0.5:
        parts.insert(1, rng.choice(LIGHTING))
    return ", ".join(parts)


def _template(rng: random.Random) -> str:
    """Textual-inversion style prompts, like the ones concepts are trained with."""
    return rng.choice(TRAINING_TEMPLATES).format(rng.choice(_kind(rng, exclude=("food",)).nouns))


def _fix_articles(text: str) -> str:
    """Make every 'a'/'an' agree with the word after it (templates insert words blindly)."""
    def repl(m: re.Match[str]) -> str:
        fixed = with_article(m.group(2)).split(" ", 1)[0]
        return (fixed.capitalize() if m.group(1)[0] == "A" else fixed) + " " + m.group(2)
    return re.sub(r"\b(an|a|An|A) ([\w-]+)", repl, text)


_FORMS = (_described, _sentence, _multi, _scenery, _interaction, _still_life, _short, _tags, _template)
_FORM_WEIGHTS = (30, 15, 12, 8, 9, 6, 8, 7, 5)


def _one_caption(rng: random.Random) -> str:
    while True:
        text = _fix_articles(" ".join(rng.choices(_FORMS, _FORM_WEIGHTS)[0](rng).split()))
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            return text


def generate_captions(n: int, seed: int = 0) -> list[str]:
    """n distinct captions from the built-in grammar, deterministic per (n, seed).

    The list for a smaller n is a prefix of the list for a larger n with the
    same seed. Raises ValueError if n is negative or beyond what the grammar
    can produce distinctly in a bounded number of draws.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"perfusion-captions/{GRAMMAR_VERSION}/{seed}")
    seen: set[str] = set()
    out: list[str] = []
    draws = 0
    while len(out) < n:
        draws += 1
        if draws > 20 * n + 1000:
            raise ValueError(f"the caption grammar could not produce {n} distinct captions "
                             f"({len(out)} after {draws - 1} draws)")
        text = _one_caption(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def corpus_digest(captions: Sequence[str]) -> str:
    """Short content id of a caption list (order-sensitive), for statistics metadata."""
    h = hashlib.sha256()
    for c in captions:
        h.update(c.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]
