"""The evidence report: tables from results, written between markers without touching the prose."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from world import judge_report
from world.experiments import SECOND_TRIGGER, TrainSpec
from world.report import BEGIN, END, tables, write_section, write_tables

RESULTS = {
    "settings": {"commands": ["python -m world.evidence --seeds 3"], "train_seeds": [0, 1, 2], "ablation_seeds": [0],
                 "sample_seeds": [0], "minutes": 12.5, "train": {"steps": 200, "lr_values": 0.1, "shots": 5}},
    "front": [{"lock": "local", "beta": 0.7, "fidelity": 0.6, "fidelity_ci": 0.1, "alignment": 1.0,
               "alignment_ci": 0.0, "images": 45}],
    "ablations": [{"variant": "one shot", "fidelity": 0.25, "fidelity_ci": float("nan"), "alignment": 0.9,
                   "alignment_ci": float("nan"), "images": 15}],
    "two_concepts": [{"training": "captions, 6 composites", "lock": "context", "prompt": "`a photo of a sks and a zwx`",
                      "both_correct": 0.2, "both_correct_ci": 0.1, "left_correct": 0.6, "left_correct_ci": 0.3,
                      "right_correct": 0.4, "right_correct_ci": 0.2, "images": 15}],
    "two_regional": [{"lock": "local", "beta": 0.7, "prompt": "`sks, on the left` + `zwx, on the right`",
                      "both_correct": 0.5, "both_correct_ci": 0.25, "left_correct": 0.75, "left_correct_ci": 0.1,
                      "right_correct": 0.6, "right_correct_ci": 0.2, "images": 45}],
    "companion": [{"variant": "LoRA rank 8, lr 0.005, 200 steps", "method": "LoRA", "fidelity": 0.5,
                   "fidelity_ci": 0.2, "alignment": 0.75, "alignment_ci": 0.05, "images": 45}],
}


def test_tables_show_each_measured_value_with_its_interval() -> None:
    text = tables(RESULTS)
    assert "| local lock, beta 0.7 | 0.60 ± 0.10 | 1.00 ± 0.00 | 45 |" in text
    assert "| one shot | 0.25 | 0.90 | 15 |" in text  # one seed: no interval
    assert "| LoRA rank 8, lr 0.005, 200 steps | 0.50 ± 0.20 | 0.75 ± 0.05 | 45 |" in text
    assert "evidence/front_companion.png" in text
    assert ("| captions, 6 composites | context | `a photo of a sks and a zwx` | 0.20 ± 0.10 | 0.60 ± 0.30 | "
            "0.40 ± 0.20 | 15 |") in text
    assert ("| local | 0.7 | `sks, on the left` + `zwx, on the right` | 0.50 ± 0.25 | 0.75 ± 0.10 | 0.60 ± 0.20 "
            "| 45 |") in text
    assert "Textual inversion" not in text  # a part that was not measured has no table


def test_write_tables_replaces_only_the_generated_section(tmp_path: Path) -> None:
    doc = tmp_path / "evidence.md"
    doc.write_text(f"# Title\n\nprose before\n\n{BEGIN}\nold numbers\n{END}\n\nprose after\n")
    write_tables(doc, RESULTS)
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose before\n\n") and text.endswith("\n\nprose after\n")
    assert "old numbers" not in text and "one shot" in text and text.count(BEGIN) == 1


def test_two_generated_sections_keep_out_of_each_others_way(tmp_path: Path) -> None:
    doc = tmp_path / "evidence.md"
    write_tables(doc, RESULTS)
    write_section(doc, "judge table 1\n", judge_report.BEGIN, judge_report.END)
    write_section(doc, "judge table 2\n", judge_report.BEGIN, judge_report.END)
    write_tables(doc, RESULTS)
    text = doc.read_text()
    assert text.count(BEGIN) == text.count(judge_report.BEGIN) == 1
    assert "judge table 2" in text and "judge table 1" not in text and "one shot" in text


def test_concept_names_spell_every_setting_within_the_trainer_limit() -> None:
    specs = [TrainSpec(), replace(TrainSpec(), seed=1), replace(TrainSpec(), train_beta=0.6),
             replace(TrainSpec(), concept="striped_cup", trigger=SECOND_TRIGGER, statistics_captions=20000),
             replace(TrainSpec(), embedding_only=True), replace(TrainSpec(), embedding_only=True, lr_embedding=0.03),
             replace(TrainSpec(), train_keys=True), replace(TrainSpec(), fp8_base=True),
             replace(TrainSpec(), composites=6), replace(TrainSpec(), world="v2")]
    names = [s.name() for s in specs]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 150 for n in names)  # TrainPerfusion's output_name limit
    # Fields added later leave the names of concepts cached before them unchanged.
    assert specs[0].name() == "world_polka_teddy_sks_shots5_steps200_seed0_lr0.03_tbeta0.75_maskedTrue_tsets1_batch4_accum1_stat500"


def test_a_host_renders_and_trains_for_its_own_world_only() -> None:
    """World v2's host draws the concepts' parts at its scale, and refuses a concept of another
    world (whose cached file would otherwise be reused)."""
    import numpy as np

    from world.experiments import train_concept
    from world.host import WorldHost
    from world.metrics import training_scenes
    from world.render import render
    from world.scenes import CONCEPT_BY_NAME
    from world.worlds import WORLDS

    hosts = {name: WorldHost(None, None, None, None, None, world) for name, world in WORLDS.items()}
    scenes = training_scenes(CONCEPT_BY_NAME["polka_teddy"], 2, seed=0)
    for name, host in hosts.items():
        images, _ = host.images_of(scenes)
        want = np.asarray(render(replace(scenes[0], part_scale=host.world.part_scale))[0], dtype=np.float32) / 255
        assert np.array_equal(images[0].numpy(), want), name
    assert not np.array_equal(hosts["v1"].images_of(scenes)[0].numpy(), hosts["v2"].images_of(scenes)[0].numpy())
    with pytest.raises(ValueError, match="world v1 asked of world v2"):
        train_concept(hosts["v2"], TrainSpec())
    assert list(WORLDS["v1"].judges) == ["parts judge", "identity judge"] and list(WORLDS["v2"].judges) == ["parts judge"]


def test_psnr_of_a_known_error() -> None:
    import torch

    x = torch.rand(2, 3, 8, 8) * 0.8
    assert judge_report.psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB


def _judge_results(judges: list[str]) -> dict:
    read = dict.fromkeys(judge_report.PARTS, 1.0)
    rows = {"the concept itself": {"called": {j: (0.99, 0.97) for j in judges}, "read_clean": read,
                                   "read_vae": read | {"pattern": 0.5}, "psnr": 27.04,
                                   "contrast_kept": {"pattern": 0.314, "accessory": 0.9}},
            "pattern + accessory": {"called": {j: (0.01, 0.25) for j in judges}}}
    return {"per_kind": 7, "judges": judges, "concepts": {"polka_teddy": rows}}


def test_judge_table_has_a_column_pair_per_judge_and_reads_parts_with_the_first() -> None:
    two = judge_report.table(_judge_results(["parts judge", "identity judge"]))
    assert ("| concept | what the object has of it | parts judge, clean | parts judge, through the VAE "
            "| identity judge, clean | identity judge, through the VAE |") in two
    assert "| polka_teddy | pattern + accessory | 0.01 | 0.25 | 0.01 | 0.25 |" in two and "each judge" in two
    one = judge_report.table(_judge_results(["parts judge"]))
    assert "| polka_teddy | the concept itself | 0.99 | 0.97 |" in one and "identity" not in one
    assert "| polka_teddy | 1.00 / 1.00 | 1.00 / 1.00 | 1.00 / 0.50 | 1.00 / 1.00 | 27.0 dB | 0.31 / 0.90 |" in one
    assert "Made by `python -m world.judge_report` (" in one
    assert "Made by `python -m world.judge_report --world v2` (" in judge_report.table(_judge_results(["parts judge"]) | {"world": "v2"})


def test_each_world_has_its_own_judge_section() -> None:
    assert judge_report.markers("v1") == (judge_report.BEGIN, judge_report.END)
    assert len({*judge_report.markers("v1"), *judge_report.markers("v2")}) == 4


def test_round_trip_sheet_puts_each_codecs_round_trip_under_the_renders() -> None:
    import numpy as np
    import torch

    class Lossless(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.taesd_encoder, self.taesd_decoder = torch.nn.Identity(), torch.nn.Identity()
            self.unused = torch.nn.Parameter(torch.zeros(1))

    sheet = np.asarray(judge_report.round_trip_sheet([Lossless(), Lossless()], per_concept=2, scale=1))
    assert sheet.shape == (3 * 3 * 64, 2 * 64, 3)  # per concept: renders, then one row per codec
    for concept in range(3):
        rows = sheet[concept * 192:(concept + 1) * 192].reshape(3, 64, 128, 3)
        assert (rows[1] == rows[0]).all() and (rows[2] == rows[0]).all() and rows[0].std() > 0
