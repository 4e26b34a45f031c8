"""Singular values from the smaller Gram matrix, with an error-bounded switch to the SVD.

Spectra (``method="auto"``, the default) come from the Gram matrix of the
smaller side (``A A^T`` or ``A^T A``) in the computing dtype with ``eigvalsh``,
several times cheaper than an SVD. Its eigenvalues carry an absolute error of
at most ~ k eps s_1^2; from that bound, read off the Gram route's own
eigenvalues, each measure's entry in :data:`~rankbias.measures.spec.SPECS`
bounds its own relative error, and "auto" decides per matrix, without any
further work, whether those bounds are within ``accuracy`` (default
:data:`ACCURACY` = 1e-6 relative in float64, tightened to 0.1 sqrt(eps) ~
1.5e-9 on matrices up to ~400 x 400, whose SVD costs next to nothing; 0.1
sqrt(eps) ~ 3.5e-5 when computing in float32, which cannot resolve the small
singular values the entropies need to 1e-6). Where the bound fails because of
the smallest singular values, a matrix whose SVD is not cheap first has only
those recomputed on their own scale, with a residual bound
(:mod:`rankbias.measures._tail`). Only the matrices where a requested bound
still exceeds it, or where a requested measure has no bound, are recomputed with
``torch.linalg.svdvals``: nearly rank-deficient matrices, nearly rank-one ones
(entropy rank ~ 0), a singular value within its error of the numerical-rank
threshold (the count is then refined by the SVD, never guessed). Inputs that
require grad always take the SVD. ``method="gram"`` never falls back (singular
values below ~sqrt(k eps) s_1 are then returned as 0) and ``method="svd"``
always uses the SVD; ``method="fast"`` (``rank_measures`` only) estimates the
measures with error bars (:mod:`rankbias.measures.approx`). Each matrix is first
scaled by a power of two (exact) so that its Gram matrix can neither overflow
nor underflow. The participation ratio needs no eigenvalues: (tr C)^2 /
||C||_F^2 of the centred Gram matrix.

Memory: the input's copy in the computing dtype is the only one (scaled, and
centred for the participation ratio, in place) and is dropped before
``eigvalsh``; inputs over 2^24 elements measured without the participation ratio
are never copied whole (their Gram is summed from blocks). A matrix that needs
the SVD fallback is rebuilt from the input. Before a computation estimated
(from the shape) to take ~10 s or more on the CPU, a
:class:`SlowComputationWarning` names the shape and the estimate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch

from rankbias.measures._checks import (
    MatrixLike,
    Method,
    Tol,
    _check_accuracy,
    _check_finite,
    _check_method,
    _check_tol,
    _compute_dtype,
    _default_eps,
    _to_tensor,
)
from rankbias.measures._tail import gram_growth, refine_tail
from rankbias.measures.approx import fast_rank_measures
from rankbias.measures.spec import (
    RANKME_EPS,
    SPECS,
    Spectrum,
    _check_measure_names,
    evaluate,
    split_centered,
)

#: Default relative accuracy of ``method="auto"`` when computing in float64: a
#: matrix stays on the Gram route only where the bound on the error that route
#: makes in every requested measure is within it (see _gram_is_accurate).
ACCURACY = 1e-6


def _accuracy(accuracy: float | None, cdt: torch.dtype, shape: tuple[int, int]) -> float:
    """The relative accuracy "auto" works to: the given one; by default ACCURACY, or
    0.1 sqrt(eps) (~1.5e-9 in float64) for a matrix whose SVD is cheap (estimated
    under _CHEAP_SVD_SECONDS: up to ~400 x 400), where the tighter target costs
    nothing worth saving. Computing in float32 the default is never below 0.1
    sqrt(eps) ~ 3.5e-5: its Gram route resolves singular values only down to
    ~sqrt(k eps) s_1 (~1e-2 s_1) and its SVD errs by ~eps s_1 on each, ~1e-6
    relative on the entropies: 1e-6 needs float64 (the default)."""
    if accuracy is not None:
        return float(accuracy)
    fine = 0.1 * math.sqrt(torch.finfo(cdt).eps)
    if _estimate_seconds("svd", 1, *shape) * max(torch.get_num_threads(), 1) <= _CHEAP_SVD_SECONDS:
        return fine
    return max(ACCURACY, fine)


class SlowComputationWarning(UserWarning):
    """A rank computation estimated to take ~10 s or more is about to start."""


# CPU throughput per thread, a little below what one core of a shared 2-core
# x86 machine reached (float64, MKL): products ~30 GFLOP/s, eigvalsh ~20 (counted
# as 4/3 k^3), svdvals ~7 (4 M k^2 - 4/3 k^3). The estimate errs on the slow side.
_GEMM_FLOPS = 2.5e10
_EIG_FLOPS = 1.5e10
_SVD_FLOPS = 6e9
_WARN_SECONDS = 10.0
_CHEAP_SVD_SECONDS = 0.05


def _estimate_seconds(route: str, batch: int, m: int, n: int) -> float:
    """CPU seconds of the Gram route (Gram product + eigvalsh) or of svdvals."""
    k, big = min(m, n), max(m, n)
    if route == "svd":
        seconds = (4 * big * k * k - 4 / 3 * k**3) / _SVD_FLOPS
    else:
        seconds = 2 * big * k * k / _GEMM_FLOPS + 4 / 3 * k**3 / _EIG_FLOPS
    return batch * seconds / max(torch.get_num_threads(), 1)


def _warn_if_slow(X: torch.Tensor, route: str, what: str, cdt: torch.dtype | None = None) -> None:
    if X.device.type != "cpu":
        return
    m, n = X.shape[-2:]
    batch = X.numel() // (m * n)
    t = _estimate_seconds(route, batch, m, n)
    if t >= _WARN_SECONDS:
        shape = f"{batch} x {m} x {n}" if X.ndim > 2 else f"{m} x {n}"
        warnings.warn(
            f"rank measures of a {shape} input (computed in {cdt or X.dtype}): {what}, estimated "
            f"~{t:.0f} s on {torch.get_num_threads()} CPU thread(s)", SlowComputationWarning,
            stacklevel=3)


def _pow2_scale_and_max(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-matrix power of two c (batch shape + (1, 1)) with max|X / c| in [1, 2), and max|X|."""
    lo, hi = X.detach().flatten(-2).aminmax(dim=-1)  # one pass, no |X| temporary
    amax = torch.maximum(-lo, hi)[..., None, None]  # NaN or Inf if X holds one
    _, e = torch.frexp(torch.where(amax > 0, amax, torch.ones_like(amax)))
    return torch.ldexp(torch.ones_like(amax), e - 1), amax


def _scaled(A: torch.Tensor, cdt: torch.dtype, name: str = "A") -> tuple[torch.Tensor, torch.Tensor]:
    """A in the computing dtype divided by its power-of-two scale c (a new tensor), and c.

    Checks finiteness on the way: NaN and Inf reach the per-matrix extremes, so
    the full check (which counts them for the message) runs only when one is there."""
    X = A.to(cdt)
    c, amax = _pow2_scale_and_max(X)
    if not bool(torch.isfinite(amax).all()):
        _check_finite(A, name)
    if X is A or X._base is not None:
        return X / c, c
    return X.mul_(1.0 / c), c  # X is our own copy: scale it in place (1/c is exact)


# Above this many elements the input's copy in the computing dtype is never made
# whole: its Gram is accumulated from blocks of it (a 50000 x 4096 float32
# embedding matrix would otherwise take a 1.6 GB float64 copy).
_BLOCK_ELEMENTS = 1 << 24
# Elements of one block (8 MB in float64): large enough for full-speed products
_BLOCK_SIZE = 1 << 20


def _blocked_gram(A: torch.Tensor, c: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """The Gram matrix of the smaller side of A / c in ``cdt``, from blocks of A of
    ~_BLOCK_SIZE elements along the longer side (the same sums, in blocks)."""
    m, n = A.shape[-2:]
    k, big = min(m, n), max(m, n)
    G = torch.zeros(*A.shape[:-2], k, k, dtype=cdt, device=A.device)
    G3 = G.view(-1, k, k)
    step = max(1, _BLOCK_SIZE // max(A.numel() // big, 1))
    inv = (1.0 / c).to(cdt)  # exact: c is a power of two
    for j in range(0, big, step):
        blk = A[..., :, j:j + step] if m <= n else A[..., j:j + step, :].mT
        Xb = blk.to(cdt, copy=True).mul_(inv).reshape(-1, k, blk.shape[-1])  # (batch, k, step)
        G3.baddbmm_(Xb, Xb.mT)
    return G


def _gram(X: torch.Tensor) -> torch.Tensor:
    m, n = X.shape[-2:]
    return X @ X.mT if m <= n else X.mT @ X


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _eig_desc(G: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(G).flip(-1).clamp_min(0)


def _gram_spectrum(X: torch.Tensor | None, G: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values of X from the eigenvalues of its smaller Gram matrix. Those
    at or below the eigensolver's resolution k eps s_1^2 are set to 0: they are
    rounding noise (~sqrt(eps) s_1 after the square root), and an exactly
    rank-deficient matrix then gets exact zeros."""
    lam = _eig_desc(_gram(X) if G is None else G)
    k = lam.shape[-1]
    lam = torch.where(lam <= k * torch.finfo(lam.dtype).eps * lam[..., :1], torch.zeros_like(lam), lam)
    return _safe_sqrt(lam)


def _gram_error(s: torch.Tensor, n_sum: int = 0) -> torch.Tensor:
    """Bound delta_i on the error of each Gram-route singular value s_i.

    The Gram's eigenvalues are off by ~ c eps s_1^2 (``c = gram_growth(k, N)``:
    backward-stable eigensolver, rounding in forming the Gram), so s_i by
    delta_i ~ c eps s_1^2 / (s_i + sqrt(c eps) s_1)."""
    c = gram_growth(s.shape[-1], n_sum)
    dl = c * torch.finfo(s.dtype).eps * s[..., :1].square()
    return dl / (s + dl.sqrt()).clamp_min(torch.finfo(s.dtype).tiny)


def _gram_is_accurate(sp: Spectrum, names: Sequence[str], target: float) -> torch.Tensor:
    """Per matrix (batch shape): may the Gram-route singular values ``sp.s`` be used?

    True where every requested measure's error bound (its entry in ``SPECS``) is
    within ``target`` (relative), or where only singular values are asked for
    (names empty) and each is within that relative to itself. False everywhere if
    a requested measure has no error bound. The zero matrix is exact on either route.
    """
    s = sp.s
    zero = s[..., 0] == 0
    if not names:
        return (sp.delta <= target * s).all(-1) | zero
    ok = torch.ones(s.shape[:-1], dtype=torch.bool, device=s.device)
    for name in names:
        bound = SPECS[name].error_bound
        if bound is None:  # no bound, no trust
            return torch.zeros_like(ok)
        ok &= bound(sp) <= target
    return ok | zero


def _spectrum(
    X: torch.Tensor | None,
    method: Method,
    names: Sequence[str] = (),
    spectrum: Callable[..., Spectrum] | None = None,
    G: torch.Tensor | None = None,
    rescale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    accuracy: float | None = None,
    shape: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, bool]:
    """Singular values (descending) of the scaled X, and whether they came from a
    Gram matrix only (then numerical-rank defaults use the Gram's resolution).

    ``names``: the measures wanted (for "auto"'s accuracy check); ``spectrum(s,
    delta=...)``: the :class:`Spectrum` their error bounds see; ``G``: X's Gram
    matrix if already formed; ``rescale(mask)``: X[mask] rebuilt from the input,
    for the SVD fallback when X itself is no longer kept (X None); ``accuracy``:
    "auto"'s relative target (None: :func:`_accuracy`'s default for ``shape``, the
    matrices' (m, n), X's by default)."""
    if method == "svd" or (method == "auto" and X is not None and X.requires_grad
                           and torch.is_grad_enabled()):
        return torch.linalg.svdvals(X), False
    if G is None:
        _warn_if_slow(X, "gram", "Gram matrix and eigvalsh")
        G = _gram(X)
    s = _gram_spectrum(None, G)
    if method == "gram":
        return s, True
    if shape is None:
        shape = tuple(X.shape[-2:]) if X is not None else (s.shape[-1], s.shape[-1])
    delta = _gram_error(s, max(shape))
    make = spectrum or (lambda s, delta: Spectrum(s, shape=(1, 1), delta=delta))
    target = _accuracy(accuracy, s.dtype, shape)
    unsafe = ~_gram_is_accurate(make(s, delta=delta), names, target)
    if bool(unsafe.any()) and _estimate_seconds("svd", 1, *shape) * max(
            torch.get_num_threads(), 1) >= _REFINE_SECONDS:
        s, delta, unsafe = _refine_unsafe(X, G, s, delta, unsafe, rescale, shape,
                                          lambda s, d: _gram_is_accurate(make(s, delta=d), names, target))
    if not bool(unsafe.any()):
        return s, False
    whole = bool(unsafe.all())  # the whole input: no indexed copy of it
    if X is not None:
        Xu = X if whole else X[unsafe]
    else:
        Xu = rescale(unsafe)
        if whole:
            Xu = Xu.reshape(*s.shape[:-1], *Xu.shape[-2:])
    what = ("SVD fallback (a singular value too small for the Gram route)" if whole
            else f"SVD fallback for {int(unsafe.sum())} of the matrices")
    _warn_if_slow(Xu, "svd", what)
    if whole:
        return torch.linalg.svdvals(Xu).reshape(s.shape), False
    s = s.clone()
    s[unsafe] = torch.linalg.svdvals(Xu)
    return s, False


# Below this (estimated single-thread SVD seconds, ~500 x 500) an unresolved matrix
# takes the SVD at once: the tail refinement would save next to nothing.
_REFINE_SECONDS = 0.1
# Tail sizes tried, smallest first; the cut is then moved to the widest gap within
# the next 50 % (the refinement's bound divides by it).
_TAIL_SIZES = (16, 64, 256)


def _tail_sizes(s: torch.Tensor, delta: torch.Tensor, ok: Callable) -> Iterator[int]:
    """Tails t (s: one matrix's spectrum), smallest first, whose refinement could pass
    ``ok`` (it passes with the tail's errors 0), each moved to the widest gap nearby."""
    k = s.shape[-1]
    lam = s.square()
    for t in _TAIL_SIZES:
        if 4 * t > k:
            return
        d = delta.clone()
        d[..., -t:] = 0
        if bool(ok(s, d)):
            hs = torch.arange(k - (3 * t) // 2, k - t + 1)
            yield k - int(hs[(lam[hs - 1] - lam[hs]).argmax()])


def _refine_unsafe(X, G, s, delta, unsafe, rescale, shape, ok):
    """Refine the tails of the unresolved matrices (:mod:`rankbias.measures._tail`) and
    return (s, delta, still unresolved); ``ok(s, delta)``: the per-matrix accuracy check,
    ``shape``: the matrices' (m, n)."""
    for i in unsafe.nonzero():
        i = tuple(i.tolist())
        got = _refine_one(X, G, s, delta, unsafe, rescale, shape, ok, i)
        if got is not None:
            s, delta = got
            unsafe[i] = False
    return s, delta, unsafe


def _refine_one(X, G, s, delta, unsafe, rescale, shape, ok, i):
    """(s, delta) with matrix i's tail refined so that ``ok`` holds, or None."""
    m, n = shape

    def sub(x):
        return x[i] if i else x

    def check(si, di):
        return sub(ok(*_put(s, delta, i, si, di)))

    Xi = None
    for t in _tail_sizes(sub(s), sub(delta), check):
        if Xi is None and X is not None:
            Xi = sub(X)
        elif Xi is None:
            mask = torch.zeros(unsafe.shape, dtype=torch.bool, device=unsafe.device)
            mask[i] = True
            Xi = rescale(mask).reshape(m, n)
        got = refine_tail(Xi if m <= n else Xi.mT, sub(G), sub(s), t)
        if got is None:
            continue
        si, di = sub(s).clone(), sub(delta).clone()
        si[-t:], di[-t:] = got
        if bool(check(si, di)):
            return _put(s, delta, i, si, di)
    return None


def _put(s, delta, i, si, di):
    """(s, delta) with matrix i's rows replaced (new tensors)."""
    if not i:
        return si, di
    s, delta = s.clone(), delta.clone()
    s[i], delta[i] = si, di
    return s, delta


def singular_values(A: MatrixLike, *, method: Method = "auto", dtype: torch.dtype | None = None,
                    accuracy: float | None = None) -> torch.Tensor:
    """Singular values of A (..., m, n), descending, shape (..., min(m, n)).

    Parameters
    ----------
    A : tensor, numpy array or nested list, shape (..., m, n)
        A matrix or a batch of matrices.
    method : {"auto", "gram", "svd"}, default "auto"
        "svd" (``torch.linalg.svdvals``), "gram" (square roots of the eigenvalues
        of the smaller Gram matrix: cheap, but singular values below
        ~sqrt(k eps) s_1 are rounding noise and returned as 0) or "auto" (Gram,
        with an SVD for the matrices where the Gram's error bound exceeds
        ``accuracy`` relative on any singular value; always SVD when A requires
        grad).
    dtype : torch.dtype, optional
        The computing dtype, float32 or float64 (default float64).
    accuracy : float, optional
        The relative error "auto" guarantees, in (0, 1) (default as in
        :func:`rank_measures`).

    Returns
    -------
    torch.Tensor
        (..., min(m, n)), descending, in the computing dtype.

    Raises
    ------
    InvalidParameterError
        ``A`` is not a real tensor, numpy array or nested list of at least 2
        dimensions, is empty or holds NaN/Inf; an unknown method or dtype; an
        ``accuracy`` outside (0, 1).

    Examples
    --------
    >>> import torch
    >>> from rankbias import singular_values
    >>> singular_values(torch.diag(torch.tensor([3.0, 1.0, 2.0]))).tolist()
    [3.0, 2.0, 1.0]
    >>> tuple(singular_values(torch.ones(2, 3, 4)).shape)  # a batch of two 3 x 4 matrices
    (2, 3)
    """
    A = _to_tensor(A)
    _check_method(method)
    _check_accuracy(accuracy)
    X, c = _scaled(A, _compute_dtype(dtype))
    s, _ = _spectrum(X, method, accuracy=accuracy)
    return s * c[..., 0]


def _centered_grams(
    X: torch.Tensor, need_uncentred: bool, *, in_place: bool = False
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """(tr C, ||C||_F^2) of the Gram matrix C of the smaller side of the row-centred X,
    and (optionally, else None) the Gram matrix of X itself.

    The uncentred Gram is assembled from the centred one plus rank-one terms in
    the mean, which costs no second product and loses nothing (every term is a
    part of the result), whereas centring an uncentred Gram cancels digits when
    the rows share a large mean. ``in_place`` (no autograd): X is centred and C
    turned into the uncentred Gram in place, so no copy of either is made.
    """
    m, n = X.shape[-2:]
    # shift by the first row before taking the mean (exact for equal rows, and no
    # cancellation for a large common offset: the covariance is shift-invariant)
    x0 = X[..., :1, :].clone()
    Xc = X.sub_(x0) if in_place else X - x0
    mu_y = Xc.mean(-2, keepdim=True)
    Xc.sub_(mu_y)  # our own tensor: centre in place
    mu = x0 + mu_y  # (..., 1, n)
    Gc = _gram(Xc)
    sums = (Gc.diagonal(dim1=-2, dim2=-1).sum(-1), Gc.square().sum((-2, -1)))
    if not need_uncentred:
        return sums, None
    G = Gc if in_place else Gc.clone()
    if m <= n:
        # A A^T = Xc Xc^T + v 1^T + 1 v^T + |mu|^2 1 1^T, v = Xc mu^T  (..., m, 1)
        v = Xc @ mu.mT
        G += v
        G += v.mT
        G += mu.square().sum(-1, keepdim=True)
    else:  # A^T A = Xc^T Xc + m mu^T mu
        G.view(-1, n, n).baddbmm_(mu.mT.reshape(-1, n, 1), mu.reshape(-1, 1, n), alpha=m)
    return sums, G


def _scaled_or_blocked_gram(A: torch.Tensor, cdt: torch.dtype, blocked: bool):
    """(X, c, G): A scaled by c in the computing dtype and no Gram yet, or, for a large float
    input whose Gram route is allowed (``blocked``), no copy of A (X None) and its Gram G
    computed from blocks of A."""
    if not (blocked and A.numel() > _BLOCK_ELEMENTS and A.dtype in (torch.float32, torch.float64)):
        X, c = _scaled(A, cdt)
        return X, c, None
    c, amax = _pow2_scale_and_max(A)
    if not bool(torch.isfinite(amax).all()):
        _check_finite(A, "A")
    c = c.to(cdt)
    _warn_if_slow(A, "gram", "Gram matrix (in blocks) and eigvalsh", cdt)
    return None, c, _blocked_gram(A, c, cdt)


def rank_measures(
    A: MatrixLike,
    measures: Sequence[str] | None = None,
    *,
    atol: Tol = None,
    rtol: Tol = None,
    method: Method = "auto",
    dtype: torch.dtype | None = None,
    rankme_eps: float = RANKME_EPS,
    accuracy: float | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Every rank measure of A (..., m, n) from one spectrum.

    See the module docstring for the definitions and conventions.

    Parameters
    ----------
    A : tensor, numpy array or nested list, shape (..., m, n)
        A matrix or a batch of matrices.
    measures : sequence of str, optional
        Names of :data:`MEASURES` (default: all of them).
    atol, rtol : float or tensor, optional
        The tolerances of ``numerical_rank``.
    method : {"auto", "gram", "svd", "fast"}, default "auto"
        "auto", "gram" or "svd" (see :func:`singular_values`; with "gram" the
        default numerical-rank tolerance is applied to s^2, the resolution a Gram
        matrix has), or "fast": estimates with error bars, returned as a
        :class:`~rankbias.measures.approx.Estimates` (a dict with ``.errors``;
        :func:`rankbias.measures.approx.fast_rank_measures`).
    dtype : torch.dtype, optional
        The computing dtype (float64 by default).
    rankme_eps : float, default RANKME_EPS
        The constant of RankMe.
    accuracy : float, optional
        The relative error "auto" guarantees for every measure (default
        :data:`ACCURACY` = 1e-6 in float64, 1.5e-9 on matrices up to ~400 x 400
        whose SVD is cheap, 0.1 sqrt(eps) ~ 3.5e-5 in float32; the numerical rank
        is always exact: refined by the SVD where a singular value lies within
        its error of the threshold), or the error-bar target of "fast" (default
        1e-2).
    seed : int, default 0
        The random probes of "fast" (ignored otherwise).

    Returns
    -------
    dict of str to torch.Tensor
        ``{name: tensor of the batch shape}`` in the order of :data:`MEASURES`
        (or of ``measures``).

    Raises
    ------
    InvalidParameterError
        ``A`` is not a real tensor, numpy array or nested list of at least 2
        dimensions, is empty or holds NaN/Inf; an unknown or empty list of
        measures; an unknown method or dtype; a NaN or non-numeric tolerance; an
        ``accuracy`` outside (0, 1).

    Examples
    --------
    >>> import torch
    >>> from rankbias import rank_measures
    >>> res = rank_measures(torch.diag(torch.tensor([4.0, 3.0])))
    >>> {name: round(float(v), 4) for name, v in res.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'stable_rank': 1.5625, 'effective_rank': 1.9796, 'entropy_rank': 0.6829,
     'numerical_rank': 2.0, 'participation_ratio': 1.0, 'rankme': 1.9796}
    >>> rank_measures([[1.0, 2.0], [2.0, 4.0]], ["numerical_rank"])  # nested lists are read too
    {'numerical_rank': tensor(1)}
    """
    A = _to_tensor(A)
    names = _check_measure_names(measures)
    _check_method(method, fast=True)
    _check_accuracy(accuracy)
    _check_tol(atol, "atol")
    _check_tol(rtol, "rtol")
    if method == "fast":
        return fast_rank_measures(A, measures, accuracy=accuracy, seed=seed, dtype=dtype,
                                  rankme_eps=rankme_eps)
    cdt = _compute_dtype(dtype)
    spectral, centred = split_centered(names)
    grad = A.requires_grad and torch.is_grad_enabled()
    m, n = A.shape[-2:]
    X, c, G = _scaled_or_blocked_gram(A, cdt, blocked=not centred and method != "svd" and not grad)
    common = dict(shape=(m, n), eps=_default_eps(A.dtype, cdt), atol=atol, rtol=rtol,
                  scale=c[..., 0, 0], rankme_eps=rankme_eps)
    sums = None
    if centred:
        use_gram = bool(spectral) and method != "svd" and not (method == "auto" and grad)
        if use_gram:
            _warn_if_slow(X, "gram", "centred Gram matrix and eigvalsh")
        in_place = use_gram and not grad  # X is our copy: centre it, rebuild it if an SVD needs it
        sums, G = _centered_grams(X, use_gram, in_place=in_place)
        if in_place:
            X = None
    elif X is not None and method != "svd" and not grad:
        _warn_if_slow(X, "gram", "Gram matrix and eigvalsh")
        G = _gram(X)
        X = None  # not kept during eigvalsh: rebuilt from A if an SVD needs it
    out = {}
    if spectral:
        s, from_gram = _spectrum(
            X, method, spectral, lambda s, delta: Spectrum(s, delta=delta, **common), G,
            rescale=lambda mask: _scaled(A[mask], cdt)[0], accuracy=accuracy, shape=(m, n))
        del G
        out = evaluate(spectral, Spectrum(s, gram_resolution=from_gram, **common))
    if centred:
        out.update(evaluate(centred, Spectrum(None, centered_power_sums=sums, **common)))
    return {k: out[k] for k in names}
