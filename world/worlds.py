"""The worlds the evidence can run on, one entry each: the files that make its model, the judges
that read its images, and how large its parts are drawn. What loads, renders or judges for a
world reads it from here, so a second world is one more entry, not a flag in every module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from world.judge import JUDGE_WEIGHTS, PARTS_JUDGE_WEIGHTS, V2_PARTS_JUDGE
from world.model import (
    CHECKPOINT_NAME,
    V2_CODEC,
    V2_TEXT_ENCODER,
    V2_WEIGHTS,
    WEIGHTS,
    world_checkpoint,
)
from world.scenes import V2_PART_SCALE, V2_PARTS_SHARE


@dataclass(frozen=True)
class World:
    name: str
    weights: tuple[Path, ...]   # the files of its UNet and VAE
    codec: Path                 # the one of them that holds the VAE
    text_encoder: Path | None   # trained text-encoder tensors; None: the seeded CLIP-L
    parts_judge: Path           # reads each part of each object
    evidence_judge: Path        # scores the evidence's images
    part_scale: float           # ``Scene.part_scale`` of everything rendered for it
    parts_share: float          # share of its pretraining objects wearing (and captioned with) concept parts
    checkpoint_name: str

    @property
    def judges(self) -> dict[str, Path]:
        """Its judges by the names the judge report's tables give them."""
        other = {} if self.evidence_judge == self.parts_judge else {"identity judge": self.evidence_judge}
        return {"parts judge": self.parts_judge} | other

    def checkpoint(self) -> Path:
        """Its single-file SD1.5 checkpoint, as ``CheckpointLoaderSimple`` loads it (assembled once)."""
        return world_checkpoint(weights=self.weights, text_encoder=self.text_encoder, name=self.checkpoint_name)


WORLDS: dict[str, World] = {
    # The first world scores its evidence with the judge of one identity per object.
    "v1": World("v1", (WEIGHTS,), WEIGHTS, None, PARTS_JUDGE_WEIGHTS, JUDGE_WEIGHTS, 1.0, 0.0, CHECKPOINT_NAME),
    "v2": World("v2", V2_WEIGHTS, V2_CODEC, V2_TEXT_ENCODER, V2_PARTS_JUDGE, V2_PARTS_JUDGE, V2_PART_SCALE,
                V2_PARTS_SHARE, "perfusion-world-v2-sd15.safetensors"),
}
