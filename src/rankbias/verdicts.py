"""Statistics over seeds and the tests that decide each claim, fixed before a run.

Every experiment's verdict comes from one of the functions here, so "holds" means
the same thing everywhere and can be unit-tested on synthetic summaries. A verdict
is a plain dict (JSON-ready)::

    {"status": "holds" | "does not hold" | "not testable",
     "holds": True | False | None,       # None when not testable
     "criterion": "...",                 # the test, in words, with its thresholds
     "reason": "...",                    # why this status, with the deciding numbers
     ...}                                # the numbers the test used

Experiments add ``"paper"`` (the paper's statement or figure value) and
``"measured"`` (ours, in the same terms) for the report's "paper vs measured" table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "mean_std",
    "paired_gain_verdict",
    "relative_rank_verdict",
    "student_t_ppf",
    "t_interval",
    "verdict",
]


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], float)


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; std 0 for one
    value, both NaN for none. The one mean/std over seeds used by every experiment."""
    v = _finite(values)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def t_interval(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, float]:
    """Student-t confidence interval for the mean of the finite ``values``.

    Returns ``{"mean", "lo", "hi", "n", "std"}``; with fewer than two values the
    interval is unbounded (``lo=-inf``, ``hi=+inf``), so no claim rests on one seed.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = _finite(values)
    n = int(v.size)
    if n == 0:
        return {"mean": float("nan"), "lo": float("-inf"), "hi": float("inf"), "n": 0, "std": float("nan")}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "lo": float("-inf"), "hi": float("inf"), "n": n, "std": 0.0}
    std = float(v.std(ddof=1))
    half = student_t_ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "std": std}


def _betacf(a: float, b: float, x: float) -> float:
    # Lentz's continued fraction for the incomplete beta function
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom (no scipy needed at run time)."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (bisection on :func:`student_t_cdf`, to 1e-12)."""
    if not 0 < q < 1 or df <= 0:
        raise ValueError(f"need 0 < q < 1 and df > 0, got q={q}, df={df}")
    lo, hi = -1.0, 1.0
    while student_t_cdf(lo, df) > q:  # heavy tails (df = 1): widen the bracket as needed
        lo *= 2
    while student_t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(hi)):
            break
    return 0.5 * (lo + hi)


def verdict(status: str, criterion: str, reason: str, **numbers: Any) -> dict[str, Any]:
    """A verdict dict; ``status`` is "holds", "does not hold" or "not testable"."""
    holds = {"holds": True, "does not hold": False, "not testable": None}
    if status not in holds:
        raise ValueError(f"status must be one of {list(holds)}, got {status!r}")
    return {"status": status, "holds": holds[status], "criterion": criterion, "reason": reason, **numbers}


def paired_gain_verdict(
    diffs: Mapping[Any, Sequence[float | None]], confidence: float = 0.95, unit: str = ""
) -> dict[str, Any]:
    """Paper 2's over-parameterisation claim, as a paired test per setting.

    ``diffs[key]`` holds, per seed, (treatment minus baseline) on the same seed, e.g.
    the test accuracy of the depth-d model minus the baseline's. "holds" when some
    key's t-interval lies above 0 and no key's lies below 0; "does not hold" when
    some key's lies below 0 or none lies above; "not testable" with fewer than two
    paired seeds at every key.
    """
    pct = round(100 * confidence)
    criterion = (
        f"per setting, the {pct}% t-interval over seeds of the paired difference (treatment minus "
        "baseline, same seed): holds when some interval is above 0 and none is below 0"
    )
    if not diffs:
        raise ValueError("paired_gain_verdict needs at least one setting")
    intervals = {str(k): t_interval(v, confidence) for k, v in diffs.items()}
    testable = {k: iv for k, iv in intervals.items() if iv["n"] >= 2}
    if not testable:
        return verdict("not testable", criterion, "fewer than two paired seeds at every setting",
                       intervals=intervals)
    above = [k for k, iv in testable.items() if iv["lo"] > 0]
    below = [k for k, iv in testable.items() if iv["hi"] < 0]

    def fmt(k):
        iv = testable[k]
        return f"{k}: {iv['mean']:+.4g}{unit} [{iv['lo']:+.4g}, {iv['hi']:+.4g}]"

    if below:
        status, reason = "does not hold", "interval below 0 at " + "; ".join(fmt(k) for k in below)
    elif above:
        status, reason = "holds", "interval above 0 at " + "; ".join(fmt(k) for k in above)
    else:
        status, reason = "does not hold", "no interval above 0: " + "; ".join(fmt(k) for k in testable)
    return verdict(status, criterion, reason, intervals=intervals, above=above, below=below)


def relative_rank_verdict(
    sigmas: Sequence[float],
    accuracy: Sequence[Sequence[float]],
    data_rank: Sequence[Sequence[float]],
    model_rank: Sequence[Sequence[float]],
    *,
    clean_index: int = 0,
    accuracy_drop: float = 0.01,
    data_factor: float = 10.0,
    max_ratio: float = 0.25,
) -> dict[str, Any]:
    """Paper 1's claim, relative: the model's rank grows far less than the data's.

    Arrays are (seeds, S) over the noise levels ``sigmas`` (``clean_index`` is the
    clean level, usually sigma = 0). The noise levels that count are those whose
    mean test accuracy is within ``accuracy_drop`` of the clean accuracy. Over
    them, take the level where the data's rank has grown the most (mean over seeds,
    relative to its clean value): the claim is testable when that growth is
    ``>= data_factor``, and holds when, per seed, ``log(model growth) / log(data
    growth) <= max_ratio`` on average (the seeds' spread is reported beside it).
    """
    acc = np.asarray(accuracy, float)
    dr = np.asarray(data_rank, float)
    mr = np.asarray(model_rank, float)
    if not (acc.shape == dr.shape == mr.shape) or acc.ndim != 2 or acc.shape[1] != len(sigmas):
        raise ValueError(
            "accuracy, data_rank and model_rank must all be (seeds, len(sigmas)); got "
            f"{acc.shape}, {dr.shape}, {mr.shape} for {len(sigmas)} sigmas"
        )
    criterion = (
        f"over the noise levels whose test accuracy is within {100 * accuracy_drop:g} pp of the "
        f"clean accuracy: the data's stable rank grows >= {data_factor:g}x, and "
        f"log(model rank growth) / log(data rank growth) <= {max_ratio:g} (mean over seeds)"
    )
    if not 0 <= clean_index < len(sigmas):
        raise ValueError(f"clean_index must be in 0..{len(sigmas) - 1}, got {clean_index}")
    # a seed counts only where both clean ranks are finite and > 0 (a ratio to 0 means nothing)
    valid = (np.isfinite(dr[:, clean_index]) & (dr[:, clean_index] > 0)
             & np.isfinite(mr[:, clean_index]) & (mr[:, clean_index] > 0))
    with warnings.catch_warnings():
        # a noise level whose networks all diverged is NaN: it is simply not in the band
        warnings.simplefilter("ignore", RuntimeWarning)
        acc_m = np.nanmean(acc, axis=0)
        growth = dr[valid] / dr[valid][:, [clean_index]]
        data_growth = np.nanmean(growth, axis=0) if valid.any() else np.full(len(sigmas), np.nan)
    ok = [j for j in range(len(sigmas)) if j != clean_index and np.isfinite(data_growth[j])
          and acc_m[j] >= acc_m[clean_index] - accuracy_drop]
    numbers: dict[str, Any] = {
        "generalising_sigmas": [float(sigmas[j]) for j in ok],
        "data_growth": [float(x) for x in data_growth],
    }
    if not valid.any():
        return verdict("not testable", criterion,
                       "no seed has a finite, positive clean rank of both the data and the model", **numbers)
    if not ok:
        return verdict("not testable", criterion,
                       "no noisy level keeps the test accuracy within the bound", **numbers)
    j = max(ok, key=lambda j: data_growth[j])
    numbers.update(sigma=float(sigmas[j]), max_data_growth=float(data_growth[j]))
    if not data_growth[j] >= data_factor:
        return verdict(
            "not testable", criterion,
            f"the data's rank grows only {data_growth[j]:.3g}x (< {data_factor:g}x) at the generalising "
            f"noise levels: this data cannot show the claim", **numbers)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_data = dr[:, j] / dr[:, clean_index]
        g_model = mr[:, j] / mr[:, clean_index]
        ratios = np.log(g_model) / np.log(g_data)
    used = valid & np.isfinite(ratios) & (g_data > 1)
    m, s = mean_std(list(ratios[used]))
    numbers.update(model_growth=float(np.mean(g_model[used])) if used.any() else float("nan"),
                   ratio_mean=m, ratio_std=s, ratio_per_seed=[float(r) for r in ratios],
                   n_seeds_used=int(used.sum()), n_seeds=int(len(ratios)))
    if not used.any():
        return verdict("not testable", criterion,
                       "no seed gives a finite log ratio at the deciding noise level", **numbers)
    status = "holds" if m <= max_ratio else "does not hold"
    dropped = "" if used.all() else f"; {int((~used).sum())} of {len(used)} seeds without a finite ratio left out"
    reason = (f"at sigma={sigmas[j]:g} the data's rank grows {data_growth[j]:.3g}x and the model's "
              f"{numbers['model_growth']:.3g}x: log ratio {m:.3f} +- {s:.3f} over {int(used.sum())} "
              f"seed(s) ({'<=' if m <= max_ratio else '>'} {max_ratio:g}){dropped}")
    return verdict(status, criterion, reason, **numbers)
