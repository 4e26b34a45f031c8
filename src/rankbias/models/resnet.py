"""CIFAR-style residual networks (He et al. 2016, "Deep Residual Learning",
sec. 4.2): a 3x3 stem without pooling, stages of basic blocks, global average
pooling, a linear classifier ``fc``. ``blocks=(3, 3, 3)`` is ResNet-20,
``(1, 1, 1)`` ResNet-8; :func:`cifar_resnet18` is the four-stage ResNet-18
commonly trained on CIFAR-10 (64-512 channels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rankbias.errors import InvalidParameterError


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # projection shortcut (option B)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10,
                 blocks: Sequence[int] = (3, 3, 3), widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise InvalidParameterError(f"blocks {blocks} and widths {widths} must be non-empty and of equal length")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                stages.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pool(self.stages(self.stem(x)))  # (N, widths[-1]): penultimate embedding
        return self.fc(z)


def cifar_resnet18(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(in_channels, num_classes, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512))


def cifar_resnet8(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-8: one basic block per stage, widths (w, 2w, 4w) (He et al.: w = 16)."""
    return CifarResNet(in_channels, num_classes, blocks=(1, 1, 1), widths=(width, 2 * width, 4 * width))


def cifar_resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-20: three basic blocks per stage, widths (w, 2w, 4w) (He et al.: w = 16)."""
    return CifarResNet(in_channels, num_classes, blocks=(3, 3, 3), widths=(width, 2 * width, 4 * width))
