"""perfusion_core.training and training_state: objective, draws, trainables, checkpoints (no ComfyUI)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from perfusion_core.concept import Gate, TextEncoderId
from perfusion_core.schedule import window_timesteps
from perfusion_core.training import (PROMPT_TEMPLATES, ConceptHeader, ConceptTrainables, TrainingError,
                                     TrainingSettings, gaussian_noise, latent_weights, masked_diffusion_loss,
                                     micro_batch, noise_prediction, parse_captions, square_crop)
from perfusion_core.training_state import (TrainingStateError, read_training_state, restore,
                                           save_training_state)

HEADER = ConceptHeader(trigger="zorb", superclass="teddy", family="sd1", text_encoder=TextEncoderId("clip-l"),
                       statistics="identity")


def trainables(sets: int = 1, seed: int = 0) -> ConceptTrainables:
    g = torch.Generator().manual_seed(seed)
    return ConceptTrainables(embeddings={"l": torch.randn(8, generator=g)},
                             value_init={"a.attn2": torch.randn(5, generator=g), "b.attn2": torch.randn(3, generator=g)},
                             i_super=torch.randn(6, generator=g), timestep_sets=sets)


# -- settings and draws -------------------------------------------------------------------------------

def test_default_settings_are_the_paper_recipe_and_valid():
    s = TrainingSettings()
    assert (s.steps, s.batch_size, s.grad_accumulation, s.lr_values, s.lr_embedding, s.beta, s.tau, s.i_star_decay) == \
        (400, 4, 4, 0.03, 0.006, 0.75, 0.1, 0.99)
    assert s.problems() == []
    assert "steps" not in s.resume_key() and s.resume_key()["lr_values"] == 0.03


@pytest.mark.parametrize("field, value, words", [
    ("steps", 0, "steps must be"), ("batch_size", 65, "batch_size must be"), ("lr_values", 0.0, "lr_values"),
    ("lr_embedding", 2.0, "lr_embedding"), ("tau", 0.0, "tau must be"), ("beta", 5.0, "beta must be"),
    ("resolution", 100, "multiple of 64"), ("timestep_sets", 0, "timestep_sets"),
    ("templates", ("no slot",), "exactly once"), ("templates", ("a {}", "{} and {}"), "template 2 must contain"),
    ("templates", (), "at least one prompt template"), ("i_star_decay", 1.0, "i_star_decay"),
])
def test_invalid_settings_are_named(field, value, words):
    problems = dataclasses.replace(TrainingSettings(), **{field: value}).problems()
    assert len(problems) == 1 and words in problems[0]


def test_captions_replace_the_templates_and_are_checked():
    captions = ("a photo of a {} and a red chair", "a photo of a chair and a {}")
    s = TrainingSettings(captions=captions)
    assert s.prompts() == captions and TrainingSettings().prompts() == PROMPT_TEMPLATES
    assert s.resume_key()["captions"] == list(captions), "a resumed run must have the same captions"
    assert "captions" not in TrainingSettings().resume_key(), "checkpoints from before captions existed resume"
    problems = TrainingSettings(captions=("a {} and a {}", "fine {}", "none here")).problems()
    assert [p.split(" must")[0] for p in problems] == ["captions: caption 1", "captions: caption 3"]


def test_parse_captions_one_per_line_with_the_trigger_marked():
    text = "# my photos\n a photo of  zorb on the beach \n\nzorbs and a {} in the snow\nzorb, zorb and a cup\n"
    assert parse_captions(text, "zorb") == ("a photo of {} on the beach", "zorbs and a {} in the snow",
                                            "{}, zorb and a cup")
    assert parse_captions("  \n# nothing\n", "zorb") == ()
    with pytest.raises(TrainingError, match=r"captions: line 2 .*'zorb'.*'a zorbs photo'"):
        parse_captions("a {}\na zorbs photo", "zorb")  # 'zorbs' is another word


def test_parse_captions_finds_the_trigger_in_any_case_like_a_prompt_does():
    """A prompt writing 'Zorb' gets the concept (the trigger pattern ignores case), so a caption
    writing it so names the trigger too."""
    assert parse_captions("A Zorb on the beach\nZORB-shaped cloud", "zorb") == ("A {} on the beach", "{}-shaped cloud")


def test_micro_batch_draws_depend_only_on_seed_step_and_micro():
    s = TrainingSettings(batch_size=3)
    a, b = micro_batch(s, 7, 2, 5), micro_batch(s, 7, 2, 5)
    for field in ("images", "flips", "timesteps"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert (a.template, a.noise_seed) == (b.template, b.noise_seed)
    others = [micro_batch(s, 7, 3, 5), micro_batch(s, 8, 2, 5), micro_batch(dataclasses.replace(s, seed=1), 7, 2, 5)]
    assert all(o.noise_seed != a.noise_seed for o in others)
    assert len(set(a.images.tolist())) == 3 and int(a.images.max()) < 5  # without replacement when possible
    assert int(a.timesteps.min()) >= 0 and int(a.timesteps.max()) < 1000
    many = micro_batch(dataclasses.replace(s, batch_size=8), 0, 0, 2)
    assert many.images.shape == (8,) and set(many.images.tolist()) <= {0, 1}


def test_timesteps_and_flips_are_spread():
    s = TrainingSettings(batch_size=64)
    draws = [micro_batch(s, step, 0, 4) for step in range(20)]
    t = torch.cat([d.timesteps for d in draws]).float()
    flips = torch.cat([d.flips for d in draws]).float()
    assert abs(t.mean() - 499.5) < 30 and abs(flips.mean() - 0.5) < 0.05


def in_window_reference(t: int, start: float, end: float) -> bool:
    """Independent: timestep t sits at denoising progress 1 - t / 999 (float64); 0 and 1 are open ends."""
    progress = 1.0 - t / 999.0
    return (start <= 0.0 or progress >= start) and (end >= 1.0 or progress <= end)


@pytest.mark.parametrize("start, end", [(0.0, 1.0), (0.0, 0.6), (0.6, 1.0), (0.25, 0.5), (0.123, 0.877),
                                        (0.999, 1.0), (0.0, 0.001)])
def test_window_timesteps_are_exactly_those_inside_the_window(start, end):
    low, high = window_timesteps(start, end)
    inside = [t for t in range(1000) if in_window_reference(t, start, end)]
    assert list(range(low, high)) == inside


def test_window_timesteps_refuse_an_empty_or_reversed_window():
    for start, end in ((0.5, 0.5), (0.6, 0.4), (-0.1, 0.5), (0.2, 1.5), (0.5006, 0.5014)):
        with pytest.raises(ValueError, match="window"):
            window_timesteps(start, end)


def test_s1_training_draws_only_timesteps_inside_its_window():
    s = TrainingSettings(batch_size=64, start_percent=0.0, end_percent=0.6)
    t = torch.cat([micro_batch(s, step, 0, 4).timesteps for step in range(20)])
    low, high = window_timesteps(0.0, 0.6)
    assert (low, high) == (400, 1000) and int(t.min()) >= low and int(t.max()) < high
    assert abs(float(t.float().mean()) - (low + high - 1) / 2) < 15  # spread over the whole window
    # The whole timeline draws exactly what runs drew before windows existed (their checkpoints resume).
    full = TrainingSettings(batch_size=4)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(torch.randint(0, 1000, (9,), generator=torch.Generator().manual_seed(1)),
                       torch.randint(1000, (9,), generator=g))
    assert "start_percent" not in full.resume_key() and s.resume_key()["end_percent"] == 0.6


@pytest.mark.parametrize("changes, words", [
    ({"start_percent": 0.7, "end_percent": 0.3}, "start_percent must be below end_percent"),
    ({"end_percent": 1.2}, "start_percent must be below end_percent"),
    ({"start_percent": 0.5006, "end_percent": 0.5014}, "holds no training timestep"),
    ({"end_percent": 0.6, "timestep_sets": 2}, "needs timestep_sets 1"),
])
def test_invalid_training_windows_are_named(changes, words):
    problems = TrainingSettings(**changes).problems()
    assert len(problems) == 1 and words in problems[0], problems


def test_noise_is_gaussian_not_uniform():
    x = gaussian_noise((200_000,), seed=3)
    assert torch.equal(x, gaussian_noise((200_000,), seed=3))
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    assert float((x < 0).float().mean()) == pytest.approx(0.5, abs=0.01) and float(x.abs().max()) > 3.5


# -- objective ----------------------------------------------------------------------------------------

def test_noise_prediction_recovers_the_noise_of_a_perfect_model():
    x0, noise = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 14.6], dtype=torch.float64)
    x_t = x0 + noise * sigma.view(-1, 1, 1, 1)
    assert torch.allclose(noise_prediction(x_t, x0, sigma), noise)
    assert float(masked_diffusion_loss(noise_prediction(x_t, x0, sigma), noise)) == pytest.approx(0.0, abs=1e-20)


def test_masked_loss_matches_dense_reference():
    pred, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    w = torch.rand(2, 1, 3, 3)
    reference = sum(float(w[b, 0, i, j]) * float(pred[b, c, i, j] - noise[b, c, i, j]) ** 2
                    for b in range(2) for c in range(4) for i in range(3) for j in range(3)) / pred.numel()
    assert float(masked_diffusion_loss(pred, noise, w)) == pytest.approx(reference, rel=1e-5)
    assert float(masked_diffusion_loss(pred, noise)) == pytest.approx(float(((pred - noise) ** 2).mean()))


def test_latent_weights_are_area_resized_and_max_normalised():
    masks = torch.zeros(2, 16, 16)
    masks[0, :8, :8] = 0.5  # one quadrant at half strength
    masks[1] = 1.0
    w = latent_weights(masks, (2, 2))
    assert w.shape == (2, 1, 2, 2)
    assert torch.equal(w[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]])) and torch.equal(w[1], torch.ones(1, 2, 2))
    with pytest.raises(TrainingError, match=r"mask of image\(s\) \[1\] is empty"):
        latent_weights(torch.stack([masks[1], torch.zeros(16, 16)]), (2, 2))


def test_square_crop_keeps_the_centre():
    image = torch.zeros(1, 40, 80, 3)
    image[:, :, 20:60] = 1.0  # the central square
    out = square_crop(image, 20)
    assert out.shape == (1, 20, 20, 3)
    assert float(out[:, :, 1:-1].min()) > 0.99 and float(out.mean()) > 0.98  # only the border column is blurred


# -- trainables ---------------------------------------------------------------------------------------

def test_initialisation_from_the_superclass():
    t = trainables(sets=3)
    assert torch.equal(t.i_star, t.i_super)
    assert t.values[0].shape == (3, 5) and torch.equal(t.values[0][0], t.values[0][2])
    assert [n for n, p in t.named_parameters()] == ["values.0", "values.1", "embedding.l"]
    assert all(p.requires_grad for p in t.parameters()) and not t.i_star.requires_grad


def test_i_star_ema_matches_the_formula():
    t = trainables()
    start = t.i_super.clone().double()
    enc = torch.randn(4, 6)
    t.update_i_star(enc, 0.99)
    expected = 0.99 * start + 0.01 * enc.double().mean(0)
    assert torch.allclose(t.i_star.double(), expected, atol=1e-7)


def test_optimizer_trains_values_and_embedding_with_their_rates():
    t = trainables()
    opt = t.optimizer(TrainingSettings())
    (lr_v, params_v), (lr_e, params_e) = ((g["lr"], g["params"]) for g in opt.param_groups)
    assert (lr_v, lr_e) == (0.03, 0.006) and all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    assert {id(p) for p in params_v} == {id(p) for p in t.values} and params_e == [t.embedding["l"]]
    before = [p.detach().clone() for p in t.parameters()]
    loss = sum((p ** 2).sum() for p in t.parameters())
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, t.parameters())), "every trainable must move"


def test_key_training_is_opt_in_and_uses_the_value_rate():
    """Key-locked (the default): i_super is a buffer the optimizer never sees. The no-lock ablation
    (train_keys) makes it a Parameter in its own group at lr_values; it needs the values trained."""
    locked = trainables()
    assert "i_super" in dict(locked.named_buffers()) and "i_super" not in dict(locked.named_parameters())
    with pytest.raises(ValueError, match="train_keys"):
        locked.optimizer(TrainingSettings(train_keys=True))
    g = torch.Generator().manual_seed(0)
    free = ConceptTrainables(embeddings={"l": torch.randn(8, generator=g)},
                             value_init={"a.attn2": torch.randn(4, generator=g)}, i_super=torch.randn(6, generator=g),
                             timestep_sets=1, train_keys=True)
    groups = free.optimizer(TrainingSettings(train_keys=True, lr_values=0.1)).param_groups
    assert [(g["lr"], len(g["params"])) for g in groups] == [(0.1, 1), (0.1, 1), (0.006, 1)]
    assert groups[1]["params"][0] is free.i_super
    assert free.concept(HEADER, torch.randn(6), Gate()).i_super is free.i_super  # live: gradients reach it
    assert any("train_keys needs train_values" in m
               for m in TrainingSettings(train_keys=True, train_values=False).problems())


def test_live_concept_carries_gradients_and_snapshot_does_not():
    t = trainables()
    u = torch.randn(6)
    live = t.concept(HEADER, u, Gate(beta=0.75, tau=0.1))
    assert live.v_targets["a.attn2"] is t.values[0] and live.embeddings["l"] is t.embedding["l"]
    frozen = t.concept(HEADER, u, Gate(), {"steps": 3}, live=False)
    assert not frozen.v_targets["a.attn2"].requires_grad and frozen.training == {"steps": 3}
    assert torch.equal(frozen.v_targets["b.attn2"], t.values[1].detach())


# -- resumable checkpoints ----------------------------------------------------------------------------

def _steps(t: ConceptTrainables, opt: torch.optim.Optimizer, first: int, last: int) -> None:
    for step in range(first, last):
        g = torch.Generator().manual_seed(step)
        target = [torch.randn(p.shape, generator=g) for p in t.parameters()]
        loss = sum(((p - q) ** 2).sum() for p, q in zip(t.parameters(), target))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.update_i_star(torch.randn(2, 6, generator=g), 0.99)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    s = TrainingSettings()
    straight = trainables()
    opt = straight.optimizer(s)
    _steps(straight, opt, 0, 6)

    first = trainables()
    opt1 = first.optimizer(s)
    _steps(first, opt1, 0, 3)
    path = save_training_state(tmp_path / "run.safetensors", first, opt1, 3, [1.0, 0.5, 0.25], {"data": "x"})
    tensors, meta = read_training_state(path)
    assert meta["step"] == 3 and meta["losses"] == [1.0, 0.5, 0.25] and meta["data"] == "x"
    resumed = trainables(seed=99)  # different values: everything must come from the file
    opt2 = resumed.optimizer(s)
    restore(path.name, tensors, resumed, opt2)
    _steps(resumed, opt2, 3, 6)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_rejects_garbage_and_mismatches(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(TrainingStateError, match="bad.safetensors: not a readable safetensors"):
        read_training_state(bad)
    with pytest.raises(TrainingStateError, match="missing.safetensors: cannot read"):
        read_training_state(tmp_path / "missing.safetensors")
    t = trainables()
    path = save_training_state(tmp_path / "ok.safetensors", t, t.optimizer(TrainingSettings()), 0, [], {})
    tensors, _ = read_training_state(path)
    other = trainables(sets=2)
    with pytest.raises(TrainingStateError, match=r"ok.safetensors: 'values.0' is shape \(1, 5\)"):
        restore("ok.safetensors", tensors, other, other.optimizer(TrainingSettings()))
    tensors["trainable.i_star"] = torch.full((6,), float("nan"))
    with pytest.raises(TrainingStateError, match="NaN or Inf"):
        restore("ok.safetensors", tensors, trainables(), trainables().optimizer(TrainingSettings()))
