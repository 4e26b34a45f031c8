"""A fully connected ReLU network on flattened images: ``depth`` hidden layers of
``width`` units, then the classifier ``fc`` (its input is the penultimate embedding)."""

from __future__ import annotations

import torch
from torch import nn

from rankbias.errors import InvalidParameterError


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int = 10, width: int = 128, depth: int = 3):
        super().__init__()
        if in_features < 1 or width < 1 or depth < 1:
            raise InvalidParameterError(
                f"in_features, width and depth must be >= 1, got {in_features}, {width}, {depth}")
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(d, num_classes)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != self.in_features:
            raise InvalidParameterError(
                f"MLP built for inputs of {self.in_features} values, got samples of shape "
                f"{tuple(x.shape[1:])} ({x[0].numel()} values)")
        z = self.hidden(x)  # (N, width): the penultimate embedding
        return self.fc(z)  # (N, classes)
