"""World UNet pretraining: a run stopped and resumed is the run that never stopped."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from world.dataset import EMPTY_CAPTION, pretraining_set
from world.model import new_unet
from world.pretrain import PretrainSettings, pretrain
from world.scenes import PART_PHRASE, V2_PART_SCALE, caption

SETTINGS = PretrainSettings(steps=6, batch=2, warmup=2)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(12, 4, 8, 8, generator=gen)
    table = torch.randn(4, 77, 768, generator=gen).half()
    rows = torch.randint(1, 4, (12, 2), generator=gen)
    return latents, table, rows


def _train(data, **kwargs) -> torch.nn.Module | None:
    latents, table, rows = data
    return pretrain(new_unet(), latents, table, rows, 0, kwargs.pop("settings", SETTINGS), log=lambda m: None, **kwargs)


def test_a_stopped_and_resumed_run_ends_bit_for_bit_where_one_run_does(data, tmp_path: Path) -> None:
    whole = _train(data)
    progress = tmp_path / "progress.safetensors"
    assert _train(data, progress=progress, until=4) is None and progress.is_file()
    resumed = _train(data, progress=progress)
    start = new_unet().diffusion_model.state_dict()
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # and training did move the weights (the EMA of six steps is not the start)
    assert any(not torch.equal(a, start[k]) for k, a in whole.state_dict().items())


def test_progress_of_a_run_with_other_settings_is_refused_and_kept(data, tmp_path: Path) -> None:
    progress = tmp_path / "progress.safetensors"
    _train(data, progress=progress, until=2)
    before = progress.read_bytes()
    with pytest.raises(ValueError, match="other settings") as err:
        _train(data, progress=progress, settings=replace(SETTINGS, lr=1e-3))
    assert str(progress) in str(err.value)
    assert progress.read_bytes() == before


def test_world_v2s_pretraining_scenes_wear_parts_at_its_scale_and_say_so() -> None:
    """World v2's pretraining set: half the ordinary objects wear parts, drawn at the v2 scale,
    and their captions name what they wear; the defaults are the first world's set."""
    first, again = pretraining_set(300, seed=2), pretraining_set(300, seed=2, parts_share=0.0)
    assert first.scenes == again.scenes and first.captions == again.captions
    v2 = pretraining_set(300, seed=2, parts_share=0.5, part_scale=V2_PART_SCALE)
    assert v2.all_captions()[0] == EMPTY_CAPTION
    assert {s.part_scale for s in v2.scenes} == {V2_PART_SCALE}
    worn = [(s, o) for s in v2.scenes for o in s.objects if o.pattern or o.accessory]
    assert 0.4 < len(worn) / sum(len(s.objects) for s in v2.scenes) < 0.6
    assert all(o.concept is None for s in v2.scenes for o in s.objects)
    for s, o in worn:
        assert all(PART_PHRASE[p] in caption(s) for p in (o.pattern, o.accessory) if p)
