"""Model families of the experiments (nanoGPT-style model files).

``two_layer_cnn`` (paper 1) and ``deep_linear`` (paper 2) are batched over a
leading model dimension. The image classifiers:

``build_model(name, in_channels, num_classes, **kw)`` by name: ``"cnn"``
(:class:`SmallCNN`), ``"resnet"`` (:class:`CifarResNet`, ResNet-8/20-style) and
``"resnet18"`` (the CIFAR variant of ResNet-18). Every model has a ``fc``
classifier whose input is the penultimate embedding.
"""

from __future__ import annotations

from torch import nn

from rankbias.models.cnn import SmallCNN
from rankbias.models.resnet import CifarResNet, cifar_resnet18

__all__ = ["MODELS", "CifarResNet", "SmallCNN", "build_model", "cifar_resnet18"]

MODELS = ("cnn", "resnet", "resnet18")


def build_model(name: str, in_channels: int, num_classes: int, width: int = 16,
                blocks: int = 1) -> nn.Module:
    """A fresh model: ``width`` is the first stage's channels, ``blocks`` the
    residual blocks per stage (``resnet`` only; 3 gives ResNet-20)."""
    if name == "cnn":
        return SmallCNN(in_channels, num_classes, width=width)
    if name == "resnet":
        return CifarResNet(in_channels, num_classes, blocks=(blocks,) * 3,
                           widths=(width, 2 * width, 4 * width))
    if name == "resnet18":
        return cifar_resnet18(in_channels, num_classes)
    raise ValueError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
