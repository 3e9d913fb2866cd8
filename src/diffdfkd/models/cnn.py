"""Small BatchNorm CNNs for 32x32 inputs, cheap enough to train on CPU in a minute or two.

They carry ``BatchNorm2d`` layers because the guidance matches the teacher's BatchNorm statistics.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class LeNet5(nn.Module):
    """LeNet-5 with BatchNorm: ``[B, in_channels, 32, 32] -> [B, num_classes]``.

    Two 5x5 valid convs (6, 16 channels) each followed by BN, ReLU and 2x2 max-pool (32 -> 28 -> 14
    -> 10 -> 5), then fully connected 400 -> 120 -> 84 -> num_classes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 6, 5, padding=0),
            nn.MaxPool2d(2),
            *_conv_bn_relu(6, 16, 5, padding=0),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class SmallCNN(nn.Module):
    """Four 3x3 conv+BN+ReLU layers (32, 32, 64, 128 channels) with max-pools, global average pool
    and a linear head: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32, 3, padding=1),
            nn.MaxPool2d(2),  # 16x16
            *_conv_bn_relu(32, 32, 3, padding=1),
            nn.MaxPool2d(2),  # 8x8
            *_conv_bn_relu(32, 64, 3, padding=1),
            nn.MaxPool2d(2),  # 4x4
            *_conv_bn_relu(64, 128, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def lenet5(num_classes: int = 10, in_channels: int = 3) -> LeNet5:
    """LeNet-5 with BatchNorm after each conv."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


def cnn_small(num_classes: int = 10, in_channels: int = 3) -> SmallCNN:
    """Four-layer conv+BN CNN (~100k parameters)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)
