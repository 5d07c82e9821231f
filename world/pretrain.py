"""Pretrain the world UNet: epsilon prediction on SD1's discrete noise schedule.

The objective is the one SD1.5 was trained with, so ComfyUI samples the result
with its stock SD1.5 model sampling: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
with ComfyUI's own ``alphas_cumprod``, t uniform over the 1000 steps, predict
eps. Two additions make a short CPU run go far: min-SNR loss weights (gamma 5),
which stop the nearly-clean timesteps dominating, and an exponential moving
average of the weights, which is what gets saved. One caption in ten is
replaced by the empty caption, so classifier-free guidance works.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from world.autoencoder import SD1_LATENT_SCALE


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 3000
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 100
    ema: float = 0.999
    uncond_share: float = 0.1
    min_snr_gamma: float = 5.0
    seed: int = 0


@torch.no_grad()
def encode_latents(taesd: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """What the UNet sees for ``images`` in [0, 1]: ComfyUI's TAESD encode, times SD1's latent scale."""
    out = []
    for i in range(0, len(images), batch):
        raw = taesd.taesd_encoder(images[i:i + batch])
        out.append((raw / taesd.vae_scale + taesd.vae_shift) * SD1_LATENT_SCALE)
    return torch.cat(out)


def pretrain(
    model: torch.nn.Module,
    latents: torch.Tensor,
    caption_table: torch.Tensor,
    caption_index: torch.Tensor,
    empty_caption: int,
    settings: PretrainSettings = PretrainSettings(),
    log: Callable[[str], None] = print,
    snapshot: Callable[[torch.nn.Module, int], None] | None = None,
    device: str = "cpu",
    progress: Path | None = None,
    until: int | None = None,
) -> torch.nn.Module | None:
    """Train ``model.diffusion_model``; return the EMA copy of it.

    ``latents [N, 4, 8, 8]``; ``caption_index [N, V]`` rows of ``caption_table [U, 77, 768]``,
    V captions per image of which one is drawn per step; ``empty_caption`` the table row of "".
    ``snapshot(ema, step)`` is called every 500 steps (to look at samples while it trains).
    On ``device`` "cuda" the random draws differ from a CPU run with the same seed.

    ``progress``: a file the whole training state is written to every ``PROGRESS_EVERY`` steps
    and resumed from, so a run of many hours on a CPU can be spread over several sittings and
    gives what one uninterrupted run gives. ``until``: stop after this many steps (saving the
    progress) and return None, unless that is the end.
    """
    torch.manual_seed(settings.seed)
    net = model.diffusion_model.to(device)
    net.train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    latents, caption_table, caption_index = latents.to(device), caption_table.to(device), caption_index.to(device)
    alphas = (1.0 / (1.0 + model.model_sampling.sigmas.double() ** 2)).float().to(device)  # ComfyUI's schedule
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=settings.min_snr_gamma) / snr
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=0.01, betas=(0.9, 0.99))
    first = load_progress(progress, net, ema, opt, settings) if progress is not None and progress.is_file() else 0
    if first:
        log(f"unet resumes at step {first}/{settings.steps} from {progress.name}")
    start, n = time.time(), len(latents)
    for step in range(first, settings.steps):
        if until is not None and step >= until:
            return None
        done = step / settings.steps
        lr = settings.lr * min(1.0, (step + 1) / settings.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, n, (settings.batch,), device=device)
        variant = torch.randint(0, caption_index.shape[1], (settings.batch,), device=device)
        rows = caption_index[idx, variant]
        rows = torch.where(torch.rand(settings.batch, device=device) < settings.uncond_share, empty_caption, rows)
        context = caption_table[rows].float()
        x0 = latents[idx]
        t = torch.randint(0, len(alphas), (settings.batch,), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        eps = torch.randn_like(x0)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = net(xt, t.float(), context=context)
        loss = ((pred - eps).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(settings.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)
        if snapshot is not None and (step + 1) % 500 == 0:
            snapshot(ema, step + 1)
        if progress is not None and ((step + 1) % PROGRESS_EVERY == 0 or step + 1 == until):
            save_progress(progress, step + 1, net, ema, opt, settings)
        if step % 25 == 0 or step == settings.steps - 1:
            per = (time.time() - start) / (step + 1 - first)
            log(f"unet step {step}/{settings.steps} loss {loss.item():.4f} lr {lr:.2e} "
                f"({per:.2f} s/step, {per * (settings.steps - step - 1) / 60:.0f} min left)")
    return ema.cpu()


PROGRESS_EVERY = 250


def save_progress(path: Path, step: int, net: torch.nn.Module, ema: torch.nn.Module,
                  opt: torch.optim.Optimizer, settings: PretrainSettings) -> None:
    """Everything a resumed run needs to continue exactly: the weights, their average, the
    optimiser's moments, the random generator's state and the step; written whole, then renamed."""
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()} | {f"ema.{k}": v for k, v in ema.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        tensors |= {f"opt.{i}.{k}": v for k, v in state.items()}
    tensors["rng"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"step": str(step), "settings": repr(settings)})
    tmp.replace(path)


def load_progress(path: Path, net: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
                  settings: PretrainSettings) -> int:
    """Restore what :func:`save_progress` wrote; the step to continue from. A file written with other
    settings is refused (its schedule and draws would not continue this run)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    if meta.get("settings") != repr(settings):
        raise ValueError(f"{path}: progress of a run with other settings than this one's ({settings!r}); "
                         "move the file away to start afresh, or run with its settings to go on")
    tensors = load_file(str(path))
    device = next(net.parameters()).device
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state = opt.state_dict()
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            moments.setdefault(int(i), {})[name] = v if name == "step" else v.to(device)
    state["state"] = moments
    opt.load_state_dict(state)
    torch.set_rng_state(tensors["rng"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"])
