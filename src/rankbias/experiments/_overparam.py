"""What the two over-parameterisation experiments share (``overparam-classification``,
``overparam-cifar``; docs/overparam.md): the augmentation defaults, the checks of the
depths and seeds, the kernel effective rank of the penultimate embeddings (the input
of ``fc``) and the cost of a forward pass (their figures: :mod:`rankbias.plots.overparam`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rankbias.fit.fast_classify import check_sgd_fields
from rankbias.framework.config import Config
from rankbias.measures import KernelSpectrum

__all__ = ["AUTO_CROP", "AUTO_FLIP", "augment", "embedding_measures", "forward_macs",
           "recording_embeddings", "validate_depths_seeds"]

# random-crop padding and horizontal flips: flips only where the classes are mirror-symmetric
AUTO_CROP = {"digits": 1, "mnist": 2, "fashion-mnist": 2, "cifar10": 4}
AUTO_FLIP = {"digits": False, "mnist": False, "fashion-mnist": True, "cifar10": True}


def validate_depths_seeds(cfg: Config, ints: tuple[str, ...], sgd: bool = True) -> None:
    """The checks both configs make: depths (1 included, distinct), seeds, width, the
    fields ``ints`` that must be ints >= 1, and with ``sgd`` the SGD fields of a config that
    has them itself (:func:`rankbias.fit.fast_classify.check_sgd_fields`; overparam-cifar's
    are in its ``train`` settings, which check themselves)."""
    cfg._require(all(d >= 1 for d in cfg.depths) and 1 in cfg.depths, "depths",
                 "a list of ints >= 1 that includes the baseline 1")
    cfg._require(len(set(cfg.depths)) == len(cfg.depths), "depths", "distinct depths")
    cfg._require(len(cfg.seeds) >= 1 and len(set(cfg.seeds)) == len(cfg.seeds), "seeds",
                 "a non-empty list of distinct ints")
    cfg._require(cfg.width > 0 and math.isfinite(cfg.width), "width", "a finite number > 0")
    for name in ints:
        cfg._require(getattr(cfg, name) >= 1, name, "an int >= 1")
    if sgd:
        check_sgd_fields(cfg)


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip, per image."""
    N, C, H, W = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (N,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (N,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (N,1,H,1)
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (N,1,1,W)
        n = torch.arange(N, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        x = xp[n, c, rows, cols]
    if flip:
        m = (torch.rand(N, generator=gen) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x


@contextlib.contextmanager
def recording_embeddings(model: nn.Module, on: bool = True) -> Iterator[KernelSpectrum | None]:
    """A :class:`KernelSpectrum` fed the inputs of ``model.fc`` (the penultimate embeddings,
    flattened to (N, D)) by every forward pass inside the block (``on=False``: None)."""
    if not on:
        yield None
        return
    spec = KernelSpectrum()

    def record(_module, inputs):
        spec.update(inputs[0].flatten(1))  # returns None: fc's input is left as it is

    hook = model.fc.register_forward_pre_hook(record)
    try:
        yield spec
    finally:
        hook.remove()


def embedding_measures(spec: KernelSpectrum) -> dict:
    """embed_erank, embed_srank (kernel effective / stable rank) and embed_dim of ``spec``."""
    m = spec.measures(["effective_rank", "stable_rank"])
    return {"embed_erank": float(m["effective_rank"]), "embed_srank": float(m["stable_rank"]),
            "embed_dim": spec.dim_}


def forward_macs(model: nn.Module, shape) -> int:
    """Multiply-adds of one forward pass of one image of ``shape`` (C, H, W), counted
    over the Conv2d and Linear layers (BN, ReLU and pooling are memory-bound extras)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape, device=next(model.parameters()).device))
    finally:
        for h in hs:
            h.remove()
    return total
