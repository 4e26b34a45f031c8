"""Intrinsic dimension of a point cloud, a thin wrapper of scikit-dimension.

Two estimators, from the optional dependency ``scikit-dimension`` (imported as
``skdim``; ``pip install 'rankbias[id]'``):

- ``twonn``: Facco et al. (2017), "Estimating the intrinsic dimension of
  datasets by a minimal neighborhood information". With r1, r2 a point's first
  two neighbour distances, mu = r2 / r1 is Pareto with exponent d on a
  d-dimensional manifold of locally uniform density, so
  -log(1 - F(mu)) = d log mu; d is the slope through the origin of that line
  fitted to the empirical F, the largest 10% of the mu discarded.
- ``mle``: Levina & Bickel (2004), "Maximum likelihood estimation of intrinsic
  dimension", with MacKay & Ghahramani's combination: the local estimate at x is
  m_k(x) = (k - 1) / sum_{j<k} log(T_k(x) / T_j(x)) over its k nearest
  neighbour distances T_j, and the dataset's is the harmonic mean
  1 / mean(1 / m_k(x)).

scikit-dimension implements exactly these (checked in the tests on linear
subspaces and spheres of known dimension embedded in a larger space). Unlike a
rank, an intrinsic dimension is a property of the points' geometry, not of a
linear span: a d-sphere spans d + 1 dimensions and has dimension d.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch

from rankbias.errors import InvalidParameterError, UnsupportedError

__all__ = ["ESTIMATORS", "available", "intrinsic_dimension"]

ESTIMATORS = ("twonn", "mle")
INSTALL_HINT = "pip install 'rankbias[id]' (or pip install scikit-dimension)"


def available() -> bool:
    """Whether scikit-dimension can be imported (without importing it)."""
    return importlib.util.find_spec("skdim") is not None


def intrinsic_dimension(
    X,
    estimators: Sequence[str] = ESTIMATORS,
    *,
    n_neighbors: int = 10,
    max_samples: int | None = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """The intrinsic dimension of the rows of X (n, D) by each estimator.

    ``n_neighbors``: k of the MLE (Levina & Bickel use 10-20; larger k sees
    curvature and the density's variation). ``max_samples``: a seeded random
    subset of at most that many rows (the neighbour searches are O(n^2 D)).
    Duplicate rows are dropped first (a zero neighbour distance has no ratio).
    Raises :class:`UnsupportedError` when scikit-dimension is missing.
    """
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise InvalidParameterError(f"estimators: got {list(estimators)!r}; accepted: a non-empty list of "
                         f"{', '.join(ESTIMATORS)}")
    if not isinstance(n_neighbors, int) or n_neighbors < 2:
        raise InvalidParameterError(f"n_neighbors must be an int >= 2, got {n_neighbors!r}")
    A = X.detach().cpu().double().numpy() if isinstance(X, torch.Tensor) else np.asarray(X, float)
    if A.ndim != 2:
        raise InvalidParameterError(f"X must be a matrix (n, D) of points, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise InvalidParameterError("X contains NaN/Inf values")
    A = np.unique(A, axis=0)
    if max_samples is not None and len(A) > max_samples:
        A = A[np.random.default_rng(seed).choice(len(A), max_samples, replace=False)]
    if len(A) < n_neighbors + 2 or A.shape[1] < 2:
        raise InvalidParameterError(f"X needs at least n_neighbors + 2 = {n_neighbors + 2} distinct points in "
                         f">= 2 dimensions, got {A.shape[0]} in {A.shape[1]}")
    if not available():
        raise UnsupportedError(f"intrinsic dimension needs scikit-dimension: {INSTALL_HINT}")
    import skdim

    out: dict[str, float] = {}
    for name in estimators:
        if name == "twonn":
            out[name] = float(skdim.id.TwoNN(discard_fraction=0.1).fit(A).dimension_)
        else:
            est = skdim.id.MLE(K=n_neighbors).fit(A, n_neighbors=n_neighbors, comb="mle")
            out[name] = float(est.dimension_)
    return out
