"""The teacher-loss terms against hand computation, and their batch semantics (per sample, group, batch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffdfkd.baselines.deepinversion import DeepInversionSource
from diffdfkd.guidance.teacher_loss import (
    BNStatistics,
    NoBatchNormError,
    Units,
    adversarial,
    cross_entropy,
    l2_prior,
    tv_l1,
    tv_l2,
)
from diffdfkd.models.teacher import load_teacher


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    first = nn.BatchNorm2d(3).eval()
    first.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
    first.running_var.copy_(torch.tensor([1.0, 2.0, 0.5]))
    return nn.Sequential(first, nn.ReLU(), nn.BatchNorm2d(3).eval())


def bn_by_hand(model: nn.Module, x: torch.Tensor, unit: int) -> float:
    """``sum_layers sum_units ||mean - running_mean|| + ||var - running_var||`` over units of ``unit``."""
    total = 0.0
    with torch.no_grad():
        for layer, inp in ((model[0], x), (model[2], F.relu(model[0](x)))):
            for start in range(0, len(x), unit):
                part = inp[start : start + unit]
                mean = part.mean(dim=(0, 2, 3))
                var = part.var(dim=(0, 2, 3), unbiased=False)
                total += float((mean - layer.running_mean).norm() + (var - layer.running_var).norm())
    return total


def bn_value(model: nn.Module, x: torch.Tensor, units: Units) -> float:
    with BNStatistics(model, units) as bn:
        model(x)
        return bn.loss().item()


@pytest.mark.parametrize(
    ("units", "unit"), [(Units("sample"), 1), (Units("group", 2), 2), (Units("batch"), 4)]
)
def test_bn_statistics_is_the_sum_over_units_and_layers_of_unsquared_norms(units, unit) -> None:
    model = bn_model()
    x = torch.randn(4, 3, 5, 5)
    assert bn_value(model, x, units) == pytest.approx(bn_by_hand(model, x, unit), rel=1e-5)
    assert not any(m._forward_hooks for m in model.modules()), "hooks are removed on exit"


def test_first_layer_weight_multiplies_only_the_first_layers_distance() -> None:
    model = bn_model()
    x = torch.randn(4, 3, 5, 5)
    plain = bn_value(model, x, Units("sample"))
    with BNStatistics(model, Units("sample"), first_layer_weight=10.0) as bn:
        model(x)
        weighted = bn.loss().item()
    with BNStatistics(model[0], Units("sample")) as bn:
        model[0](x)
        first = bn.loss().item()
    assert weighted == pytest.approx(plain + 9.0 * first, rel=1e-5)


def test_per_sample_weight_charges_each_image_its_units_distance() -> None:
    model = bn_model()
    x = torch.randn(4, 3, 5, 5)
    with BNStatistics(model, Units("group", 2), per_sample_weight=True) as bn:
        model(x)
        charged = bn.loss().item()
    assert charged == pytest.approx(2 * bn_value(model, x, Units("group", 2)), rel=1e-5)
    with BNStatistics(model, Units("sample"), per_sample_weight=True) as bn:
        model(x)
        assert bn.loss().item() == pytest.approx(bn_value(model, x, Units("sample")), rel=1e-5)


def test_per_sample_statistics_are_each_images_own_and_differ_from_per_group() -> None:
    model = bn_model()
    x = torch.randn(4, 3, 5, 5)
    alone = sum(bn_value(model, x[i : i + 1], Units("batch")) for i in range(4))
    assert bn_value(model, x, Units("sample")) == pytest.approx(alone, rel=1e-5)
    assert bn_value(model, x, Units("group", 1)) == pytest.approx(alone, rel=1e-5)
    assert bn_value(model, x, Units("group", 2)) != pytest.approx(alone, rel=1e-3)


@pytest.mark.parametrize("units", [Units("sample"), Units("group", 2)])
def test_a_units_loss_does_not_depend_on_the_rest_of_the_batch(units) -> None:
    """Images independent of batch layout: the loss of a batch is the sum of its halves' losses."""
    model = bn_model()
    x = torch.randn(4, 3, 5, 5)
    logits, targets = torch.randn(4, 3), F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    halves = bn_value(model, x[:2], units) + bn_value(model, x[2:], units)
    assert bn_value(model, x, units) == pytest.approx(halves, rel=1e-5)
    ce_halves = cross_entropy(logits[:2], targets[:2], units) + cross_entropy(logits[2:], targets[2:], units)
    assert cross_entropy(logits, targets, units).item() == pytest.approx(ce_halves.item(), rel=1e-6)


def test_bn_statistics_refuses_a_batch_of_partial_groups() -> None:
    with pytest.raises(ValueError, match="whole number of groups of 3"):
        bn_value(bn_model(), torch.randn(4, 3, 5, 5), Units("group", 3))


def test_cross_entropy_takes_soft_targets_and_means_within_a_unit() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0]])
    log_p = F.log_softmax(logits, dim=1)
    expected = -(log_p[0, 0] + 0.25 * log_p[1, 0] + 0.75 * log_p[1, 1])
    assert cross_entropy(logits, targets, Units("sample")).item() == pytest.approx(expected.item())
    assert cross_entropy(logits, targets, Units("group", 2)).item() == pytest.approx(expected.item() / 2)
    assert cross_entropy(logits, targets, Units("batch")).item() == pytest.approx(
        F.cross_entropy(logits, targets).item()
    )


def test_adversarial_counts_only_agreeing_samples() -> None:
    teacher = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    student = torch.tensor([[1.0, 0.5], [1.0, 0.0]])  # agrees on sample 0 only
    p_t, p_s = teacher.softmax(1), student.softmax(1)
    kl0 = (p_t[0] * (p_t[0].log() - p_s[0].log())).sum()
    assert adversarial(teacher, student, Units("sample")).item() == pytest.approx(-kl0.item(), rel=1e-5)


def test_total_variation_is_zero_on_flat_images_and_counts_neighbour_differences() -> None:
    flat = torch.full((2, 3, 4, 4), 0.3)
    assert tv_l1(flat, Units("sample")) == 0 and tv_l2(flat, Units("sample")) == 0
    stripes = torch.zeros(1, 1, 2, 2)
    stripes[..., 1] = 0.5  # every horizontal neighbour differs by 0.5, no vertical one
    assert tv_l1(stripes, Units("sample")) == 0.5
    assert tv_l2(stripes, Units("sample")) == 0.25
    assert tv_l2(stripes.repeat(3, 1, 1, 1), Units("sample")) == 0.75
    assert tv_l2(stripes.repeat(3, 1, 1, 1), Units("batch")) == 0.25


def test_l2_prior_is_the_mean_square_per_sample() -> None:
    x = torch.tensor([[1.0, -1.0, 2.0, 0.0], [3.0, 0.0, 0.0, 1.0]])
    assert l2_prior(x, Units("sample")).item() == pytest.approx(6 / 4 + 10 / 4)


def test_units_are_validated() -> None:
    with pytest.raises(ValueError, match="sample, group, batch"):
        Units("image")
    with pytest.raises(ValueError, match="group_size"):
        Units("sample", 4)


def test_a_teacher_without_batchnorm_is_refused_naming_the_ways_out() -> None:
    with pytest.raises(NoBatchNormError, match=r"has no BatchNorm layer.*bn_weight=0"):
        BNStatistics(nn.Sequential(nn.Conv2d(3, 3, 1)), Units("sample"))


def test_a_scripted_model_handed_in_directly_is_refused_naming_its_layers() -> None:
    scripted = torch.jit.script(bn_model())
    with pytest.raises(NoBatchNormError, match=r"2 BatchNorm layers \(0, 2\).*TorchScript.*load_teacher"):
        BNStatistics(scripted, Units("sample"))


@pytest.fixture(scope="module")
def scripted_teacher_file(make_teacher, tmp_path_factory):
    """The tiny random teacher's network (BatchNorm layers with non-trivial statistics) as TorchScript."""
    teacher = make_teacher()
    with torch.no_grad():
        for layer in teacher.model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("scripted") / "teacher.pt"
    torch.jit.save(torch.jit.script(teacher.model), str(path))
    return teacher, path


def test_a_torchscript_teacher_with_batchnorm_gets_the_same_bn_loss_and_logits(scripted_teacher_file) -> None:
    eager, path = scripted_teacher_file
    scripted = load_teacher("", path, class_names=eager.class_names, input_size=eager.input_size)
    hooked = [m for m in scripted.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(hooked) == sum(isinstance(m, nn.BatchNorm2d) for m in eager.model.modules()) > 0
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    losses, grads = [], []
    for teacher in (eager, scripted):
        with BNStatistics(teacher.model, Units("group", 2)) as bn:
            logits = teacher(images)
            loss = bn.loss()
        losses.append(loss.item())
        grads.append(torch.autograd.grad(loss + logits.sum(), images)[0])
        assert torch.equal(logits, eager(images))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6) and losses[0] > 0
    assert torch.allclose(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_deepinversion_runs_on_a_torchscript_teacher(scripted_teacher_file, make_config, tmp_path) -> None:
    eager, path = scripted_teacher_file
    scripted = load_teacher("", path, class_names=eager.class_names, input_size=eager.input_size)
    config = make_config(tmp_path, **{"synth.source": "deepinversion", "deepinversion.iterations": 2})
    source = DeepInversionSource(config, scripted)
    targets = F.one_hot(torch.arange(config.synth.group_size) % 3, 3).float()
    batch = source.generate(torch.arange(config.synth.group_size), targets)
    assert batch.logs[0]["bn"] > 0 and torch.isfinite(batch.images).all()
