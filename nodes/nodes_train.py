"""TrainPerfusion: learn a concept from a few images inside ComfyUI."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw, ImageFont

from ..perfusion_core.concept import ConceptError
from ..perfusion_core.trigger_words import trigger_problem, word_problem, words_match
from ..perfusion_core.prompt_text import slot_problem
from ..perfusion_core.training import TrainingError, TrainingSettings, parse_captions
from ..perfusion_core.training_state import TrainingStateError, read_training_state

from . import folders
from .choices import validate_choices
from .attention_masks import superclass_masks
from .nodes_concept import CATEGORY, ConceptSocket
from .training import PerfusionTrainer, Previews, run_files
from .training_data import prepare_data

NODE = "TrainPerfusion"
NO_RESUME = "none"
DEFAULT_PREVIEW_PROMPT = "a photo of a {} on the beach"
# Combo values are stored in saved workflows: matched by value, never renamed.
MASK_FROM_INPUT, MASK_NONE, MASK_ATTENTION = "mask input if connected", "none", "superclass attention"
MASK_SOURCES = (MASK_FROM_INPUT, MASK_NONE, MASK_ATTENTION)
TRAIN_PERFUSION = "embedding and value targets (Perfusion)"
TRAIN_EMBEDDING_ONLY = "embedding only (textual inversion)"
TRAIN_NO_KEY_LOCK = "embedding, values and keys (no key-lock)"
WHAT_TO_TRAIN = (TRAIN_PERFUSION, TRAIN_EMBEDDING_ONLY, TRAIN_NO_KEY_LOCK)
log = logging.getLogger(__name__)


def loss_graph(losses: list[float], width: int = 512, height: int = 256) -> torch.Tensor:
    """(1, H, W, 3) image: per-step loss (grey) and its running mean (blue), with min/max labels."""
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    left, top, right, bottom = 8, 18, width - 8, height - 18
    draw.rectangle((left, top, right, bottom), outline=(200, 200, 200))
    if losses:
        values = np.asarray(losses, dtype=np.float64)
        window = max(1, len(values) // 20)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        lo, hi = float(values.min()), float(values.max())
        span = hi - lo if hi > lo else 1.0

        def points(series: np.ndarray, offset: int) -> list[tuple[float, float]]:
            n = max(len(values) - 1, 1)
            return [(left + (i + offset) / n * (right - left), bottom - (v - lo) / span * (bottom - top))
                    for i, v in enumerate(series)]

        if len(values) > 1:
            draw.line(points(values, 0), fill=(170, 170, 170), width=1)
            draw.line(points(smooth, window - 1), fill=(30, 90, 200), width=2)
        draw.text((left, 2), f"loss: {len(values)} steps, max {hi:.4f}", fill="black", font=font)
        draw.text((left, bottom + 3), f"min {lo:.4f}, last {smooth[-1]:.4f} (mean of {window})", fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)[None]


class TrainPerfusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE, display_name="Train Perfusion Concept", category=CATEGORY, is_output_node=True,
            description=("Train a Perfusion concept from 1-10 images: the trigger word's embedding and one value "
                         "target per cross-attention layer are learned, keys stay locked to the superclass. Saves "
                         "the concept to models/perfusion (never overwriting) and a resumable checkpoint; the UI's "
                         "cancel stops within one step and keeps both."),
            inputs=[
                io.Model.Input("model", tooltip="The checkpoint's model (SD1.x, SD2.x or SDXL; fp8-loaded works). "
                                                "It is not changed: only the concept's parameters are trained."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint, after any CLIPSetLastLayer."),
                io.Vae.Input("vae", tooltip="Encodes the training images into latents."),
                io.Image.Input("images", tooltip="1-10 photos of the concept; resized (shorter side) and centre-"
                                                 "cropped to the resolution, flipped at random."),
                io.String.Input("trigger_word", default="mytoy", tooltip=(
                    "The new word for the concept, used in prompts (one word, not the superclass).")),
                io.String.Input("superclass", default="teddy", tooltip=(
                    "What the concept is ('teddy', 'cat', 'chair'): keys lock to it and training starts from it.")),
                io.Int.Input("steps", default=400, min=1, max=100000,
                             tooltip="Optimizer steps (1-100000, default 400, the paper's)."),
                io.Int.Input("batch_size", default=4, min=1, max=64, tooltip="Images per micro-batch (1-64, default 4)."),
                io.Int.Input("grad_accumulation", default=4, min=1, max=64, tooltip=(
                    "Micro-batches per optimizer step (1-64, default 4; 4 x 4 = the paper's 16).")),
                io.Float.Input("lr_values", default=0.03, min=1e-6, max=1.0, step=0.001, tooltip=(
                    "AdamW learning rate of the value targets (1e-6 to 1, default 0.03).")),
                io.Float.Input("lr_embedding", default=0.006, min=1e-6, max=1.0, step=0.001, tooltip=(
                    "AdamW learning rate of the trigger embedding (1e-6 to 1, default 0.006).")),
                io.Float.Input("train_beta", default=0.75, min=-1.0, max=2.0, step=0.01, tooltip=(
                    "Gate bias while training (-1 to 2, default 0.75; higher gives a better trade-off later).")),
                io.Float.Input("train_tau", default=0.1, min=0.001, max=1.0, step=0.01,
                               tooltip="Gate temperature while training (0.001-1, default 0.1)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip=(
                    "Seed of every random draw (noise, timesteps, images, flips, prompts; 0 to 2^64-1, default 0); "
                    "same seed, same concept.")),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64, tooltip=(
                    "Training resolution in pixels (multiple of 64, 64 to 2048, default 512; 512 for SD1.5, "
                    "1024 for SDXL).")),
                io.Int.Input("timestep_sets", default=1, min=1, max=16, tooltip=(
                    "Value-target copies, each owning an equal interval of timesteps (1-16, default "
                    "1; 2 often balances identity and prompt fidelity).")),
                io.Boolean.Input("gradient_checkpointing", default=True, tooltip=(
                    "Recompute UNet activations in backward: less memory, ~30% slower (default on).")),
                io.Combo.Input("mask_source", options=list(MASK_SOURCES), default=MASK_FROM_INPUT, tooltip=(
                    "Where the loss looks. 'mask input if connected' (the default): the mask input, "
                    "else whole images. 'none': whole images. 'superclass attention': a mask made "
                    "from the model's own cross-attention to the superclass word in 'a photo of a "
                    "<superclass>' (no extra model; see the loss_masks output).")),
                io.Int.Input("checkpoint_every", default=50, min=0, max=100000, tooltip=(
                    "Write the resumable checkpoint every N steps (0 to 100000, default 50; 0 = only at the "
                    "end or on cancel).")),
                io.String.Input("output_name", default="perfusion_concept", tooltip=(
                    "File name (no extension) in models/perfusion; an existing file gets a _00001 suffix.")),
                io.Int.Input("statistics_captions", default=20000, min=100, max=200000, step=100, tooltip=(
                    "Built-in captions for the text-encoder statistics C (100 to 200000, default "
                    "20000; computed once per CLIP, cached in models/perfusion/statistics).")),
                io.Combo.Input("resume_from", options=resume_choices(),
                               default=NO_RESUME, tooltip=(
                    "Continue a cancelled or finished run from its checkpoint in "
                    "models/perfusion/training (same inputs; steps may grow). Default 'none': a new run.")),
                io.Int.Input("preview_every", default=100, min=0, max=100000, tooltip=(
                    "Sample preview_prompt every N steps and after the last step (0-100000, default "
                    "100; 0 = no previews). Shown on the node while training and in the previews "
                    "output. Each costs 20 sampling steps.")),
                io.String.Input("preview_prompt", default=DEFAULT_PREVIEW_PROMPT, tooltip=(
                    "Prompt of the preview samples; {} becomes the trigger word. "
                    "Default 'a photo of a {} on the beach'.")),
                io.Mask.Input("mask", optional=True, tooltip=(
                    "Optional: where the concept is in each image (one mask, or one per image).")),
                io.Combo.Input("what_to_train", options=list(WHAT_TO_TRAIN), default=TRAIN_PERFUSION,
                               optional=True, tooltip=(
                    "Perfusion: the trigger embedding and the value targets. 'embedding "
                    "only': textual inversion, the baseline to compare with; its concept changes "
                    "only the trigger's embedding (saved with gate strength 0, lr_values unused). "
                    "'no key-lock': the ablation that also trains the keys' input (lr_values) "
                    f"instead of locking it to the superclass. Default: '{TRAIN_PERFUSION}'.")),
                io.String.Input("captions", default="", multiline=True, optional=True, tooltip=(
                    "Optional: one caption per image, in the images' order, with {} (or the trigger "
                    "word) where the concept is named, e.g. 'a photo of a {} and a red chair on the "
                    "grass'. Each image is then trained in its own caption instead of the built-in "
                    "templates, and images are not flipped (a caption may say left or right). Use it "
                    "for photos that show the concept with other things. Empty (default): templates.")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True, tooltip=(
                    "S1: train only where denoising progress is at least this (0-1: 0 = the first step, 1 = "
                    "the last; default 0). The saved concept acts on the same window (ConceptGate can change it). "
                    "Needs timestep_sets 1.")),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True, tooltip=(
                    "S1: train only where denoising progress is at most this (0-1, default 1: to the last "
                    "step). "
                    "E.g. start 0.4, end 1: the concept is trained and applied on the last 60% of the steps, "
                    "where details are drawn; the first ones, where layout forms, stay the base model's.")),
            ],
            outputs=[
                ConceptSocket.Output("concept", display_name="concept", tooltip=(
                    "The trained concept (gate defaults 0.7/0.15 local); apply it with ApplyKeyLockedEdit.")),
                io.Image.Output("loss_graph", display_name="loss_graph",
                                tooltip="Loss per optimizer step and its running mean."),
                io.String.Output("concept_file", display_name="concept_file",
                                 tooltip="Name of the saved concept file in models/perfusion."),
                io.Image.Output("previews", display_name="previews", tooltip=(
                    "Samples of preview_prompt taken while training (every preview_every steps) and "
                    "after the last step, in step order; one black image when previews are off.")),
                io.Mask.Output("loss_masks", display_name="loss_masks", tooltip=(
                    "The loss weight of each training image at the training resolution (white = full "
                    "weight; all white without a mask).")),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, mask_source: str | None = None, what_to_train: str | None = None,
                        resume_from: str | None = None) -> bool | str:
        return validate_choices(mask_source=(mask_source, MASK_SOURCES), what_to_train=(what_to_train, WHAT_TO_TRAIN),
                                resume_from=(resume_from, resume_choices()))

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        trained = train_perfusion(**inputs, unique_id=cls.hidden.unique_id if cls.hidden is not None else None)
        return io.NodeOutput(*trained["result"], ui=trained["ui"])


def resume_choices() -> list[str]:
    """What resume_from offers: a new run, or a checkpoint in models/perfusion/training."""
    return [NO_RESUME] + folders.training_checkpoints()


def train_perfusion(model: Any, clip: Any, vae: Any, images: torch.Tensor, trigger_word: str, superclass: str,
                    steps: int, batch_size: int, grad_accumulation: int, lr_values: float, lr_embedding: float,
                    train_beta: float, train_tau: float, seed: int, resolution: int, timestep_sets: int,
                    gradient_checkpointing: bool, mask_source: str, checkpoint_every: int, output_name: str,
                    statistics_captions: int, resume_from: str = NO_RESUME, preview_every: int = 100,
                    preview_prompt: str = DEFAULT_PREVIEW_PROMPT, mask: torch.Tensor | None = None,
                    what_to_train: str = TRAIN_PERFUSION, captions: str = "", start_percent: float = 0.0,
                    end_percent: float = 1.0, unique_id: str | None = None) -> dict[str, Any]:
    """The node's work: {"ui": status text, "result": the five outputs}."""
    trigger, superclass = trigger_word.strip(), " ".join(superclass.split())
    problems = []
    try:
        per_image = parse_captions(captions, trigger) if trigger else ()
    except TrainingError as err:
        per_image, problems = (), [str(err)]
    settings = TrainingSettings(steps=steps, batch_size=batch_size, grad_accumulation=grad_accumulation,
                                lr_values=lr_values, lr_embedding=lr_embedding, beta=train_beta, tau=train_tau,
                                seed=seed, resolution=resolution, timestep_sets=timestep_sets,
                                start_percent=start_percent, end_percent=end_percent,
                                train_values=what_to_train != TRAIN_EMBEDDING_ONLY,
                                train_keys=what_to_train == TRAIN_NO_KEY_LOCK,
                                captions=per_image,
                                flip_probability=0.0 if per_image else TrainingSettings.flip_probability)
    # The settings call them beta/tau; this node's inputs are train_beta/train_tau.
    problems += [re.sub(r"^(beta|tau) ", r"train_\1 ", p) for p in settings.problems()]
    problems += [p for p in (trigger_problem(trigger, "trigger_word"),
                             word_problem(superclass, "superclass", allow_spaces=True)) if p]
    if not problems and words_match(trigger, superclass):
        problems.append(f"trigger_word equals the superclass ({trigger!r}); pick a new word for the concept")
    if mask_source not in MASK_SOURCES:
        problems.append(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
    if what_to_train not in WHAT_TO_TRAIN:
        problems.append(f"what_to_train must be one of {WHAT_TO_TRAIN}, got {what_to_train!r}")
    preview_problem = slot_problem(preview_prompt, "preview_prompt")
    if preview_problem:
        problems.append(preview_problem)
    if preview_every < 0:
        problems.append(f"preview_every must be >= 0, got {preview_every}")
    name = output_name.strip()
    name_problem = folders.name_problem(name, "output_name")
    if name_problem:  # refused now: the final save must not fail after the whole run (NUL, newline)
        problems.append(name_problem)
    if problems:
        raise TrainingError(f"{NODE}: " + "; ".join(problems))
    resume_path = None
    if resume_from != NO_RESUME:
        resume_path = folder_paths.get_full_path(folders.FOLDER, resume_from)
        if resume_path is None:
            raise TrainingError(f"{NODE}: resume_from {resume_from!r} not found in models/perfusion")
        try:  # before any work (statistics are cached to disk): a bad checkpoint must cost nothing
            read_training_state(resume_path)
        except TrainingStateError as err:
            raise TrainingError(f"{NODE}: resume_from {resume_from!r}: {err}") from None
    name = name[:-len(".safetensors")] if name.endswith(".safetensors") else name
    try:
        data = prepare_data(model, vae, images, mask if mask_source == MASK_FROM_INPUT else None, resolution)
        if mask_source == MASK_ATTENTION:
            data = data.with_masks(superclass_masks(model, clip, data.latents, superclass, seed))
    except (TrainingError, ConceptError) as err:
        raise TrainingError(f"{NODE}: {err}") from None
    progress = _Progress(steps, unique_id, model)
    try:
        with torch.inference_mode(False), torch.enable_grad():  # see PerfusionTrainer
            trainer = PerfusionTrainer(model, clip, data, trigger, superclass, settings, statistics_captions,
                                       gradient_checkpointing, run_files(name, checkpoint_every), resume_path,
                                       progress=progress, previews=Previews(preview_prompt, preview_every))
            result = trainer.run()
    except (TrainingError, ConceptError, TrainingStateError) as err:
        msg = str(err)
        raise TrainingError(msg if msg.startswith(NODE) else f"{NODE}: {msg}") from None
    rel = os.path.relpath(result.concept_path, folders.output_dir())
    log.info("Perfusion: trained '%s' (%s) in %.0f s, %d steps, saved %s", trigger, superclass,
             result.seconds, len(result.losses), rel)
    graph = loss_graph(result.losses)
    previews = decode_previews(model, vae, [latent for _, latent in result.previews], resolution)
    return {"ui": {"text": [f"saved {rel}; final loss {sum(result.losses[-20:]) / max(1, len(result.losses[-20:])):.4f}"]},
            "result": (result.concept, graph, rel, previews, data.loss_masks(resolution))}


def decode_previews(model: Any, vae: Any, latents: list[torch.Tensor], resolution: int) -> torch.Tensor:
    """VAE-decoded preview samples (N, H, W, 3); one black image when there are none, so that
    a connected SaveImage/PreviewImage still runs."""
    if not latents:
        return torch.zeros(1, resolution, resolution, 3)
    with torch.no_grad():
        return vae.decode(model.model.process_latent_out(torch.cat(latents)))[..., :3].float().cpu()


class _Progress:
    """The node's progress bar (cancel takes effect there too) with the latest preview, a status
    line on the node (step, loss, speed, ETA) and the same line in the log every 10 steps."""

    def __init__(self, total: int, node_id: str | None, model: Any) -> None:
        import comfy.utils
        import latent_preview

        self.bar, self.node_id = comfy.utils.ProgressBar(total, node_id=node_id), node_id
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def __call__(self, step: int, total: int, seconds_per_step: float, loss: float,
                 sample: torch.Tensor | None = None) -> None:
        preview = None
        if sample is not None and self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", sample)
        self.bar.update_absolute(step, total, preview)
        eta = seconds_per_step * (total - step)
        line = f"step {step}/{total}, loss {loss:.4f}, {seconds_per_step:.2f} s/step, ETA {_duration(eta)}"
        _show_text(line, self.node_id)
        if step == total or step % 10 == 0:
            log.info("Perfusion training: %s", line)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _show_text(text: str, node_id: str | None) -> None:
    """A status line under the node in the UI; nothing when no server runs (in-process use)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None and node_id is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(text, node_id)
