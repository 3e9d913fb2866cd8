"""VGG-11 with BatchNorm for 32x32 inputs, with the CMI / RepDistiller state-dict layout.

Five conv blocks ``block0..block4``; each is ``[conv, bn, relu, conv, bn, ...]`` without the final ReLU
(it is applied in ``forward``), so keys are ``block{b}.{0,1,3,4}``; the head is ``classifier``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Configuration "A" (VGG-11), split into the five blocks.
VGG11_CFG: list[list[int]] = [[64], [128], [256, 256], [512, 512], [512, 512]]


def _make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """3x3 conv (with bias) + BatchNorm + ReLU per width, dropping the block's last ReLU."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG-BN: ``[B, in_channels, H, W] -> [B, num_classes]``.

    Max-pool after blocks 0-2 (and after block 3 only for 64x64 inputs, as in CMI), so a 32x32 input
    reaches block 4 at 4x4; then global average pool and a linear ``classifier`` on 512 features.
    """

    def __init__(self, cfg: list[list[int]], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        channels = [in_channels] + [widths[-1] for widths in cfg]
        for index, widths in enumerate(cfg):
            self.add_module(f"block{index}", _make_block(widths, channels[index]))
        self.classifier = nn.Linear(channels[-1], num_classes)
        # CMI's init: He-normal (fan-out) convs, N(0, 0.01) classifier, zero biases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features ``[B, 512]``."""
        height = x.shape[2]
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if height == 64:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11 with BatchNorm (configuration "A")."""
    return VGG(VGG11_CFG, num_classes=num_classes, in_channels=in_channels)
