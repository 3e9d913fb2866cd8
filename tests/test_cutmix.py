"""Latent CutMix: exactly one box per group changes, in all channels, from a same-class partner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffdfkd.augment.cutmix import LatentCutMix

CLASSES = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])  # two groups of 6


def one_hot(classes: torch.Tensor, k: int = 3) -> torch.Tensor:
    return F.one_hot(classes, k).float()


def group_generators(seed: int, groups: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 100 + g) for g in range(groups)]


def changed_box(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, int, int] | None:
    """The bounding box of changed latent pixels of one sample ``[C, h, w]``, or None."""
    mask = (before != after).any(dim=0)
    if not mask.any():
        return None
    ys, xs = mask.nonzero(as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def test_same_class_cutmix_changes_exactly_one_box_from_a_same_class_partner() -> None:
    aug = LatentCutMix()
    nonempty = 0
    for seed in range(12):
        z = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        targets = one_hot(CLASSES)
        mixed, new_targets = aug(z, targets, group_generators(seed, 2))
        assert torch.equal(new_targets, targets), "same-class mixing keeps the labels"
        for g in range(2):
            members = range(6 * g, 6 * g + 6)
            boxes = {changed_box(z[i], mixed[i]) for i in members} - {None}
            if not boxes:
                continue
            nonempty += 1
            assert len(boxes) == 1, "one box per group"
            y1, y2, x1, x2 = boxes.pop()
            outside = torch.ones(8, 8, dtype=torch.bool)
            outside[y1:y2, x1:x2] = False
            for i in members:
                assert torch.equal(mixed[i][:, outside], z[i][:, outside]), "nothing outside the box changes"
                box = mixed[i][:, y1:y2, x1:x2]
                partners = [j for j in members if j != i and torch.equal(z[j][:, y1:y2, x1:x2], box)]
                assert partners, "all channels of the box come from one other sample of the group"
                assert all(CLASSES[j] == CLASSES[i] for j in partners), "the partner has the same class"
    assert nonempty >= 12, "most draws give a non-empty box"


def test_sample_alone_in_its_class_is_left_unchanged() -> None:
    z = torch.randn(4, 4, 8, 8)
    targets = one_hot(torch.tensor([0, 0, 0, 1]))
    for seed in range(5):
        mixed, _ = LatentCutMix()(z, targets, group_generators(seed, 1))
        assert torch.equal(mixed[3], z[3])


def test_cross_class_mixes_targets_by_box_area() -> None:
    aug = LatentCutMix(cross_class=True)
    z = torch.randn(6, 4, 8, 8)
    targets = one_hot(torch.tensor([0, 1, 2, 0, 1, 2]))
    for seed in range(8):
        mixed, new_targets = aug(z, targets, group_generators(seed, 1))
        assert torch.allclose(new_targets.sum(dim=1), torch.ones(6))
        for i in range(6):
            box = changed_box(z[i], mixed[i])
            area = 0.0 if box is None else (box[1] - box[0]) * (box[3] - box[2]) / 64
            if box is None:
                assert torch.equal(new_targets[i], targets[i])
            else:
                y1, y2, x1, x2 = box
                (j,) = [
                    j
                    for j in range(6)
                    if j != i and torch.equal(z[j][:, y1:y2, x1:x2], mixed[i][:, y1:y2, x1:x2])
                ]
                expected = (1 - area) * targets[i] + area * targets[j]
                assert torch.allclose(new_targets[i], expected, atol=1e-6)


def test_a_group_mixes_the_same_alone_or_in_a_larger_batch() -> None:
    z = torch.randn(12, 4, 8, 8)
    targets = one_hot(CLASSES)
    together, _ = LatentCutMix()(z, targets, group_generators(3, 2))
    alone, _ = LatentCutMix()(z[6:], targets[6:], group_generators(3, 2)[1:])
    assert torch.equal(together[6:], alone)


def test_steps_at_fifths_of_the_schedule() -> None:
    aug = LatentCutMix()
    assert [i for i in range(50) if aug.applies(i, 50)] == [10, 20, 30, 40]
    assert [i for i in range(20) if aug.applies(i, 20)] == [4, 8, 12, 16]
    with pytest.raises(ValueError, match="fractions"):
        LatentCutMix(at=(0.0, 0.5))
