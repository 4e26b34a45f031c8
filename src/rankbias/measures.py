"""Rank measures of matrices and of embedding kernels (SCIENCE.md, section A).

Every measure is a function of the singular values s_1 >= ... >= s_k >= 0 of a
matrix A (m x n), k = min(m, n):

================== ==============================================================
stable rank        sum(s_i^2) / s_1^2
effective rank     exp(H(p)), p_i = s_i / sum_j s_j, H = -sum p_i log p_i
                   (Roy & Vetterli 2007), with 0 log 0 = 0
entropy rank       H(p) in nats, the log of the effective rank (Huh et al. 2023)
numerical rank     #{s_i > max(atol, rtol * s_1)}, rtol = max(m, n) * eps(dtype)
                   by default, as ``torch.linalg.matrix_rank``
participation      (sum lambda_i)^2 / sum lambda_i^2, lambda the eigenvalues of
ratio              the covariance of the centred rows of A (a real number)
RankMe             exp(H(p)), p_i = s_i / sum_j s_j + eps, eps = 1e-7, uncentred
                   (Garrido et al. 2023)
================== ==============================================================

Conventions for the zero matrix (all singular values 0): stable, effective and
numerical rank, entropy rank, participation ratio and RankMe are all 0.
(p is undefined there; 0 keeps "rank of nothing" at zero and JSON finite.)

All functions take a torch tensor or a numpy array of shape (..., m, n), are
batched over the leading dimensions and return a float64 tensor of the batch
shape (0-d for one matrix); ``numerical_rank`` returns int64. Integer, bool and
half-precision inputs are computed in float64; the spectrum is never computed in
half precision. Gradients flow where the maths allows (distinct, non-zero
singular values).

Spectra are computed from the Gram matrix of the smaller side (``A A^T`` or
``A^T A``) in float64 with ``eigvalsh``: exact to float64 rounding for every
singular value above ~1e-3 s_1, and far cheaper than an SVD. Matrices whose
spectrum reaches below that (nearly rank-deficient ones) are recomputed with
``torch.linalg.svdvals`` in float64, so that small singular values and the
numerical rank are as exact as an SVD makes them (``method="auto"``).

This module imports nothing else of rankbias.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
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
RANKME_EPS = 1e-7
# Below this ratio s_min / s_1 the Gram route loses relative accuracy on the
# smallest singular values (error ~ sqrt(n eps) s_1), so "auto" switches to SVD.
_GRAM_SAFE_RATIO = 1e-3


# --------------------------------------------------------------------------- input


def _to_tensor(A, name: str = "A") -> torch.Tensor:
    if isinstance(A, np.ndarray) or np.isscalar(A) or isinstance(A, list | tuple):
        arr = np.asarray(A)
        if arr.dtype == object:
            raise ValueError(f"{name}: cannot read an object array as a matrix")
        if np.iscomplexobj(arr):
            raise ValueError(f"{name}: complex input is not supported; pass a real matrix")
        A = torch.from_numpy(np.ascontiguousarray(arr))
    if not isinstance(A, torch.Tensor):
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
    if A.shape[-1] == 0 or A.shape[-2] == 0 or A.numel() == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(A.shape)}; m, n and batch must be >= 1")
    return A


def _compute_dtype(A: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        return dtype
    return torch.float64


def _input_eps(A: torch.Tensor, compute_dtype: torch.dtype) -> float:
    """Machine epsilon behind the default rtol: the input's own precision for
    floating inputs (half-precision data carries no information below it), the
    computing precision for integer/bool inputs (which are exact)."""
    if A.dtype.is_floating_point:
        return torch.finfo(A.dtype).eps
    return torch.finfo(compute_dtype).eps


def _check_finite(A: torch.Tensor, name: str) -> None:
    if A.dtype.is_floating_point and not bool(torch.isfinite(A).all()):
        n_bad = int((~torch.isfinite(A)).sum())
        raise ValueError(f"{name}: contains {n_bad} NaN or Inf value(s); measures need finite input")


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


def _gram_eigs(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared singular values (descending) and the Gram matrix of the smaller side."""
    m, n = A.shape[-2:]
    G = A @ A.mT if m <= n else A.mT @ A
    lam = torch.linalg.eigvalsh(G).flip(-1).clamp_min(0)
    return lam, G


def singular_values(
    A, *, method: Method = "auto", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Singular values of A (..., m, n), descending, shape (..., min(m, n)).

    ``method``: "svd" (``torch.linalg.svdvals``), "gram" (eigenvalues of the
    smaller Gram matrix) or "auto" (Gram, with an SVD for the matrices whose
    smallest singular value is below 1e-3 s_1, and always SVD when A requires
    grad, whose gradient is then the SVD's).
    """
    A = _to_tensor(A)
    _check_finite(A, "A")
    return _singular_values(A.to(_compute_dtype(A, dtype)), method)


def _singular_values(A: torch.Tensor, method: Method) -> torch.Tensor:
    if method not in ("auto", "gram", "svd"):
        raise ValueError(f"method must be 'auto', 'gram' or 'svd', got {method!r}")
    if method == "svd" or (method == "auto" and A.requires_grad):
        return torch.linalg.svdvals(A)
    lam, _ = _gram_eigs(A)
    s = lam.sqrt()
    if method == "gram":
        return s
    unsafe = s[..., -1] < _GRAM_SAFE_RATIO * s[..., 0]
    if bool(unsafe.any()):
        s = s.clone()
        s[unsafe] = torch.linalg.svdvals(A[unsafe])
    return s


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


def measures_from_singular_values(
    s: torch.Tensor,
    *,
    shape: tuple[int, int] | None = None,
    measures: Sequence[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
    centered_sq: torch.Tensor | None = None,
    rankme_eps: float = RANKME_EPS,
) -> dict[str, torch.Tensor]:
    """Every requested measure from singular values ``s`` (..., k), descending.

    ``shape`` (m, n) sets the default rtol = max(m, n) * eps; ``eps`` defaults
    to float64's. ``centered_sq``: squared singular values of the row-centred
    matrix, needed for the participation ratio (which is skipped without it).
    """
    names = _check_measure_names(measures)
    s = s.clamp_min(0)
    s1 = s[..., 0]
    zero = s1 == 0
    out: dict[str, torch.Tensor] = {}
    safe_s1 = torch.where(zero, torch.ones_like(s1), s1)
    if "stable_rank" in names:
        sr = (s.square().sum(-1) / safe_s1.square())
        out["stable_rank"] = torch.where(zero, torch.zeros_like(sr), sr)
    need_h = "effective_rank" in names or "entropy_rank" in names
    if need_h:
        total = s.sum(-1, keepdim=True)
        p = s / torch.where(total == 0, torch.ones_like(total), total)
        h = torch.where(zero, torch.zeros_like(s1), _entropy(p))
        if "effective_rank" in names:
            out["effective_rank"] = torch.where(zero, torch.zeros_like(h), h.exp())
        if "entropy_rank" in names:
            out["entropy_rank"] = h
    if "numerical_rank" in names:
        if eps is None:
            eps = torch.finfo(torch.float64).eps
        k_max = max(shape) if shape is not None else s.shape[-1]
        a = 0.0 if atol is None else float(atol)
        if rtol is None:
            r = k_max * eps if a <= 0 else 0.0
        else:
            r = float(rtol)
        tol = torch.clamp_min(r * s1, a).unsqueeze(-1)
        out["numerical_rank"] = (s > tol).sum(-1)
    if "participation_ratio" in names and centered_sq is not None:
        lam = centered_sq.clamp_min(0)
        num = lam.sum(-1).square()
        den = lam.square().sum(-1)
        out["participation_ratio"] = torch.where(
            den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den)
        )
    if "rankme" in names:
        total = s.sum(-1, keepdim=True)
        p = s / torch.where(total == 0, torch.ones_like(total), total) + rankme_eps
        rm = _entropy(p).exp()
        out["rankme"] = torch.where(zero, torch.zeros_like(rm), rm)
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
    return names


def _centered_sq_singular_values(A: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
    """Squared singular values of A with its rows centred (the covariance's
    eigenvalues up to the factor 1/(m-1), which the participation ratio ignores).

    Only tr(C) and tr(C^2) matter for the ratio, but returning the spectrum
    keeps one code path; it is computed from the Gram matrix already formed."""
    m, n = A.shape[-2:]
    mu = A.mean(-2, keepdim=True)  # (..., 1, n)
    if G is None:
        G = A @ A.mT if m <= n else A.mT @ A
    if m <= n:
        # (I - J/m) A A^T (I - J/m): double-centred m x m Gram
        Gc = G - G.mean(-1, keepdim=True) - G.mean(-2, keepdim=True) + G.mean((-2, -1), keepdim=True)
    else:
        Gc = G - m * (mu.mT @ mu)  # A^T A - m mu^T mu, the n x n scatter matrix
    return torch.linalg.eigvalsh(Gc).flip(-1).clamp_min(0)


def rank_measures(
    A,
    measures: Sequence[str] | None = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    method: Method = "auto",
    dtype: torch.dtype | None = None,
    rankme_eps: float = RANKME_EPS,
) -> dict[str, torch.Tensor]:
    """Every rank measure of A (..., m, n) from one spectrum.

    Returns ``{name: tensor of the batch shape}`` in the order of
    :data:`MEASURES` (or of ``measures``). See the module docstring for the
    definitions, conventions and the ``method`` switch.
    """
    A = _to_tensor(A)
    names = _check_measure_names(measures)
    _check_finite(A, "A")
    cdt = _compute_dtype(A, dtype)
    eps = _input_eps(A, cdt)
    X = A.to(cdt)
    m, n = X.shape[-2:]
    spectral = [k for k in names if k != "participation_ratio"]
    G = None
    out: dict[str, torch.Tensor] = {}
    if spectral:
        if (method == "auto" and not X.requires_grad) or method == "gram":
            lam, G = _gram_eigs(X)
            s = lam.sqrt()
            if method == "auto":
                unsafe = s[..., -1] < _GRAM_SAFE_RATIO * s[..., 0]
                if bool(unsafe.any()):
                    s = s.clone()
                    s[unsafe] = torch.linalg.svdvals(X[unsafe])
        else:
            s = _singular_values(X, method)
        out = measures_from_singular_values(
            s, shape=(m, n), measures=spectral, atol=atol, rtol=rtol, eps=eps, rankme_eps=rankme_eps
        )
    if "participation_ratio" in names:
        lam_c = _centered_sq_singular_values(X, G)
        out["participation_ratio"] = measures_from_singular_values(
            lam_c[..., :1], measures=["participation_ratio"], centered_sq=lam_c
        )["participation_ratio"]
    return {k: out[k] for k in names}


def stable_rank(A, **kw) -> torch.Tensor:
    """sum(s_i^2) / s_1^2 of A (..., m, n); 0 for the zero matrix."""
    return rank_measures(A, ["stable_rank"], **kw)["stable_rank"]


def effective_rank(A, **kw) -> torch.Tensor:
    """exp(H(p)), p_i = s_i / sum s_j (Roy & Vetterli 2007); 0 for the zero matrix."""
    return rank_measures(A, ["effective_rank"], **kw)["effective_rank"]


def entropy_rank(A, **kw) -> torch.Tensor:
    """H(p) in nats, p_i = s_i / sum s_j: the log of the effective rank; 0 for the zero matrix."""
    return rank_measures(A, ["entropy_rank"], **kw)["entropy_rank"]


def numerical_rank(A, atol: float | None = None, rtol: float | None = None, **kw) -> torch.Tensor:
    """#{s_i > max(atol, rtol * s_1)} with ``torch.linalg.matrix_rank``'s defaults:
    rtol = max(m, n) * eps(input dtype) when atol is not given (or <= 0), else 0."""
    return rank_measures(A, ["numerical_rank"], atol=atol, rtol=rtol, **kw)["numerical_rank"]


def participation_ratio(A, **kw) -> torch.Tensor:
    """(sum lambda)^2 / sum lambda^2 for lambda the eigenvalues of the covariance
    of A's centred rows (rows are samples); 0 when the rows are all equal."""
    return rank_measures(A, ["participation_ratio"], **kw)["participation_ratio"]


def rankme(A, eps: float = RANKME_EPS, **kw) -> torch.Tensor:
    """RankMe (Garrido et al. 2023): exp(H(p)), p_i = s_i / sum s_j + eps, on the
    uncentred matrix; 0 for the zero matrix."""
    return rank_measures(A, ["rankme"], rankme_eps=eps, **kw)["rankme"]


def max_measure(name: str, shape: tuple[int, int]) -> float:
    """Largest value ``name`` can take on an m x n matrix (to normalise by)."""
    _check_measure_names([name])
    m, n = shape
    if name == "entropy_rank":
        return math.log(min(m, n))
    if name == "participation_ratio":
        # the centred rows span at most min(m - 1, n) dimensions
        return float(max(min(m - 1, n), 1))
    return float(min(m, n))


# ------------------------------------------------------------- embedding kernels


class KernelSpectrum:
    """Streamed spectrum of an embedding set Z (N x d) and of its kernel K = Z Z^T.

    Accumulates Z^T Z (d x d, float64), the column sums and N over batches, so
    N = 10^6 embeddings need O(d^2) memory. The eigenvalues of Z^T Z are the
    non-zero eigenvalues of K (= s_i(Z)^2).

    - :meth:`measures` -- the measures of the kernel K: its spectrum is
      lambda_i, so the "kernel effective rank" uses p_i = lambda_i / sum lambda_j;
      equal to ``rank_measures(Z @ Z.T)`` (``participation_ratio`` there is that of
      the embeddings' covariance, the usual participation ratio of a
      representation).
    - :meth:`embedding_measures` -- the measures of Z itself (singular values
      sqrt(lambda_i)); equal to ``rank_measures(Z)``.

    ``centered=True`` removes the mean embedding first (Z - 1 mu^T).

    Fitted attributes: ``n_samples_``, ``dim_``, ``gram_`` (d x d), ``sum_`` (d).
    """

    def __init__(self, dim: int | None = None, *, centered: bool = False, device=None):
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.centered = bool(centered)
        self.device = device
        self.n_samples_ = 0
        self.dim_ = dim
        self.gram_: torch.Tensor | None = None
        self.sum_: torch.Tensor | None = None
        if dim is not None:
            self._alloc(dim, device)

    def _alloc(self, d: int, device) -> None:
        self.dim_ = d
        self.gram_ = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.sum_ = torch.zeros(d, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, Z) -> KernelSpectrum:
        """Add a batch of embeddings (..., d): every leading index is one sample."""
        Z = _to_tensor(Z if (hasattr(Z, "ndim") and Z.ndim >= 2) else np.atleast_2d(Z), "Z")
        _check_finite(Z, "Z")
        Z = Z.reshape(-1, Z.shape[-1]).to(torch.float64)
        if self.gram_ is None:
            self._alloc(Z.shape[-1], self.device if self.device is not None else Z.device)
        if Z.shape[-1] != self.dim_:
            raise ValueError(f"Z: embedding dimension {Z.shape[-1]} != {self.dim_} seen before")
        Z = Z.to(self.gram_.device)
        self.gram_.addmm_(Z.mT, Z)
        self.sum_ += Z.sum(0)
        self.n_samples_ += Z.shape[0]
        return self

    def _require(self) -> None:
        if self.n_samples_ == 0:
            raise ValueError("KernelSpectrum is empty: call update(Z) with at least one sample")

    def scatter(self) -> torch.Tensor:
        """Z^T Z, or (Z - 1 mu^T)^T (Z - 1 mu^T) when centred."""
        self._require()
        G = self.gram_
        if self.centered:
            mu = self.sum_ / self.n_samples_
            G = G - self.n_samples_ * torch.outer(mu, mu)
        return G

    def eigenvalues(self) -> torch.Tensor:
        """Non-zero-padded eigenvalues of the kernel, descending, length min(N, d)."""
        lam = torch.linalg.eigvalsh(self.scatter()).flip(-1).clamp_min(0)
        return lam[: min(self.n_samples_, self.dim_)]

    def _centered_cov_eigs(self) -> torch.Tensor:
        mu = self.sum_ / self.n_samples_
        Gc = self.gram_ - self.n_samples_ * torch.outer(mu, mu)
        return torch.linalg.eigvalsh(Gc).flip(-1).clamp_min(0)

    def measures(
        self, measures: Sequence[str] | None = None, *, atol=None, rtol=None
    ) -> dict[str, torch.Tensor]:
        """Measures of the kernel K = Z Z^T (N x N), computed from the d x d side."""
        names = _check_measure_names(measures)
        lam = self.eigenvalues()
        N = self.n_samples_
        out = measures_from_singular_values(
            lam, shape=(N, N), measures=[k for k in names if k != "participation_ratio"],
            atol=atol, rtol=rtol,
        )
        if "participation_ratio" in names:
            out["participation_ratio"] = self._pr()
        return {k: out[k] for k in names}

    def embedding_measures(
        self, measures: Sequence[str] | None = None, *, atol=None, rtol=None
    ) -> dict[str, torch.Tensor]:
        """Measures of the embedding matrix Z (N x d) itself."""
        names = _check_measure_names(measures)
        s = self.eigenvalues().sqrt()
        out = measures_from_singular_values(
            s, shape=(self.n_samples_, self.dim_),
            measures=[k for k in names if k != "participation_ratio"], atol=atol, rtol=rtol,
        )
        if "participation_ratio" in names:
            out["participation_ratio"] = self._pr()
        return {k: out[k] for k in names}

    def _pr(self) -> torch.Tensor:
        lam_c = self._centered_cov_eigs()
        return measures_from_singular_values(
            lam_c[..., :1], measures=["participation_ratio"], centered_sq=lam_c
        )["participation_ratio"]
