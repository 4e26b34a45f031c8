"""Statistics over seeds and the tests that decide each claim, fixed before a run.

Every experiment's verdict comes from one of the functions here, so an outcome means
the same thing everywhere and can be unit-tested on synthetic summaries. A verdict
is a plain dict (JSON-ready)::

    {"status": "holds" | "does not hold" | "inconclusive" | "not testable",
     "holds": True | False | None,       # None when inconclusive or not testable
     "criterion": "...",                 # the test, in words, with its thresholds
     "reason": "...",                    # why this status, with the deciding numbers
     ...}                                # the numbers the test used

The four outcomes (docs/SCIENCE.md D): **holds**, the data support the statement at
the stated confidence; **does not hold**, they contradict it (an effect of the wrong
sign, or an interval that excludes the smallest effect the statement means);
**inconclusive**, the interval still contains both "no effect" and the claimed
effect; **not testable**, the setting cannot show the statement (a model at chance,
data whose rank does not grow, fewer than two seeds).

Experiments add ``"statement"`` (the paper's words that the verdict tests),
``"paper"`` (the paper's statement or figure value) and ``"measured"`` (ours, in the
same terms) for the report's "paper vs measured" table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rankbias.errors import InvalidParameterError

__all__ = [
    "ACCURACY_DROP",
    "CHANCE_MARGIN",
    "STATUSES",
    "binomial_lower_bound",
    "detectable_effect",
    "mean_std",
    "noninferiority",
    "paired_gain_verdict",
    "relative_rank_verdict",
    "require_learned",
    "status_of",
    "t_interval",
    "verdict",
]

STATUSES = ("holds", "does not hold", "inconclusive", "not testable")
"""The four outcomes of a verdict, in the order the report lists them."""

ACCURACY_DROP = 0.01
"""Paper 1's accuracy band: a noise level counts where its accuracy is shown within this of the clean one."""

CHANCE_MARGIN = 0.10
"""How far above chance (1/K, in accuracy) a seed's clean test accuracy must be, by the
exact binomial test of :func:`binomial_lower_bound`, before paper 1's claim is testable:
a network within 10 pp of a constant predictor has not learned the clean task."""


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
        raise InvalidParameterError(f"confidence must be in (0, 1), got {confidence}")
    v = _finite(values)
    n = int(v.size)
    if n == 0:
        return {"mean": float("nan"), "lo": float("-inf"), "hi": float("inf"), "n": 0, "std": float("nan")}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "lo": float("-inf"), "hi": float("inf"), "n": n, "std": 0.0}
    std = float(v.std(ddof=1))
    half = _t_ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "std": std}


def _t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom (scipy, imported on first use
    so that ``import rankbias`` and the CLI's start stay free of scipy.stats)."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def verdict(status: str, criterion: str, reason: str, **numbers: Any) -> dict[str, Any]:
    """A verdict dict; ``status`` is one of :data:`STATUSES`."""
    holds = {"holds": True, "does not hold": False, "inconclusive": None, "not testable": None}
    if status not in holds:
        raise InvalidParameterError(f"status must be one of {list(holds)}, got {status!r}")
    return {"status": status, "holds": holds[status], "criterion": criterion, "reason": reason, **numbers}


def status_of(v: Mapping[str, Any] | None) -> str:
    """The outcome of a verdict dict (one of :data:`STATUSES`), or "no verdict".

    A dict without a ``status`` (a toy experiment's ``{"holds": True}``) is read
    from ``holds``; ``holds=None`` alone says nothing, so it is "no verdict".
    """
    v = v or {}
    if v.get("status") in STATUSES:
        return v["status"]
    h = v.get("holds")
    return "holds" if h is True else "does not hold" if h is False else "no verdict"


def detectable_effect(std: float, n: int, confidence: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean that a ``confidence`` t-interval over ``n`` seeds of spread
    ``std`` finds above 0 with probability ``power``: ``(t_{(1+c)/2} + t_power) std / sqrt(n)``
    with n - 1 degrees of freedom (the usual t approximation of the noncentral t); inf
    for fewer than two seeds."""
    if n < 2 or not math.isfinite(std):
        return float("inf")
    df = n - 1
    return (_t_ppf(0.5 + confidence / 2, df) + _t_ppf(power, df)) * std / math.sqrt(n)


def binomial_lower_bound(successes: int, n: int, confidence: float = 0.95) -> float:
    """Clopper-Pearson lower end of the two-sided ``confidence`` interval of a proportion
    (``successes`` of ``n``): the p at which P(X >= successes | p) = (1 - confidence) / 2.
    It exceeds p0 exactly when the one-sided exact binomial test rejects p <= p0 at that level."""
    if not 0 <= successes <= n or n < 1:
        raise InvalidParameterError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    if successes == 0:
        return 0.0
    from scipy.stats import beta

    # P(X >= k | p) = I_p(k, n - k + 1): the bound is that Beta's (1 - confidence) / 2 quantile
    return float(beta.ppf((1 - confidence) / 2, successes, n - successes + 1))


def noninferiority(
    treated: Sequence[float], reference: Sequence[float], n_test: int, margin: float,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Is the accuracy of ``treated`` at most ``margin`` below ``reference``, over seeds and
    test images? Both are per-seed accuracies on ``n_test`` test images (pairs with a
    non-finite value are left out).

    Per seed d = treated - reference. The lower end of the ``confidence`` t-interval over
    seeds of the mean of d must lie above ``-margin``. The spread it uses is the seeds'
    sample spread, but never less than the binomial spread of a difference of two
    accuracies on ``n_test`` images, sqrt((p1 (1 - p1) + p0 (1 - p0)) / n_test) (mean
    variance over seeds): three seeds can agree by chance, the test images still vary.
    It treats the two accuracies as independent, which is conservative for the same
    images under two conditions. Fewer than two seeds: not non-inferior.
    """
    t = np.asarray(treated, float)
    r = np.asarray(reference, float)
    ok = np.isfinite(t) & np.isfinite(r)
    t, r = t[ok], r[ok]
    n = int(t.size)
    out: dict[str, Any] = {"n": n, "margin": margin, "mean": float(np.mean(t - r)) if n else float("nan")}
    if n < 2:
        return {**out, "lower": float("-inf"), "noninferior": False}
    floor = math.sqrt(float(np.mean(t * (1 - t) + r * (1 - r))) / n_test)
    spread = max(float(np.std(t - r, ddof=1)), floor)
    lower = out["mean"] - _t_ppf(0.5 + confidence / 2, n - 1) * spread / math.sqrt(n)
    return {**out, "lower": lower, "spread": spread, "binomial_floor": floor, "noninferior": bool(lower > -margin)}


def _fmt_interval(k: str, iv: Mapping[str, float], unit: str) -> str:
    return f"{k}: {iv['mean']:+.4g}{unit} [{iv['lo']:+.4g}, {iv['hi']:+.4g}]"


def paired_gain_verdict(
    diffs: Mapping[Any, Sequence[float | None]], confidence: float = 0.95, unit: str = "", *,
    effect: float,
) -> dict[str, Any]:
    """Paper 2's over-parameterisation claim, as a paired test per setting.

    ``diffs[key]`` holds, per seed, (treatment minus baseline) on the same seed, e.g.
    the test accuracy of the depth-d model minus the baseline's. ``effect`` (> 0, in
    the diffs' unit) is the smallest gain the claim means. With the ``confidence``
    t-interval over seeds of each key:

    - "holds": some interval lies above 0 and none below 0 (an interval above 0 that
      ends below ``effect`` is a gain smaller than claimed, and the reason says so);
    - "does not hold": some interval lies below 0, or none lies above 0 and every
      interval ends below ``effect`` (the claimed gain is excluded);
    - "inconclusive": otherwise (the intervals hold both 0 and the claimed gain);
    - "not testable": fewer than two paired seeds at every key.

    ``detectable`` per key and ``smallest_detectable_effect`` are the gains the seeds
    could have found above 0 with 80 % power (:func:`detectable_effect`).
    """
    if not (isinstance(effect, int | float) and math.isfinite(effect) and effect > 0):
        raise InvalidParameterError(f"effect must be a finite number > 0 (the smallest gain the claim means), got {effect!r}")
    if not diffs:
        raise InvalidParameterError("paired_gain_verdict needs at least one setting")
    pct = round(100 * confidence)
    criterion = (
        f"per setting, the {pct}% t-interval over seeds of the paired difference (treatment minus "
        f"baseline, same seed), against the claimed gain {effect:g}{unit}: holds when some interval is "
        "above 0 and none below 0; does not hold when one is below 0, or none is above 0 and every one "
        f"ends below {effect:g}{unit}; inconclusive otherwise"
    )
    intervals = {str(k): t_interval(v, confidence) for k, v in diffs.items()}
    for iv in intervals.values():
        iv["detectable"] = detectable_effect(iv["std"], iv["n"], confidence)
    testable = {k: iv for k, iv in intervals.items() if iv["n"] >= 2}
    above = [k for k, iv in testable.items() if iv["lo"] > 0]
    below = [k for k, iv in testable.items() if iv["hi"] < 0]
    numbers = dict(intervals=intervals, above=above, below=below, effect=effect,
                   smallest_detectable_effect=min((iv["detectable"] for iv in testable.values()),
                                                  default=float("inf")))
    if not testable:
        return verdict("not testable", criterion, "fewer than two paired seeds at every setting", **numbers)
    listed = "; ".join(_fmt_interval(k, iv, unit) for k, iv in testable.items())
    if below:
        reason = "interval below 0 at " + "; ".join(_fmt_interval(k, testable[k], unit) for k in below)
        return verdict("does not hold", criterion, reason, **numbers)
    if above:
        small = [k for k in above if testable[k]["hi"] < effect]
        reason = "interval above 0 at " + "; ".join(_fmt_interval(k, testable[k], unit) for k in above)
        if small:
            reason += (f"; a gain, but smaller than the claimed {effect:g}{unit} at {', '.join(small)} "
                       "(the interval ends below it)")
        return verdict("holds", criterion, reason, **numbers)
    if all(iv["hi"] < effect for iv in intervals.values()):
        return verdict("does not hold", criterion,
                       f"no interval above 0 and every one ends below the claimed gain {effect:g}{unit}: "
                       + listed, **numbers)
    return verdict("inconclusive", criterion,
                   f"the intervals hold both 0 and the claimed gain {effect:g}{unit}: {listed}; these seeds "
                   f"would detect a gain of {numbers['smallest_detectable_effect']:.3g}{unit} "
                   "(80% power)", **numbers)


def require_learned(
    v: dict[str, Any], baseline_acc: Mapping[Any, float], n_test: int, n_classes: int,
    margin: float = CHANCE_MARGIN, confidence: float = 0.95,
) -> dict[str, Any]:
    """A paired verdict against a baseline that did not learn is an accident (a constant
    predictor makes any trained treatment look like a gain): ``v`` becomes "not testable"
    unless every baseline seed's test accuracy (``baseline_acc``: seed -> accuracy on
    ``n_test`` images of ``n_classes`` classes) is above 1/K + ``margin`` by the exact
    binomial test. The verdict it replaces is kept as ``untested_verdict``."""
    seeds = list(baseline_acc)
    ok, bounds = _learned(np.asarray([float(baseline_acc[s]) for s in seeds], float), n_test,
                          n_classes, margin, confidence)
    v = {**v, "learned_check": {str(s): {"acc": float(baseline_acc[s]), "lower": b, "learned": bool(k)}
                                for s, k, b in zip(seeds, ok, bounds)}}
    if seeds and ok.all():
        return v
    bad = ", ".join(f"seed {s}: {100 * float(baseline_acc[s]):.2f}%" for s, k in zip(seeds, ok) if not k)
    reason = (f"the baseline did not learn ({bad or 'no baseline seed'}): test accuracy not above chance "
              f"1/{n_classes} + {100 * margin:g} pp by the exact binomial test on {n_test} images")
    out = verdict("not testable", v.get("criterion", ""), reason,
                  **{k: x for k, x in v.items() if k not in ("status", "holds", "criterion", "reason")})
    out["untested_verdict"] = {k: v[k] for k in ("status", "reason") if k in v}
    return out


def _learned(clean_acc: np.ndarray, n_test: int, n_classes: int, margin: float,
             confidence: float) -> tuple[np.ndarray, list[float]]:
    """Per seed: is the clean test accuracy above 1/K + margin by the exact binomial test
    (:func:`binomial_lower_bound`)? And the lower bounds (NaN for a non-finite accuracy)."""
    bounds = [binomial_lower_bound(int(round(a * n_test)), n_test, confidence) if math.isfinite(a)
              else float("nan") for a in clean_acc]
    chance = 1.0 / n_classes + margin
    return np.asarray([b > chance for b in bounds], bool), bounds


def relative_rank_verdict(
    sigmas: Sequence[float],
    accuracy: Sequence[Sequence[float]],
    data_rank: Sequence[Sequence[float]],
    model_rank: Sequence[Sequence[float]],
    *,
    n_test: int,
    n_classes: int,
    clean_index: int = 0,
    accuracy_drop: float = ACCURACY_DROP,
    data_factor: float = 10.0,
    max_ratio: float = 0.25,
    chance_margin: float = CHANCE_MARGIN,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paper 1's claim, relative: the model's rank grows far less than the data's.

    Arrays are (seeds, S) over the noise levels ``sigmas`` (``clean_index`` is the
    clean level, usually sigma = 0); accuracies are on ``n_test`` test images per seed
    and ``n_classes`` classes. Stated before the run (docs/paper1.md "Verdict"):

    1. *a model that learned*: a seed counts only when its clean test accuracy is
       above chance, 1/K, plus ``chance_margin`` by the exact binomial test
       (:func:`binomial_lower_bound` at ``confidence``); fewer than two such seeds
       with finite, positive clean ranks: not testable.
    2. *the band*: the noisy levels whose accuracy is non-inferior to the clean one
       within ``accuracy_drop`` over those seeds and the test images
       (:func:`noninferiority`).
    3. *testable*: at the band's level where the data's rank has grown the most (mean
       over seeds, relative to its clean value), it has grown ``>= data_factor``.
    4. per seed, r = log(model growth) / log(data growth) at that level; with the
       ``confidence`` t-interval of r over seeds: holds when it ends at or below
       ``max_ratio``, does not hold when it starts above it, inconclusive otherwise.
    """
    acc = np.asarray(accuracy, float)
    dr = np.asarray(data_rank, float)
    mr = np.asarray(model_rank, float)
    if not (acc.shape == dr.shape == mr.shape) or acc.ndim != 2 or acc.shape[1] != len(sigmas):
        raise InvalidParameterError(
            "accuracy, data_rank and model_rank must all be (seeds, len(sigmas)); got "
            f"{acc.shape}, {dr.shape}, {mr.shape} for {len(sigmas)} sigmas"
        )
    if not 0 <= clean_index < len(sigmas):
        raise InvalidParameterError(f"clean_index must be in 0..{len(sigmas) - 1}, got {clean_index}")
    if n_classes < 2 or n_test < 1:
        raise InvalidParameterError(f"need n_classes >= 2 and n_test >= 1, got {n_classes} and {n_test}")
    pct = round(100 * confidence)
    criterion = (
        f"seeds whose clean test accuracy is above chance 1/{n_classes} + {chance_margin:g} (exact binomial, "
        f"{pct}%); noise levels whose accuracy is non-inferior to the clean one within "
        f"{100 * accuracy_drop:g} pp ({pct}% t-interval over seeds, binomial floor for the test images); there "
        f"the data's stable rank grows >= {data_factor:g}x, and the {pct}% t-interval over seeds of "
        f"log(model rank growth) / log(data rank growth) ends <= {max_ratio:g} (holds) or starts > "
        f"{max_ratio:g} (does not hold)"
    )
    c = clean_index
    # a seed counts only where both clean ranks are finite and > 0 (a ratio to 0 means nothing)
    valid = np.isfinite(dr[:, c]) & (dr[:, c] > 0) & np.isfinite(mr[:, c]) & (mr[:, c] > 0)
    learned, bounds = _learned(acc[:, c], n_test, n_classes, chance_margin, confidence)
    use = valid & learned
    numbers: dict[str, Any] = {"chance": 1.0 / n_classes, "chance_margin": chance_margin,
                               "clean_acc_lower_bound": bounds, "n_learned": int(learned.sum()),
                               "n_seeds": int(len(learned))}
    if use.sum() < 2:
        why = (f"{int(learned.sum())} of {len(learned)} seed(s) have a clean test accuracy clearly above chance "
               f"(exact binomial lower bound > {1.0 / n_classes + chance_margin:g}): the model did not learn "
               "the clean task")
        if learned.sum() >= 2:
            why = "fewer than two learned seeds have a finite, positive clean rank of both the data and the model"
        return verdict("not testable", criterion, why, **numbers)
    return _relative_rank_tail(sigmas, acc[use], dr[use], mr[use], c, n_test, accuracy_drop, data_factor,
                               max_ratio, confidence, criterion, numbers)


def _relative_rank_tail(sigmas, acc, dr, mr, c, n_test, accuracy_drop, data_factor, max_ratio, confidence,
                        criterion, numbers) -> dict[str, Any]:
    """Steps 2-4 of :func:`relative_rank_verdict` on the seeds that learned."""
    with warnings.catch_warnings():
        # a noise level whose networks all diverged is NaN: it is simply not in the band
        warnings.simplefilter("ignore", RuntimeWarning)
        data_growth = np.nanmean(dr / dr[:, [c]], axis=0)
    band = {j: noninferiority(acc[:, j], acc[:, c], n_test, accuracy_drop, confidence)
            for j in range(len(sigmas)) if j != c}
    ok = [j for j, ni in band.items() if ni["noninferior"] and np.isfinite(data_growth[j])]
    numbers.update(generalising_sigmas=[float(sigmas[j]) for j in ok],
                   data_growth=[float(x) for x in data_growth],
                   accuracy_band={str(float(sigmas[j])): {k: ni[k] for k in ("mean", "lower", "noninferior")}
                                  for j, ni in band.items()})
    if not ok:
        return verdict("not testable", criterion,
                       f"no noisy level's accuracy is shown within {100 * accuracy_drop:g} pp of the clean one",
                       **numbers)
    j = max(ok, key=lambda j: data_growth[j])
    numbers.update(sigma=float(sigmas[j]), max_data_growth=float(data_growth[j]))
    if not data_growth[j] >= data_factor:
        return verdict(
            "not testable", criterion,
            f"the data's rank grows only {data_growth[j]:.3g}x (< {data_factor:g}x) at the noise levels "
            f"shown to generalise: this data cannot show the claim", **numbers)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_data, g_model = dr[:, j] / dr[:, c], mr[:, j] / mr[:, c]
        ratios = np.log(g_model) / np.log(g_data)
    used = np.isfinite(ratios) & (g_data > 1)
    iv = t_interval(list(ratios[used]), confidence)
    numbers.update(model_growth=float(np.mean(g_model[used])) if used.any() else float("nan"),
                   ratio_mean=iv["mean"], ratio_std=iv["std"], ratio_lo=iv["lo"], ratio_hi=iv["hi"],
                   ratio_per_seed=[float(r) for r in ratios], n_seeds_used=int(used.sum()))
    if used.sum() < 2:
        return verdict("not testable", criterion,
                       "fewer than two seeds give a finite log ratio at the deciding noise level", **numbers)
    status = "holds" if iv["hi"] <= max_ratio else "does not hold" if iv["lo"] > max_ratio else "inconclusive"
    dropped = "" if used.all() else f"; {int((~used).sum())} of {len(used)} seeds without a finite ratio left out"
    reason = (f"at sigma={sigmas[j]:g} the data's rank grows {data_growth[j]:.3g}x and the model's "
              f"{numbers['model_growth']:.3g}x: log ratio {iv['mean']:.3f} [{iv['lo']:.3f}, {iv['hi']:.3f}] "
              f"over {int(used.sum())} seeds against {max_ratio:g}{dropped}")
    return verdict(status, criterion, reason, **numbers)
