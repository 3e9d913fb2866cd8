"""Teacher-side measurements of a set of images: the BatchNorm-statistics distance of the whole set."""

import pytest
import torch
from torch import nn

from diffdfkd.evaluate import bn_statistics_distance
from diffdfkd.guidance.teacher_loss import BNStatistics, Units
from diffdfkd.models import build_teacher
from diffdfkd.worlds import get_world


def _with_running_statistics(teacher, seed: int = 0):
    """Give every BatchNorm layer running statistics other than 0 / 1, as a trained teacher has."""
    generator = torch.Generator().manual_seed(seed)
    for layer in teacher.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=generator) * 0.3)
            layer.running_var.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
    return teacher


def test_the_whole_set_is_one_unit_of_the_guidance_term(make_teacher):
    teacher = _with_running_statistics(make_teacher())
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), BNStatistics(teacher.model, Units("batch")) as bn:
        teacher(images)
        expected = float(bn.loss())
    assert bn_statistics_distance(teacher, images) == pytest.approx(expected, rel=1e-5)


def test_a_set_is_the_same_set_under_any_batching(make_teacher):
    teacher = _with_running_statistics(make_teacher())
    images = torch.rand(11, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    images[5:] *= 0.2  # two halves with other statistics: a per-batch distance would depend on the batching
    whole = bn_statistics_distance(teacher, images)
    assert bn_statistics_distance(teacher, images, batch_size=3) == pytest.approx(whole, rel=1e-9)
    assert bn_statistics_distance(teacher, images.flip(0), batch_size=4) == pytest.approx(whole, rel=1e-9)
    # which a mean of per-batch distances would not be: the check above has teeth
    halves = [bn_statistics_distance(teacher, part) for part in (images[:5], images[5:])]
    assert abs(sum(halves) / 2 - whole) > 1e-3 * whole


def test_the_teachers_own_data_is_closer_than_noise():
    world = get_world("digits")
    teacher = build_teacher(world.teacher_spec())
    own, _ = world.load("private:test")
    noise = torch.rand(len(own), *own.shape[1:], generator=torch.Generator().manual_seed(0))
    assert bn_statistics_distance(teacher, own) < 0.5 * bn_statistics_distance(teacher, noise)


def test_no_batchnorm_gives_none_and_bad_shapes_are_refused(make_teacher):
    assert (
        bn_statistics_distance(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.rand(2, 3, 2, 2)) is None
    )
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\]"):
        bn_statistics_distance(make_teacher(), torch.rand(0, 3, 32, 32))
