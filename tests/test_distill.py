"""Stage 2: the KD loss, augmentation, the training loop (CE and KD), resume, EMA and evaluation.

Expected values are computed by hand in the tests (``math``, plain Python), not with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from diffdfkd.config import ConfigError, DistillConfig
from diffdfkd.distill import (
    FitError,
    RandomCrop,
    RandomHFlip,
    TensorData,
    fit,
    kd_loss,
    lr_factor,
    split_holdout,
)
from diffdfkd.evaluate import evaluate
from diffdfkd.models import create_model

# --- helpers -------------------------------------------------------------------------------------------


class Tiny(nn.Module):
    """conv + BN + ReLU + global pool + (dropout) + linear, for ``[B, 3, H, W]`` images."""

    def __init__(self, num_classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3), keepdim=True))


def tiny(seed: int, num_classes: int = 3, dropout: float = 0.0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(num_classes, dropout)


def colour_data(n: int = 48, size: int = 8, num_classes: int = 3, seed: int = 0) -> TensorData:
    """Separable set: class c has channel c bright, the others dim; plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = 0.3 * torch.rand(n, 3, size, size, generator=g)
    images[torch.arange(n), labels] += 0.6
    return TensorData(images.clamp(0, 1), labels)


RECIPE = DistillConfig(
    epochs=4, batch_size=16, lr=0.1, temperature=2.0, crop_padding=1, amp=False, holdout_fraction=0.25
)


def recipe(**changes) -> DistillConfig:
    from dataclasses import replace

    return replace(RECIPE, **changes)


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in history]


# --- kd_loss -------------------------------------------------------------------------------------------


def _hand_kd(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """T^2 * mean_b sum_k p_t log(p_t / p_s), softmaxes at temperature T, in plain Python."""

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]

    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s, p_t = softmax(s_row), softmax(t_row)
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    return t * t * total / len(student)


def test_kd_loss_matches_the_formula_by_hand():
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    teacher = [[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    for temperature in (1.0, 4.0):
        got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
        assert got.ndim == 0
        assert got.item() == pytest.approx(_hand_kd(student, teacher, temperature), rel=1e-5)


def test_kd_loss_is_zero_for_equal_logits_and_grads_only_reach_the_student():
    logits = torch.randn(5, 10)
    assert kd_loss(logits, logits.clone(), 30.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(5, 10, requires_grad=True)
    teacher = torch.randn(5, 10, requires_grad=True)
    kd_loss(student, teacher, 4.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_kd_loss_t_squared_keeps_the_scale_at_high_temperature():
    # For large T, T^2 * KL -> 1/(2K) * mean_b ||(s - mean s) - (t - mean t)||^2 (Hinton et al. 2015);
    # without the T^2 factor the loss would vanish like 1/T^2.
    student = [[1.0, 2.0, 3.0, 0.0], [0.5, -1.0, 0.0, 2.0]]
    teacher = [[3.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, -2.0]]
    k = 4
    limit = 0.0
    for s, t in zip(student, teacher, strict=True):
        ds = [v - sum(s) / k for v in s]
        dt = [v - sum(t) / k for v in t]
        limit += sum((a - b) ** 2 for a, b in zip(ds, dt, strict=True)) / (2 * k)
    limit /= len(student)
    got = kd_loss(
        torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64), 300.0
    )
    assert got.item() == pytest.approx(limit, rel=1e-2)


def test_kd_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


# --- augmentation, schedule, split, config ---------------------------------------------------------------


def test_random_crop_is_a_seeded_window_of_the_padded_image():
    images = torch.rand(6, 3, 5, 5)
    crop = RandomCrop(2)
    out = crop(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    assert torch.equal(out, crop(images, torch.Generator().manual_seed(1)))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        windows = [padded[i, :, y : y + 5, x : x + 5] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(RandomCrop(0)(images, torch.Generator()), images)


def test_random_hflip_mirrors_some_images_and_keeps_the_others():
    images = torch.rand(32, 3, 4, 4)
    out = RandomHFlip()(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 32


def test_lr_schedule_warmup_cosine_and_multistep():
    cosine = DistillConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    assert lr_factor(cosine, 0, 5) == pytest.approx(1 / 10)
    assert lr_factor(cosine, 9, 5) == pytest.approx(1.0)
    assert lr_factor(cosine, 10, 5) == pytest.approx(1.0)
    assert lr_factor(cosine, 30, 5) == pytest.approx(0.5)  # half way through the 40 post-warmup steps
    steps = DistillConfig(epochs=8, schedule="multistep", milestones=(0.5, 0.75), lr_decay=0.1)
    assert [lr_factor(steps, e * 2, 2) for e in (0, 3, 4, 5, 6, 7)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_split_holdout_is_a_seeded_partition():
    train, hold = split_holdout(50, 0.2, seed=3)
    assert len(hold) == 10 and len(train) == 40
    assert sorted(torch.cat([train, hold]).tolist()) == list(range(50))
    assert torch.equal(hold, split_holdout(50, 0.2, seed=3)[1])
    assert not torch.equal(hold, split_holdout(50, 0.2, seed=4)[1])
    assert len(split_holdout(50, 0.0, seed=0)[1]) == 0


def test_recipe_validation():
    with pytest.raises(ConfigError, match="milestones"):
        DistillConfig(milestones=(0.8, 0.5))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        DistillConfig(epochs=3, warmup_epochs=3)


# --- fit -----------------------------------------------------------------------------------------------


def test_fit_with_cross_entropy_learns_and_writes_logs(tmp_path):
    data = colour_data()
    train_idx, hold_idx = split_holdout(len(data), 0.25, seed=0)
    model = tiny(0)
    result = fit(
        model,
        data.subset(train_idx),
        holdout=data.subset(hold_idx),
        recipe=recipe(epochs=6),
        out_dir=tmp_path,
        normalize=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        progress=False,
    )
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert result.holdout_top1 == 1.0 and result.best_holdout == 1.0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["epoch", "loss", "lr", "holdout_top1", "images_per_s", "seconds"]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 7
    assert any((tmp_path / "tb").iterdir())
    saved = load_file(str(tmp_path / "last.safetensors"))
    assert states_equal(saved, model.state_dict())  # no normalisation wrapper in the saved keys
    assert (tmp_path / "best_holdout.safetensors").is_file()


def test_fit_with_a_teacher_distils(tmp_path):
    data = colour_data()
    teacher = tiny(0)
    fit(teacher, data, recipe=recipe(epochs=6), out_dir=tmp_path / "teacher", progress=False)
    train_idx, hold_idx = split_holdout(len(data), 0.25, seed=0)
    result = fit(
        tiny(1),
        data.subset(train_idx),
        holdout=data.subset(hold_idx),
        teacher=teacher,
        recipe=recipe(epochs=6, ce_weight=0.5),
        out_dir=tmp_path / "student",
        progress=False,
    )
    first, last = result.history[0], result.history[-1]
    assert {"loss", "kd", "ce", "holdout_top1", "holdout_agreement"} <= last.keys()
    assert last["loss"] == pytest.approx(last["kd"] + 0.5 * last["ce"], rel=1e-5)
    assert last["kd"] < 0.5 * first["kd"]
    assert result.holdout_agreement == 1.0


def test_the_kd_teacher_sees_the_students_augmented_view_at_every_step(tmp_path):
    """Fails if the teacher's logits were cached per image, or computed on the un-augmented images."""
    data = colour_data(n=16)
    student, teacher = tiny(1), tiny(0).eval()
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    for name, module in (("student", student), ("teacher", teacher)):
        module.register_forward_pre_hook(
            lambda m, args, name=name: seen[name].append(args[0].detach().clone())
        )
    fit(
        student,
        data,
        teacher=teacher,
        recipe=recipe(epochs=2, batch_size=8, crop_padding=2, hflip=True),
        out_dir=tmp_path,
        progress=False,
    )
    steps = [x for x in seen["student"] if len(x) == 8]  # the training steps (not the input checks)
    teacher_steps = [x for x in seen["teacher"] if len(x) == 8]
    assert len(steps) == 4 and len(teacher_steps) == 4, "the teacher runs at every step"
    assert all(torch.equal(t, s) for t, s in zip(teacher_steps, steps, strict=True)), "on the same view"
    raw = {tuple(img.flatten().tolist()) for img in data.images}
    assert not all(tuple(img.flatten().tolist()) in raw for x in steps for img in x), "views are augmented"
    first_epoch = {tuple(img.flatten().tolist()) for x in steps[:2] for img in x}
    assert any(tuple(img.flatten().tolist()) not in first_epoch for x in steps[2:] for img in x), (
        "each epoch draws new views"
    )


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path, ema_decay):
    data = colour_data()
    teacher = tiny(5)
    run = recipe(
        epochs=4, ema_decay=ema_decay, hflip=True, schedule="multistep", milestones=(0.5,), warmup_epochs=1
    )
    kwargs = dict(teacher=teacher, holdout=colour_data(12, seed=1), recipe=run, seed=7, progress=False)
    straight = tiny(0, dropout=0.2)
    full = fit(straight, data, out_dir=tmp_path / "straight", **kwargs)

    fit(tiny(0, dropout=0.2), data, out_dir=tmp_path / "cut", stop_after=2, **kwargs)
    resumed_model = tiny(3, dropout=0.2)  # other initial weights: everything must come from the checkpoint
    resumed = fit(resumed_model, data, out_dir=tmp_path / "cut", resume=True, **kwargs)

    assert states_equal(resumed_model.state_dict(), straight.state_dict())
    assert states_equal(
        load_file(str(tmp_path / "cut" / "last.safetensors")),
        load_file(str(tmp_path / "straight" / "last.safetensors")),
    )
    assert without_timing(resumed.history) == without_timing(full.history)
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 5


def test_resume_refuses_a_changed_recipe_and_names_the_keys(tmp_path):
    data = colour_data()
    fit(tiny(0), data, recipe=recipe(), out_dir=tmp_path, stop_after=1, progress=False)
    with pytest.raises(FitError, match=r"lr \(0\.1 -> 0\.2\)") as error:
        fit(tiny(0), data, recipe=recipe(lr=0.2, epochs=5), out_dir=tmp_path, resume=True, progress=False)
    assert "epochs" in str(error.value)
    with pytest.raises(FitError, match="seed"):
        fit(tiny(0), data, recipe=recipe(), out_dir=tmp_path, resume=True, seed=1, progress=False)
    with pytest.raises(FitError, match="already holds a checkpoint"):
        fit(tiny(0), data, recipe=recipe(), out_dir=tmp_path, progress=False)
    with pytest.raises(FitError, match="nothing to resume"):
        fit(tiny(0), data, recipe=recipe(), out_dir=tmp_path / "empty", resume=True, progress=False)


def test_ema_weights_are_evaluated_and_saved(tmp_path):
    model = tiny(0)
    fit(model, colour_data(), recipe=recipe(epochs=2, ema_decay=0.9), out_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    last = load_file(str(tmp_path / "last.safetensors"))
    assert states_equal(last, state["ema"])
    assert not torch.equal(state["ema"]["head.2.weight"], state["model"]["head.2.weight"])
    assert states_equal(model.state_dict(), last)  # the model ends with the EMA weights


def test_clear_errors_for_inputs_the_models_cannot_take(tmp_path):
    data16 = colour_data(size=16)
    with pytest.raises(FitError, match=r"student LeNet5 cannot take images of shape \(3, 16, 16\)"):
        fit(create_model("lenet5", 3), data16, teacher=tiny(0), recipe=recipe(), out_dir=tmp_path)
    with pytest.raises(FitError, match="teacher has 5 classes but student Tiny has 3"):
        fit(tiny(0), colour_data(), teacher=tiny(0, num_classes=5), recipe=recipe(), out_dir=tmp_path)
    with pytest.raises(FitError, match=r"labels lie in \[0, 2\] but model Tiny has 2 classes"):
        fit(tiny(0, num_classes=2), colour_data(), recipe=recipe(), out_dir=tmp_path)
    with pytest.raises(FitError, match="smaller than one batch"):
        fit(tiny(0), colour_data(8), recipe=recipe(), out_dir=tmp_path)
    with pytest.raises(FitError, match=r"\[0, 1\]"):
        fit(
            tiny(0),
            TensorData(colour_data().images * 255, colour_data().labels),
            recipe=recipe(),
            out_dir=tmp_path,
        )
    assert not (tmp_path / "state.pt").exists()


# --- evaluate ------------------------------------------------------------------------------------------


class Passthrough(nn.Module):
    """Logits are the image's pixels: ``[N, 1, 1, K] -> [N, K]``."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_evaluate_confusion_matrix_on_a_hand_made_example():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = [0, 1, 1, 2, 0, 3]  # class 3 never occurs as a label
    images = torch.nn.functional.one_hot(torch.tensor(preds), 4).float().view(6, 1, 1, 4)
    report = evaluate(Passthrough(), images, labels, batch_size=4)
    assert report["n"] == 6
    assert report["top1"] == pytest.approx(3 / 6)
    assert report["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]]
    assert report["per_class"][:3] == pytest.approx([0.5, 1.0, 1 / 3])
    assert math.isnan(report["per_class"][3])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        evaluate(Passthrough(), images, labels + 2)


def test_one_ema_and_one_schedule_for_every_trainer():
    """``ModelEma``: ``ema = d ema + (1 - d) w`` on float entries, integer buffers copied, the decay
    warming up as ``(1 + n) / (10 + n)`` when asked; ``warmup_cosine``: linear warm-up, cosine to 0."""
    from diffdfkd.distill import ModelEma, warmup_cosine

    model = nn.BatchNorm1d(2)
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((2,), 0.9 * 1.0 + 0.1 * 2.0))
    assert int(ema.module.num_batches_tracked) == 7 and not ema.module.weight.requires_grad
    warm = ModelEma(nn.BatchNorm1d(2), decay=0.99, warmup=True)
    assert warm.decay_at(0) == pytest.approx(0.1) and warm.decay_at(10_000) == 0.99
    warm.update(model, step=0)
    assert torch.allclose(warm.module.weight, torch.full((2,), 0.1 * 1.0 + 0.9 * 2.0))
    assert [warmup_cosine(s, 12, 2) for s in (0, 1, 2, 7, 12, 20)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    )
