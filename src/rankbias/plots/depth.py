"""Paper 2's figures (docs/paper2-depth.md): losses, rank and singular values against depth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from rankbias.plots.core import figure, line_with_band, save

__all__ = ["depth_sweep_lines", "rank_against_steps", "rank_by_depth_lines", "singular_value_dynamics"]


def _depth_axis(ax, depths) -> None:
    ticks = sorted(set(depths))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("depth L")


def depth_sweep_lines(per_group, path, *, title: str, label_key: str = "target") -> Path:
    """Train loss, test loss and entropy rank against depth, a line per entry of
    ``per_group`` (``{label_key, "per_depth": rows, "target_entropy_rank"?}``; rows
    hold ``depth``, ``train_loss``, ``test_loss``, ``entropy_rank`` and ``*_std``)."""
    fig, axes = figure(ncols=3, width=4.0, height=3.4)
    for i, p in enumerate(per_group):
        rows = p["per_depth"]
        d = [r["depth"] for r in rows]
        c = f"C{i}"
        for ax, key in zip(axes, ("train_loss", "test_loss", "entropy_rank")):
            line_with_band(ax, d, [r[key] for r in rows], [r[f"{key}_std"] for r in rows],
                           label=p[label_key], color=c, ms=4)
        if p.get("target_entropy_rank") is not None:
            axes[2].axhline(p["target_entropy_rank"], color=c, ls="--", lw=1,
                            label=f"{p[label_key]}: target's")
    depths = [r["depth"] for p in per_group for r in p["per_depth"]]
    for ax, ylabel in zip(axes, ("train loss (MSE per coordinate)", "test loss (MSE per coordinate)",
                                 "entropy rank of $W_L\\cdots W_1$ (nats)")):
        _depth_axis(ax, depths)
        ax.set_ylabel(ylabel)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.suptitle(title + " (error bars: std over seeds)", fontsize=10)
    return save(fig, path)


def rank_by_depth_lines(
    panels: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
    path,
    *,
    title: str,
    hline: tuple[float, str] | None = None,
    ylabel: str = "entropy rank of $W_L\\cdots W_1$ (nats)",
    styles: Mapping[str, Mapping] | None = None,
) -> Path:
    """Entropy rank against depth: one panel per entry of ``panels`` (its title ->
    series), one line per series (rows with ``depth``, ``entropy_rank`` and
    ``entropy_rank_std``: error bars are the std over seeds). ``styles``: matplotlib
    keywords per series label (default: colour C0, C1, ...)."""
    fig, axes = figure(ncols=len(panels), width=5.0 if len(panels) > 1 else 5.8, height=3.8,
                       squeeze=False, sharey=True)
    for ax, (panel_title, series) in zip(axes[0], panels.items()):
        depths = []
        for i, (label, rows) in enumerate(series.items()):
            depths += [r["depth"] for r in rows]
            kw = {"color": f"C{i % 10}", "ms": 4, **dict((styles or {}).get(label, {}))}
            line_with_band(ax, [r["depth"] for r in rows], [r["entropy_rank"] for r in rows],
                           [r["entropy_rank_std"] for r in rows], label=label, **kw)
        if hline is not None:
            ax.axhline(hline[0], color="k", ls="--", lw=1, label=hline[1])
        _depth_axis(ax, depths)
        if panel_title:
            ax.set_title(panel_title, fontsize=9)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def singular_value_dynamics(
    per_depth: Mapping[int, Mapping[str, Sequence]],
    path,
    *,
    title: str,
    reference: Sequence[float] | None = None,
    ncols: int = 3,
) -> Path:
    """The top-k singular values of the end-to-end map against training step, one
    panel per depth (``per_depth[d] = {"step": (T,), "sv": (T, k)}``), shared axes;
    ``reference`` (e.g. the target's singular values) as dashed lines."""
    depths = list(per_depth)
    ncols = min(ncols, len(depths))
    nrows = -(-len(depths) // ncols)
    fig, axes = figure(ncols=ncols, nrows=nrows, width=3.3, height=2.7, squeeze=False,
                       sharex=True, sharey=True)
    cmap = plt.get_cmap("viridis")
    k = max(np.asarray(v["sv"]).shape[-1] for v in per_depth.values())
    for ax, d in zip(axes.flat, depths):
        steps, sv = np.asarray(per_depth[d]["step"], float), np.asarray(per_depth[d]["sv"], float)
        for i in range(sv.shape[-1]):
            ax.plot(steps, sv[:, i], color=cmap(i / max(k - 1, 1)), lw=1.3,
                    label=f"$\\sigma_{{{i + 1}}}$")
        for r in reference or ():
            ax.axhline(r, color="k", ls="--", lw=0.8, alpha=0.6)
        ax.set_title(f"L = {d}")
        ax.set_yscale("log")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("singular value")
    for ax in list(axes.flat)[len(depths):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, ncols=2)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def rank_against_steps(
    panels: Mapping[str, Mapping[int, Mapping[str, Sequence[float]]]],
    path,
    *,
    title: str,
    hline: tuple[float, str] | None = None,
    ylabel: str = "entropy rank of $W_L\\cdots W_1$ (nats)",
) -> Path:
    """Entropy rank against training step (log x), one panel per entry of ``panels`` (its
    title -> ``{depth: {"step", "mean", "std"}}``, the std over seeds as a band), a line per
    depth. Step 0 has no place on a log axis: it is drawn at step 1 (the initial rank)."""
    fig, axes = figure(ncols=len(panels), width=4.6, height=3.6, squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (panel_title, per_depth) in zip(axes[0], panels.items()):
        depths = list(per_depth)
        for i, d in enumerate(depths):
            v = per_depth[d]
            steps = np.maximum(np.asarray(v["step"], float), 1.0)
            mean, std = np.asarray(v["mean"], float), np.asarray(v["std"], float)
            c = cmap(i / max(len(depths) - 1, 1))
            ax.plot(steps, mean, color=c, lw=1.4, label=f"L = {d}")
            ax.fill_between(steps, mean - std, mean + std, color=c, alpha=0.2, lw=0)
        if hline is not None:
            ax.axhline(hline[0], color="k", ls="--", lw=1, label=hline[1])
        ax.set_xscale("log")
        ax.set_xlabel("step")
        if panel_title:
            ax.set_title(panel_title, fontsize=9)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.suptitle(title + " (band: std over seeds)", fontsize=9)
    return save(fig, path)
