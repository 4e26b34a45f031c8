"""The style of every rankbias figure and its building blocks (matplotlib, Agg backend),
with the generic figures: distributions, sweep results, quantile bands."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["STYLE", "distributions_by_group", "figure", "line_with_band", "mean_std_lines", "quantile_lines",
           "save", "std_column", "style", "sweep_figure"]

# The numpy-doc entries every figure function of this package shares, written once:
# the placeholders ``{path}`` and ``{returns}`` of a docstring decorated with
# ``shared_doc(**FIGURE_DOC)`` (rankbias.framework.docs).
FIGURE_DOC = {
    "path": "path : str or Path\n    Where the PNG goes.",
    "returns": "Returns\n-------\nPath\n    ``path``.",
}

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextlib.contextmanager
def style():
    with plt.rc_context(STYLE):
        yield


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2, **kw):
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kw)
    return fig, axes


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    import io

    from rankbias.framework.runs import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    with style():
        fig.tight_layout()
        fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def line_with_band(
    ax,
    x: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float] | None = None,
    *,
    label: str | None = None,
    marker: str = "o",
    **kw,
):
    """A line with error bars (std over seeds/draws)."""
    x, mean = np.asarray(x, float), np.asarray(mean, float)
    if std is None:
        return ax.plot(x, mean, marker=marker, label=label, **kw)
    return ax.errorbar(x, mean, yerr=np.asarray(std, float), marker=marker, capsize=3, label=label, **kw)


def std_column(key: str) -> str:
    """The column of a summary row that holds the std over seeds beside the mean column
    ``key``: ``x_mean`` -> ``x_std``, ``x`` -> ``x_std``."""
    return f"{key.removesuffix('_mean')}_std"


def mean_std_lines(
    ax,
    x: Sequence[float],
    rows: Sequence[Mapping[str, float]],
    lines: Sequence[tuple[str, Mapping[str, object]]],
    *,
    scale: float = 1.0,
    **kw,
) -> None:
    """One :func:`line_with_band` per ``(mean column, keyword arguments)`` of ``lines``:
    the column's values in ``rows`` against ``x``, error bars from :func:`std_column`,
    both times ``scale`` (100: fractions as percent); ``kw`` goes to every line."""
    for key, line_kw in lines:
        mean = scale * np.asarray([r[key] for r in rows], float)
        std = scale * np.asarray([r[std_column(key)] for r in rows], float)
        line_with_band(ax, x, mean, std, **line_kw, **kw)


def distributions_by_group(
    groups: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    xlabel: str,
    title: str,
    bins: int = 40,
    legend_title: str | None = None,
) -> Path:
    """Overlaid density histograms, one per group (e.g. depth), with each group's median marked."""
    fig, ax = figure(width=5.2, height=3.4)
    cmap = plt.get_cmap("viridis")
    all_vals = np.concatenate([np.asarray(v, float) for v in groups.values()])
    lo, hi = float(all_vals.min()), float(all_vals.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for i, (name, vals) in enumerate(groups.items()):
        c = cmap(i / max(len(groups) - 1, 1))
        vals = np.asarray(vals, float)
        ax.hist(vals, bins=edges, density=True, histtype="stepfilled", alpha=0.35, color=c)
        ax.hist(vals, bins=edges, density=True, histtype="step", color=c, label=name)
        ax.axvline(np.median(vals), color=c, lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(title=legend_title, ncols=2)
    return save(fig, path)


def sweep_figure(
    series: Mapping[str, Mapping[object, Sequence[Mapping[str, object]]]],
    metrics: Sequence[str],
    path: str | Path,
    *,
    xlabel: str,
    title: str,
    legend_title: str | None = None,
) -> Path:
    """Sweep results: a panel per metric against one swept setting, a line per series
    (the other settings), mean with std error bars over the rows (seeds) at each x.

    ``series`` maps a line label to {x value: rows}; a row maps metric names to
    numbers (booleans count as 0/1, so ``verdict.holds`` plots as the fraction of
    seeds for which the claim holds). Numeric x values go on a numeric axis (log
    when they span 16x or more), others on a categorical one.
    """
    xs, pos, numeric_x = _sweep_x(series)
    n_seeds = max(len(rows) for points in series.values() for rows in points.values())
    ncols = min(len(metrics), 2)
    nrows = -(-len(metrics) // ncols)
    fig, axes = figure(ncols=ncols, nrows=nrows, width=4.4, height=3.2, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        _sweep_panel(ax, series, metric, xs, pos, n_seeds)
        if metric == "verdict.holds":
            ax.set_ylabel("claim holds (fraction of seeds)")
            ax.set_ylim(-0.05, 1.05)
        else:
            ax.set_ylabel(metric)
        ax.set_xlabel(xlabel)
        if numeric_x and xs and min(xs) > 0 and max(xs) / min(xs) >= 16:
            ax.set_xscale("log")
        if not numeric_x:
            ax.set_xticks(list(pos.values()), [str(x) for x in xs])
            ax.set_xlim(-0.5, len(xs) - 0.5)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    if any(series):
        axes.flat[0].legend(title=legend_title, fontsize=7)
    spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed per point"
    fig.suptitle(f"{title} ({spread})", fontsize=10)
    return save(fig, path)


def _sweep_x(series: Mapping[str, Mapping[object, Sequence]]) -> tuple[list, dict, bool]:
    """(the x values of all series, in order; their positions on the axis; whether they are numbers)."""
    xs: list = []
    for points in series.values():
        xs.extend(x for x in points if x not in xs)
    numeric_x = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    if numeric_x:
        xs = sorted(xs)
        return xs, {x: float(x) for x in xs}, True
    return xs, {x: float(i) for i, x in enumerate(xs)}, False


def _as_number(v) -> float:
    """A metric value as a float: booleans as 0/1, anything not a finite number as NaN."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and np.isfinite(v):
        return float(v)
    return np.nan


def _sweep_panel(ax, series: Mapping[str, Mapping[object, Sequence[Mapping[str, object]]]], metric: str,
                 xs: list, pos: dict, n_seeds: int) -> None:
    """One line per series of ``metric``'s mean (and std band over seeds) against x."""
    cmap = plt.get_cmap("viridis")
    for i, (label, points) in enumerate(series.items()):
        keys = [x for x in xs if x in points]
        vals = [np.array([_as_number(r.get(metric)) for r in points[x]], float) for x in keys]
        mean = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in vals]
        std = [np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else 0.0 for v in vals]
        color = cmap(i / max(len(series) - 1, 1)) if len(series) > 1 else "C0"
        line_with_band(ax, [pos[x] for x in keys], mean, std if n_seeds > 1 else None,
                       label=label or None, color=color)


def quantile_lines(
    series: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | Path,
    *,
    x: str,
    center: str,
    lo: str,
    hi: str,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    hline: tuple[float, str] | None = None,
    legend_title: str | None = None,
) -> Path:
    """One line per series (rows of dicts: ``x``, ``center``, ``lo``, ``hi``) with
    a shaded band from ``lo`` to ``hi`` (e.g. median and 5-95% quantiles over draws)."""
    fig, ax = figure(width=6.6, height=3.8)
    cmap = plt.get_cmap("tab10")
    all_x: set = set()
    for i, (name, rows) in enumerate(series.items()):
        xs = [r[x] for r in rows]
        all_x.update(xs)
        c = cmap(i % 10)
        ax.plot(xs, [r[center] for r in rows], marker="o", ms=3, color=c, label=name)
        ax.fill_between(xs, [r[lo] for r in rows], [r[hi] for r in rows], color=c, alpha=0.15, lw=0)
    if hline is not None:
        ax.axhline(hline[0], color="k", ls=":", lw=1, label=hline[1])
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_x), [f"{v:g}" for v in sorted(all_x)])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(title=legend_title, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)
