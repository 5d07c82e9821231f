"""Caption embeddings of the world's text encoder, computed once and cached.

The world model's text encoder is ComfyUI's SD1 CLIP-L with the project's
seeded random weights (it is never trained: ``harness.random_models`` rebuilds it
bit for bit from seed 0). Encoding is the expensive part of a training sample,
so every distinct caption is encoded once, in batches, through ComfyUI's own
``encode_token_weights`` (the exact computation a workflow's CLIPTextEncode
does), and the result is cached.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CLIP_SEED = 0
TOKENS = 77
WIDTH = 768


def world_clip():
    """The world model's text encoder: full SD1 CLIP-L, seeded random weights."""
    from harness.random_models import build_clip

    return build_clip("sd1", "full", seed=CLIP_SEED)


def encode(clip, captions: list[str], batch: int = 64, log: Callable[[str], None] = print,
           device: str = "cpu") -> torch.Tensor:
    """``[len(captions), 77, 768]`` float32: what CLIPTextEncode gives for each caption."""
    tokenizer, encoder = clip.tokenizer, clip.cond_stage_model.clip_l.to(device)
    out = torch.empty(len(captions), TOKENS, WIDTH)
    start = time.time()
    for i in range(0, len(captions), batch):
        sections = []
        for text in captions[i:i + batch]:
            tokens = tokenizer.tokenize_with_weights(text)["l"]
            if len(tokens) != 1:
                raise ValueError(f"caption longer than one 77-token section: {text!r}")
            sections.append(tokens[0])
        with torch.no_grad():
            z, _ = encoder.encode_token_weights(sections)
        out[i:i + len(sections)] = z.reshape(len(sections), TOKENS, WIDTH).float()
        done = i + len(sections)
        log(f"captions {done}/{len(captions)} ({(time.time() - start) / done:.3f} s each)")
    return out


def cached_encode(
    path: Path, captions: list[str], log: Callable[[str], None] = print, device: str = "cpu",
    encoder: Callable[[list[str]], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float16 ``[U, 77, 768]`` table, int64 index of each caption's row in it), reading and
    extending the cache file ``path`` (one file per text encoder): only captions not in the file
    are encoded, by ``encoder`` (captions -> embeddings; default: the first world's CLIP)."""
    known: dict[str, int] = {}
    table = torch.empty(0, TOKENS, WIDTH, dtype=torch.float16)
    if path.is_file():
        data = load_file(str(path))
        table = data["embeddings"]
        known = {c: i for i, c in enumerate(json.loads(bytes(data["captions"].tolist()).decode()))}
    missing = sorted(set(captions) - set(known))
    if missing:
        new = (encoder(missing) if encoder else encode(world_clip(), missing, log=log, device=device)).half()
        table = torch.cat([table, new])
        for c in missing:
            known[c] = len(known)
        names = sorted(known, key=known.get)
        blob = torch.tensor(list(json.dumps(names).encode()), dtype=torch.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"embeddings": table.contiguous(), "captions": blob}, str(tmp))
        tmp.replace(path)
    return table, torch.tensor([known[c] for c in captions])
