"""The judge: a classifier that reads a world image back into its ground truth.

It plays the part CLIP plays in the paper's evaluation, exactly instead of
approximately: for the background and for each of the three slots it predicts
what stands there (nothing or a category), its colour, and its identity
(a generic object or one of the held-out concepts). Fidelity and alignment are
then counts of right answers, see ``world.metrics``.

It is trained on ground-truth renders, half of them passed through the world
VAE and lightly blurred, so that it reads generated images (which are decoded
by that VAE) as well as clean ones.

Two judges share this code. The first (``judge.safetensors``, which the
evidence tables of today were measured with) reads identity as one more
label, and so credits partial likeness. The parts judge
(``judge-parts.safetensors``) reads a slot's pattern and accessory instead and
calls an object a concept only when category, colour, pattern and accessory
are all the concept's; it is trained with hard negatives, objects carrying
some of a concept's parts (``world.scenes.look_alike_kinds``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from world.autoencoder import round_trip
from world.dataset import images
from world.scenes import (
    ACCESSORIES,
    BACKGROUNDS,
    CATEGORIES,
    COLOURS,
    CONCEPTS,
    HIDDEN_COLOURS,
    IDENTITIES,
    PATTERNS,
    SLOTS,
    Scene,
    WorldObject,
    is_concept,
    look_alike_kinds,
    sample_scene,
)

JUDGE_WEIGHTS = Path(__file__).resolve().parent / "weights" / "judge.safetensors"
PARTS_JUDGE_WEIGHTS = JUDGE_WEIGHTS.with_name("judge-parts.safetensors")
V2_PARTS_JUDGE = JUDGE_WEIGHTS.with_name("judge-parts-v2.safetensors")  # trained against world v2's codec
WHAT = ("nothing",) + CATEGORIES
PATTERN_CLASSES = (None,) + PATTERNS
ACCESSORY_CLASSES = (None,) + ACCESSORIES
HEADS = {"background": len(BACKGROUNDS), "what": len(WHAT), "colour": len(COLOURS), "identity": len(IDENTITIES)}
PARTS_HEADS = {"background": len(BACKGROUNDS), "what": len(WHAT), "colour": len(COLOURS),
               "pattern": len(PATTERN_CLASSES), "accessory": len(ACCESSORY_CLASSES)}


class Judge(nn.Module):
    """64 px image -> logits: background [B, 5]; per slot what [B, 3, 5], colour [B, 3, 7], and
    identity [B, 3, 4] (``HEADS``) or pattern and accessory [B, 3, 4] each (``PARTS_HEADS``)."""

    def __init__(self, width: int = 48, heads: dict[str, int] = HEADS) -> None:
        super().__init__()

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.SiLU(),
            down(width, width), down(width, 2 * width), down(2 * width, 2 * width),  # 64 -> 8
        )
        self.background = nn.Linear(2 * width, HEADS["background"])
        # A slot reads its own third of the image (columns), pooled over the rows.
        self.slot = nn.Sequential(nn.Linear(2 * width * 8, 256), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in heads.items() if k != "background"})

    @property
    def reads_parts(self) -> bool:
        return "pattern" in self.heads

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(image * 2 - 1)  # [B, C, 8, 8]
        out = {"background": self.background(f.mean(dim=(2, 3)))}
        thirds = F.adaptive_avg_pool2d(f, (8, 3))  # [B, C, 8 rows, 3 slots]
        per_slot = self.slot(rearrange(thirds, "b c h s -> b s (c h)"))
        out |= {k: head(per_slot) for k, head in self.heads.items()}
        return out


@dataclass(frozen=True)
class Labels:
    background: torch.Tensor  # [N]
    what: torch.Tensor        # [N, 3]
    colour: torch.Tensor      # [N, 3], -1 where the slot is empty (as for the rest)
    identity: torch.Tensor    # [N, 3]
    pattern: torch.Tensor     # [N, 3], an index into PATTERN_CLASSES
    accessory: torch.Tensor   # [N, 3], an index into ACCESSORY_CLASSES

    def __getitem__(self, idx: torch.Tensor) -> Labels:
        return Labels(*(getattr(self, f)[idx] for f in Labels.__dataclass_fields__))


def labels(scenes: list[Scene]) -> Labels:
    bg = torch.tensor([BACKGROUNDS.index(s.background) for s in scenes])
    what = torch.zeros(len(scenes), 3, dtype=torch.long)
    per_slot = {k: torch.full((len(scenes), 3), -1) for k in ("colour", "identity", "pattern", "accessory")}
    for i, s in enumerate(scenes):
        for o in s.objects:
            j = SLOTS.index(o.slot)
            what[i, j] = WHAT.index(o.category)
            per_slot["colour"][i, j] = COLOURS.index(o.colour)
            per_slot["identity"][i, j] = IDENTITIES.index(o.identity)
            per_slot["pattern"][i, j] = PATTERN_CLASSES.index(o.pattern)
            per_slot["accessory"][i, j] = ACCESSORY_CLASSES.index(o.accessory)
    return Labels(bg, what, **per_slot)


def judge_scenes(n: int, seed: int, look_alike_share: float = 0.0, part_scale: float = 1.0) -> list[Scene]:
    """Half pretraining-like scenes, half with a held-out concept as (one of) the object(s); with
    ``look_alike_share``, that share of the pretraining-like ones has a concept's look-alike as
    its first object (``world.scenes.look_alike_kinds``: a concept and a kind of look-alike
    drawn alike, then one of that kind's combinations), in a colour that shows on the background.
    ``part_scale``: how large the parts are drawn (``world.scenes.Scene``)."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, concepts=CONCEPTS if i % 2 else (), part_scale=part_scale) for i in range(n)]
    if not look_alike_share:
        return scenes
    # Drawn kind by kind: drawn from all combinations alike, the ones that differ from a concept
    # in one part (the hardest) would be a few percent of them, and the judge learned to
    # infer a missing accessory from the pattern.
    pools = [pool for c in CONCEPTS for pool in look_alike_kinds(c).values()]
    for i in range(0, n, 2):
        if rng.random() < look_alike_share:
            scenes[i] = with_look_alike(scenes[i], rng.choice(rng.choice(pools)))
    return scenes


def with_look_alike(scene: Scene, parts: tuple[str, str, str | None, str | None]) -> Scene:
    """``scene`` with its first object replaced by one with these (category, colour, pattern,
    accessory), on a background the colour shows on."""
    category, colour, pattern, accessory = parts
    first = scene.objects[0]
    background = scene.background
    if colour in HIDDEN_COLOURS[background]:
        background = next(b for b in BACKGROUNDS if colour not in HIDDEN_COLOURS[b])
    rest = tuple(o for o in scene.objects[1:] if o.colour not in HIDDEN_COLOURS[background])
    obj = WorldObject(category, colour, first.slot, first.size, first.flipped, None, pattern, accessory)
    return replace(scene, background=background, objects=(obj,) + rest)


def like_generated(taesd: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Images as the world model would produce them: through the VAE, slightly blurred."""
    out = round_trip(taesd, x)
    gen = torch.Generator().manual_seed(seed)
    sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * 0.03
    return (out + sigma * torch.randn(out.shape, generator=gen)).clamp(0, 1)


def loss_and_hits(judge: Judge, x: torch.Tensor, y: Labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = judge(x)
    losses = [F.cross_entropy(out["background"], y.background),
              F.cross_entropy(out["what"].flatten(0, 1), y.what.flatten())]
    hits = {"background": out["background"].argmax(-1) == y.background, "what": out["what"].argmax(-1) == y.what}
    for k in (k for k in judge.heads if k != "what"):  # per occupied slot
        target = getattr(y, k)
        losses.append(F.cross_entropy(out[k].flatten(0, 1), target.flatten(), ignore_index=-1))
        hits[k] = (out[k].argmax(-1) == target)[target >= 0]
    return sum(losses), hits


def train_judge(taesd: torch.nn.Module, steps: int = 1500, batch: int = 64, n: int = 8000, seed: int = 0,
                log: Callable[[str], None] = print, parts: bool = False, part_scale: float = 1.0) -> Judge:
    """The identity judge, or with ``parts`` the parts judge (a third of its scenes carry a
    look-alike); its scenes' parts drawn at ``part_scale``."""
    torch.manual_seed(seed)
    scenes = judge_scenes(n, seed=1000 + seed, look_alike_share=2 / 3 if parts else 0.0, part_scale=part_scale)
    clean = images(scenes)
    x = torch.cat([clean[: n // 2], like_generated(taesd, clean[n // 2:], seed)])
    y = labels(scenes)
    judge = Judge(heads=PARTS_HEADS if parts else HEADS)
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=0.01)
    start = time.time()
    for step in range(steps):
        lr = 2e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (batch,))
        loss, _ = loss_and_hits(judge, x[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"judge step {step}/{steps} loss {loss.item():.4f} ({(time.time() - start) / (step + 1):.2f} s/step)")
    return judge.eval()


@torch.no_grad()
def accuracy(judge: Judge, x: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Per-head accuracy on ``x`` (renders of ``scenes``): background, what per slot, colour and
    identity of occupied slots, and ``scene`` (everything right at once)."""
    _, hits = loss_and_hits(judge.eval(), x, labels(scenes))
    acc = {k: v.float().mean().item() for k, v in hits.items()}
    read = read_scenes(judge, x)
    acc["scene"] = sum(_same(a, b) for a, b in zip(read, scenes)) / len(scenes)
    return acc


def _same(a: Scene, b: Scene) -> bool:
    key = lambda s: (s.background, sorted((o.slot, o.category, o.colour, o.identity, str(o.pattern), str(o.accessory))
                                          for o in s.objects))
    return key(a) == key(b)


@torch.no_grad()
def read_scenes(judge: Judge, x: torch.Tensor, batch: int = 256) -> list[Scene]:
    """What the judge sees in each image, as scenes (sizes and pose are not judged: "big", False).
    The parts judge's objects carry the parts it read, and are a concept when all parts are one's."""
    out: list[Scene] = []
    for i in range(0, len(x), batch):
        logits = judge.eval()(x[i:i + batch])
        pred = {k: v.argmax(-1) for k, v in logits.items()}
        for b in range(len(pred["background"])):
            objects = []
            for j, slot in enumerate(SLOTS):
                what = WHAT[pred["what"][b, j]]
                if what == "nothing":
                    continue
                colour = COLOURS[pred["colour"][b, j]]
                if judge.reads_parts:
                    pattern = PATTERN_CLASSES[pred["pattern"][b, j]]
                    accessory = ACCESSORY_CLASSES[pred["accessory"][b, j]]
                    concept = is_concept(what, colour, pattern, accessory)
                    objects.append(WorldObject(what, colour, slot, "big", False, concept, pattern, accessory))
                    continue
                identity = IDENTITIES[pred["identity"][b, j]]
                objects.append(WorldObject(what, colour, slot, "big", False,
                                           None if identity == "generic" else identity))
            out.append(Scene(BACKGROUNDS[pred["background"][b]], tuple(objects)))
    return out


def save_judge(judge: Judge, path: Path = JUDGE_WEIGHTS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in judge.state_dict().items()}, str(path))
    return path


def load_judge(path: Path = JUDGE_WEIGHTS) -> Judge:
    """Either judge: which one the file holds is read from its heads."""
    if not path.is_file():
        raise FileNotFoundError(f"judge weights missing: {path} (python -m world.build makes them)")
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    judge = Judge(heads=PARTS_HEADS if "heads.pattern.weight" in state else HEADS)
    judge.load_state_dict(state)
    return judge.eval()
