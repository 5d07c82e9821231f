"""Caption corpora for estimating the text-encoder second moment C (docs/method.md §7).

C must cover the directions that real prompts occupy, or C^-1 blows up along
the ones it never saw. No caption data set can be downloaded where this runs,
so the default corpus comes from a small grammar written for this project:
people, animals, objects, vehicles, food and places, with attributes,
actions, settings, lighting and camera/art-style phrases, in prompt style,
sentence style, tag lists and multi-clause forms, 3 to 40 words long.
Generation is deterministic per seed, so a corpus is identified by (grammar
version, n, seed) or by its content digest. Users may supply their own text
file instead (``read_caption_file``).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

GRAMMAR_VERSION = 1  # bump whenever the grammar's output changes
MIN_WORDS, MAX_WORDS = 3, 40


def _items(text: str) -> tuple[str, ...]:
    """Comma-separated vocabulary list -> tuple (keeps the tables compact)."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


# ---------------------------------------------------------------- vocabulary
PEOPLE = _items("""woman, man, girl, boy, child, baby, teenager, toddler, grandmother,
 grandfather, chef, baker, doctor, nurse, farmer, fisherman, firefighter, police officer,
 soldier, astronaut, pilot, sailor, dancer, ballerina, musician, guitarist, violinist,
 drummer, singer, painter, sculptor, student, teacher, scientist, engineer, mechanic,
 carpenter, surfer, skier, snowboarder, skateboarder, cyclist, runner, hiker, climber,
 photographer, tourist, bride, groom, king, queen, knight, wizard, witch, pirate, clown,
 cowboy, monk, businessman, athlete, tennis player, boxer, gardener, librarian, waiter""")
PERSON_ADJ = _items("""young, old, elderly, smiling, laughing, tired, happy, serious,
 thoughtful, bearded, tall, curly-haired, red-haired, blond, dark-haired, tattooed,
 barefoot, sleepy, proud, nervous, cheerful, lonely, confident, freckled""")
PERSON_ACTIONS = _items("""reading a book, reading a newspaper, drinking coffee, drinking tea,
 eating an apple, eating lunch, cooking dinner, baking bread, playing the guitar,
 playing the piano, playing the violin, playing chess, playing soccer, playing tennis,
 riding a bicycle, riding a horse, riding a motorcycle, walking a dog, walking along the shore,
 walking in the rain, running, jogging, dancing, singing into a microphone, laughing,
 smiling at the camera, looking out of a window, looking at the camera, looking up at the sky,
 sitting on a bench, sitting on the floor, standing in line, waiting for a bus,
 talking on the phone, typing on a laptop, taking a photo, painting a picture, painting a wall,
 writing in a notebook, sleeping on a couch, lying in the grass, climbing a rock wall,
 climbing a tree, swimming in a lake, surfing a wave, skiing down a slope,
 skateboarding down a ramp, fishing from a pier, planting flowers, carrying groceries,
 waving, hugging a friend, sweeping the floor, fixing a car, building a sandcastle,
 flying a kite, feeding the pigeons, selling vegetables, crossing the street,
 hiking up a mountain trail, meditating, doing yoga, juggling, giving a speech,
 teaching a class, repairing a bicycle, washing dishes, brushing a horse, pouring wine,
 knitting a scarf, blowing out birthday candles, throwing a frisbee""")
GARMENTS = _items("""jacket, coat, dress, hat, scarf, sweater, hoodie, raincoat, suit, shirt,
 t-shirt, apron, helmet, uniform, cap, kimono, poncho, tuxedo, gown, vest, cardigan""")
COLORS = _items("""red, blue, green, yellow, orange, purple, pink, black, white, gray, brown,
 beige, navy, teal, maroon, golden, silver, striped, plaid, turquoise""")
HANDHELD = _items("""an umbrella, a cup of coffee, a bouquet of flowers, a camera, a guitar,
 a book, a map, a lantern, a basket, a smartphone, a balloon, a surfboard, a kite, a sword,
 a paintbrush, a newspaper, a shopping bag, a suitcase, a bottle of water, an ice cream cone""")
HAIR = _items("""long hair, short hair, curly hair, a ponytail, braids, a beard, gray hair,
 a mustache, freckles, glasses, sunglasses, a tattoo on the arm""")

LAND_ANIMALS = _items("""dog, puppy, cat, kitten, horse, pony, cow, sheep, goat, pig, donkey,
 rabbit, fox, wolf, bear, deer, elephant, giraffe, zebra, lion, tiger, leopard, monkey,
 gorilla, kangaroo, panda, koala, raccoon, squirrel, hedgehog, mouse, camel, llama, teddy bear""")
BIRDS = _items("""owl, eagle, parrot, duck, swan, pigeon, crow, robin, hummingbird, flamingo,
 peacock, chicken, rooster, goose, seagull, heron, sparrow""")
WATER_ANIMALS = _items("""dolphin, whale, sea turtle, seal, octopus, jellyfish, shark, goldfish,
 frog, crab, penguin, otter""")
ANIMAL_ADJ = _items("""fluffy, small, large, brown, black, white, gray, spotted, striped, sleepy,
 curious, wet, muddy, young, old, wild, playful, hungry, majestic, tiny, lazy, friendly,
 baby, colorful, shaggy""")
LAND_ACTIONS = _items("""sleeping, sleeping in the sun, running, running through the grass,
 jumping over a fence, eating grass, eating from a bowl, drinking from a puddle,
 playing with a ball, playing in the snow, chasing a butterfly, rolling in the mud,
 lying on a rug, lying on a sofa, sitting on a porch, standing on a hill,
 grazing in a meadow, looking at the camera, yawning, wearing a red collar,
 wearing a tiny hat, hiding behind a tree, walking along a fence, digging in the sand,
 curled up in a basket, peeking out of a cardboard box, resting in the shade""")
BIRD_ACTIONS = _items("""perched on a branch, perched on a fence, flying over the water,
 flying against a blue sky, sitting on a nest, standing on one leg, pecking at seeds,
 swimming in a pond, walking on the beach, landing on a post, singing on a wire,
 with wings spread wide""")
WATER_ACTIONS = _items("""swimming in clear water, swimming near a coral reef,
 jumping out of the waves, floating near the surface, resting on a rock,
 hiding among seaweed, swimming in an aquarium, diving into the water, basking in the sun""")

OBJECTS = _items("""chair, armchair, table, desk, lamp, clock, vase, teapot, cup, mug, book,
 bottle, jar, candle, mirror, guitar, piano, violin, umbrella, suitcase, backpack, camera,
 typewriter, radio, telephone, laptop, keyboard, doll, toy robot, globe, kettle, basket,
 shoe, boot, hat, wristwatch, necklace, key, lantern, sculpture, statue, bench, fountain pen,
 wine glass, houseplant, pillow, rug, chess set, skateboard, hourglass, birdcage""")
OBJ_ADJ = _items("""old, vintage, antique, modern, wooden, metal, glass, ceramic, plastic,
 leather, golden, silver, rusty, broken, shiny, dusty, handmade, colorful, red, blue, green,
 yellow, white, black, small, large, tiny, giant, ornate, polished, cracked, marble""")
OBJ_PLACES = _items("""on a wooden table, on a kitchen counter, on a windowsill, on a bookshelf,
 on the floor, on an unmade bed, next to a window, in a shop window, in a cardboard box,
 on a cluttered desk, on a stone wall, in the grass, in the sand, in the snow,
 on a white background, against a brick wall, hanging on a wall, floating in the air,
 half buried in sand, covered in dust, surrounded by flowers, under a glass dome,
 in a museum display case, on a marble pedestal, next to a cup of coffee""")

ROAD_VEHICLES = _items("""car, sports car, truck, pickup truck, bus, school bus, taxi, van,
 motorcycle, scooter, bicycle, tractor, ambulance, fire truck, jeep, limousine, camper van""")
BOATS = _items("""boat, sailboat, fishing boat, canoe, kayak, yacht, ship, ferry, submarine""")
AIRCRAFT = _items("""airplane, helicopter, hot air balloon, glider, jet, rocket, seaplane""")
TRAINS = _items("""train, steam train, tram, subway train, freight train""")
VEH_ADJ = _items("""red, blue, black, white, yellow, green, silver, old, vintage, rusty, new,
 shiny, abandoned, electric, muddy, classic, futuristic, battered, wooden, toy""")
ROAD_ACTIONS = _items("""parked on a city street, parked in front of a house,
 driving down a country road, driving along the coast, driving through a tunnel,
 stuck in traffic, crossing a bridge, waiting at a traffic light, covered in snow,
 rusting in a field, speeding down a highway, parked in a garage, driving through the desert""")
BOAT_ACTIONS = _items("""docked in a harbor, sailing on a calm sea, sailing past a lighthouse,
 floating on a lake, anchored in a bay, moored along a canal, crossing a river,
 caught in a storm, pulled up on the beach""")
AIR_ACTIONS = _items("""flying over the mountains, flying above the clouds,
 taking off from a runway, landing at an airport, hovering over a city,
 drifting over a valley, parked on the tarmac""")
TRAIN_ACTIONS = _items("""crossing a viaduct, pulling into a station, passing through a forest,
 waiting at a platform, winding through the mountains, running along the coast""")

# "a:" = countable with article, "-:" = mass noun or plural, no article
FOOD = _items("""a:slice of pizza, a:cheeseburger, a:sandwich, a:bowl of ramen,
 a:plate of spaghetti, -:sushi, -:pancakes, a:chocolate cake, -:cupcakes, -:donuts,
 a:croissant, a:loaf of bread, -:apples, -:oranges, -:strawberries, a:bowl of cherries,
 -:ice cream, a:cup of coffee, a:pot of tea, a:steak, -:tacos, a:bowl of pasta, a:omelette,
 a:basket of fruit, -:fried eggs, a:burrito, -:dumplings, a:bowl of salad,
 a:glass of orange juice, a:glass of red wine, a:cheese platter, -:grilled fish,
 a:roast chicken, a:apple pie, -:cookies, a:waffle, a:bagel, -:curry with rice,
 a:bowl of soup, a:hot dog, -:french fries, a:lemon tart, -:macarons""")
FOOD_ADJ = _items("""fresh, homemade, delicious, steaming, hot, cold, spicy, sweet, colorful,
 half-eaten, freshly baked, gourmet, rustic, crispy, juicy, tasty""")
FOOD_PLACES = _items("""on a white plate, on a wooden cutting board, on a picnic blanket,
 on a rustic table, on a marble countertop, in a takeout box, at a street food stall,
 on a restaurant table, in a bakery window, next to a glass of wine, on a wooden tray,
 garnished with fresh herbs, drizzled with honey, on a checkered tablecloth""")

# places: "preposition|article|noun"; article '' for none
SETTINGS = _items("""in|a|park, on|a|beach, in|a|forest, in|a|field, on|a|city street,
 in|a|kitchen, in|a|living room, in|a|cafe, in|a|library, in|a|garden, on|a|farm,
 on|a|mountain trail, by|a|lake, by|a|river, in|the|desert, in|the|snow,
 at|a|train station, in|a|market, on|a|rooftop, in|a|classroom, in|a|studio, in|a|meadow,
 near|a|waterfall, on|a|bridge, in|an|alley, at|the|airport, in|a|subway station,
 in|a|museum, at|a|festival, on|a|stage, in|a|parking lot, on|a|porch, in|a|backyard,
 on|the|sidewalk, in|a|greenhouse, in|the|mountains, by|the|sea, in|a|cave, in|a|jungle,
 in|a|village, in|a|hospital, in|a|bakery, on|a|ship deck, in|a|vineyard, at|a|harbor""")
SCENES = _items("""lighthouse, mountain lake, city street, village, farmers market, forest path,
 sand dune, tropical beach, fishing harbor, stone bridge, medieval castle, gothic cathedral,
 ancient temple, glass skyscraper, subway station, library, kitchen, living room,
 coffee shop, rose garden, wheat field, waterfall, canyon, glacier, island, city park,
 playground, train station, snowy mountain, vineyard, narrow alley, rooftop terrace,
 greenhouse, log cabin, windmill, river valley, pond, desert road, skyline, bedroom,
 bookstore, night market, rice terrace, volcano, coral reef, cemetery, factory, farmhouse""")
PLACE_ADJ = _items("""busy, quiet, crowded, empty, sunny, snowy, foggy, rainy, misty, abandoned,
 ancient, modern, small, huge, tropical, peaceful, green, colorful, dark, cozy, ruined,
 futuristic, deserted, charming""")
LIGHTING = _items("""at sunset, at sunrise, at night, at dusk, at dawn, in golden hour light,
 in soft morning light, in harsh midday sun, under neon lights, by candlelight,
 in dramatic lighting, with strong backlighting, under an overcast sky, in the rain,
 during a snowfall, in thick fog, during a thunderstorm, with light streaming through a window,
 under a starry sky, in the moonlight, on a summer afternoon, on a foggy morning,
 in late autumn, in early spring, on a cold winter day, in warm lamplight""")

STYLE_PREFIX = _items("""a photo of, a close-up photo of, a black and white photo of,
 a blurry photo of, an old photograph of, a candid photo of, a portrait of,
 an oil painting of, a watercolor painting of, a pencil sketch of, a charcoal drawing of,
 an ink drawing of, a digital illustration of, a 3d render of, a cartoon drawing of,
 an anime illustration of, a vintage poster of, a mosaic of, a stained glass window showing,
 a pixel art image of, a low poly model of, a children's book illustration of,
 a polaroid photo of, an aerial photo of, a macro photograph of, a film still showing,
 a painting of, a video game screenshot showing, a linocut print of, an embroidery of,
 a comic book panel of, a sticker of, a woodcut of, close-up of, portrait of,
 illustration of, a drawing of, a snapshot of, a selfie with, a sculpture of""")
STYLE_SUFFIX = _items("""shot on 35mm film, shallow depth of field, wide angle lens,
 highly detailed, in the style of impressionism, in the style of ukiyo-e, art nouveau style,
 baroque style, pop art, cubist style, surrealist painting, minimalist, pastel colors,
 vibrant colors, muted tones, sepia toned, cinematic lighting, studio lighting, soft focus,
 long exposure, bokeh background, 4k, trending on artstation, award winning photograph,
 hyperrealistic, concept art, matte painting, film grain, symmetrical composition,
 isometric view, flat design, neon colors, dreamy atmosphere, gothic style,
 renaissance painting, steampunk, cyberpunk, fantasy art, retro 1980s style,
 made of lego bricks, product photography, editorial photo, line art, chiaroscuro""")
INTERACTIONS = _items("""feeding, petting, holding, hugging, photographing, painting, drawing,
 watching, chasing, carrying, walking beside, sitting next to, looking at, pointing at,
 playing with, cleaning""")
TRAINING_TEMPLATES = _items("""a photo of a {}, a photo of the {}, a rendering of a {},
 a cropped photo of the {}, a bright photo of a {}, a dark photo of the {},
 a good photo of the {}, a close-up photo of a {}, a photo of a clean {},
 a photo of a dirty {}, a photo of my {}, a photo of the cool {}, a weird photo of a {},
 a photo of a small {}, a photo of a large {}, a {} shown in a photo, a rendition of the {}""")

_IRREGULAR = {"child": "children", "person": "people", "mouse": "mice", "sheep": "sheep",
              "deer": "deer", "goose": "geese", "wolf": "wolves", "fish": "fish",
              "goldfish": "goldfish", "jellyfish": "jellyfish", "shelf": "shelves"}


def pluralize(noun: str) -> str:
    """English plural of a (possibly multi-word) noun phrase: 'cup of tea' -> 'cups of tea'."""
    head, sep, rest = noun.partition(" of ")
    *front, last = head.split(" ")
    if last in _IRREGULAR:
        last = _IRREGULAR[last]
    elif last.endswith("man"):
        last = last[:-3] + "men"
    elif last.endswith(("s", "sh", "ch", "x", "z")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*front, last]) + sep + rest


def with_article(phrase: str) -> str:
    """'a' or 'an' in front of a phrase, by the sound of its first word (approximate)."""
    first = phrase.split(" ", 1)[0].lower()
    vowel = first[:1] in "aeiou" and not first.startswith(("uni", "use", "one", "euro"))
    return ("an " if vowel or first.startswith(("hour", "honest")) else "a ") + phrase


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


# ---------------------------------------------------------------- user files
class CaptionFileError(ValueError):
    """A caption file is unusable; the message names the file and says why."""


def caption_lines(text: str) -> list[tuple[int, str]]:
    """(line number, caption) for every line of ``text`` that holds one: runs of whitespace collapse
    to one space; blank lines and lines starting with '#' are skipped."""
    lines = ((n, " ".join(line.split())) for n, line in enumerate(text.splitlines(), 1))
    return [(n, c) for n, c in lines if c and not c.startswith("#")]


def read_caption_file(path: str | os.PathLike[str]) -> list[str]:
    """Captions from a UTF-8 text file: one per line; blank lines and lines
    starting with '#' are skipped; runs of whitespace collapse to one space."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CaptionFileError(f"caption file '{p}' does not exist") from None
    except IsADirectoryError:
        raise CaptionFileError(f"caption file '{p}' is a directory, not a text file") from None
    except OSError as exc:
        raise CaptionFileError(f"caption file '{p}' cannot be read: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise CaptionFileError(f"caption file '{p}' looks binary (it contains NUL bytes; "
                               f"UTF-16 text does too): save it as UTF-8 text, one caption per line")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaptionFileError(f"caption file '{p}' is not UTF-8 text (invalid byte at offset "
                               f"{exc.start}): save it as UTF-8, one caption per line") from None
    captions = [c for _, c in caption_lines(text)]
    if not captions:
        raise CaptionFileError(f"caption file '{p}' contains no captions "
                               f"(only blank lines or '#' comments)")
    return captions
