"""The fast route (``method="fast"``): rank measures estimated from products with A, with error bars.

The exact route costs a Gram product (2 N k^2 flops for A of k x N, k <= N) and
an eigendecomposition (~k^3). This one touches A only through products
``A (A^T V)`` with thin blocks V, in three steps (M = A A^T, k x k):

1. **Deflation** (randomized range finder, Halko, Martinsson & Tropp 2011, with
   ``_POWER`` = 2 power iterations, then Rayleigh-Ritz): the top ``rank`` eigenpairs
   (theta_i, q_i) of M and their residuals r_i = M q_i - theta_i q_i.
2. **The tail** by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017) on
   M restricted to the complement of the q_i: ``probes`` Gaussian vectors,
   ``steps`` Lanczos steps each (full reorthogonalisation), batched into one
   product per step. Each probe gives quadrature rules (nodes, weights) whose
   sums estimate sum_tail g(lambda) for any g without bias up to quadrature:
   the Gauss and the Gauss-Radau rule (a node at 0), mixed 2:1 (:func:`_rules`:
   their errors are of opposite signs, Radau's about twice Gauss's), and a
   control variate, the tail's exactly known trace ||A||_F^2 - sum theta_i.
3. **The measures** from these sums: sum s = sum sqrt(lambda), sum s log s,
   the entropy H = log S - (sum s log s) / S, effective rank exp(H), RankMe
   with its eps; the stable rank ||A||_F^2 / lambda_1 from the exact Frobenius
   norm and lambda_1 in [theta_1, theta_1 + ||r_1||].

Error bars (``Estimates.errors``, half-widths, same units as the values):

- stable rank: the interval above. theta_1 is a Rayleigh quotient (a lower
  bound of lambda_1, always); theta_1 + ||r_1|| bounds it above unless the
  random block of ``rank + 10`` Gaussian columns missed the top singular
  direction, an event of vanishing probability (each column would need a
  component below ~||r_1||/lambda_1 along it).
- the entropies and RankMe: a Student-t 99.9% interval from the spread of the
  per-probe estimates (jackknife over 16 groups of probes, so the ratio
  S-dependence is carried), plus the quadrature error (2/3 of the gap between
  the Gauss and the Gauss-Radau rule, which bracket the truth for sum s; never
  narrowed by a second, heuristic estimate), plus the deflation error (the measures
  recomputed with each theta_i raised by the quadratic residual bound
  ||r_i||^2 / gap_i), plus the rounding of the control variate's trace.
  A statistical bar: it holds with high probability, not always.

The stable rank alone (``measures=["stable_rank"]``) needs no tail: lambda_1 comes
from subspace iteration on ``_BLOCK`` = 8 columns, each pass followed by Rayleigh-Ritz,
until the bar [||A||_F^2 / (theta_1 + ||r_1||), ||A||_F^2 / theta_1] meets ``accuracy``
(or the residual reaches the products' rounding): a few passes, 24-40 columns on
trained-layer spectra, ~50x faster than the exact route on 4096 x 11008.

Deterministic given ``seed`` (a private ``torch.Generator``; the global RNG is
untouched). Matrices whose smaller side is at most ``rank`` are resolved
completely by step 1 (errors then ~eps).

Why written here: ``torch.svd_lowrank`` is the same range finder but returns no
residuals, which the error bars need; ``torch.lobpcg`` finds extreme
eigenpairs only; trace-estimation libraries such as ``imate`` estimate one trace
function at a time on numpy/scipy operators, while the entropies need two
traces combined in a ratio with one joint error bar, which the per-probe
quadrature rules kept here give. The numerical rank (an exact count) and the
participation ratio (a centred Gram) are not estimated: the fast route refuses them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rankbias.errors import InvalidParameterError
from rankbias.measures._checks import _check_accuracy, _check_finite, _compute_dtype, _to_tensor
from rankbias.measures.spec import RANKME_EPS, _check_measure_names

#: The measures the fast route estimates, in the order it returns them.
FAST_MEASURES: tuple[str, ...] = ("stable_rank", "effective_rank", "entropy_rank", "rankme")
#: Default target of the relative error bar of ``method="fast"``.
FAST_ACCURACY = 1e-2
_OVERSAMPLE = 10
_BLOCK = 8  # columns of the stable rank's subspace iteration
_GROUPS = 16  # the jackknife's groups of probes
# below this many float64 flops (~1 s) the exact route is cheap: rounds are not limited
_CHEAP_EXACT_FLOPS = 2.5e10
# power iterations of the range finder: each shrinks the Ritz residuals, whose
# coupling of the top to the tail biases the tail's sums (entropy ~1 % at 1024 x 2752 with 1)
_POWER = 2


class Estimates(dict):
    """``{name: value}`` like :func:`~rankbias.measures.rank_measures`, plus ``errors``:
    ``{name: half-width}`` of each value's error bar (same shape and dtype), and the
    ``seed`` the probes were drawn with, and ``columns``: the products M v (M = A A^T on
    the smaller side, 4 m n flops each) spent, all matrices together. The true value
    lies in value +- error (with high probability: see the module docstring)."""

    def __init__(
        self,
        values: dict[str, torch.Tensor],
        errors: dict[str, torch.Tensor],
        seed: int,
        columns: int = 0,
    ):
        super().__init__(values)
        self.columns = columns
        self.errors = errors
        self.seed = seed


def _t_quantile(dof: int) -> float:
    """Student-t 99.9% two-sided quantile (scipy, a core dependency; imported here so that
    ``import rankbias`` stays free of scipy.stats)."""
    from scipy.stats import t

    return float(t.ppf(0.9995, dof))


def _check_fast_args(names: Sequence[str], rank: int, probes: int, steps: int) -> None:
    bad = [n for n in names if n not in FAST_MEASURES]
    if bad:
        raise InvalidParameterError(
            f"method='fast' does not estimate {bad}; accepted: {list(FAST_MEASURES)} "
            "(the numerical rank and the participation ratio need the exact route)"
        )
    for name, v, lo in (("rank", rank, 1), ("probes", probes, 4), ("steps", steps, 4)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise InvalidParameterError(f"{name} must be an integer >= {lo}, got {v!r}")


def _scaled(W: torch.Tensor, cdt: torch.dtype, A) -> torch.Tensor:
    """W in the computing dtype, divided by its largest |entry| where that is far from 1
    (the measures are scale-invariant; a product of float32 entries near 1e20 would
    overflow). W itself, uncopied, where it already is ``cdt`` and its scale is safe.
    The extremes are taken in float64 (an int8 -128 negated in int8 is -128 again; bool
    has no negation) and the division done in the wider of W's dtype and ``cdt`` before
    the cast (a float64 W beyond float32's range would otherwise become inf)."""
    lo, hi = (t.double() for t in W.aminmax())  # one pass; NaN and Inf reach the extremes
    amax = torch.maximum(-lo, hi)
    if not bool(torch.isfinite(amax)):
        _check_finite(A, "A")  # counts them for the message
    if W.dtype == cdt and 1e-6 <= float(amax) <= 1e6:
        return W
    wide = torch.promote_types(W.dtype, cdt) if W.is_floating_point() else cdt
    return (W.to(wide) / amax.clamp_min(torch.finfo(wide).tiny).to(wide)).to(cdt)


def _fro2(X: torch.Tensor) -> torch.Tensor:
    """||X||_F^2 in float64. Rows of up to 2^16 entries: norms in the computing dtype
    (pairwise sums, ~1e-8 relative in float32 on 11008-long rows), summed in float64 (a
    float32 sum of 10^7 squares errs by ~1e-3, beyond the stable rank's bar); 20x faster
    than a float64 norm of the whole X. Longer rows are accumulated in float64 (a float32
    norm of a 10^6-long row erred by 4e-7)."""
    if X.shape[-1] > 2**16:
        return torch.linalg.vector_norm(X, dtype=torch.float64).square()
    return torch.linalg.vector_norm(X, dim=-1).double().square().sum()


def _rounding(X: torch.Tensor) -> float:
    """The relative rounding error of M's products and of sums over X, worst case: a
    product X (X^T V) sums over both sides, (k + N) eps (Higham's gamma_n); LLM-shaped
    float32: 1.8e-3 at 4096 x 11008."""
    return sum(X.shape[-2:]) * torch.finfo(X.dtype).eps


def _product(X: torch.Tensor):
    """V -> X (X^T V), M's product. For blocks under 16 columns it is taken row-wise,
    ((V^T X) X^T)^T: BLAS's thin X^T V is ~8x slower than V^T X on a 4096 x 11008 row-major X
    (measured, 2 threads), wider blocks the other way round."""

    def mv(V: torch.Tensor) -> torch.Tensor:
        if V.shape[-1] < 16:
            return ((V.mT @ X) @ X.mT).mT
        return X @ (X.mT @ V)

    return mv


def _deflate(mv, k: int, rank: int, gen: torch.Generator, cdt: torch.dtype):
    """Top ``rank`` Ritz pairs of M (one power iteration) and their residual norms."""
    Q = torch.randn(k, min(k, rank + _OVERSAMPLE), generator=gen, dtype=cdt, device=gen.device)
    for _ in range(1 + _POWER):
        Q = torch.linalg.qr(mv(Q)).Q
    Z = mv(Q)
    B = Q.mT @ Z
    theta, W = torch.linalg.eigh((B + B.mT) / 2)
    theta, W = theta.flip(-1)[:rank], W.flip(-1)[:, :rank]
    Q, Z = Q @ W, Z @ W
    res = (Z - Q * theta).norm(dim=0)
    return theta.clamp_min(0), Q, res


def _lanczos(mv, Q: torch.Tensor, probes: int, steps: int, gen: torch.Generator):
    """Batched Lanczos on M restricted to Q's complement from Gaussian probes: the
    tridiagonal matrices (probes, steps, steps) in float64 and the complement's dimension."""
    k, cdt = Q.shape[0], Q.dtype
    Z = torch.randn(k, probes, generator=gen, dtype=cdt, device=Q.device)
    Z = Z - Q @ (Q.mT @ Z)
    norm2 = Z.square().sum(0)
    v = Z / norm2.sqrt()
    V = torch.empty(steps, k, probes, dtype=cdt, device=Q.device)
    alpha, beta = [], []
    for j in range(steps):
        V[j] = v
        w = mv(v)
        alpha.append((v * w).sum(0))
        w = w - Q @ (Q.mT @ w)
        Vs = V[: j + 1]  # (j+1, k, probes)
        # full reorthogonalisation, twice (Kahan's "twice is enough"); elementwise
        # products and sums: per-probe products of this size are slower as bmm
        for _twice in range(2):
            w = w - (Vs * (Vs * w).sum(1, keepdim=True)).sum(0)
        b = w.norm(dim=0)
        ok = b > 1e3 * torch.finfo(cdt).eps * alpha[0].abs().clamp_min(torch.finfo(cdt).tiny)
        beta.append(torch.where(ok, b, torch.zeros_like(b)))  # breakdown: an invariant subspace
        v = torch.where(ok, w / torch.where(ok, b, torch.ones_like(b)), torch.zeros_like(w))

    T = torch.diag_embed(torch.stack(alpha, -1).double())
    off = torch.stack(beta[: steps - 1], -1).double()
    return T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1), k - Q.shape[1]


def _rules(T: torch.Tensor, dim: int):
    """From the Lanczos matrices T (probes, q, q): the Gauss rule, the Gauss-Radau rule
    with a node fixed at 0 (M >= 0), and the estimate's rule (2 Gauss + Radau) / 3,
    each (nodes, weights) of shape (probes, q) ((probes, 2 q) for the last).

    For f = sqrt (sum s) the two bracket the truth, Gauss from above and Radau from
    below (the signs of f's derivatives of order 2q and 2q + 1), and for s log s
    they did on every matrix tested. Gauss errs by about -1/2 of Radau's error
    (measured: 1/2.1 at 12 and at 24 steps, 1024 x 2752 power law), so their 2:1
    mix, itself a quadrature rule, cancels most of both."""
    q = T.shape[-1]
    R = T.clone()
    if q > 1:
        # Radau: the last diagonal entry becomes d_q, T_{q-1} d = beta_{q-1}^2 e_{q-1}
        # (Golub & Meurant 2010, ch. 6)
        b2 = T[..., -1, -2].square()
        rhs = torch.zeros(T.shape[:-1][:-1] + (q - 1,), dtype=T.dtype, device=T.device)
        rhs[..., -1] = b2
        d = torch.linalg.solve_ex(T[..., :-1, :-1], rhs)[0][..., -1]
        keep = torch.isfinite(d) & (b2 > 0) & (d >= 0)
        R[..., -1, -1] = torch.where(keep, d, T[..., -1, -1])

    def rule(T):
        nodes, vecs = torch.linalg.eigh(T)
        # z / ||z|| is uniform on the complement's sphere: scaling by its dimension
        # (not ||z||^2) keeps the estimate unbiased and removes the norm's spread
        return nodes.clamp_min(0), vecs[:, 0, :].square() * float(dim)

    (ng, wg), (nr, wr) = rule(T), rule(R)
    return (ng, wg), (nr, wr), (torch.cat([ng, nr], -1), torch.cat([2 * wg, wr], -1) / 3)


def _measures(
    theta, nodes, weights, fro2, lam1, names, rankme_eps, t_tail
) -> dict[str, torch.Tensor]:
    """Measures from the deflated top (theta) and per-probe tail rules averaged over probes.

    ``t_tail``: tr of M on the tail, known exactly (||A||_F^2 - sum theta). Each
    probe's rule also estimates it; the part of a probe's error that follows its
    error on that trace is subtracted (a control variate, coefficient fitted over
    the probes): sqrt and s log s are close to linear in lambda, so this removes
    most of the spread (about 10x at 1024 x 2752)."""
    s_top, s_tail = theta.sqrt(), nodes.sqrt()
    dT = (weights * nodes).sum(-1) - t_tail  # (probes,)
    dTc = dT - dT.mean()

    def total(g_top, g_tail):
        Gp = (weights * g_tail).sum(-1)
        if Gp.numel() > 2:
            b = ((Gp - Gp.mean()) * dTc).sum() / dTc.square().sum().clamp_min(
                torch.finfo(dT.dtype).tiny
            )
            Gp = Gp - b * dT
        return g_top.sum() + Gp.mean()

    S = total(s_top, s_tail)
    U = total(torch.special.xlogy(s_top, s_top), torch.special.xlogy(s_tail, s_tail))
    H = (S.log() - U / S).clamp_min(0)
    out = {"stable_rank": fro2 / lam1, "effective_rank": H.exp(), "entropy_rank": H}
    if "rankme" in names:

        def g(s):
            p = s / S + rankme_eps
            return -p * p.log()

        out["rankme"] = total(g(s_top), g(s_tail)).exp()
    return {n: out[n] for n in names}


def _estimate_one(X: torch.Tensor, names, rank, probes, steps, gen, rankme_eps):
    """(values, errors) for one matrix X (k x N, k <= N), values in float64."""
    k = X.shape[0]
    fro2 = _fro2(X)
    if float(fro2) == 0:
        zero = {n: torch.zeros((), dtype=torch.float64, device=X.device) for n in names}
        return zero, dict(zero)
    mv = _product(X)
    theta, Q, res = _deflate(mv, k, rank, gen, X.dtype)
    theta, res = theta.double(), res.double()
    if Q.shape[1] >= k:  # resolved completely: no tail
        T, dim = torch.zeros(1, 1, 1, dtype=torch.float64, device=X.device), 0
    else:
        T, dim = _lanczos(mv, Q, probes, min(steps, k - Q.shape[1]), gen)
    rounding = _rounding(X)
    return _values_and_bars(theta, res, T, dim, fro2, names, rankme_eps, rounding)


def _stable_rank_only(X: torch.Tensor, target: float, gen: torch.Generator, max_iter: int = 64):
    """The stable rank alone, (values, errors, columns): it needs lambda_1 only, so no tail.

    Subspace iteration on M with a block of ``_BLOCK`` columns, each pass followed by
    Rayleigh-Ritz, until the top Ritz pair's residual r_1 puts the bar within ``target``:
    lambda_1 lies in [theta_1, theta_1 + ||r_1||] (theta_1 a Rayleigh quotient; the upper
    end as in the module docstring), so the stable rank lies in [F / (theta_1 + ||r_1||),
    F / theta_1], relative half-width ||r_1|| / (2 theta_1 + ||r_1||). The residual shrinks
    by about lambda_{b+1} / lambda_1 per pass: a few passes of b columns where the
    spectrum falls like a trained layer's."""
    k, mv = X.shape[0], _product(X)
    fro2 = _fro2(X)
    if float(fro2) == 0:
        zero = torch.zeros((), dtype=torch.float64, device=X.device)
        return {"stable_rank": zero}, {"stable_rank": zero.clone()}, 0
    Q = torch.linalg.qr(torch.randn(k, min(k, _BLOCK), generator=gen, dtype=X.dtype, device=X.device)).Q
    rounding = _rounding(X)
    columns = 0
    for it in range(max_iter):
        Z = mv(Q)
        columns += Q.shape[1]
        theta, V = torch.linalg.eigh((Q.mT @ Z + Z.mT @ Q) / 2)
        t1 = theta[-1].double().clamp_min(torch.finfo(torch.float64).tiny)
        # in float64: a float32 residual of a converged pair is rounding, not error
        r1 = (Z.double() @ V[:, -1].double() - t1 * (Q.double() @ V[:, -1].double())).norm()
        half = float(r1 / (2 * t1 + r1))
        # below the products' rounding the residual is rounding itself: no pass improves it
        if Q.shape[1] >= k or (it >= 1 and (half + rounding <= target or half <= rounding)):
            break
        Q = torch.linalg.qr(Z).Q
    lo, hi = fro2 / (t1 + r1), fro2 / t1
    value = (lo + hi) / 2
    return {"stable_rank": value}, {"stable_rank": (hi - lo) / 2 + rounding * value}, columns


def _columns(k: int, rank: int, probes: int, steps: int) -> int:
    """Products M v (columns) one round takes: the range finder's passes and the Lanczos steps."""
    return min(k, rank + _OVERSAMPLE) * (2 + _POWER) + (probes * steps if rank < k else 0)


def _round_budget(k: int, N: int) -> float:
    """Columns M v all rounds may take: a quarter of the exact route's work (the Gram
    product, float64, and ~4/3 k^3 of eigvalsh at about half that speed) counted in
    float32 products (twice as fast as float64); unlimited where the exact route
    costs under ~1 s (the fast route then buys nothing, and the target is met)."""
    exact = 2.0 * k * k * N + 2 * 4 / 3 * k**3  # float64 flops, eigvalsh counted at half speed
    if exact < _CHEAP_EXACT_FLOPS:
        return math.inf
    return exact / 4 * 2 / (4.0 * k * N)


def _values_and_bars(theta, res, T, dim, fro2, names, rankme_eps, rounding):
    """The measures and their bars from the deflated top (theta, residuals res) and the
    tail's Lanczos matrices T (probes, q, q)."""
    (ng, wg), (nr, wr), (nodes, w) = _rules(T, dim)
    lam1 = torch.maximum(theta[0], nodes.max())
    t_tail = (fro2 - theta.sum()).clamp_min(0)

    def at(theta=theta, nodes=nodes, w=w, t_tail=t_tail):
        return _measures(theta, nodes, w, fro2, lam1, names, rankme_eps, t_tail)

    vals = at()
    errs = {n: torch.zeros((), dtype=torch.float64, device=theta.device) for n in names}
    # the spread over probes: jackknife over (up to 16) groups of probes (the measures
    # are non-linear in the probe means)
    p = nodes.shape[0]
    g = min(p, _GROUPS)
    if g > 1:
        group = torch.arange(p, device=nodes.device) % g
        loo = [at(nodes=nodes[group != i], w=w[group != i]) for i in range(g)]
        for n in names:
            x = torch.stack([d[n] for d in loo])
            errs[n] = _t_quantile(g - 1) * ((g - 1) / g * (x - x.mean()).square().sum()).sqrt()
    # quadrature: 2/3 of the Gauss-Radau gap (the truth lies between the two rules, the
    # estimate 1/3 of the way). Never narrowed by a heuristic (e.g. the same rule with
    # fewer nodes): a second estimate that happens to agree would shrink the bar by chance
    gauss, radau = at(nodes=ng, w=wg), at(nodes=nr, w=wr)
    quad = {n: 2 * (gauss[n] - radau[n]).abs() / 3 for n in names}
    # deflation: each theta_i may sit below its eigenvalue by ||r_i||^2 / gap_i
    gap = (theta - nodes.max()).clamp_min(torch.finfo(torch.float64).tiny)
    shift = torch.where(theta - nodes.max() > res, res.square() / gap, res)
    raised = at(theta=theta + shift)
    # the control variate's exact trace, off by the rounding of theta
    t_err = rounding * theta.sum()
    moved = [at(t_tail=t_tail + t_err), at(t_tail=(t_tail - t_err).clamp_min(0))]
    for n in names:  # jackknife + quadrature + deflation + the control variate's trace
        errs[n] = (
            errs[n]
            + quad[n]
            + (raised[n] - vals[n]).abs()
            + max((d[n] - vals[n]).abs() for d in moved)
        )
    if "stable_rank" in names:  # lambda_1 in [lam1, lam1 + ||r_1||]
        lo, hi = fro2 / (lam1 + res[0]), fro2 / lam1
        vals["stable_rank"], errs["stable_rank"] = (lo + hi) / 2, (hi - lo) / 2
    for n in names:
        errs[n] = errs[n] + rounding * vals[n].abs()
    return vals, errs


def _rounds(X, names, target, rank, probes, steps, max_rounds, seed, rankme_eps):
    """(values, errors, columns) of one matrix: rounds of doubling rank and probes until
    every bar meets ``target``, ``max_rounds`` is reached or the budget would be exceeded."""
    r, p, used, budget = rank, probes, 0, _round_budget(*X.shape)
    for _ in range(max_rounds):
        gen = torch.Generator(device=X.device).manual_seed(seed)
        v, e = _estimate_one(X, names, r, p, steps, gen, rankme_eps)
        used += _columns(X.shape[0], r, p, steps)
        if all(float(e[k]) <= target * abs(float(v[k])) for k in names):
            break
        r, p = 2 * r, 2 * p
        if used + _columns(X.shape[0], r, p, steps) > budget:
            break
    return v, e, used


def fast_rank_measures(
    A,
    measures: Sequence[str] | None = None,
    *,
    accuracy: float | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    rankme_eps: float = RANKME_EPS,
    rank: int = 32,
    probes: int = 16,
    steps: int = 24,
    max_rounds: int = 4,
) -> Estimates:
    """Stable rank, effective rank, entropy rank and RankMe of A (..., m, n), estimated.

    Parameters
    ----------
    A : tensor or array (..., m, n)
    measures : names among :data:`FAST_MEASURES` (default: all four).
    accuracy : target of each error bar relative to its value (default
        :data:`FAST_ACCURACY` = 1e-2): while a bar is wider, the rank of the
        deflation and the number of probes double, up to ``max_rounds`` rounds
        and, where the exact route costs over ~1 s, a round after the first only
        while the total stays under a quarter of its work (beyond that the fast
        route buys nothing).
        The bar is reported as it is, met or not.
    seed : seeds the probes (results are deterministic given it).
    dtype : the computing dtype of the products (default float32: the estimate's
        error is far above float32's rounding).
    rankme_eps, rank, probes, steps, max_rounds : RankMe's eps; the deflated
        eigenpairs, probes and Lanczos steps of the first round; rounds at most.

    Returns
    -------
    Estimates
        ``{name: float64 tensor of the batch shape}`` with ``.errors`` (half-widths).

    Raises
    ------
    InvalidParameterError
        A measure the fast route does not estimate, or a bad parameter.
    """
    A = _to_tensor(A)
    names = FAST_MEASURES if measures is None else _check_measure_names(measures)
    _check_accuracy(accuracy)
    _check_fast_args(names, rank, probes, steps)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidParameterError(f"seed must be an integer, got {seed!r}")
    if not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 1:
        raise InvalidParameterError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
    cdt = torch.float32 if dtype is None else _compute_dtype(dtype)
    target = FAST_ACCURACY if accuracy is None else float(accuracy)
    m, n = A.shape[-2:]
    flat = A.detach().reshape(-1, m, n)
    vals = {k: [] for k in names}
    errs = {k: [] for k in names}
    columns = 0
    for W in flat:
        X = _scaled(W, cdt, A)
        X = X if m <= n else X.mT
        # the same probes for every matrix: an estimate depends on the matrix, not on
        # where it sits in the batch
        gen = torch.Generator(device=X.device).manual_seed(seed)
        if tuple(names) == ("stable_rank",):
            v, e, used = _stable_rank_only(X, target, gen)
        else:
            v, e, used = _rounds(
                X, names, target, rank, probes, steps, max_rounds, seed, rankme_eps
            )
        columns += used
        for k in names:
            vals[k].append(v[k])
            errs[k].append(e[k])
    batch = A.shape[:-2]
    return Estimates(
        {k: torch.stack(vals[k]).reshape(batch) for k in names},
        {k: torch.stack(errs[k]).reshape(batch) for k in names},
        seed,
        columns,
    )


__all__ = ["FAST_ACCURACY", "FAST_MEASURES", "Estimates", "fast_rank_measures"]
