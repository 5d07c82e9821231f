"""World v2's text encoder: SD1's CLIP-L layout, of which two layers work.

ComfyUI loads a checkpoint as SD1.5 when its text encoder has CLIP-L's keys and
shapes: 12 layers, width 768, the CLIP vocabulary. World v2's encoder keeps
that layout, but the layers after the first ``ACTIVE_LAYERS`` write nothing
into the residual stream (attention ``out_proj`` and MLP ``fc2``, weights and
biases, are zero), so each is exactly the identity. Two layers because a
training step of a 2-layer CLIP-width encoder costs about a world-UNet step
and a 12-layer one about six; two because one causal layer can move a word
into later positions but not yet combine what it moved.

What training changes (and the artefact stores): the two layers, the position
embeddings, the final LayerNorm and the embedding rows of the tokens world
captions use. Everything else is the seeded random encoder of
``harness.random_models`` (seed ``CLIP_SEED``), rebuilt bit for bit at setup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from harness.comfy_host import import_host
from harness.random_models import tensor_value
from world.captions import CLIP_SEED, TOKENS, world_clip
from world.scenes import caption_vocabulary

ACTIVE_LAYERS = 2
CLIP_L_LAYERS = 12
_MODULE_PREFIX = "clip_l.transformer.text_model."        # in ComfyUI's SD1ClipModel
_CHECKPOINT_PREFIX = "cond_stage_model.transformer.text_model."  # in an SD1 checkpoint
_TOKEN_TABLE = _CHECKPOINT_PREFIX + "embeddings.token_embedding.weight"
# The artefact stores the table's trained rows and their token ids, not all 49408 rows.
_TRAINED_ROWS, _TRAINED_IDS = _TOKEN_TABLE.replace("weight", "rows"), _TOKEN_TABLE.replace("weight", "ids")
END_TOKEN = 49407  # CLIP's end token; SD1 pads with it too, so the first one is the end
_SILENT = ("self_attn.out_proj.weight", "self_attn.out_proj.bias", "mlp.fc2.weight", "mlp.fc2.bias")


def token_ids(clip, captions: Iterable[str]) -> torch.Tensor:
    """``[N, 77]`` CLIP token ids of each caption as ComfyUI tokenizes it (start, words, end, padding)."""
    rows = []
    for text in captions:
        sections = clip.tokenizer.tokenize_with_weights(text)["l"]
        if len(sections) != 1:
            raise ValueError(f"caption longer than one {TOKENS}-token section: {text!r}")
        rows.append([int(t[0]) for t in sections[0]])
    return torch.tensor(rows)


class WorldTextEncoder(torch.nn.Module):
    """World v2's text encoder, trainable: ComfyUI's CLIP-L modules of ``clip`` (shared, not
    copied), its later layers silenced, and the embedding rows of ``vocabulary`` (token ids) as
    a parameter of their own (the rest of the 49408-row table never changes, so never needs a
    gradient). ``forward`` is the computation ComfyUI runs for SD1 ("last" layer, no attention
    mask), with out-of-place residual adds so that autograd can go through it."""

    def __init__(self, clip, vocabulary: torch.Tensor) -> None:
        super().__init__()
        import_host()
        from comfy.ldm.modules.attention import optimized_attention_for_device

        text_model = clip.cond_stage_model.clip_l.transformer.text_model
        text_model.requires_grad_(False)
        with torch.no_grad():
            for layer in text_model.encoder.layers[ACTIVE_LAYERS:]:
                for name in _SILENT:
                    layer.get_parameter(name).zero_()
        self.clip = clip
        self.positions = text_model.embeddings.position_embedding.weight
        self.layers = text_model.encoder.layers[:ACTIVE_LAYERS]
        self.final_layer_norm = text_model.final_layer_norm
        for trained in (self.positions, self.layers, self.final_layer_norm):
            trained.requires_grad_(True)
        self.register_buffer("vocabulary", vocabulary.long().unique())
        self.rows = torch.nn.Parameter(text_model.embeddings.token_embedding.weight[self.vocabulary].detach().clone())
        lookup = torch.full((text_model.embeddings.token_embedding.weight.shape[0],), -1)
        lookup[self.vocabulary] = torch.arange(len(self.vocabulary))
        self.register_buffer("lookup", lookup)
        self._attention_for = optimized_attention_for_device
        # The whole table stays out of this module's parameters (it is written to, never trained).
        object.__setattr__(self, "_table", text_model.embeddings.token_embedding.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 77]`` token ids -> ``[B, 77, 768]``, what CLIPTextEncode gives for them."""
        local = self.lookup[tokens]
        if (local < 0).any():
            raise ValueError("token outside the world's vocabulary")
        x = self.rows[local] + self.positions[:tokens.shape[1]]  # a causal prefix may be encoded alone
        causal = torch.full((x.shape[1], x.shape[1]), -torch.finfo(x.dtype).max, dtype=x.dtype).triu_(1)
        attention = self._attention_for(x.device, mask=True, small_input=True)  # as ComfyUI's CLIP picks it
        for layer in self.layers:
            x = x + layer.self_attn(layer.layer_norm1(x), causal, attention)
            x = x + layer.mlp(layer.layer_norm2(x))
        return self.final_layer_norm(x)

    @torch.no_grad()
    def write_rows_into_clip(self) -> None:
        """Put the trained rows into the CLIP's own token table, so ComfyUI's encode uses them."""
        self._table[self.vocabulary] = self.rows.to(self._table.dtype)

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """What training changes, in SD1 checkpoint key names; of the token table only the rows of
        the world's tokens and their ids."""
        state = self.clip.cond_stage_model.state_dict()
        keep = ("embeddings.position_embedding.", "final_layer_norm.") + tuple(
            f"encoder.layers.{i}." for i in range(ACTIVE_LAYERS))
        out = {_CHECKPOINT_PREFIX + k[len(_MODULE_PREFIX):]: v.detach().clone() for k, v in state.items()
               if k.startswith(_MODULE_PREFIX) and k[len(_MODULE_PREFIX):].startswith(keep)}
        return out | {_TRAINED_ROWS: self.rows.detach().clone(), _TRAINED_IDS: self.vocabulary.clone()}


def save_text_encoder(path: Path, encoder: WorldTextEncoder) -> None:
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in encoder.trained_tensors().items()},
              str(path))


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The text-encoder tensors an SD1 checkpoint of world v2 carries that differ from the seeded
    random encoder: the stored ones, the token table with its trained rows, and the silenced
    layers' residual writes (zero)."""
    stored = load_file(str(path))
    rows, ids = stored.pop(_TRAINED_ROWS), stored.pop(_TRAINED_IDS)
    table = tensor_value(_TOKEN_TABLE, (49408, 768), CLIP_SEED)
    table[ids] = rows.float()
    out = stored | {_TOKEN_TABLE: table}
    for i in range(ACTIVE_LAYERS, CLIP_L_LAYERS):  # a silenced layer's tensors have layer 0's shapes
        for name in _SILENT:
            out[f"{_CHECKPOINT_PREFIX}encoder.layers.{i}.{name}"] = torch.zeros_like(
                stored[f"{_CHECKPOINT_PREFIX}encoder.layers.0.{name}"], dtype=torch.float32)
    return out


def trained_clip(path: Path) -> Any:
    """The world's seeded CLIP-L with the trained tensors of ``path`` loaded through SD1's own
    checkpoint conversion: the text encoder ComfyUI loads from a world v2 checkpoint."""
    from harness.random_models import model_config

    clip = world_clip()
    _, unexpected = clip.load_sd(model_config("sd1", "full").process_clip_state_dict(checkpoint_tensors(path)),
                                 full_model=True)
    if unexpected:
        raise RuntimeError(f"{path.name}: text encoder tensors ComfyUI does not use: {unexpected[:5]}")
    return clip


def load_text_encoder(path: Path) -> WorldTextEncoder:
    """The stored encoder as the module that trained it: its two working layers compute what
    ComfyUI's twelve-layer pass does (tested), in about a fifth of the time."""
    return WorldTextEncoder(trained_clip(path), load_file(str(path))[_TRAINED_IDS])


@torch.no_grad()
def encode_captions(encoder: WorldTextEncoder, captions: list[str], batch: int = 256) -> torch.Tensor:
    """``[len(captions), 77, 768]``: what CLIPTextEncode gives for each caption with this encoder."""
    ids = token_ids(encoder.clip, captions)
    return torch.cat([encoder(ids[i:i + batch]) for i in range(0, len(ids), batch)])


def new_text_encoder(phrases: Iterable[str] = ()) -> WorldTextEncoder:
    """The untrained starting point: the seeded random CLIP-L, later layers silenced, with the
    embedding rows of every token of the world's captions (and of ``phrases``) to train."""
    clip = world_clip()
    return WorldTextEncoder(clip, token_ids(clip, [*caption_vocabulary(), *phrases]))


# Caption pairs that differ in one word, at the same token position (each word is one token).
ONE_WORD_SWAPS = (("a photo of a red cup on the grass, on the left", "a photo of a blue cup on the grass, on the left"),
                  ("a photo of a big teddy in the snow, in the middle", "a photo of a big chair in the snow, in the middle"),
                  ("a photo of a green cat and a white cup at night", "a photo of a green cat and a white teddy at night"))


@torch.no_grad()
def context_measures(encode: Callable[[torch.Tensor], torch.Tensor], clip) -> dict[str, float]:
    """How much an encoder mixes context, on ``ONE_WORD_SWAPS``: ``later_words``, how far the
    encodings of the words after a swapped word move, relative to their size (mean over those
    words); ``padding_cosine``, the mean cosine between the two captions' encodings at each padding
    position. A word-plus-position lookup gives 0 and 1."""
    moved, cosines = [], []
    for a, b in ONE_WORD_SWAPS:
        ids = token_ids(clip, [a, b])
        if int((ids[0] != ids[1]).sum()) != 1:
            raise ValueError(f"not a one-token swap: {a!r} / {b!r}")
        swapped = int((ids[0] != ids[1]).nonzero()[0])
        end = int((ids[0] == END_TOKEN).nonzero()[0])
        za, zb = encode(ids).float()
        moved.append(((za - zb).norm(dim=-1) / za.norm(dim=-1))[swapped + 1:end].mean())
        cosines.append(torch.nn.functional.cosine_similarity(za[end + 1:], zb[end + 1:], dim=-1).mean())
    return {"later_words": float(torch.stack(moved).mean()), "padding_cosine": float(torch.stack(cosines).mean())}
