"""The training loop of TrainPerfusion, run on ComfyUI's own machinery.

Why it is built this way:
- The concept is installed with the same hooks as at inference
  (``model_patch.install``); each step the runtime is reloaded with a concept
  whose value targets ARE the trainable parameters, so gradients reach o*_V
  through the real projection hooks, and the CLIP clone carries the trainable
  embedding(s) through the same wrapper tokenizer as at inference.
- The loop runs as a ``comfy.samplers.Sampler`` inside a stock guider, like
  core's TrainLoraNode (``host_sampling``): model loading, object patches,
  wrappers and cleanup are ComfyUI's. Each micro-batch goes through
  ``calc_cond_batch``, the function every sampler step uses; so do the
  preview samples, with the concept at its inference gate.
- ComfyUI runs nodes under ``torch.inference_mode()``, so weights loaded by a
  node are inference tensors, which autograd refuses to save for backward.
  They are replaced by ordinary tensors on the same storage (``thaw`` in
  ``trainable_host``: no copy); the base model's values are unchanged and never receive gradients.
  On a GPU the weights were moved by ``param.data = copy``: the parameter then
  reports ``is_inference() == False`` yet still has no version counter, and
  even ``weight.t()`` inside ``F.linear`` fails, so ``thaw`` tests for that.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..perfusion_core.caption_grammar import generate_captions
from ..perfusion_core.concept import Concept, Gate
from ..perfusion_core.atomic_write import unique_path
from ..perfusion_core.concept_file import save_concept
from ..perfusion_core.covariance import Whitener
from ..perfusion_core.training import (ConceptHeader, ConceptTrainables, TrainingError, TrainingSettings,
                                     MicroBatch, gaussian_noise, masked_diffusion_loss, micro_batch,
                                     noise_prediction)
from ..perfusion_core.training_state import read_training_state, restore, save_training_state

from . import folders, host_compat, host_model, model_patch, statistics
from .clip_patch import install as install_clip
from .encoding import encode_word, word_tokens
from .host_sampling import denoise, encode, encode_batch, run_in_guider
from .trainable_host import add_gradient_checkpointing, differentiable_text_encoder, thaw
from .training_data import TrainingData

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- trigger tokens

def word_embeddings(clip: Any, word: str) -> dict[str, torch.Tensor]:
    """The input word embedding of ``word`` per tokenizer key (mean over its tokens if several)."""
    out = {}
    for key, (_, ids) in word_tokens(clip.tokenizer, "", word).items():
        encoder = getattr(clip.cond_stage_model, f"clip_{key}")
        table = encoder.transformer.get_input_embeddings().weight
        out[key] = table[ids].detach().float().mean(0).cpu()
    return out


def trigger_position(tokens: dict) -> int:
    """Index (BOS counted) where the wrapper tokenizer put the trigger's embedding."""
    for batches in tokens.values():
        if isinstance(batches, list):
            for i, tok in enumerate(batches[0]):
                if torch.is_tensor(tok[0]):
                    return i
    raise TrainingError("trigger_word: the trigger did not reach the tokenizer (prompt too long?)")


# ----------------------------------------------------------------------------- the run

@dataclass
class Previews:
    """Sample images while training: every ``every`` steps and after the last one (0 = none)."""

    prompt: str = "a photo of a {}"   # '{}' becomes the trigger word
    every: int = 0
    steps: int = 20
    cfg: float = 5.0


@dataclass
class RunFiles:
    concept: str          # final concept file (chosen at the start, never overwrites)
    state: str            # this run's resumable checkpoint
    checkpoint_every: int


@dataclass
class RunResult:
    concept: Concept
    losses: list[float]
    concept_path: str
    state_path: str
    seconds: float
    resumed_from: int = 0
    previews: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, latent for the VAE)


class PerfusionTrainer:
    """One training run; ``run`` does the loop (inside a stock guider) and saving.

    Build and run it under ``torch.inference_mode(False)``: parameters created in
    inference mode (ComfyUI's default for node code) can never receive gradients.
    """

    def __init__(self, model: Any, clip: Any, data: TrainingData, trigger: str, superclass: str,
                 settings: TrainingSettings, statistics_captions: int, gradient_checkpointing: bool,
                 files: RunFiles, resume_path: str | None = None,
                 progress: Callable[..., None] | None = None, previews: Previews | None = None) -> None:
        # The trained model is a clone of its own (an ordinary one where the host loads dynamically).
        model = host_compat.clone_for_training(model)
        self.model, self.data, self.settings, self.files = model, data, settings, files
        self.trigger, self.superclass = trigger, superclass
        self.progress = progress
        self.previews, self.preview_latents = previews or Previews(), []
        n = int(data.latents.shape[0])
        if settings.captions and len(settings.captions) != n:
            raise TrainingError(f"captions: {len(settings.captions)} caption(s) for {n} image(s); "
                                "give one line per image, in the images' order")
        self.layers = list(host_model.cross_attention_layers(model))
        C, stats_id = statistics.clip_statistics(clip, generate_captions(statistics_captions))
        self.whitener = Whitener(C)
        self.header = ConceptHeader(trigger=trigger, superclass=superclass, family=host_model.model_family(model),
                                    text_encoder=host_model.text_encoder_id(clip), statistics=stats_id)
        # Textual inversion trains and ships the embedding alone: the edit stays off (strength 0).
        self.strength = 1.0 if settings.train_values else 0.0
        # S1: the concept acts on the window it is trained on, in training, previews and the saved gate.
        self.window = {"start_percent": settings.start_percent, "end_percent": settings.end_percent}
        self.train_gate = Gate(beta=settings.beta, tau=settings.tau, strength=self.strength, **self.window)
        i_super = self._superclass_encoding(clip)
        self.trainables = ConceptTrainables(
            embeddings=word_embeddings(clip, superclass),
            value_init={layer: host_model.value_weight(model, layer) @ i_super for layer in self.layers},
            i_super=i_super, timestep_sets=settings.timestep_sets, train_keys=settings.train_keys)
        self.optimizer = self.trainables.optimizer(settings)
        self.start_step, self.losses = 0, []
        if resume_path:
            self._resume(resume_path)
        self.u = self._u()  # C^-1 i*; changes only when i* does (once per optimizer step)
        # The CLIP clone knows the trigger, with the trainable tensors as its embedding(s).
        self.clip = install_clip(clip, [self._concept(live=True)], "TrainPerfusion")
        differentiable_text_encoder(self.clip)
        self.patched = model_patch.install(model, self.layers, [self._concept(live=True)])
        if gradient_checkpointing:
            add_gradient_checkpointing(self.patched)
        self.runtime, _ = model_patch.find_runtime(self.patched, self.layers)
        # Where the trigger sits in each training prompt (templates, or the per-image captions).
        self.positions = [trigger_position(self.clip.tokenize(p.replace("{}", trigger))) for p in settings.prompts()]

    # -- setup -----------------------------------------------------------------
    def _superclass_encoding(self, clip: Any) -> torch.Tensor:
        """i_super: mean over the training prompts of the superclass word's encoding (last token)."""
        return torch.stack([encode_word(clip, p, self.superclass) for p in self.settings.prompts()]).mean(0)

    def _u(self) -> torch.Tensor:
        return self.whitener.solve(self.trainables.i_star.detach()).float()

    def _concept(self, live: bool) -> Concept:
        if live:  # what the hooks see while training: the parameters themselves, the training gate
            return self.trainables.concept(self.header, self.u, self.train_gate)
        gate = Gate(strength=self.strength, **self.window)
        return self.trainables.concept(self.header, self.u, gate, self._summary(), live=False)

    def _summary(self) -> dict:
        recent = self.losses[-20:]
        kind = ("textual inversion" if not self.settings.train_values
                else "perfusion without key-lock" if self.settings.train_keys else "perfusion")
        return {"kind": kind, "steps": len(self.losses), "images": int(self.data.latents.shape[0]),
                "masked": self.data.weights is not None, "final_loss": sum(recent) / len(recent) if recent else None,
                "settings": self.settings.resume_key() | {"steps": self.settings.steps}}

    def _state_meta(self) -> dict:
        return {"settings": self.settings.resume_key(), "data": self.data.digest, "layers": self.layers,
                "trigger": self.trigger, "superclass": self.superclass, "statistics": self.header.statistics}

    def _resume(self, path: str) -> None:
        name = os.path.basename(path)
        tensors, meta = read_training_state(path)
        mine = self._state_meta()
        for key, what in (("trigger", "trigger word"), ("superclass", "superclass word"), ("layers", "model layout"),
                          ("statistics", "text encoder / statistics"), ("data", "training images or masks"),
                          ("settings", "training settings")):
            if meta.get(key) != mine[key]:
                raise TrainingError(f"resume_from: {name} was written for a different {what}; "
                                    "resume needs the same inputs (only steps may grow)")
        if int(meta["step"]) > self.settings.steps:
            raise TrainingError(f"resume_from: {name} is at step {meta['step']}, beyond steps={self.settings.steps}")
        restore(name, tensors, self.trainables, self.optimizer)
        self.start_step, self.losses = int(meta["step"]), list(meta.get("losses", []))

    # -- the loop (called by the sampler inside ComfyUI's guider) ---------------
    def loop(self, base_model: Any, model_options: dict) -> None:
        import comfy.model_management as mm

        s = self.settings
        self.clip.load_model()
        thawed = thaw(base_model) + thaw(self.clip.cond_stage_model)
        if thawed:
            log.info("Perfusion training: %d inference-mode tensors made visible to autograd (no copy)", thawed)
        data = self.data_on(self.patched.load_device)
        started = time.monotonic()
        for step in range(self.start_step, s.steps):
            encodings, step_loss = [], 0.0
            for micro in range(s.grad_accumulation):
                mm.throw_exception_if_processing_interrupted()
                try:
                    loss, encoded = self.micro_batch_loss(base_model, model_options, data, step, micro)
                    (loss / s.grad_accumulation).backward()
                finally:
                    self.runtime.held_step = None
                encodings.append(encoded)
                step_loss += float(loss.detach()) / s.grad_accumulation
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.trainables.update_i_star(torch.cat(encodings), s.i_star_decay)
            self.u = self._u()
            self.trainables.check_finite()
            self.losses.append(step_loss)
            done = step + 1
            if self.files.checkpoint_every and done % self.files.checkpoint_every == 0 and done < s.steps:
                self.save_state()
            sample = None
            if self.previews.every and (done % self.previews.every == 0 or done == s.steps):
                sample = self._preview(base_model, model_options)
                self.preview_latents.append((done, sample.cpu()))
            if self.progress is not None:
                self.progress(done, s.steps, (time.monotonic() - started) / (done - self.start_step), step_loss, sample)

    def data_on(self, device: torch.device) -> TrainingData:
        """The training data on ``device``; copies made here are ordinary tensors even if the
        inputs came from inference mode."""
        d = self.data
        return TrainingData(d.latents.to(device).clone(), d.flipped.to(device).clone(),
                            None if d.weights is None else d.weights.to(device).clone(), d.digest)

    def micro_batch_loss(self, base_model: Any, model_options: dict, data: TrainingData, step: int,
                         micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoising loss of micro-batch ``micro`` of optimizer step ``step`` (images, flips,
        timesteps and noise are fixed by the seed) with the trainables as they are, and the
        trigger's encodings in its prompts. Leaves the step state held for the backward pass
        (gradient checkpointing recomputes the forward then); the caller clears ``held_step``."""
        s, device, sampling = self.settings, self.patched.load_device, base_model.model_sampling
        draw = micro_batch(s, step, micro, int(data.latents.shape[0]))
        self.runtime.load([self._concept(live=True)])
        conditioning, encoded = self._conditioning(draw)
        x0, weight = data.batch(draw.images.to(device), draw.flips.to(device))
        noise = gaussian_noise(tuple(x0.shape), draw.noise_seed).to(device)
        sigma = sampling.sigma(draw.timesteps.float()).to(device)
        x_t = sampling.noise_scaling(sigma, noise.clone(), x0)
        # No step state when no concept is active (textual inversion).
        self.runtime.held_step = self.runtime.step_state(sigma, sampling, device) if self.runtime.n else None
        denoised = denoise(base_model, model_options, [conditioning], x_t, sigma, x0, draw.noise_seed)[0]
        loss = masked_diffusion_loss(noise_prediction(x_t, denoised, sigma), noise, weight)
        return loss, encoded

    def _conditioning(self, draw: MicroBatch) -> tuple[list, torch.Tensor]:
        """The micro-batch's conditioning and the trigger's encodings in it (M, D): one template
        for the whole batch, or each image's own caption."""
        s = self.settings
        if not s.captions:
            conditioning = encode(self.clip, s.templates[draw.template].replace("{}", self.trigger))
            return conditioning, conditioning[0][0][:, self.positions[draw.template]].detach().float()
        picks = draw.images.tolist()
        conditioning = encode_batch(self.clip, [s.captions[i].replace("{}", self.trigger) for i in picks])
        rows = torch.arange(len(picks))
        return conditioning, conditioning[0][0][rows, [self.positions[i] for i in picks]].detach().float()

    def _preview(self, base_model: Any, model_options: dict) -> torch.Tensor:
        """A sample of the preview prompt with the concept as it is now, at its inference gate.
        Deterministic (Euler, fixed noise) so that previews of one run are comparable; draws
        nothing from the training's random streams."""
        import comfy.samplers

        p, sampling = self.previews, base_model.model_sampling
        device = self.patched.load_device
        with torch.no_grad():
            self.runtime.load([self._concept(live=False)])
            conds = [encode(self.clip, p.prompt.replace("{}", self.trigger)), encode(self.clip, "")]
            sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", p.steps).to(device)
            shape = (1,) + tuple(self.data.latents.shape[1:])
            noise = gaussian_noise(shape, self.settings.seed).to(device)
            x = sampling.noise_scaling(sigmas[:1], noise, torch.zeros_like(noise), max_denoise=True)
            for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
                cond, uncond = denoise(base_model, model_options, conds, x, sigma.expand(1))
                x0 = uncond + p.cfg * (cond - uncond)
                x = x0 + (x - x0) * (sigma_next / sigma)  # an Euler step of the probability-flow ODE
            return sampling.inverse_noise_scaling(sigmas[-1:], x)

    # -- saving ------------------------------------------------------------------
    def save_state(self) -> str:
        return str(save_training_state(self.files.state, self.trainables, self.optimizer, len(self.losses),
                                       self.losses, self._state_meta()))

    def final_concept(self) -> Concept:
        return self._concept(live=False)

    def run(self) -> RunResult:
        import comfy.model_management as mm

        started = time.monotonic()
        frozen = self._freeze_base()
        try:
            with torch.inference_mode(False), torch.enable_grad(), host_compat.training_mode():
                with torch.no_grad():
                    positive = encode(self.clip, self.superclass)
                host_compat.load_for_training(self.patched)
                run_in_guider(self.patched, positive, tuple(self.data.latents.shape[1:]), self.loop, self.settings.seed)
        except mm.InterruptProcessingException:
            self._save_interrupted()
            raise
        finally:
            self._restore_base(frozen)
        concept = self.final_concept()
        state = self.save_state()  # first: a concept file that cannot be written must not lose the run
        try:
            path = str(save_concept(concept, unique_path(self.files.concept)))
        except (OSError, ValueError) as err:  # ConceptError is a ValueError
            raise TrainingError(f"the concept could not be saved ({err}); the run is kept in the checkpoint "
                                f"{os.path.basename(state)} (resume_from)") from None
        return RunResult(concept=concept, losses=list(self.losses), concept_path=path, state_path=state,
                         seconds=time.monotonic() - started, resumed_from=self.start_step,
                         previews=list(self.preview_latents))

    def _save_interrupted(self) -> None:
        """Keep what was learned: a resumable checkpoint and a usable concept file."""
        if not self.losses:
            return
        state = self.save_state()
        stem, ext = os.path.splitext(self.files.concept)
        path = save_concept(self.final_concept(), unique_path(f"{stem}_step{len(self.losses):05d}{ext}"))
        log.warning("Perfusion training interrupted at step %d: checkpoint %s (resume_from), concept %s",
                    len(self.losses), state, path)

    def _freeze_base(self) -> list[tuple[torch.nn.Parameter, bool]]:
        params = list(self.model.model.parameters()) + list(self.clip.cond_stage_model.parameters())
        flags = [(p, p.requires_grad) for p in params]
        for p in params:
            p.requires_grad_(False)
        return flags

    @staticmethod
    def _restore_base(flags: list[tuple[torch.nn.Parameter, bool]]) -> None:
        for p, flag in flags:
            with torch.inference_mode(p.is_inference()):  # inference tensors only take the flag in that mode
                p.requires_grad_(flag)


def run_files(output_name: str, checkpoint_every: int) -> RunFiles:
    """Fresh names in the perfusion folder for this run's concept and checkpoint."""
    concept = unique_path(os.path.join(folders.output_dir(), f"{output_name}.safetensors"))
    state_dir = os.path.join(folders.output_dir(), folders.TRAINING_SUBFOLDER)
    state = unique_path(os.path.join(state_dir, f"{concept.stem}.safetensors"))
    return RunFiles(concept=str(concept), state=str(state), checkpoint_every=checkpoint_every)

