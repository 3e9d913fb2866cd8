"""WideResNet-d-k for 32x32 inputs with the CMI / ZSKT (``wresnet.py``) state-dict layout.

Keys: ``conv1``, ``block{1..3}.layer.{i}.{bn1,conv1,bn2,conv2[,convShortcut]}``, ``bn1``, ``fc``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Pre-activation block. When the width changes, the activated input also feeds the 1x1 shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout_rate)
        self.equal_in_out = in_planes == out_planes
        # The checkpoint name is camelCase; only blocks that change width have it.
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``n`` blocks; the first one changes width and stride. Keeps the ``.layer`` key level."""

    def __init__(
        self, n: int, in_planes: int, out_planes: int, stride: int, dropout_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout_rate
                )
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen: ``[B, in_channels, 32, 32] -> [B, num_classes]``.

    ``depth = 6n + 4``; stage widths 16k, 32k, 64k at strides 1/2/2; final BN+ReLU, average pool, ``fc``.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 16, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        # CMI's init: He-normal (fan-out) convs, zero linear bias; BatchNorm keeps PyTorch's 1/0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features ``[B, 64 * widen_factor]``."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def wrn_factory(depth: int, widen_factor: int) -> Callable[..., WideResNet]:
    """The zoo factory ``(num_classes, in_channels) -> WideResNet`` of WRN-``depth``-``widen_factor``."""

    def factory(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = f"wrn_{depth}_{widen_factor}"
    factory.__doc__ = f"WideResNet-{depth}-{widen_factor} for 32x32 inputs."
    return factory
