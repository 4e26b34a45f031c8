"""Shared parts of the two noise-robustness experiments (SCIENCE.md B): the
sweep layout, aggregation over seeds, the verdict and the three figures.

A sweep trains ``len(seeds) * len(sigmas)`` networks as one batch; model
``i = seed_index * S + sigma_index``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ACC_THRESHOLD = 0.9
"""Test accuracy at which a noise level counts as one where the network generalises."""
DATA_FACTOR = 10.0
"""The data's patch-matrix stable rank must reach this multiple of the clean rank."""
FILTER_FACTOR = 1.25
"""Filter stable rank bound, as a multiple of the clean rank."""
FLAT_FACTOR = 1.5
"""Filter stable rank may vary by less than this factor over generalising noise levels."""


def validate_training(cfg) -> None:
    """Checks shared by both experiments' configs: the sweep, the CNN and its training."""
    req = cfg._require
    req(len(cfg.sigmas) >= 1 and all(s >= 0 and np.isfinite(s) for s in cfg.sigmas),
        "sigmas", "a non-empty list of finite floats >= 0")
    req(len(set(cfg.sigmas)) == len(cfg.sigmas), "sigmas", "distinct values")
    req(len(cfg.seeds) >= 1 and len(set(cfg.seeds)) == len(cfg.seeds), "seeds",
        "a non-empty list of distinct ints")
    req(cfg.filters >= 1, "filters", "an int >= 1")
    req(cfg.steps >= 1, "steps", "an int >= 1")
    req(cfg.lr > 0, "lr", "a float > 0")
    req(cfg.init_std >= 0, "init_std", "a float >= 0")
    req(cfg.q >= 1, "q", "a float >= 1")
    req(cfg.kappa > 0, "kappa", "a float > 0")
    req(cfg.log_every >= 1, "log_every", "an int >= 1")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def per_sigma_table(
    final: Mapping[str, Any],
    status: Sequence[str],
    sigmas: Sequence[float],
    seeds: Sequence[int],
    data: Mapping[str, np.ndarray],
    clean_rank: float,
) -> list[dict[str, Any]]:
    """One row per sigma: means (and stds) over seeds of the final metrics of the
    non-diverged models, and the data's ranks. ``data[key]`` is (seeds, S)."""
    S = len(sigmas)
    rows = []
    for j, sigma in enumerate(sigmas):
        idx = [s * S + j for s in range(len(seeds))]
        ok = [i for i in idx if status[i] == "ok"]

        def col(key, ok=ok):
            return [float(final[key][i]) for i in ok]

        fsr = _mean_std(col("filter_stable_rank"))
        fer = _mean_std(col("filter_effective_rank"))
        row = {
            "sigma": float(sigma),
            "filter_stable_rank_mean": fsr[0],
            "filter_stable_rank_std": fsr[1],
            "filter_effective_rank_mean": fer[0],
            "filter_effective_rank_std": fer[1],
            "class_block_stable_rank_mean": _mean_std(col("pos_stable_rank") + col("neg_stable_rank"))[0],
        }
        for key, arr in data.items():
            m, s = _mean_std(list(np.asarray(arr)[:, j]))
            row[key] = m
            row[f"{key}_std"] = s
        row["clean_rank"] = clean_rank
        for key in ("train_acc", "test_acc", "test_loss"):
            m, s = _mean_std(col(key))
            row[f"{key}_mean"], row[f"{key}_std"] = m, s
        row["n_ok"], row["n_diverged"] = len(ok), len(idx) - len(ok)
        rows.append(row)
    return rows


def verdict(per_sigma: Sequence[Mapping[str, Any]], clean_rank: float, clean_rank_name: str = "2K") -> dict:
    """The claim's criterion (issue 3), on seed means:

    * generalising noise levels: test accuracy >= 0.9 (and no seed diverged);
    * reach: at some generalising level, the data's patch-matrix stable rank is
      >= 10 x the clean rank;
    * bound: at every generalising level, filter stable rank <= 1.25 x clean rank;
    * flat: max / min of the filter stable rank over generalising levels < 1.5.
    """
    gen = [
        r for r in per_sigma
        if r["n_diverged"] == 0 and math.isfinite(r["test_acc_mean"]) and r["test_acc_mean"] >= ACC_THRESHOLD
    ]
    if not gen:
        return {
            "holds": False,
            "reason": f"no noise level with test accuracy >= {ACC_THRESHOLD}",
            "clean_rank": clean_rank,
        }
    fsr = [r["filter_stable_rank_mean"] for r in gen]
    data_ratio = [r["data_patch_stable_rank"] / clean_rank for r in gen]
    reach = max(data_ratio) >= DATA_FACTOR
    bound = max(fsr) <= FILTER_FACTOR * clean_rank
    flat = max(fsr) / min(fsr) < FLAT_FACTOR
    return {
        "holds": bool(reach and bound and flat),
        "criterion": (
            f"over noise levels with test acc >= {ACC_THRESHOLD}: data patch stable rank reaches "
            f">= {DATA_FACTOR:g} x clean rank ({clean_rank_name}); filter stable rank <= "
            f"{FILTER_FACTOR:g} x clean rank and max/min < {FLAT_FACTOR:g}"
        ),
        "clean_rank": clean_rank,
        "generalising_sigmas": [r["sigma"] for r in gen],
        "max_generalising_sigma": max(r["sigma"] for r in gen),
        "max_data_patch_stable_rank_over_clean": max(data_ratio),
        "data_reaches_10x": bool(reach),
        "max_filter_stable_rank": max(fsr),
        "filter_bound": FILTER_FACTOR * clean_rank,
        "filter_within_bound": bool(bound),
        "filter_stable_rank_max_over_min": max(fsr) / min(fsr),
        "filter_flat": bool(flat),
    }


def status_rows(status, diverged_at, sigmas, seeds) -> list[dict[str, Any]]:
    S = len(sigmas)
    return [
        {"sigma": float(sigmas[i % S]), "seed": int(seeds[i // S]), "status": st, "diverged_at": diverged_at[i]}
        for i, st in enumerate(status)
    ]


def history_rows(history, sigmas, seeds) -> list[dict[str, Any]]:
    S = len(sigmas)
    return [{"sigma": float(sigmas[r["model"] % S]), "seed": int(seeds[r["model"] // S]), **r} for r in history]


# ------------------------------------------------------------------- figures


def _sigma_axis(ax, sigmas: Sequence[float], label: str) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    pos = [s for s in sigmas if s > 0]
    if pos:
        # symlog keeps sigma = 0 (the clean data) on a log-scaled axis
        ax.set_xscale("symlog", linthresh=min(pos), linscale=0.5)
    ax.xaxis.set_major_locator(FixedLocator(list(sigmas)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{s:g}" for s in sigmas], rotation=45 if len(sigmas) > 6 else 0, fontsize=8)
    ax.set_xlabel(label)


def _shade_non_generalising(ax, per_sigma) -> None:
    xs = [r["sigma"] for r in per_sigma]
    bad = [i for i, r in enumerate(per_sigma) if not r["test_acc_mean"] >= ACC_THRESHOLD]
    for i in bad:  # shade halfway (geometrically) to the neighbours
        lo = xs[i] if i == 0 else (xs[i - 1] * xs[i]) ** 0.5 if xs[i - 1] > 0 else xs[i] / 2
        hi = xs[i] if i == len(xs) - 1 else (xs[i] * xs[i + 1]) ** 0.5
        ax.axvspan(lo, hi, color="0.85", alpha=0.6, lw=0,
                   label=f"test acc < {ACC_THRESHOLD:g}" if i == bad[0] else None)


def plot_ranks_vs_sigma(per_sigma, path, *, clean_rank: float, clean_label: str, sigma_label: str,
                        title: str, image_key: str | None = "data_image_stable_rank",
                        clean_data_key: str | None = None):
    import rankbias.plots as plots

    x = [r["sigma"] for r in per_sigma]
    fig, ax = plots.figure(width=5.6, height=4.4)
    plots.line_with_band(ax, x, [r["filter_stable_rank_mean"] for r in per_sigma],
                         [r["filter_stable_rank_std"] for r in per_sigma], label="filters W (2m x d)")
    plots.line_with_band(ax, x, [r["data_patch_stable_rank"] for r in per_sigma],
                         [r["data_patch_stable_rank_std"] for r in per_sigma], label="data: patch matrix",
                         marker="s")
    if image_key:
        plots.line_with_band(ax, x, [r[image_key] for r in per_sigma],
                             [r[f"{image_key}_std"] for r in per_sigma], label="data: image matrix",
                             marker="^")
    if clean_data_key:
        plots.line_with_band(ax, x, [r[clean_data_key] for r in per_sigma],
                             [r[f"{clean_data_key}_std"] for r in per_sigma],
                             label="clean data: patch matrix", marker="v", ls=":")
    ax.axhline(clean_rank, color="k", ls="--", lw=1, label=clean_label)
    ax.axhline(FILTER_FACTOR * clean_rank, color="k", ls=":", lw=0.8, label=f"{FILTER_FACTOR:g} x {clean_label.split(' ')[0]}")
    _shade_non_generalising(ax, per_sigma)
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    _sigma_axis(ax, x, sigma_label)
    ax.set_ylabel("stable rank (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=3, fontsize=7)
    return plots.save(fig, path)


def plot_filter_rank_over_steps(history, sigmas, path, *, clean_rank: float, clean_label: str, title: str):
    import matplotlib.pyplot as plt

    import rankbias.plots as plots

    fig, ax = plots.figure(width=5.4, height=3.6)
    cmap = plt.get_cmap("viridis")
    for j, sigma in enumerate(sigmas):
        rows = [r for r in history if r["sigma"] == float(sigma) and r.get("filter_stable_rank") is not None
                and math.isfinite(r["filter_stable_rank"])]
        steps = sorted({r["step"] for r in rows})
        if not steps:
            continue
        by = [[r["filter_stable_rank"] for r in rows if r["step"] == s] for s in steps]
        mean = np.array([np.mean(v) for v in by])
        std = np.array([np.std(v) for v in by])
        c = cmap(j / max(len(sigmas) - 1, 1))
        ax.plot(steps, mean, color=c, label=f"{sigma:g}")
        ax.fill_between(steps, mean - std, mean + std, color=c, alpha=0.2, lw=0)
    ax.axhline(clean_rank, color="k", ls="--", lw=1, label=clean_label)
    ax.set_xlabel("gradient descent step")
    ax.set_ylabel("filter stable rank")
    ax.set_title(title)
    ax.legend(title="noise σ", ncols=2, fontsize=7)
    return plots.save(fig, path)


def plot_acc_vs_sigma(per_sigma, path, *, sigma_label: str, title: str):
    import rankbias.plots as plots

    x = [r["sigma"] for r in per_sigma]
    fig, ax = plots.figure(width=5.0, height=3.4)
    plots.line_with_band(ax, x, [r["train_acc_mean"] for r in per_sigma],
                         [r["train_acc_std"] for r in per_sigma], label="train", marker="s")
    plots.line_with_band(ax, x, [r["test_acc_mean"] for r in per_sigma],
                         [r["test_acc_std"] for r in per_sigma], label="test")
    ax.axhline(ACC_THRESHOLD, color="k", ls=":", lw=1, label=f"{ACC_THRESHOLD:g} (generalisation threshold)")
    _sigma_axis(ax, x, sigma_label)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_ylim(0.4, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left")
    return plots.save(fig, path)
