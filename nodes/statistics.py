"""Text-encoder statistics C for a ComfyUI CLIP, computed and cached.

C = mean(e e^T) over the encodings the UNet actually receives (same encoder,
same CLIPSetLastLayer), every position of each 77-token window
(covariance.PADDING_RULE). Captions are packed several per encoder call: each
window is encoded independently, so this is exact.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable

import torch

from ..perfusion_core.caption_grammar import corpus_digest, generate_captions
from ..perfusion_core.covariance import (PADDING_RULE, SecondMoment, StatisticsError, fingerprint, load_statistics,
                                       save_statistics)

from . import folders, host_model

DEFAULT_CAPTIONS = 2000
log = logging.getLogger(__name__)
WINDOWS_PER_CALL = 16


def accumulate(clip: Any, captions: list[str], progress: Callable[[int], None] | None = None) -> SecondMoment:
    """Encode ``captions`` with ``clip`` and return the float64 second-moment accumulator."""
    acc = SecondMoment()
    pending: dict[str, list] = {}

    def flush() -> None:
        # Thousands of captions take minutes on a CPU: honour the UI's cancel between calls.
        _check_interrupt()
        if pending:
            acc.add(clip.encode_from_tokens(pending).float()[0])  # (77 * windows, D)
            pending.clear()

    for n, caption in enumerate(captions):
        for key, batches in clip.tokenize(caption).items():
            pending.setdefault(key, []).extend(batches)
        if len(next(iter(pending.values()))) >= WINDOWS_PER_CALL:
            flush()
        if progress is not None:
            progress(n + 1)
    flush()
    return acc


def clip_statistics(clip: Any, captions: list[str] | None = None,
                    progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, str]:
    """(C float64, fingerprint) for this CLIP, cached under models/perfusion/statistics.

    The cache key covers the encoder identity, the CLIP layer, the corpus and a
    hash of the text encoder's weights, so a different checkpoint never reuses C.
    """
    captions = captions if captions is not None else generate_captions(DEFAULT_CAPTIONS)
    encoder = host_model.text_encoder_id(clip)
    corpus = corpus_digest(captions)
    weights = _weights_digest(clip)
    stats_dir = os.path.join(folders.output_dir(), folders.STATISTICS_SUBFOLDER)
    path = os.path.join(stats_dir, f"{encoder.name}_{encoder.layer}_{corpus}_{weights}.safetensors")
    if os.path.isfile(path):
        try:
            C, meta = load_statistics(path)
            return C, str(meta["fingerprint"])
        except (StatisticsError, KeyError):
            pass  # unreadable cache: recompute and replace it
    log.info("Perfusion: estimating the text-encoder statistics from %d captions (once per CLIP, then cached)",
             len(captions))
    acc = accumulate(clip, captions, progress)
    C = acc.matrix()
    fp = fingerprint(encoder, f"{corpus}:{weights}", acc.count)
    save_statistics(path, C, {"fingerprint": fp, "padding_rule": PADDING_RULE, "count": acc.count,
                              "captions": len(captions), "encoder": encoder.name, "layer": encoder.layer})
    return C, fp


def _weights_digest(clip: Any) -> str:
    """A cheap identity of the text encoder weights: hash of a few sampled values per tensor.

    Every clone of a CLIP shares one encoder module, which holds the patched weights of
    whichever clone was loaded last (a LoRA's, say). Loading this clone first makes the
    digest that of the weights it encodes with, as the statistics themselves are.
    """
    clip.load_model()
    h = hashlib.sha256()
    for name, t in sorted(clip.cond_stage_model.state_dict().items()):
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:12]


def _check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user cancelled (no-op outside ComfyUI)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()
