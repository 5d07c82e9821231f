"""Training a concept (docs/method.md §5, §6, §8 S2): what is trained, the
objective, and the per-step randomness. Plain torch; the host-side loop lives
in ``nodes/training.py``.

Trained: the trigger's word embedding per text encoder and the value targets
o*_V of every layer (S copies for S timestep-interval sets). Maintained, not
trained: i* (EMA of the trigger's encoding, decay 0.99) and i_super (the
superclass encoding; the key target W_K i_super is recomputed on the model).
Everything random in a step comes from a generator seeded by (seed, step,
micro-batch), so a run resumed at step k draws exactly what an uninterrupted
run draws from step k on.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from .concept import Concept, ConceptError, Gate, TextEncoderId
from .prompt_text import SLOT, caption_lines, slot_problem, trigger_pattern
from .schedule import window_timesteps

# Reference-implementation style templates; "{}" is the trigger (or the superclass).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of my {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a good photo of the {}", "a photo of one {}", "a {} shown in a photo", "a dark photo of the {}",
)
NUM_TRAIN_TIMESTEPS = 1000


class TrainingError(ValueError):
    """A training input is unusable; the message names the input and the problem."""


def parse_captions(text: str, trigger: str) -> tuple[str, ...]:
    """Per-image captions from a multi-line text: one per non-blank line ('#' lines skipped), each
    with '{}' for the trigger; a line without '{}' gets it in place of the trigger word's first
    whole-word occurrence, in any case (prompts match the trigger that way: trigger_pattern).
    Raises TrainingError naming the line that has neither."""
    out = []
    pattern = trigger_pattern(trigger)
    for n, line in caption_lines(text):
        if SLOT not in line:
            line, found = pattern.subn(SLOT, line, count=1)
            if not found:
                raise TrainingError(f"captions: line {n} names neither '{{}}' nor the trigger word {trigger!r}: {line!r}")
        out.append(line)
    return tuple(out)


@dataclass(frozen=True)
class TrainingSettings:
    """Everything that determines a run besides the data and the model (recipe in docs/method.md §6)."""

    steps: int = 400
    batch_size: int = 4
    grad_accumulation: int = 4
    lr_values: float = 0.03
    lr_embedding: float = 0.006
    beta: float = 0.75
    tau: float = 0.1
    seed: int = 0
    resolution: int = 512
    timestep_sets: int = 1
    # S1 (docs/method.md §8): train only on the timesteps of this window of denoising progress
    # (0 = first step, 1 = last); the saved concept acts on the same window. The default is all.
    start_percent: float = 0.0
    end_percent: float = 1.0
    i_star_decay: float = 0.99
    flip_probability: float = 0.5
    templates: tuple[str, ...] = PROMPT_TEMPLATES
    # One prompt per training image ("{}" = the trigger), used instead of the templates; i_super
    # is then the superclass's mean encoding over these prompts. Empty: the templates.
    captions: tuple[str, ...] = ()
    # False: textual inversion, the baseline Perfusion is measured against (only the trigger
    # embedding is trained; the edit is off, strength 0, in training and in the saved concept).
    train_values: bool = True
    # True: the no-key-lock ablation. The key target's input i_super is trained with the value
    # targets (lr_values) instead of staying the superclass encoding, so the trigger's keys drift
    # away from the superclass's; one shared vector for all layers, like the locked one.
    train_keys: bool = False

    def problems(self) -> list[str]:
        """Every invalid field, phrased for the user (empty when all are valid)."""
        out = []
        for name, low, high in (("steps", 1, 100_000), ("batch_size", 1, 64), ("grad_accumulation", 1, 64),
                                ("timestep_sets", 1, 16)):
            value = getattr(self, name)
            if not (isinstance(value, int) and low <= value <= high):
                out.append(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        for name in ("lr_values", "lr_embedding"):
            value = getattr(self, name)
            if not (0.0 < value <= 1.0):
                out.append(f"{name} must be in (0, 1], got {value!r} (the recipe uses 0.03 / 0.006)")
        if not (-1.0 <= self.beta <= 2.0):
            out.append(f"beta must be in [-1, 2], got {self.beta!r}")
        if not (0.001 <= self.tau <= 1.0):
            out.append(f"tau must be in [0.001, 1], got {self.tau!r}")
        if not (isinstance(self.resolution, int) and 64 <= self.resolution <= 2048 and self.resolution % 64 == 0):
            out.append(f"resolution must be a multiple of 64 in [64, 2048], got {self.resolution!r}")
        out += self._window_problems()
        if not (0.0 < self.i_star_decay < 1.0):
            out.append(f"i_star_decay must be in (0, 1), got {self.i_star_decay!r}")
        if not (0.0 <= self.flip_probability <= 1.0):
            out.append(f"flip_probability must be in [0, 1], got {self.flip_probability!r}")
        if self.train_keys and not self.train_values:
            out.append("train_keys needs train_values (keys are trained together with the value targets)")
        if not self.templates:
            out.append("templates: at least one prompt template is needed")
        out += [p for n, t in enumerate(self.templates, 1) if (p := slot_problem(t, f"templates: template {n}"))]
        out += [p for n, c in enumerate(self.captions, 1) if (p := slot_problem(c, f"captions: caption {n}"))]
        return out

    def _window_problems(self) -> list[str]:
        if not (0.0 <= self.start_percent < self.end_percent <= 1.0):
            return [f"start_percent must be below end_percent, both in [0, 1], got {self.start_percent!r} "
                    f"and {self.end_percent!r}"]
        try:
            window_timesteps(self.start_percent, self.end_percent, NUM_TRAIN_TIMESTEPS)
        except ValueError as err:
            return [f"start_percent/end_percent: {err}"]
        if self.windowed and self.timestep_sets != 1:
            # S2's sets split the whole timeline; a window would leave some of them untrained.
            return [f"a training window (start_percent {self.start_percent}, end_percent {self.end_percent}) "
                    f"needs timestep_sets 1, got {self.timestep_sets}: S1 and S2 are alternatives"]
        return []

    @property
    def windowed(self) -> bool:
        """S1: training (and the saved concept) covers only part of the timeline."""
        return (self.start_percent, self.end_percent) != (0.0, 1.0)

    def prompts(self) -> tuple[str, ...]:
        """The prompts the concept is trained in: the per-image captions, else the templates."""
        return self.captions or self.templates

    def resume_key(self) -> dict:
        """Fields a resumed run must share with the run that wrote the checkpoint (all but ``steps``)."""
        key = dataclasses.asdict(self)
        key.pop("steps")
        key["templates"] = list(self.templates)
        # Absent when unused, so runs checkpointed before per-image captions existed still resume.
        if self.captions:
            key["captions"] = list(self.captions)
        else:
            key.pop("captions")
        if not self.windowed:  # likewise for runs checkpointed before training windows existed
            key.pop("start_percent")
            key.pop("end_percent")
        return key


# ----------------------------------------------------------------------------- per-step randomness

@dataclass(frozen=True)
class MicroBatch:
    """What one micro-batch draws: image indices (B,), flips (B,), one template, timesteps (B,), noise seed."""

    images: torch.Tensor
    flips: torch.Tensor
    template: int
    timesteps: torch.Tensor
    noise_seed: int


def _generator(seed: int, *path: int) -> torch.Generator:
    digest = hashlib.sha256(repr((seed, *path)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def micro_batch(settings: TrainingSettings, step: int, micro: int, num_images: int) -> MicroBatch:
    """The draws of micro-batch ``micro`` of optimizer step ``step`` (independent of what ran before)."""
    g = _generator(settings.seed, step, micro)
    b = settings.batch_size
    images = torch.randperm(num_images, generator=g)[:b] if b <= num_images else torch.randint(num_images, (b,), generator=g)
    flips = torch.rand(b, generator=g) < settings.flip_probability
    template = int(torch.randint(len(settings.templates), (1,), generator=g))
    timesteps = torch.randint(*window_timesteps(settings.start_percent, settings.end_percent, NUM_TRAIN_TIMESTEPS),
                              (b,), generator=g)
    noise_seed = int(torch.randint(2**62, (1,), generator=g))
    return MicroBatch(images=images, flips=flips, template=template, timesteps=timesteps, noise_seed=noise_seed)


def gaussian_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal noise (docs/method.md §9: Gaussian, never uniform), on CPU for reproducibility."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- objective

def noise_prediction(x_t: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The model's noise estimate from its x0 estimate: (x_t - x0_hat) / sigma.

    Holds for epsilon and v prediction alike, because ComfyUI noises both as
    x_t = x0 + sigma * noise and returns the x0 estimate from apply_model.
    """
    return (x_t - denoised) / rearrange(sigma, "b -> b 1 1 1")


def masked_diffusion_loss(pred_noise: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """mean(weight * (pred - noise)^2); weight (B, 1, h, w) in [0, 1] or None (uniform)."""
    err = (pred_noise.float() - noise.float()) ** 2
    return err.mean() if weight is None else (err * weight.float()).mean()


def latent_weights(masks: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Masks (N, H, W) in [0, 1] -> loss weights (N, 1, h, w): area-resized, each divided by its max."""
    weights = F.interpolate(rearrange(masks.float(), "n h w -> n 1 h w"), size=latent_hw, mode="area")
    peak = reduce(weights, "n 1 h w -> n", "max")
    empty = (peak <= 0).nonzero().flatten().tolist()
    if empty:
        raise TrainingError(f"mask: the mask of image(s) {empty} is empty at the latent resolution {latent_hw}")
    return weights / rearrange(peak, "n -> n 1 1 1")


def square_crop(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, resolution, resolution, C): shorter side resized to ``resolution``, centre crop."""
    n, h, w, c = images.shape
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    x = rearrange(images.float(), "n h w c -> n c h w")
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, :, top:top + resolution, left:left + resolution]
    return rearrange(x, "n c h w -> n h w c").clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- what is trained

@dataclass(frozen=True)
class ConceptHeader:
    """The non-tensor identity of a concept in training."""

    trigger: str
    superclass: str
    family: str
    text_encoder: TextEncoderId
    statistics: str


class ConceptTrainables(torch.nn.Module):
    """Trainable embeddings and value targets, plus the i*/i_super buffers.

    layers    names of the cross-attention layers, in a fixed order
    values    ParameterList, values[k] (S, d_out) = o*_V of layers[k] per interval set
    embedding ParameterDict, tokenizer key -> (dim,) trigger word embedding
    i_star    (D,) buffer
    i_super   (D,) buffer (key-locked), or a Parameter when ``train_keys`` (the no-lock ablation)
    """

    def __init__(self, embeddings: dict[str, torch.Tensor], value_init: dict[str, torch.Tensor],
                 i_super: torch.Tensor, timestep_sets: int, train_keys: bool = False) -> None:
        super().__init__()
        self.layers = list(value_init)
        self.values = torch.nn.ParameterList(
            [torch.nn.Parameter(value_init[k].detach().float().reshape(1, -1).repeat(timestep_sets, 1))
             for k in self.layers])
        self.embedding = torch.nn.ParameterDict(
            {key: torch.nn.Parameter(t.detach().float().clone()) for key, t in sorted(embeddings.items())})
        if train_keys:
            self.i_super = torch.nn.Parameter(i_super.detach().float().clone())
        else:
            self.register_buffer("i_super", i_super.detach().float().clone())
        self.register_buffer("i_star", i_super.detach().float().clone())  # init: i* = superclass encoding

    def optimizer(self, settings: TrainingSettings) -> torch.optim.AdamW:
        # No weight decay: it would pull o*_V towards zero, i.e. towards "no value at all",
        # rather than towards the superclass value the targets start from.
        groups = [{"params": list(self.embedding.values()), "lr": settings.lr_embedding}]
        if settings.train_keys:
            if not isinstance(self.i_super, torch.nn.Parameter):
                raise ValueError("train_keys: build ConceptTrainables with train_keys=True")
            groups.insert(0, {"params": [self.i_super], "lr": settings.lr_values})
        if settings.train_values:
            groups.insert(0, {"params": list(self.values), "lr": settings.lr_values})
        return torch.optim.AdamW(groups, weight_decay=0.0)

    @torch.no_grad()
    def update_i_star(self, trigger_encodings: torch.Tensor, decay: float) -> None:
        """i* <- decay i* + (1 - decay) mean(encodings at the trigger position); (M, D) -> ()."""
        mean = reduce(trigger_encodings.detach().float().to(self.i_star.device), "m d -> d", "mean")
        self.i_star.mul_(decay).add_(mean, alpha=1.0 - decay)

    def concept(self, header: ConceptHeader, u: torch.Tensor, gate: Gate, training: dict | None = None,
                live: bool = True) -> Concept:
        """The concept as the runtime sees it. ``live``: tensors are the parameters themselves
        (gradients flow into them); otherwise detached float32 copies."""
        grab = (lambda t: t) if live else (lambda t: t.detach().float().cpu().clone())
        return Concept(
            trigger=header.trigger, superclass=header.superclass, family=header.family,
            text_encoder=header.text_encoder, i_star=grab(self.i_star), u=grab(u), i_super=grab(self.i_super),
            v_targets={k: grab(v) for k, v in zip(self.layers, self.values)},
            embeddings={k: grab(v) for k, v in self.embedding.items()},
            gate=gate, statistics=header.statistics, training=dict(training or {}))

    def check_finite(self) -> None:
        for name, t in self.state_dict().items():
            if not bool(torch.isfinite(t).all()):
                raise ConceptError(f"training diverged: {name} is no longer finite (lower the learning rates)")
