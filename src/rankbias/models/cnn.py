"""A small VGG-style CNN: three conv-BN-ReLU stages, global average pooling,
a hidden linear layer (the penultimate embedding) and the classifier ``fc``.

Small enough to train in seconds on 8x8 digits, big enough for CIFAR-10 at
width 32-64 (Huh et al. 2023 expand models of this kind, sec. 6)."""

from __future__ import annotations

import torch
from torch import nn

from rankbias.errors import InvalidParameterError


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU())
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.hidden(self.features(x))  # (N, 4w): the penultimate embedding
        return self.fc(z)  # (N, classes)


class PlainCNN(nn.Module):
    """A plain (non-residual) CNN of ``depth`` conv-BN-ReLU layers (3x3, padding 1).

    Widths double and the resolution halves (2x2 max pooling) after every second
    conv layer, so a 4-layer net on 16x16 inputs runs at 16, 16, 8, 8 pixels with
    widths w, w, 2w, 2w. Then global average pooling, a hidden linear layer whose
    output is the penultimate embedding, and the classifier ``fc``. ``batch_norm=False``
    gives a purely conv-ReLU network (the weights then carry the whole scale)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 depth: int = 4, batch_norm: bool = True):
        super().__init__()
        if depth < 1:
            raise InvalidParameterError(f"depth must be >= 1 conv layers, got {depth}")
        layers: list[nn.Module] = []
        cin, w = in_channels, width
        for i in range(depth):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(w)] if batch_norm else []
            layers += [nn.ReLU()]
            cin = w
            if i % 2 == 1 and i < depth - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                w *= 2
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Linear(cin, cin), nn.ReLU())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.hidden(self.features(x))  # (N, C_last): the penultimate embedding
        return self.fc(z)  # (N, classes)
