"""Model families of the experiments (nanoGPT-style model files).

``two_layer_cnn`` (paper 1) and ``deep_linear`` (paper 2) are batched over a
leading model dimension. The image classifiers, by name through
``build_model(name, in_channels, num_classes, **kw)`` (:data:`MODELS`):

============== ===============================================================
``cnn``        :class:`SmallCNN` (three conv stages; ``width``)
``plain-cnn``  :class:`PlainCNN` (``depth`` conv layers, default 4; ``width``)
``resnet``     :class:`CifarResNet`, ``blocks`` basic blocks per stage (1: ResNet-8, 3: ResNet-20)
``resnet8``    ResNet-8 (``width``, 16 in He et al. 2016)
``resnet20``   ResNet-20 (``width``)
``resnet18``   the CIFAR ResNet-18 (fixed widths 64-512)
``vit``        :class:`ViT` (``image_size``, ``patch_size`` 4, ``dim``, ``depth``, ``heads``)
``mlp``        :class:`MLP` on flattened images (``image_size``, ``width``, ``depth``)
============== ===============================================================

Every model has a ``fc`` classifier whose input is the penultimate embedding.
``image_size`` (the side of square inputs) is accepted by every builder: the
ViT and the MLP need it, the conv nets work at any size. ``width`` and
``blocks`` are accepted by ``cnn``, ``resnet`` and ``resnet18`` alike (a sweep
passes them to each), and ``resnet18`` ignores both: its widths and blocks are fixed.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from torch import nn

from rankbias.errors import UnsupportedError
from rankbias.models.cnn import PlainCNN, SmallCNN
from rankbias.models.mlp import MLP
from rankbias.models.resnet import CifarResNet, cifar_resnet8, cifar_resnet18, cifar_resnet20
from rankbias.models.vit import ViT

__all__ = [
    "MLP",
    "MODELS",
    "CifarResNet",
    "PlainCNN",
    "SmallCNN",
    "ViT",
    "build_model",
    "cifar_resnet8",
    "cifar_resnet18",
    "cifar_resnet20",
]


def _cnn(in_channels, num_classes, *, width=16, blocks=1, image_size=None):
    return SmallCNN(in_channels, num_classes, width=width)


def _plain_cnn(in_channels, num_classes, *, width=16, depth=4, batch_norm=True, image_size=None):
    return PlainCNN(in_channels, num_classes, width=width, depth=depth, batch_norm=batch_norm)


def _resnet(in_channels, num_classes, *, width=16, blocks=1, image_size=None):
    return CifarResNet(in_channels, num_classes, blocks=(blocks,) * 3, widths=(width, 2 * width, 4 * width))


def _resnet8(in_channels, num_classes, *, width=16, image_size=None):
    return cifar_resnet8(in_channels, num_classes, width=width)


def _resnet20(in_channels, num_classes, *, width=16, image_size=None):
    return cifar_resnet20(in_channels, num_classes, width=width)


def _resnet18(in_channels, num_classes, *, width=None, blocks=None, image_size=None):
    return cifar_resnet18(in_channels, num_classes)


def _need_size(name: str, image_size) -> int:
    if not isinstance(image_size, int) or image_size < 1:
        raise UnsupportedError(f"model {name!r} needs image_size (the side of its square inputs), "
                               f"got {image_size!r}")
    return image_size


def _vit(in_channels, num_classes, *, image_size=None, patch_size=4, dim=64, depth=4, heads=4,
         mlp_ratio=2.0):
    return ViT(_need_size("vit", image_size), patch_size, in_channels, num_classes, dim=dim,
               depth=depth, heads=heads, mlp_ratio=mlp_ratio)


def _mlp(in_channels, num_classes, *, image_size=None, width=128, depth=3):
    side = _need_size("mlp", image_size)
    return MLP(in_channels * side * side, num_classes, width=width, depth=depth)


#: name -> builder ``f(in_channels, num_classes, **kw) -> nn.Module``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": _cnn,
    "plain-cnn": _plain_cnn,
    "resnet": _resnet,
    "resnet8": _resnet8,
    "resnet20": _resnet20,
    "resnet18": _resnet18,
    "vit": _vit,
    "mlp": _mlp,
}


def build_model(name: str, in_channels: int = 3, num_classes: int = 10, **kw) -> nn.Module:
    """A fresh model ``name`` (see the module docstring for the names and their settings).

    An unknown name, or a setting the model does not have, is an
    :class:`~rankbias.errors.UnsupportedError` (a ``ValueError``) saying what is accepted.
    """
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), MODELS, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnsupportedError(f"unknown model {name!r}{hint} (accepted: {', '.join(MODELS)})")
    builder = MODELS[name]
    params = [p for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY]
    allowed = [p.name for p in params]
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise UnsupportedError(f"model {name!r} has no setting {', '.join(bad)}; accepted: "
                               f"{', '.join(allowed)}")
    if not isinstance(in_channels, int) or in_channels < 1 or not isinstance(num_classes, int) \
            or num_classes < 1:
        raise UnsupportedError(f"in_channels and num_classes must be ints >= 1, got {in_channels!r}, "
                               f"{num_classes!r}")
    return builder(in_channels, num_classes, **kw)
