"""The rank measures, one entry each: formula, Gram-route error bound, largest value, integer?

Every measure is a function of the singular values s_1 >= ... >= s_k >= 0 of a
matrix A (m x n), k = min(m, n), except the participation ratio, a function of
the eigenvalues of the covariance of A's centred rows. :data:`SPECS` is the one
list of measures: ``MEASURES``, ``rank_measures``, ``rank_measures_many``,
``max_measure``, ``measures_from_singular_values`` and ``KernelSpectrum`` all
read it, so adding a measure is adding one :class:`MeasureSpec` here (and its
test; see docs/measures.md, "Adding a measure").

A formula sees a :class:`Spectrum`: the singular values and what the measures
share (the entropy of p = s / sum s, the numerical-rank threshold, the power
sums of the centred spectrum). An error bound sees the same object with
``delta``, a bound on each singular value's error on the Gram route, and
returns a bound on the measure's relative error per matrix; ``method="auto"``
keeps the Gram route for a matrix only where every requested bound is below
its ``accuracy`` (after refining the smallest singular values, if that is
what the bounds need). A measure with ``error_bound=None`` is never trusted to the
Gram route: "auto" computes it from the SVD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from rankbias.errors import InvalidParameterError
from rankbias.measures._checks import Tol, _check_tol

RANKME_EPS = 1e-7
_EPS64 = torch.finfo(torch.float64).eps


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


def _pr_from_traces(tr: torch.Tensor, tr2: torch.Tensor) -> torch.Tensor:
    """(tr C)^2 / tr(C^2); 0 when C = 0."""
    zero = tr2 <= 0
    return torch.where(zero, torch.zeros_like(tr),
                       tr.square() / torch.where(zero, torch.ones_like(tr2), tr2))


class Spectrum:
    """One (batched) spectrum as a measure's formula and error bound see it.

    ``s``: singular values (..., k), descending (None when only centred measures
    are asked for); ``shape``: (m, n) of the matrix; ``eps``, ``atol``, ``rtol``,
    ``scale``, ``gram_resolution``: what the numerical-rank threshold needs
    (``scale``, batch shape or None = 1: s are those of A / scale, an exact power
    of two per matrix, so a measure that is not scale-invariant multiplies it back);
    ``extra_zeros``: zero singular values not listed in s (only RankMe sees them);
    ``centered_power_sums``: (sum lambda, sum lambda^2) of the centred rows'
    covariance eigenvalues up to a common factor (batch shape), or None;
    ``delta``: (..., k) bound on each s_i's error on the Gram route (error bounds only).
    """

    def __init__(self, s: torch.Tensor | None, *, shape: tuple[int, int], eps: float = _EPS64,
                 atol: Tol = None, rtol: Tol = None, scale: torch.Tensor | None = None,
                 rankme_eps: float = RANKME_EPS, extra_zeros: int = 0,
                 gram_resolution: bool = False,
                 centered_power_sums: tuple[torch.Tensor, torch.Tensor] | None = None,
                 delta: torch.Tensor | None = None):
        self.s = None if s is None else s.clamp_min(0)
        self.shape = shape
        self.eps, self.atol, self.rtol, self.scale = eps, atol, rtol, scale
        self.rankme_eps = rankme_eps
        self.extra_zeros = extra_zeros
        self.gram_resolution = gram_resolution
        self.centered_power_sums = centered_power_sums
        self.delta = delta

    @cached_property
    def s1(self) -> torch.Tensor:
        return self.s[..., 0]

    @cached_property
    def zero(self) -> torch.Tensor:
        """Per matrix: all singular values 0 (every spectral measure is then 0)."""
        return self.s1 == 0

    @cached_property
    def total(self) -> torch.Tensor:
        """sum s (..., 1), with 1 for the zero matrix (so p = s / total is defined)."""
        total = self.s.sum(-1, keepdim=True)
        return torch.where(total == 0, torch.ones_like(total), total)

    @cached_property
    def entropy(self) -> torch.Tensor:
        """H(p), p = s / sum s, in nats; 0 for the zero matrix."""
        h = -_plogp(self.s / self.total).sum(-1)
        return torch.where(self.zero, torch.zeros_like(h), h)

    @cached_property
    def tol(self) -> torch.Tensor:
        """The numerical-rank threshold max(atol, rtol * s_1) (batch shape)."""
        return _tolerance(self.s1, shape=self.shape, eps=self.eps, atol=self.atol, rtol=self.rtol,
                          scale=self.scale, gram_resolution=self.gram_resolution)

    @cached_property
    def entropy_error(self) -> torch.Tensor:
        """Bound on |dH|, H = H(p), from the errors ``delta`` (see :meth:`entropy_error_shifted`)."""
        return self.entropy_error_shifted(0.0)

    def entropy_error_shifted(self, shift: float) -> torch.Tensor:
        """Bound on |dH| for H = -sum (p_i + shift) log(p_i + shift), p = s / sum s,
        when each s_i may be off by up to ``delta_i`` (batch shape).

        Each p_i' lies in [(s_i - delta_i)_+ / (S + D), (s_i + delta_i) / (S - D)],
        S = sum s, D = sum delta; the bound sums, over i, the largest change of
        x log x on that interval (at its ends or at 1/e). Unlike a derivative
        bound it stays finite at p_i = 0: a singular value known only to be below
        delta_i changes H by at most ~(delta_i / S) log(S / delta_i). inf if D >= S."""
        s, d = self.s, self.delta
        tiny = torch.finfo(s.dtype).tiny
        S = s.sum(-1, keepdim=True)
        D = d.sum(-1, keepdim=True)
        S_lo, S_hi = (S - D).clamp_min(tiny), (S + D).clamp_min(tiny)
        p0 = s / S.clamp_min(tiny) + shift
        lo = (s - d).clamp_min(0) / S_hi + shift
        hi = (s + d) / S_lo + shift
        f0 = torch.special.xlogy(p0, p0)
        err = torch.zeros_like(p0)
        for x in (lo, hi, torch.minimum(torch.maximum(lo.new_tensor(math.exp(-1)), lo), hi)):
            err = torch.maximum(err, (torch.special.xlogy(x, x) - f0).abs())
        out = err.sum(-1)
        return torch.where((D >= S)[..., 0] & (D > 0)[..., 0], torch.full_like(out, math.inf), out)


# ------------------------------------------------------------------ the measures


def _stable_rank(sp: Spectrum) -> torch.Tensor:
    sr = sp.s.square().sum(-1) / torch.where(sp.zero, torch.ones_like(sp.s1), sp.s1).square()
    return torch.where(sp.zero, torch.zeros_like(sr), sr)


def _effective_rank(sp: Spectrum) -> torch.Tensor:
    return torch.where(sp.zero, torch.zeros_like(sp.entropy), sp.entropy.exp())


def _rankme(sp: Spectrum) -> torch.Tensor:
    h = -_plogp(sp.s / sp.total + sp.rankme_eps).sum(-1)
    if sp.extra_zeros:
        h = h - sp.extra_zeros * sp.rankme_eps * math.log(sp.rankme_eps)
    rm = h.exp()
    return torch.where(sp.zero, torch.zeros_like(rm), rm)


def _participation_ratio(sp: Spectrum) -> torch.Tensor:
    return _pr_from_traces(*sp.centered_power_sums)


def _trace_bound(sp: Spectrum) -> torch.Tensor:
    # sum s^2 and s_1^2 are the Gram's trace and top eigenvalue, both backward stable:
    # relative error ~ k eps, below the 0.1 sqrt(eps) target for any k < 10^6
    return torch.full_like(sp.s1, sp.s.shape[-1] * torch.finfo(sp.s.dtype).eps)


def _entropy_rank_bound(sp: Spectrum) -> torch.Tensor:
    # relative to H itself (H ~ 0 for a nearly rank-one matrix), and absolute
    dh = sp.entropy_error
    h = sp.entropy
    rel = torch.where(h > 0, dh / torch.where(h > 0, h, torch.ones_like(h)),
                      torch.where(dh > 0, torch.full_like(dh, math.inf), torch.zeros_like(dh)))
    return torch.maximum(dh, rel)


def _numerical_rank_bound(sp: Spectrum) -> torch.Tensor:
    # exact unless a singular value lies within its error of the threshold
    safe = ((sp.s - sp.tol.unsqueeze(-1)).abs() > sp.delta).all(-1)
    return torch.where(safe, torch.zeros_like(sp.s1), torch.full_like(sp.s1, math.inf))


def _rank_bound(m: int, n: int, rankme_eps: float) -> float:
    return float(min(m, n))


def _rankme_max(m: int, n: int, rankme_eps: float) -> float:
    # the entropy of p + eps is concave and symmetric: largest at the flat spectrum
    k = min(m, n)
    q = 1.0 / k + rankme_eps
    return math.exp(-k * q * math.log(q))


@dataclass(frozen=True)
class MeasureSpec:
    """One rank measure.

    ``formula(sp)``: its value from a :class:`Spectrum` (batch shape);
    ``error_bound(sp)``: a bound on its relative error (batch shape) when
    ``sp.s`` come from the Gram route, off by at most ``sp.delta``; None where
    no bound is known (``method="auto"`` then takes the SVD);
    ``max_value(m, n, rankme_eps)``: its largest value on an m x n matrix;
    ``integer``: a count (int64, no gradient); ``centered``: a function of the
    centred rows' covariance (``sp.centered_power_sums``), not of ``sp.s``.
    """

    name: str
    formula: Callable[[Spectrum], torch.Tensor]
    error_bound: Callable[[Spectrum], torch.Tensor] | None
    max_value: Callable[[int, int, float], float]
    integer: bool = False
    centered: bool = False
    definition: str = ""

    def __post_init__(self):
        if not self.name.isidentifier():
            raise InvalidParameterError(f"MeasureSpec.name must be an identifier, got {self.name!r}")
        for field in ("formula", "max_value"):
            if not callable(getattr(self, field)):
                raise InvalidParameterError(f"MeasureSpec({self.name!r}).{field} must be callable")
        if self.error_bound is not None and not callable(self.error_bound):
            raise InvalidParameterError(f"MeasureSpec({self.name!r}).error_bound must be callable or None")


#: Every measure, in the order `rank_measures` returns them. Add a measure here.
SPECS: dict[str, MeasureSpec] = {s.name: s for s in (
    MeasureSpec("stable_rank", _stable_rank, _trace_bound, _rank_bound,
                definition="sum(s_i^2) / s_1^2"),
    MeasureSpec("effective_rank", _effective_rank, lambda sp: sp.entropy_error.expm1(), _rank_bound,
                definition="exp(H(p)), p_i = s_i / sum_j s_j (Roy & Vetterli 2007)"),
    MeasureSpec("entropy_rank", lambda sp: sp.entropy, _entropy_rank_bound,
                lambda m, n, e: math.log(min(m, n)),
                definition="H(p) in nats, the log of the effective rank (Huh et al. 2023)"),
    MeasureSpec("numerical_rank", lambda sp: (sp.s > sp.tol.unsqueeze(-1)).sum(-1),
                _numerical_rank_bound, _rank_bound, integer=True,
                definition="#{s_i > max(atol, rtol * s_1)}, as torch.linalg.matrix_rank"),
    # the centred rows span at most min(m - 1, n) dimensions; computed from traces of
    # the centred Gram, no eigenvalues: as accurate on either route
    MeasureSpec("participation_ratio", _participation_ratio, lambda sp: torch.zeros(()),
                lambda m, n, e: float(max(min(m - 1, n), 1)), centered=True,
                definition="(sum lambda_i)^2 / sum lambda_i^2, lambda: covariance of the centred rows"),
    MeasureSpec("rankme", _rankme, lambda sp: sp.entropy_error_shifted(sp.rankme_eps).expm1(), _rankme_max,
                definition="exp(H(p + eps)), eps = 1e-7, uncentred (Garrido et al. 2023)"),
)}

#: Names of every built-in measure, in the order `rank_measures` returns them.
MEASURES: tuple[str, ...] = tuple(SPECS)


def register_measure(spec: MeasureSpec) -> MeasureSpec:
    """Add a measure to :data:`SPECS`: every consumer (``rank_measures``,
    ``KernelSpectrum``, ``rank_report``, ``RankTracker``, ``rankbias measure``)
    then computes it, last in their tables.

    Parameters
    ----------
    spec : MeasureSpec
        The new measure; its ``name`` must not be taken.

    Returns
    -------
    MeasureSpec
        ``spec``, so that it can be used as ``register_measure(MeasureSpec(...))``.

    Raises
    ------
    InvalidParameterError
        ``spec`` is not a :class:`MeasureSpec`, or its name is already registered.

    Examples
    --------
    >>> from rankbias.measures import MeasureSpec, register_measure, unregister_measure
    >>> spec = register_measure(MeasureSpec("top_share", lambda sp: sp.s1 / sp.total[..., 0],
    ...                                     None, lambda m, n, e: 1.0))
    >>> unregister_measure("top_share") is spec
    True
    """
    if not isinstance(spec, MeasureSpec):
        raise InvalidParameterError(f"register_measure: expected a MeasureSpec, got {type(spec).__name__}")
    if spec.name in SPECS:
        raise InvalidParameterError(f"register_measure: a measure named {spec.name!r} is already "
                                    f"registered; taken: {list(SPECS)}")
    SPECS[spec.name] = spec
    return spec


def unregister_measure(name: str) -> MeasureSpec:
    """Remove a measure added by :func:`register_measure` and return its spec.

    Raises
    ------
    InvalidParameterError
        ``name`` is a built-in measure (:data:`MEASURES`) or not registered.
    """
    if name in MEASURES or name not in SPECS:
        raise InvalidParameterError(f"unregister_measure: {name!r} is not a registered added measure; "
                                    f"added: {[k for k in SPECS if k not in MEASURES]}")
    return SPECS.pop(name)


def _check_measure_names(measures: Iterable[str] | None) -> tuple[str, ...]:
    if measures is None:
        return tuple(SPECS)
    if isinstance(measures, str):
        measures = (measures,)
    names = tuple(measures)
    bad = [m for m in names if m not in SPECS]
    if bad:
        raise InvalidParameterError(f"measures: unknown measure(s) {bad}; accepted: {list(SPECS)}")
    if not names:
        raise InvalidParameterError(f"measures is empty; accepted: any of {list(SPECS)}")
    return names


def split_centered(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(measures of the singular values, measures of the centred covariance)."""
    return ([k for k in names if not SPECS[k].centered], [k for k in names if SPECS[k].centered])


def evaluate(names: Sequence[str], sp: Spectrum) -> dict[str, torch.Tensor]:
    """{name: value} for the measures whose inputs ``sp`` holds, in the order of ``names``."""
    out = {}
    for k in names:
        spec = SPECS[k]
        if (sp.centered_power_sums if spec.centered else sp.s) is not None:
            out[k] = spec.formula(sp)
    return out


def max_measure(name: str, shape: tuple[int, int], *, rankme_eps: float = RANKME_EPS) -> float:
    """Largest value ``name`` can take on an m x n matrix (to normalise by)."""
    _check_measure_names([name])
    m, n = shape
    return SPECS[name].max_value(m, n, rankme_eps)


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
        raise InvalidParameterError(f"s: expected singular values of shape (..., k), k >= 1, got {tuple(s.shape)}")
    if not s.dtype.is_floating_point:
        s = s.to(torch.float64)
    _check_tol(atol, "atol")
    _check_tol(rtol, "rtol")
    sums = None
    if centered_sq is not None:
        lam = torch.as_tensor(centered_sq).clamp_min(0)
        sums = (lam.sum(-1), lam.square().sum(-1))
    sp = Spectrum(s, shape=shape if shape is not None else (s.shape[-1], s.shape[-1]),
                  eps=_EPS64 if eps is None else float(eps), atol=atol, rtol=rtol,
                  rankme_eps=rankme_eps, centered_power_sums=sums)
    return evaluate(names, sp)
