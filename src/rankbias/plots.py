"""Every figure of rankbias, in one style (matplotlib, Agg backend).

Figures are meant for a paper: labelled axes with units, legends, error bars
over seeds. Each function takes plain data (lists / dicts from a summary) and a
path, writes a PNG and returns the path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["figure", "save", "style", "line_with_band", "distributions_by_group", "layer_ranks"]

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

    from rankbias.runs import atomic_write_bytes

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


def layer_ranks(
    layers: Sequence[str],
    weights: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    embeddings: Mapping[str, Sequence[float]] | None = None,
    data: Mapping[str, float] | None = None,
    title: str = "",
    max_labels: int = 40,
    logy: bool | None = None,
) -> Path:
    """Per-layer normalised ranks: weights (left) and output embeddings (right)
    side by side, one line per measure; ``data`` (the inputs' own values) as
    dashed horizontal lines on the embedding panel. NaN values leave gaps.
    ``logy`` (default: when some value is below 0.05) puts the y axis on a log
    scale, so that small kernel ranks stay readable next to full ones."""
    panels = [("weights", weights)] + ([("output embeddings", embeddings)] if embeddings else [])
    n = len(layers)
    width = min(max(4.2, 0.16 * n + 2.5), 9.0)
    fig, axes = figure(ncols=len(panels), width=width, height=3.6, squeeze=False, sharey=True)
    x = np.arange(n)
    step = max(1, int(np.ceil(n / max_labels)))
    colors = plt.get_cmap("tab10")
    vals_all = np.concatenate(
        [np.asarray(v, float) for _, ser in panels for v in ser.values()]
        + [np.asarray(list((data or {}).values()), float)]
    )
    pos = vals_all[np.isfinite(vals_all) & (vals_all > 0)]
    if logy is None:
        logy = pos.size > 0 and pos.min() < 0.05
    for ax, (label, series) in zip(axes[0], panels):
        for i, (name, vals) in enumerate(series.items()):
            ax.plot(x, np.asarray(vals, float), marker="o", ms=3, lw=1.2, color=colors(i), label=name)
            if label != "weights" and data and name in data and np.isfinite(data[name]):
                ax.axhline(data[name], color=colors(i), ls="--", lw=1, alpha=0.8)
        ax.set_xticks(x[::step])
        ax.set_xticklabels([layers[j] for j in range(0, n, step)], rotation=90, fontsize=6)
        ax.set_xlabel("layer (module order)")
        ax.set_title(label)
        if logy:
            ax.set_yscale("log")
            ax.set_ylim(10 ** np.floor(np.log10(pos.min())), 1.3)
        else:
            ax.set_ylim(0, 1.05)
        if label != "weights" and data:
            ax.plot([], [], color="grey", ls="--", label="input data")
        ax.legend(loc="best", framealpha=0.85)
    axes[0][0].set_ylabel("rank / max possible rank" + (" (log scale)" if logy else ""))
    if title:
        fig.suptitle(title)
    return save(fig, path)
