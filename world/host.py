"""The world model inside an in-process ComfyUI, with this node pack loaded as ComfyUI loads it.

Experiments train and apply concepts through the pack's own nodes
(TrainPerfusion, ConceptGate, ApplyKeyLockedEdit), exactly as a workflow does,
and sample through the stock sampler (``world.sampling``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from harness.comfy_host import REPO_ROOT, import_pack
from world.judge import Judge, load_judge, read_scenes
from world.render import render
from world.sampling import generate, load
from world.scenes import Scene
from world.worlds import WORLDS, World

PERFUSION_FOLDER = REPO_ROOT / ".cache" / "world" / "perfusion"


@dataclass
class WorldHost:
    pack: ModuleType
    model: Any
    clip: Any
    vae: Any
    judge: Judge
    world: World = WORLDS["v1"]
    fp8_model: Any = None  # made on first use by base(fp8=True)

    @classmethod
    def open(cls, perfusion_folder: Path = PERFUSION_FOLDER, world: World = WORLDS["v1"]) -> WorldHost:
        pack = import_pack()
        import folder_paths

        perfusion_folder.mkdir(parents=True, exist_ok=True)
        folder_paths.folder_names_and_paths["perfusion"] = ([str(perfusion_folder)], {".safetensors"})
        with torch.inference_mode():
            model, clip, vae = load(world.checkpoint())
        return cls(pack, model, clip, vae, load_judge(world.evidence_judge), world)

    def base(self, fp8: bool = False) -> Any:
        """The world MODEL, or (``fp8``) the same checkpoint with its UNet weights stored as float8 e4m3fn."""
        if not fp8:
            return self.model
        if self.fp8_model is None:
            with torch.inference_mode():
                self.fp8_model = load(self.world.checkpoint(), torch.float8_e4m3fn)[0]
        return self.fp8_model

    def images_of(self, scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
        """(IMAGE [N, 64, 64, 3], MASK [N, 64, 64]) renders, as a LoadImage node would give them;
        their parts drawn as large as the world draws them."""
        pairs = [render(replace(s, part_scale=self.world.part_scale)) for s in scenes]
        img = np.stack([np.asarray(i, dtype=np.float32) / 255 for i, _ in pairs])
        mask = np.stack([np.asarray(m, dtype=np.float32) / 255 for _, m in pairs])
        return torch.from_numpy(img), torch.from_numpy(mask)

    def sample(self, prompt: str | list, seeds: list[int], model: Any = None, clip: Any = None,
               **kwargs: Any) -> torch.Tensor:
        return generate(model or self.model, clip or self.clip, self.vae, prompt, seeds, **kwargs)

    def read(self, images: torch.Tensor) -> list[Scene]:
        """What the judge sees in IMAGE-layout images."""
        return read_scenes(self.judge, images.permute(0, 3, 1, 2).contiguous())
