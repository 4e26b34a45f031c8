"""Matrix-fitting tasks: recover an n x n map from noisy input/output pairs.

Huh et al. (2023), "The Low-Rank Simplicity Bias in Deep Networks", sec. 4 (see
``docs/paper2-depth.md``, C.2): a target map W* (low rank, or full rank) is
observed through pairs (x, W* x + noise); which of the matrices that fit the
pairs an optimiser finds is decided by the parameterisation's implicit bias.
The trainers live in :mod:`rankbias.fit.deep_linear`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import torch

from rankbias.errors import InvalidParameterError

__all__ = ["MatrixFitTask", "TARGETS", "TargetKind", "make_task"]

TargetKind = Literal["low_rank", "full_rank"]
TARGETS: tuple[TargetKind, ...] = get_args(TargetKind)


@dataclasses.dataclass(frozen=True)
class MatrixFitTask:
    """One problem: fit ``target`` (n x n) from ``x_train`` -> ``y_train``."""

    target: torch.Tensor
    """W* (n, n), scaled so that ||W*||_F^2 = n (E|W* x|^2 = n for x ~ N(0, I))."""
    x_train: torch.Tensor
    """(n_train, n) Gaussian inputs."""
    y_train: torch.Tensor
    """(n_train, n) = x_train W*^T (+ noise)."""
    x_test: torch.Tensor
    """(n_test, n) held-out Gaussian inputs."""
    y_test: torch.Tensor
    """(n_test, n) = x_test W*^T."""


def make_task(
    n: int,
    kind: TargetKind,
    *,
    rank: int = 1,
    n_train: int,
    n_test: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> MatrixFitTask:
    """A random target and its data. ``low_rank``: U V^T with U, V random n x
    ``rank`` orthonormal frames, all non-zero singular values equal (entropy
    rank log ``rank``). ``full_rank``: an i.i.d. Gaussian matrix (singular
    values spread by the quarter-circle law). Both rescaled to ||W*||_F^2 = n.
    ``noise``: std of i.i.d. Gaussian noise added to the training outputs (the
    test outputs stay clean, so the test loss is ||W - W*||_F^2 / n in expectation)."""
    if kind not in TARGETS:
        raise InvalidParameterError(f"kind must be 'low_rank' or 'full_rank', got {kind!r}")
    if not 1 <= rank <= n:
        raise InvalidParameterError(f"rank must be in [1, n={n}], got {rank}")
    if noise < 0:
        raise InvalidParameterError(f"noise must be >= 0, got {noise}")
    if n_train < 1 or n_test < 1:
        raise InvalidParameterError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    kw = dict(generator=generator, dtype=dtype, device=device)
    if kind == "low_rank":
        U, _ = torch.linalg.qr(torch.randn(n, rank, **kw))
        V, _ = torch.linalg.qr(torch.randn(n, rank, **kw))
        W = U @ V.T
    else:
        W = torch.randn(n, n, **kw)
    W = W * (n**0.5 / torch.linalg.matrix_norm(W))
    x_tr = torch.randn(n_train, n, **kw)
    x_te = torch.randn(n_test, n, **kw)
    y_tr = x_tr @ W.T + noise * torch.randn(n_train, n, **kw)
    return MatrixFitTask(W, x_tr, y_tr, x_te, x_te @ W.T)
