"""A small VGG-style CNN: three conv-BN-ReLU stages, global average pooling,
a hidden linear layer (the penultimate embedding) and the classifier ``fc``.

Small enough to train in seconds on 8x8 digits, big enough for CIFAR-10 at
width 32-64 (Huh et al. 2023 expand models of this kind, sec. 6)."""

from __future__ import annotations

import torch
from torch import nn


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
