"""Rank measures of matrices and of embedding kernels (SCIENCE.md, section A).

Every measure is a function of the singular values s_1 >= ... >= s_k >= 0 of a
matrix A (m x n), k = min(m, n):

================== ==============================================================
stable rank        sum(s_i^2) / s_1^2
effective rank     exp(H(p)), p_i = s_i / sum_j s_j, H = -sum p_i log p_i
                   (Roy & Vetterli 2007), with 0 log 0 = 0
entropy rank       H(p) in nats, the log of the effective rank (Huh et al. 2023)
numerical rank     #{s_i > max(atol, rtol * s_1)}, rtol = max(m, n) * eps by
                   default, exactly as ``torch.linalg.matrix_rank``
participation      (sum lambda_i)^2 / sum lambda_i^2, lambda the eigenvalues of
ratio              the covariance of the centred rows of A (a real number)
RankMe             exp(H(p)), p_i = s_i / sum_j s_j + eps, eps = 1e-7, uncentred
                   (Garrido et al. 2023)
================== ==============================================================

Conventions. The zero matrix (all singular values 0) has stable, effective,
numerical and entropy rank and RankMe 0 (p is undefined there; 0 keeps "the rank
of nothing" at zero and JSON finite; note the entropy rank is then *not* the log
of the effective rank). The participation ratio is 0 when all rows are equal
(zero covariance). ``numerical_rank`` follows ``torch.linalg.matrix_rank``:
``atol``/``rtol`` are floats or tensors broadcast over the batch; without
``rtol``, rtol = max(m, n) * eps, except where ``atol > 0`` is given, where
rtol = 0; eps is that of the input's dtype for float32/float64 inputs and of the
computing dtype otherwise (integer, bool, half, bfloat16 inputs behave as
``matrix_rank(A.double())``).

All functions take a torch tensor or a numpy array (or nested lists) of shape
(..., m, n), are batched over the leading dimensions and return a tensor of the
batch shape (0-d for one matrix): float64 by default (the computing dtype,
``dtype=torch.float32`` to change it), int64 for ``numerical_rank``. The
spectrum is never computed in half precision. Gradients flow where the maths
allows: distinct non-zero singular values; the zero terms of the entropy
(0 log 0) and the zero matrix give a zero gradient instead of NaN.

Spectra (``method="auto"``, the default) come from the Gram matrix of the
smaller side (``A A^T`` or ``A^T A``) in the computing dtype with ``eigvalsh``,
several times cheaper than an SVD. Its eigenvalues carry an absolute error of
at most ~ k eps s_1^2; from that bound "auto" estimates, per matrix, the error
of every requested measure and recomputes with ``torch.linalg.svdvals`` the
matrices where it could exceed 0.1 sqrt(eps) (~1.5e-9 relative in float64):
nearly rank-deficient matrices, nearly rank-one ones (entropy rank ~ 0), a
singular value within reach of the numerical-rank threshold. Inputs that require
grad always take the SVD. ``method="gram"`` never falls back (singular values
below ~sqrt(k eps) s_1 are then returned as 0) and ``method="svd"`` always
uses the SVD. Each matrix is first scaled by a power of two (exact) so that its
Gram matrix can neither overflow nor underflow. The participation ratio needs
no eigenvalues: (tr C)^2 / ||C||_F^2 of the centred Gram matrix.

This module imports nothing else of rankbias.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch

__all__ = [
    "MEASURES",
    "KernelSpectrum",
    "as_matrix",
    "effective_rank",
    "entropy_rank",
    "max_measure",
    "measures_from_singular_values",
    "numerical_rank",
    "participation_ratio",
    "rank_measures",
    "rank_measures_many",
    "rankme",
    "singular_values",
    "stable_rank",
]

#: Names of every measure, in the order `rank_measures` returns them.
MEASURES: tuple[str, ...] = (
    "stable_rank",
    "effective_rank",
    "entropy_rank",
    "numerical_rank",
    "participation_ratio",
    "rankme",
)

Method = Literal["auto", "gram", "svd"]
Tol = float | torch.Tensor | None
RANKME_EPS = 1e-7
_EPS64 = torch.finfo(torch.float64).eps
# "auto" keeps a matrix on the Gram route only where a bound on the error that
# route makes in every requested measure is below this fraction of sqrt(eps):
# ~1.5e-9 relative in float64 (see _gram_is_accurate).
_AUTO_TARGET = 0.1


# --------------------------------------------------------------------------- input


def _to_tensor(A, name: str = "A") -> torch.Tensor:
    """A torch tensor of shape (..., m, n), m, n >= 1, real; clear errors otherwise."""
    if not isinstance(A, torch.Tensor):
        if isinstance(A, np.ndarray | np.generic | list | tuple | int | float | bool):
            try:
                arr = np.asarray(A)
            except ValueError as e:  # ragged nested lists
                raise ValueError(f"{name}: cannot read a ragged nested sequence as a matrix") from e
            if np.iscomplexobj(arr):
                raise ValueError(f"{name}: complex input is not supported; pass a real matrix")
            if arr.dtype.kind not in "biuf":
                raise ValueError(
                    f"{name}: cannot read a numpy array of dtype {arr.dtype} as a matrix; "
                    "accepted: bool, integer or floating arrays"
                )
            if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:  # long double
                arr = arr.astype(np.float64)
            elif arr.dtype.kind == "u" and arr.dtype.itemsize > 1:  # torch lacks most uint ops
                arr = arr.astype(np.float64)
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            A = torch.from_numpy(np.ascontiguousarray(arr))
        else:
            raise TypeError(
                f"{name}: expected a torch.Tensor or numpy array of shape (..., m, n), "
                f"got {type(A).__name__}"
            )
    if A.is_complex():
        raise ValueError(f"{name}: complex input is not supported; pass a real matrix")
    if A.ndim < 2:
        raise ValueError(
            f"{name}: expected at least 2 dimensions (..., m, n), got shape {tuple(A.shape)}"
        )
    if A.numel() == 0:
        raise ValueError(
            f"{name}: empty input of shape {tuple(A.shape)}; m, n and every batch size must be >= 1"
        )
    return A


def _compute_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float64
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64, "double": torch.float64,
                 "float": torch.float32}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64 (or None = float64), got {dtype!r}")
    return dtype


def _default_eps(in_dtype: torch.dtype, compute_dtype: torch.dtype) -> float:
    """eps behind the default rtol: that of the dtype ``matrix_rank`` would run in.

    float32/float64 inputs keep their own eps (as ``matrix_rank(A)``), or the
    computing dtype's if that is coarser; integer, bool and half/bfloat16 inputs,
    which ``matrix_rank`` rejects, get the computing dtype's (as ``matrix_rank(A.double())``).
    """
    ce = torch.finfo(compute_dtype).eps
    if in_dtype in (torch.float32, torch.float64):
        return max(torch.finfo(in_dtype).eps, ce)
    return ce


def _check_finite(A: torch.Tensor, name: str) -> None:
    if A.dtype.is_floating_point:
        bad = ~torch.isfinite(A.detach())
        if bool(bad.any()):
            n_nan = int(torch.isnan(A.detach()).sum())
            raise ValueError(
                f"{name}: contains {n_nan} NaN and {int(bad.sum()) - n_nan} Inf value(s) "
                f"(shape {tuple(A.shape)}); rank measures need finite input"
            )


def _check_tol(t, name: str) -> None:
    if t is None:
        return
    if isinstance(t, torch.Tensor):
        if t.is_complex():
            raise ValueError(f"{name} must be real, got a complex tensor")
        if bool(torch.isnan(t).any()):
            raise ValueError(f"{name} must not be NaN")
    elif isinstance(t, int | float | np.floating | np.integer) and not isinstance(t, bool):
        if math.isnan(float(t)):
            raise ValueError(f"{name} must not be NaN")
    else:
        raise TypeError(f"{name} must be a float, a tensor or None, got {type(t).__name__}")


def as_matrix(weight, reading: Literal["flatten", "taps"] = "flatten") -> torch.Tensor:
    """Read a weight tensor as a matrix (or a batch of matrices).

    ``flatten`` (default): (out, in, *kernel) -> (out, in * prod(kernel)), the
    map from a receptive field to an output channel. ``taps``: one (out, in)
    matrix per kernel position, returned as a batch (prod(kernel), out, in), as
    WeightWatcher reads conv layers. 2-D weights are returned unchanged.
    """
    W = _to_tensor(weight, "weight")
    if reading not in ("flatten", "taps"):
        raise ValueError(f"reading must be 'flatten' or 'taps', got {reading!r}")
    if W.ndim == 2:
        return W
    if reading == "flatten":
        return W.reshape(W.shape[0], -1)
    out, inp = W.shape[:2]
    return W.reshape(out, inp, -1).permute(2, 0, 1)


# ------------------------------------------------------------------------ spectra


def _pow2_scale(X: torch.Tensor) -> torch.Tensor:
    """Per-matrix power of two c (batch shape + (1, 1)) with max|X / c| in [1, 2)."""
    return _pow2_scale_and_max(X)[0]


def _pow2_scale_and_max(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = X.detach().flatten(-2).aminmax(dim=-1)  # one pass, no |X| temporary
    amax = torch.maximum(-lo, hi)[..., None, None]  # NaN or Inf if X holds one
    _, e = torch.frexp(torch.where(amax > 0, amax, torch.ones_like(amax)))
    return torch.ldexp(torch.ones_like(amax), e - 1), amax


def _scaled(A: torch.Tensor, cdt: torch.dtype, name: str = "A") -> tuple[torch.Tensor, torch.Tensor]:
    """A in the computing dtype divided by its power-of-two scale c, and c.

    Checks finiteness on the way: NaN and Inf reach the per-matrix extremes, so
    the full check (which counts them for the message) runs only when one is there."""
    X = A.to(cdt)
    c, amax = _pow2_scale_and_max(X)
    if not bool(torch.isfinite(amax).all()):
        _check_finite(A, name)
    if X is A or X._base is not None:
        return X / c, c
    return X.mul_(1.0 / c), c  # X is our own copy: scale it in place (1/c is exact)


def _gram(X: torch.Tensor) -> torch.Tensor:
    m, n = X.shape[-2:]
    return X @ X.mT if m <= n else X.mT @ X


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _eig_desc(G: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(G).flip(-1).clamp_min(0)


def _gram_spectrum(X: torch.Tensor, G: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values of X from the eigenvalues of its smaller Gram matrix. Those
    at or below the eigensolver's resolution k eps s_1^2 are set to 0: they are
    rounding noise (~sqrt(eps) s_1 after the square root), and an exactly
    rank-deficient matrix then gets exact zeros."""
    lam = _eig_desc(_gram(X) if G is None else G)
    k = lam.shape[-1]
    lam = torch.where(lam <= k * torch.finfo(lam.dtype).eps * lam[..., :1], torch.zeros_like(lam), lam)
    return _safe_sqrt(lam)


def _gram_is_accurate(s: torch.Tensor, names: Sequence[str], tol: torch.Tensor | None) -> torch.Tensor:
    """Per matrix (batch shape): may the Gram-route singular values ``s`` be used?

    The Gram's eigenvalues are off by at most ~ k eps s_1^2 (backward-stable
    eigensolver, rounding in forming the Gram), so s_i by delta_i ~ k eps
    s_1^2 / (s_i + sqrt(k eps) s_1). From that bound: the entropies move by
    |dH| <= sum_i delta_i (|log p_i| + H + 1) / sum s; the numerical rank is
    exact if no s_i lies within delta_i of the threshold ``tol``; the stable
    rank and participation ratio are always accurate. True where every requested
    measure is then within 0.1 sqrt(eps) (relative; the effective rank and RankMe
    are exp(H), the entropy rank is H itself), or where only singular values are
    asked for (names empty) and each is within that relative to itself.
    """
    eps = torch.finfo(s.dtype).eps
    target = _AUTO_TARGET * math.sqrt(eps)
    k = s.shape[-1]
    s1 = s[..., :1]
    dl = k * eps * s1.square()
    delta = dl / (s + dl.sqrt()).clamp_min(torch.finfo(s.dtype).tiny)
    ok = torch.ones(s.shape[:-1], dtype=torch.bool, device=s.device)
    if not names:
        return (delta <= target * s).all(-1) | (s1[..., 0] == 0)
    if any(n in names for n in ("effective_rank", "entropy_rank", "rankme")):
        total = s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
        p = s / total
        logp = torch.where(p > 0, p, torch.ones_like(p)).log()
        h = -(p * logp).sum(-1, keepdim=True)
        big = torch.where(p > 0, -logp, torch.full_like(p, math.inf))  # a zero s_i: no bound
        dh = (delta * (big + h + 1)).sum(-1) / total[..., 0]
        ok &= dh <= target
        if "entropy_rank" in names:
            ok &= dh <= target * h[..., 0]
    if "numerical_rank" in names and tol is not None:
        ok &= ((s - tol.unsqueeze(-1)).abs() > delta).all(-1)
    return ok | (s1[..., 0] == 0)


def _spectrum(
    X: torch.Tensor, method: Method, names: Sequence[str] = (), tol_fn=None, G: torch.Tensor | None = None
) -> tuple[torch.Tensor, bool]:
    """Singular values (descending) of the scaled X, and whether they came from a
    Gram matrix only (then numerical-rank defaults use the Gram's resolution).

    ``names``: the measures wanted (for "auto"'s accuracy check); ``tol_fn(s1)``:
    the numerical rank's threshold for given top singular values."""
    if method == "svd" or (method == "auto" and X.requires_grad and torch.is_grad_enabled()):
        return torch.linalg.svdvals(X), False
    s = _gram_spectrum(X, G)
    if method == "gram":
        return s, True
    tol = tol_fn(s[..., 0]) if (tol_fn is not None and "numerical_rank" in names) else None
    unsafe = ~_gram_is_accurate(s, names, tol)
    if bool(unsafe.any()):
        s = s.clone()
        s[unsafe] = torch.linalg.svdvals(X[unsafe])
    return s, False


def _check_method(method) -> None:
    if method not in ("auto", "gram", "svd"):
        raise ValueError(f"method must be 'auto', 'gram' or 'svd', got {method!r}")


def singular_values(A, *, method: Method = "auto", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Singular values of A (..., m, n), descending, shape (..., min(m, n)).

    ``method``: "svd" (``torch.linalg.svdvals``), "gram" (square roots of the
    eigenvalues of the smaller Gram matrix: cheap, but singular values below
    ~sqrt(k eps) s_1 are rounding noise and returned as 0) or "auto" (Gram,
    with an SVD for the matrices where the Gram's error bound exceeds 0.1
    sqrt(eps) ~ 1.5e-9 relative on any singular value; always SVD when A
    requires grad).
    """
    A = _to_tensor(A)
    _check_method(method)
    X, c = _scaled(A, _compute_dtype(dtype))
    s, _ = _spectrum(X, method)
    return s * c[..., 0]


def _plogp(p: torch.Tensor) -> torch.Tensor:
    """p log p with 0 log 0 = 0 and a zero (not NaN) gradient at p = 0."""
    pos = p > 0
    return torch.where(pos, p * torch.where(pos, p, torch.ones_like(p)).log(), torch.zeros_like(p))


def _as_tol(t, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


def _tolerance(
    s1: torch.Tensor,
    *,
    shape: tuple[int, int],
    eps: float,
    atol: Tol,
    rtol: Tol,
    scale: torch.Tensor | None = None,
    gram_resolution: bool = False,
) -> torch.Tensor:
    """max(atol, rtol * s_1) with torch.linalg.matrix_rank's defaults (batch shape)."""
    a = _as_tol(0.0 if atol is None else atol, s1)
    if rtol is None:
        r = _as_tol(max(shape) * eps, s1)
        if atol is not None:
            r = torch.where(a > 0, torch.zeros_like(r), r)
        if gram_resolution:
            # s from a Gram matrix: apply the default to s^2 > r s_1^2, the Gram's own resolution
            r = r.sqrt()
    else:
        r = _as_tol(rtol, s1)
    if scale is not None:
        a = a / scale
    return torch.maximum(a, r * s1)


def _spectral(
    s: torch.Tensor,
    names: Sequence[str],
    *,
    shape: tuple[int, int],
    eps: float,
    atol: Tol,
    rtol: Tol,
    scale: torch.Tensor | None = None,
    rankme_eps: float = RANKME_EPS,
    extra_zeros: int = 0,
    gram_resolution: bool = False,
) -> dict[str, torch.Tensor]:
    """Spectral measures from descending singular values s (..., k).

    ``scale``: s are those of A / scale (batch shape), which matters only for atol.
    ``extra_zeros``: zero singular values not listed in s (only RankMe sees them).
    ``gram_resolution``: s came from a Gram matrix, whose eigenvalues resolve
    s_i only down to ~sqrt(eps) s_1; the default rtol is then applied to s^2.
    """
    s = s.clamp_min(0)
    s1 = s[..., 0]
    zero = s1 == 0
    one = torch.ones_like(s1)
    out: dict[str, torch.Tensor] = {}
    if "stable_rank" in names:
        sr = s.square().sum(-1) / torch.where(zero, one, s1).square()
        out["stable_rank"] = torch.where(zero, torch.zeros_like(sr), sr)
    total = s.sum(-1, keepdim=True)
    safe_total = torch.where(total == 0, torch.ones_like(total), total)
    if "effective_rank" in names or "entropy_rank" in names:
        h = -_plogp(s / safe_total).sum(-1)
        h = torch.where(zero, torch.zeros_like(h), h)
        if "effective_rank" in names:
            out["effective_rank"] = torch.where(zero, torch.zeros_like(h), h.exp())
        if "entropy_rank" in names:
            out["entropy_rank"] = h
    if "numerical_rank" in names:
        tol = _tolerance(s1, shape=shape, eps=eps, atol=atol, rtol=rtol, scale=scale,
                         gram_resolution=gram_resolution)
        out["numerical_rank"] = (s > tol.unsqueeze(-1)).sum(-1)
    if "rankme" in names:
        p = s / safe_total + rankme_eps
        h = -_plogp(p).sum(-1)
        if extra_zeros:
            h = h - extra_zeros * rankme_eps * math.log(rankme_eps)
        rm = h.exp()
        out["rankme"] = torch.where(zero, torch.zeros_like(rm), rm)
    return out


def _pr_from_traces(tr: torch.Tensor, tr2: torch.Tensor) -> torch.Tensor:
    """(tr C)^2 / tr(C^2); 0 when C = 0."""
    zero = tr2 <= 0
    return torch.where(zero, torch.zeros_like(tr), tr.square() / torch.where(zero, torch.ones_like(tr2), tr2))


def measures_from_singular_values(
    s,
    *,
    shape: tuple[int, int] | None = None,
    measures: Sequence[str] | None = None,
    atol: Tol = None,
    rtol: Tol = None,
    eps: float | None = None,
    centered_sq=None,
    rankme_eps: float = RANKME_EPS,
) -> dict[str, torch.Tensor]:
    """Every requested measure from singular values ``s`` (..., k), descending.

    ``shape`` (m, n) sets the default rtol = max(m, n) * eps (k if not given);
    ``eps`` defaults to float64's. ``centered_sq``: squared singular values of the
    row-centred matrix (the covariance's eigenvalues up to a factor), needed for
    the participation ratio, which is skipped without it.
    """
    names = _check_measure_names(measures)
    s = torch.as_tensor(s)
    if s.ndim < 1 or s.shape[-1] == 0:
        raise ValueError(f"s: expected singular values of shape (..., k), k >= 1, got {tuple(s.shape)}")
    if not s.dtype.is_floating_point:
        s = s.to(torch.float64)
    _check_tol(atol, "atol")
    _check_tol(rtol, "rtol")
    out = _spectral(
        s, [k for k in names if k != "participation_ratio"],
        shape=shape if shape is not None else (s.shape[-1], s.shape[-1]),
        eps=_EPS64 if eps is None else float(eps), atol=atol, rtol=rtol, rankme_eps=rankme_eps,
    )
    if "participation_ratio" in names and centered_sq is not None:
        lam = torch.as_tensor(centered_sq).clamp_min(0)
        out["participation_ratio"] = _pr_from_traces(lam.sum(-1), lam.square().sum(-1))
    return {k: out[k] for k in names if k in out}


def _check_measure_names(measures: Iterable[str] | None) -> tuple[str, ...]:
    if measures is None:
        return MEASURES
    if isinstance(measures, str):
        measures = (measures,)
    names = tuple(measures)
    bad = [m for m in names if m not in MEASURES]
    if bad:
        raise ValueError(f"unknown measure(s) {bad}; accepted: {list(MEASURES)}")
    if not names:
        raise ValueError(f"measures is empty; accepted: any of {list(MEASURES)}")
    return names


def _centered_grams(X: torch.Tensor, need_uncentred: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gram matrices of the smaller side of the row-centred X and (optionally, else None) of X.

    The uncentred Gram is assembled from the centred one plus rank-one terms in
    the mean, which costs no second product and loses nothing (every term is a
    part of the result), whereas centring an uncentred Gram cancels digits when
    the rows share a large mean.
    """
    m, n = X.shape[-2:]
    # shift by the first row before taking the mean (exact for equal rows, and no
    # cancellation for a large common offset: the covariance is shift-invariant)
    x0 = X[..., :1, :]
    Xc = X - x0
    mu_y = Xc.mean(-2, keepdim=True)
    Xc.sub_(mu_y)  # a fresh temporary: centre in place
    mu = x0 + mu_y  # (..., 1, n)
    Gc = _gram(Xc)
    if not need_uncentred:
        return Gc, None
    if m <= n:
        # A A^T = Xc Xc^T + v 1^T + 1 v^T + |mu|^2 1 1^T, v = Xc mu^T  (..., m, 1)
        v = Xc @ mu.mT
        G = Gc + v + v.mT + mu.square().sum(-1, keepdim=True)
    else:
        G = Gc + m * (mu.mT @ mu)  # A^T A = Xc^T Xc + m mu^T mu
    return Gc, G


def rank_measures(
    A,
    measures: Sequence[str] | None = None,
    *,
    atol: Tol = None,
    rtol: Tol = None,
    method: Method = "auto",
    dtype: torch.dtype | None = None,
    rankme_eps: float = RANKME_EPS,
) -> dict[str, torch.Tensor]:
    """Every rank measure of A (..., m, n) from one spectrum.

    Returns ``{name: tensor of the batch shape}`` in the order of
    :data:`MEASURES` (or of ``measures``). ``atol``/``rtol`` are those of
    ``numerical_rank``; ``method`` is "auto", "gram" or "svd" (see
    :func:`singular_values`; with "gram" the default numerical-rank tolerance
    is applied to s^2, the resolution a Gram matrix has); ``dtype`` the
    computing dtype (float64 by default). See the module docstring for the
    definitions and conventions.
    """
    A = _to_tensor(A)
    names = _check_measure_names(measures)
    _check_method(method)
    _check_tol(atol, "atol")
    _check_tol(rtol, "rtol")
    X, c = _scaled(A, _compute_dtype(dtype))
    cdt = X.dtype
    m, n = X.shape[-2:]
    spectral = [k for k in names if k != "participation_ratio"]
    out: dict[str, torch.Tensor] = {}
    Gc = G = None
    if "participation_ratio" in names:
        use_gram = bool(spectral) and method != "svd" and not (
            method == "auto" and X.requires_grad and torch.is_grad_enabled())
        Gc, G = _centered_grams(X, use_gram)
        tr = Gc.diagonal(dim1=-2, dim2=-1).sum(-1)
        out["participation_ratio"] = _pr_from_traces(tr, Gc.square().sum((-2, -1)))
    if spectral:
        eps = _default_eps(A.dtype, cdt)
        scale = c[..., 0, 0]

        def tol_fn(s1):
            return _tolerance(s1, shape=(m, n), eps=eps, atol=atol, rtol=rtol, scale=scale)

        s, from_gram = _spectrum(X, method, spectral, tol_fn, G)
        out.update(_spectral(
            s, spectral, shape=(m, n), eps=eps, atol=atol, rtol=rtol,
            scale=scale, rankme_eps=rankme_eps, gram_resolution=from_gram,
        ))
    return {k: out[k] for k in names}


# Stacking pays (fewer calls, ~1 ms of overhead each) only for small matrices;
# LAPACK loops over a batch anyway, so a large one would only be copied.
_STACK_MAX_NUMEL = 1 << 16
# Cap on the elements of one stacked call (float64 copies of it are made).
_STACK_MAX_ELEMENTS = 1 << 24


def rank_measures_many(
    matrices: Mapping[str, object] | Sequence[object],
    measures: Sequence[str] | None = None,
    *,
    progress: Callable[[int], object] | None = None,
    **kw,
) -> dict[str, dict[str, torch.Tensor]] | list[dict[str, torch.Tensor]]:
    """:func:`rank_measures` of many matrices of any shapes, e.g. every weight of a model.

    Each entry is a matrix or a batch (..., m, n). Entries whose matrices share
    (m, n), dtype and device are concatenated along the batch and measured in
    one call when the matrices are small (about 2x faster for hundreds of
    64 x 64 matrices, measured on a shared machine); large ones gain nothing
    from it and are measured entry by entry. Each result has the entry's own
    batch shape. Takes a mapping name -> matrix (returns name -> measures) or a
    sequence (returns a list in the same order). ``progress(k)`` is called
    with the number of entries finished after each call (e.g. ``tqdm.update``);
    other keyword arguments are those of :func:`rank_measures`.
    """
    if isinstance(matrices, Mapping):
        keys: list | None = list(matrices)
        items = [_to_tensor(matrices[k], f"matrices[{k!r}]") for k in keys]
    elif isinstance(matrices, Sequence) and not isinstance(matrices, str | bytes):
        keys = None
        items = [_to_tensor(x, f"matrices[{i}]") for i, x in enumerate(matrices)]
    else:
        raise TypeError(f"matrices: expected a mapping name -> matrix or a sequence of matrices, "
                        f"got {type(matrices).__name__}")
    for i, x in enumerate(items):
        _check_finite(x, f"matrices[{keys[i]!r}]" if keys is not None else f"matrices[{i}]")
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(items):
        # same dtype too: the default rtol of the numerical rank is the input's eps
        groups.setdefault((tuple(x.shape[-2:]), x.dtype, x.device), []).append(i)
    results: list = [None] * len(items)

    def run(idx: list[int]) -> None:
        if len(idx) == 1:
            results[idx[0]] = rank_measures(items[idx[0]], measures, **kw)
        else:
            flat = [items[i].reshape(-1, *items[i].shape[-2:]) for i in idx]
            res = rank_measures(torch.cat(flat), measures, **kw)
            start = 0
            for i, f in zip(idx, flat):
                k = f.shape[0]
                results[i] = {key: v[start:start + k].reshape(items[i].shape[:-2]) for key, v in res.items()}
                start += k
        if progress is not None:
            progress(len(idx))

    for (m, n), _dt, _dev in groups:
        idx = groups[(m, n), _dt, _dev]
        if m * n > _STACK_MAX_NUMEL:
            for i in idx:
                run([i])
            continue
        chunk: list[int] = []
        count = 0
        for i in idx:
            k = items[i].numel() // (m * n)
            if chunk and (count + k) * m * n > _STACK_MAX_ELEMENTS:
                run(chunk)
                chunk, count = [], 0
            chunk.append(i)
            count += k
        run(chunk)
    return results if keys is None else dict(zip(keys, results))


def stable_rank(A, **kw) -> torch.Tensor:
    """sum(s_i^2) / s_1^2 of A (..., m, n); 0 for the zero matrix."""
    return rank_measures(A, ["stable_rank"], **kw)["stable_rank"]


def effective_rank(A, **kw) -> torch.Tensor:
    """exp(H(p)), p_i = s_i / sum s_j (Roy & Vetterli 2007); 0 for the zero matrix."""
    return rank_measures(A, ["effective_rank"], **kw)["effective_rank"]


def entropy_rank(A, **kw) -> torch.Tensor:
    """H(p) in nats, p_i = s_i / sum s_j: the log of the effective rank; 0 for the zero matrix."""
    return rank_measures(A, ["entropy_rank"], **kw)["entropy_rank"]


def numerical_rank(A, atol: Tol = None, rtol: Tol = None, **kw) -> torch.Tensor:
    """#{s_i > max(atol, rtol * s_1)} with ``torch.linalg.matrix_rank``'s semantics:
    without ``rtol``, rtol = max(m, n) * eps(input dtype), or 0 where ``atol > 0``;
    float or tensor tolerances broadcast over the batch. Returns int64."""
    return rank_measures(A, ["numerical_rank"], atol=atol, rtol=rtol, **kw)["numerical_rank"]


def participation_ratio(A, **kw) -> torch.Tensor:
    """(sum lambda)^2 / sum lambda^2 for lambda the eigenvalues of the covariance
    of A's centred rows (rows are samples); 0 when the rows are all equal."""
    return rank_measures(A, ["participation_ratio"], **kw)["participation_ratio"]


def rankme(A, eps: float = RANKME_EPS, **kw) -> torch.Tensor:
    """RankMe (Garrido et al. 2023): exp(H(p)), p_i = s_i / sum s_j + eps, on the
    uncentred matrix; 0 for the zero matrix."""
    return rank_measures(A, ["rankme"], rankme_eps=eps, **kw)["rankme"]


def max_measure(name: str, shape: tuple[int, int], *, rankme_eps: float = RANKME_EPS) -> float:
    """Largest value ``name`` can take on an m x n matrix (to normalise by)."""
    _check_measure_names([name])
    m, n = shape
    k = min(m, n)
    if name == "entropy_rank":
        return math.log(k)
    if name == "participation_ratio":
        # the centred rows span at most min(m - 1, n) dimensions
        return float(max(min(m - 1, n), 1))
    if name == "rankme":
        # the entropy of p + eps is concave and symmetric: largest at the flat spectrum
        q = 1.0 / k + rankme_eps
        return math.exp(-k * q * math.log(q))
    return float(k)


# ------------------------------------------------------------- embedding kernels


class KernelSpectrum:
    """Streamed spectrum of an embedding set Z (N x d) and of its kernel K = Z Z^T.

    Accumulates, over batches, N, the mean embedding and the centred scatter
    matrix sum_i (z_i - mu)(z_i - mu)^T (d x d, float64; batches are merged with
    Chan et al.'s update, which never subtracts two large numbers), so N = 10^6
    embeddings need O(d^2) memory. The uncentred Gram Z^T Z is that scatter plus
    N mu mu^T. The non-zero eigenvalues of K are those of Z^T Z (= s_i(Z)^2).

    - :meth:`measures` -- the measures of the kernel K (N x N) as a matrix:
      its singular values are lambda_i, so the "kernel effective rank" uses
      p_i = lambda_i / sum lambda_j. Equal to ``rank_measures(Z @ Z.T)``, its
      N - d zero eigenvalues included (they change only RankMe), and its
      participation ratio is that of K's centred rows.
    - :meth:`embedding_measures` -- the measures of Z itself (singular values
      sqrt(lambda_i)); equal to ``rank_measures(Z)``, the participation ratio
      being that of the embeddings' covariance. Singular values below
      ~sqrt(eps) s_1 are not resolved from Z^T Z, so the default numerical-rank
      tolerance is rtol = sqrt(max(N, d) eps) (that of the kernel, on s^2).

    ``centered=True`` removes the mean embedding first (Z - 1 mu^T).

    Fitted attributes: ``n_samples_``, ``dim_``, ``mean_`` (d), ``scatter_``
    (d x d, centred), and the derived ``gram_`` (Z^T Z) and ``sum_``.
    """

    def __init__(self, dim: int | None = None, *, centered: bool = False, device=None):
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.centered = bool(centered)
        self.device = device
        self.n_samples_ = 0
        self.dim_ = dim
        self.mean_: torch.Tensor | None = None
        self.scatter_: torch.Tensor | None = None
        if dim is not None:
            self._alloc(dim, device)

    def _alloc(self, d: int, device) -> None:
        self.dim_ = d
        self.mean_ = torch.zeros(d, dtype=torch.float64, device=device)
        self.scatter_ = torch.zeros(d, d, dtype=torch.float64, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulated state: 8 (d^2 + d), whatever N."""
        if self.scatter_ is None:
            return 0
        return self.scatter_.nbytes + self.mean_.nbytes

    @property
    def gram_(self) -> torch.Tensor:
        self._require()
        return self.scatter_ + self.n_samples_ * torch.outer(self.mean_, self.mean_)

    @property
    def sum_(self) -> torch.Tensor:
        self._require()
        return self.n_samples_ * self.mean_

    @torch.no_grad()
    def update(self, Z) -> KernelSpectrum:
        """Add a batch of embeddings (..., d): every leading index is one sample."""
        if isinstance(Z, torch.Tensor | np.ndarray) and Z.ndim == 1:
            Z = Z[None]
        Z = _to_tensor(Z, "Z")
        _check_finite(Z, "Z")
        if self.scatter_ is None:
            self._alloc(Z.shape[-1], self.device if self.device is not None else Z.device)
        if Z.shape[-1] != self.dim_:
            raise ValueError(f"Z: embedding dimension {Z.shape[-1]} != {self.dim_} seen before")
        Z = Z.reshape(-1, Z.shape[-1]).to(device=self.scatter_.device, dtype=torch.float64)
        nb = Z.shape[0]
        mb = Z.mean(0)
        Zc = Z - mb
        self._merge(nb, mb, Zc.mT @ Zc)
        return self

    def _merge(self, nb: int, mb: torch.Tensor, Sb: torch.Tensor) -> None:
        na = self.n_samples_
        n = na + nb
        delta = mb - self.mean_
        self.scatter_ += Sb + torch.outer(delta, delta) * (na * nb / n)
        self.mean_ += delta * (nb / n)
        self.n_samples_ = n

    def merge(self, other: KernelSpectrum) -> KernelSpectrum:
        """Add the samples accumulated by ``other`` (e.g. by another worker)."""
        if not isinstance(other, KernelSpectrum):
            raise TypeError(f"other: expected a KernelSpectrum, got {type(other).__name__}")
        if other.n_samples_ == 0:
            return self
        if self.scatter_ is None:
            self._alloc(other.dim_, self.device if self.device is not None else other.scatter_.device)
        if other.dim_ != self.dim_:
            raise ValueError(f"other: embedding dimension {other.dim_} != {self.dim_}")
        dev = self.scatter_.device
        self._merge(other.n_samples_, other.mean_.to(dev), other.scatter_.to(dev))
        return self

    def _require(self) -> None:
        if self.n_samples_ == 0:
            raise ValueError("KernelSpectrum is empty: call update(Z) with at least one sample first")

    def scatter(self) -> torch.Tensor:
        """The d x d side of the kernel: Z^T Z, or (Z - 1 mu^T)^T (Z - 1 mu^T) when centred."""
        self._require()
        return self.scatter_ if self.centered else self.gram_

    def eigenvalues(self) -> torch.Tensor:
        """Largest min(N, d) eigenvalues of the kernel, descending (the rest are 0)."""
        return _eig_desc(self.scatter())[: min(self.n_samples_, self.dim_)]

    def _kernel_pr(self, G: torch.Tensor) -> torch.Tensor:
        # K's centred rows have scatter Zt S_c Zt^T, whose eigenvalues are those of S_c G
        P = self.scatter_ @ G
        return _pr_from_traces((self.scatter_ * G).sum(), (P * P.mT).sum())

    def _embedding_pr(self) -> torch.Tensor:
        S = self.scatter_
        return _pr_from_traces(S.diagonal().sum(), S.square().sum())

    def measures(self, measures: Sequence[str] | None = None, *, atol: Tol = None,
                 rtol: Tol = None, rankme_eps: float = RANKME_EPS) -> dict[str, torch.Tensor]:
        """Measures of the kernel K = Z Z^T (N x N), computed from the d x d side."""
        names = _check_measure_names(measures)
        _check_tol(atol, "atol")
        _check_tol(rtol, "rtol")
        G = self.scatter()
        lam = _eig_desc(G)[: min(self.n_samples_, self.dim_)]
        N = self.n_samples_
        out = _spectral(lam, [k for k in names if k != "participation_ratio"], shape=(N, N),
                        eps=_EPS64, atol=atol, rtol=rtol, rankme_eps=rankme_eps,
                        extra_zeros=N - lam.shape[-1])
        if "participation_ratio" in names:
            out["participation_ratio"] = self._kernel_pr(G)
        return {k: out[k] for k in names}

    def embedding_measures(self, measures: Sequence[str] | None = None, *, atol: Tol = None,
                           rtol: Tol = None, rankme_eps: float = RANKME_EPS) -> dict[str, torch.Tensor]:
        """Measures of the embedding matrix Z (N x d) itself (Z - 1 mu^T when centred)."""
        names = _check_measure_names(measures)
        _check_tol(atol, "atol")
        _check_tol(rtol, "rtol")
        lam = self.eigenvalues()
        # eigenvalues at the eigensolver's resolution are rounding noise: exact zeros
        lam = torch.where(lam <= self.dim_ * _EPS64 * lam[:1], torch.zeros_like(lam), lam)
        s = _safe_sqrt(lam)
        out = _spectral(s, [k for k in names if k != "participation_ratio"],
                        shape=(self.n_samples_, self.dim_), eps=_EPS64, atol=atol, rtol=rtol,
                        rankme_eps=rankme_eps, gram_resolution=True)
        if "participation_ratio" in names:
            out["participation_ratio"] = self._embedding_pr()
        return {k: out[k] for k in names}
