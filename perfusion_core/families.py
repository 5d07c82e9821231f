"""The model families Perfusion can edit: everything the pack knows about each, in one table.

A family is what a concept file is made for ("sd1", "sd2", "sdxl"): the width
of the text context the UNet cross-attends to, the text encoders whose token
embeddings a trained trigger carries (by ComfyUI's tokenizer keys), how the
host names the checkpoint configs that belong to it, and where the edited
projections sit in its diffusion model. The rest of the pack asks this table;
nothing else spells out a family. README "Adding a model family" says how to
add one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .concept import ConceptError


@dataclass(frozen=True)
class ModelFamily:
    """One family of base models.

    name            the id stored in concept files and used everywhere in code
    label           how messages name it to a user
    context_dim     width D of the text context (i*, u and i_super live in this space)
    embedding_widths  ComfyUI tokenizer key -> token-embedding width of that text encoder; a
                    trained trigger carries one learned embedding per key
    encoder_id      the text encoder output a concept records (TextEncoderId.name)
    host_configs    ComfyUI ``comfy.supported_models`` class names whose checkpoints are this family
    cross_attention module-name suffix of the cross-attention blocks in the diffusion model
    key_projection, value_projection  the projections inside such a block that the edit hooks
    checkpoint_containers  modules of the diffusion model whose layers gradient checkpointing wraps
                    (a container that is a list holds blocks, each a sequence of layers)
    """

    name: str
    label: str
    context_dim: int
    embedding_widths: dict[str, int]
    encoder_id: str
    host_configs: tuple[str, ...]
    cross_attention: str = "attn2"
    key_projection: str = "to_k"
    value_projection: str = "to_v"
    checkpoint_containers: tuple[str, ...] = field(default=("input_blocks", "middle_block", "output_blocks"))

    @property
    def tokenizer_keys(self) -> tuple[str, ...]:
        """ComfyUI tokenizer keys of the family's text encoders, sorted (how they are compared)."""
        return tuple(sorted(self.embedding_widths))


# Order matters where host config classes inherit from each other: a model is the first family
# whose config class it is an instance of (SDXL variants before SD2 before SD1).
MODEL_FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        name="sdxl", label="SDXL", context_dim=2048, embedding_widths={"l": 768, "g": 1280},
        encoder_id="clip-l+clip-g", host_configs=("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B")),
    ModelFamily(
        name="sd2", label="SD2.x", context_dim=1024, embedding_widths={"h": 1024}, encoder_id="clip-h",
        host_configs=("SD20", "SD21UnclipL", "SD21UnclipH", "SD_X4Upscaler")),
    ModelFamily(
        name="sd1", label="SD1.x", context_dim=768, embedding_widths={"l": 768}, encoder_id="clip-l",
        host_configs=("SD15", "SD15_instructpix2pix")),
)
FAMILY_BY_NAME: dict[str, ModelFamily] = {f.name: f for f in MODEL_FAMILIES}
FAMILIES: tuple[str, ...] = tuple(sorted(FAMILY_BY_NAME))  # the names, for messages and tests


def family(name: str) -> ModelFamily:
    """The family called ``name``; a ConceptError naming the known ones otherwise."""
    found = FAMILY_BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise ConceptError(f"unknown base family {name!r} (known: {', '.join(FAMILIES)})")
    return found


def label(name: str) -> str:
    """How messages name family ``name`` (the name itself if it is unknown)."""
    found = FAMILY_BY_NAME.get(name)
    return found.label if found is not None else str(name)


def family_of_tokenizer_keys(keys: Iterable[str]) -> ModelFamily | None:
    """The family whose text encoders are exactly the tokenizer keys ``keys``, if any."""
    wanted = tuple(sorted(keys))
    return next((f for f in MODEL_FAMILIES if f.tokenizer_keys == wanted), None)


def supported_labels() -> str:
    """'SD1.x, SD2.x and SDXL': the families, for messages."""
    labels = [FAMILY_BY_NAME[n].label for n in FAMILIES]
    return ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else labels[0]
