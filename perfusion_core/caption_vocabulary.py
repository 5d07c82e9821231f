"""The words of the built-in caption grammar (caption_grammar.py) and their English forms.

People, animals, objects, vehicles, food and places, with attributes,
actions, settings, lighting and camera/art-style phrases. Every list feeds the
generated corpus: changing one changes the captions, so bump
caption_grammar.GRAMMAR_VERSION with it.
"""

from __future__ import annotations


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
