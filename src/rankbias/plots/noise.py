"""The three figures of the noise-robustness experiments (paper 1, docs/paper1.md): the
stable ranks against sigma, the filters' stable rank during training, the accuracy
against sigma.

Noise levels outside the verdict's accuracy band are shaded (a row's
``in_accuracy_band``, the non-inferiority test of docs/paper1.md "Verdict"; a row
without it: mean test accuracy more than ``ACCURACY_DROP`` below the clean one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from rankbias.framework.docs import shared_doc
from rankbias.plots.core import FIGURE_DOC, figure, mean_std_lines, save
from rankbias.verdicts import ACCURACY_DROP  # the verdict's accuracy band below the clean accuracy

__all__ = ["accuracy_against_sigma", "filter_rank_against_steps", "stable_ranks_against_sigma"]

Row = Mapping[str, Any]
_CLEAN_RANK_DOC = """clean_rank : float
    The clean signal's rank, drawn as a dashed line labelled ``clean_label``."""


def _sigma_axis(ax, sigmas: Sequence[float], label: str) -> None:
    pos = [s for s in sigmas if s > 0]
    if pos:
        # symlog keeps sigma = 0 (the clean data) on a log-scaled axis
        ax.set_xscale("symlog", linthresh=min(pos), linscale=0.5)
    ax.xaxis.set_major_locator(FixedLocator(list(sigmas)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(
        [f"{s:g}" for s in sigmas], rotation=45 if len(sigmas) > 6 else 0, fontsize=8
    )
    ax.set_xlabel(label)


def _shade_non_generalising(ax, per_sigma: Sequence[Row], clean_acc: float) -> None:
    xs = [r["sigma"] for r in per_sigma]
    floor = clean_acc - ACCURACY_DROP
    bad = [
        i
        for i, r in enumerate(per_sigma)
        if not r.get("in_accuracy_band", r["test_acc_mean"] >= floor)
    ]
    for i in bad:  # shade halfway (geometrically) to the neighbours
        lo = xs[i] if i == 0 else (xs[i - 1] * xs[i]) ** 0.5 if xs[i - 1] > 0 else xs[i] / 2
        hi = xs[i] if i == len(xs) - 1 else (xs[i] * xs[i + 1]) ** 0.5
        ax.axvspan(
            lo,
            hi,
            color="0.85",
            alpha=0.6,
            lw=0,
            label=f"not shown within {100 * ACCURACY_DROP:g} pp of clean" if i == bad[0] else None,
        )


@shared_doc(**FIGURE_DOC, clean_rank=_CLEAN_RANK_DOC)
def stable_ranks_against_sigma(
    per_sigma: Sequence[Row],
    path: str | Path,
    *,
    clean_rank: float,
    clean_label: str,
    sigma_label: str,
    title: str,
    clean_acc: float,
    image_key: str | None = "data_image_stable_rank",
    clean_data_key: str | None = None,
) -> Path:
    """The filters' and the data's stable ranks against the noise level, log y axis.

    Parameters
    ----------
    per_sigma : sequence of dict
        One row per noise level: ``sigma``, ``filter_stable_rank_mean`` / ``_std``,
        ``data_patch_stable_rank`` / ``_std``, ``test_acc_mean`` and optionally
        ``in_accuracy_band`` (rows outside the band are shaded).
    {path}
    {clean_rank}
    clean_label, sigma_label, title : str
        Legend entry of the clean rank, x-axis label, title.
    clean_acc : float
        Mean clean test accuracy (the band for rows without ``in_accuracy_band``).
    image_key : str or None
        Row key of the image matrix's stable rank (and ``<key>_std``); None: no such line.
    clean_data_key : str or None
        Row key of the clean data's patch rank (and ``<key>_std``); None: no such line.

    {returns}
    """
    x = [r["sigma"] for r in per_sigma]
    fig, ax = figure(width=5.6, height=4.4)
    lines: list[tuple[str, dict]] = [
        ("filter_stable_rank_mean", {"label": "filters W (2m x d)"}),
        ("data_patch_stable_rank", {"label": "data: patch matrix", "marker": "s"}),
    ]
    if image_key:
        lines.append((image_key, {"label": "data: image matrix", "marker": "^"}))
    if clean_data_key:
        lines.append((clean_data_key, {"label": "clean data: patch matrix", "marker": "v", "ls": ":"}))
    mean_std_lines(ax, x, per_sigma, lines)
    ax.axhline(clean_rank, color="k", ls="--", lw=1, label=clean_label)
    _shade_non_generalising(ax, per_sigma, clean_acc)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    _sigma_axis(ax, x, sigma_label)
    ax.set_ylabel("stable rank (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=3, fontsize=7)
    return save(fig, path)


@shared_doc(**FIGURE_DOC, clean_rank=_CLEAN_RANK_DOC)
def filter_rank_against_steps(
    history: Sequence[Row],
    sigmas: Sequence[float],
    path: str | Path,
    *,
    clean_rank: float,
    clean_label: str,
    title: str,
) -> Path:
    """The filters' stable rank during training, one line per noise level (mean ± std over seeds).

    Parameters
    ----------
    history : sequence of dict
        Logged rows: ``sigma``, ``step`` and ``filter_stable_rank`` (None or NaN rows are skipped).
    sigmas : sequence of float
        The noise levels, in the order of the colour map.
    {path}
    {clean_rank}
    clean_label, title : str
        Legend entry of the clean rank, title.

    {returns}
    """
    fig, ax = figure(width=5.4, height=3.6)
    cmap = plt.get_cmap("viridis")
    for j, sigma in enumerate(sigmas):
        rows = [
            r
            for r in history
            if r["sigma"] == float(sigma)
            and r.get("filter_stable_rank") is not None
            and math.isfinite(r["filter_stable_rank"])
        ]
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
    return save(fig, path)


@shared_doc(**FIGURE_DOC)
def accuracy_against_sigma(
    per_sigma: Sequence[Row], path: str | Path, *, sigma_label: str, title: str, clean_acc: float
) -> Path:
    """Train and test accuracy against the noise level, with the verdict's band below the clean accuracy.

    Parameters
    ----------
    per_sigma : sequence of dict
        One row per noise level: ``sigma``, ``train_acc_mean`` / ``_std``, ``test_acc_mean`` / ``_std``.
    {path}
    sigma_label, title : str
        x-axis label, title.
    clean_acc : float
        Mean clean test accuracy; the line ``ACCURACY_DROP`` below it marks the band.

    {returns}
    """
    x = [r["sigma"] for r in per_sigma]
    fig, ax = figure(width=5.0, height=3.4)
    mean_std_lines(ax, x, per_sigma, [("train_acc_mean", {"label": "train", "marker": "s"}),
                                      ("test_acc_mean", {"label": "test"})])
    ax.axhline(
        clean_acc - ACCURACY_DROP,
        color="k",
        ls=":",
        lw=1,
        label=f"clean − {100 * ACCURACY_DROP:g} pp (verdict's band)",
    )
    _sigma_axis(ax, x, sigma_label)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_ylim(0.4, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left")
    return save(fig, path)
