"""The digits world's data: shapes, ranges, deterministic disjoint splits."""

import torch

from diffdfkd.worlds import get_world, list_worlds
from diffdfkd.worlds.digits import load_private, load_public


def _rows(images):
    return {tuple(row.tolist()) for row in (images[:, 0] * 255).round().to(torch.uint8).flatten(1)}


def test_private_split_sizes_shapes_and_stratification():
    train_x, train_y = load_private("train")
    test_x, test_y = load_private("test")
    assert train_x.shape == (1200, 3, 32, 32) and test_x.shape == (597, 3, 32, 32)
    assert train_x.min() >= 0 and train_x.max() <= 1
    assert torch.equal(train_x[:, 0], train_x[:, 2])  # grey replicated to RGB
    assert train_x[:, :, :6].abs().sum() == 0  # rendered 20 px digit centred with a blank border
    assert train_y.bincount().min() >= 115 and test_y.bincount().min() >= 55


def test_splits_are_deterministic_and_disjoint():
    a, _ = load_private("train")
    b, _ = load_private("train")
    assert torch.equal(a, b)
    train_x, _ = load_private("train")
    test_x, _ = load_private("test")
    assert len(_rows(train_x) & _rows(test_x)) <= 5  # sklearn digits hold a few exact duplicates
    pub_train, _ = load_public("train")
    pub_test, pub_test_y = load_public("test")
    assert len(pub_train) == 4000 and len(pub_test) == 1000
    assert not _rows(pub_train) & _rows(pub_test)
    assert pub_test_y.bincount().min() >= 80  # shuffled before splitting: every class present


def test_world_registry():
    assert "digits" in list_worlds()
    world = get_world("digits")
    assert len(world.class_names) == 10
    images, labels = world.load("public:test")
    assert images.shape[1:] == (3, 32, 32) and len(labels) == len(images)


def test_both_digits_worlds_share_data_and_teacher_but_not_the_prior():
    from diffdfkd.worlds.looks import LOOKS

    broad, mnist = get_world("digits"), get_world("digits-mnist")
    assert broad.looks == LOOKS and mnist.looks == ("plain",)
    assert broad.teacher_weights == mnist.teacher_weights and broad.generator != mnist.generator
    assert broad.private_splits == mnist.private_splits and broad.load_private is mnist.load_private
    assert broad.description != mnist.description


def test_all_shipped_weights_and_data_stay_under_60_mb():
    from diffdfkd.worlds import WEIGHTS_DIR

    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert size < 60e6, f"shipped weights and data are {size / 1e6:.1f} MB"
