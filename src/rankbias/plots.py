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

__all__ = [
    "figure",
    "save",
    "style",
    "line_with_band",
    "distributions_by_group",
    "sweep_figure",
    "quantile_lines",
    "layer_ranks",
    "depth_sweep_lines",
    "rank_by_depth_lines",
    "singular_value_dynamics",
    "layer_sigma_heatmaps",
    "ranks_against_sigma",
]

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

    def num(v):
        if isinstance(v, bool):
            return float(v)
        if isinstance(v, int | float) and np.isfinite(v):
            return float(v)
        return np.nan

    xs: list = []
    for points in series.values():
        xs.extend(x for x in points if x not in xs)
    numeric_x = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    if numeric_x:
        xs = sorted(xs)
        pos = {x: float(x) for x in xs}
    else:
        pos = {x: float(i) for i, x in enumerate(xs)}
    n_seeds = max(len(rows) for points in series.values() for rows in points.values())
    ncols = min(len(metrics), 2)
    nrows = -(-len(metrics) // ncols)
    fig, axes = figure(ncols=ncols, nrows=nrows, width=4.4, height=3.2, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, metric in zip(axes.flat, metrics):
        for i, (label, points) in enumerate(series.items()):
            keys = [x for x in xs if x in points]
            vals = [np.array([num(r.get(metric)) for r in points[x]], float) for x in keys]
            mean = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in vals]
            std = [np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else 0.0 for v in vals]
            color = cmap(i / max(len(series) - 1, 1)) if len(series) > 1 else "C0"
            line_with_band(ax, [pos[x] for x in keys], mean, std if n_seeds > 1 else None,
                           label=label or None, color=color)
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


# ---------------------------------------------------------------- paper 2: depth
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
def layer_sigma_heatmaps(
    panels: Mapping[str, np.ndarray],
    layers: Sequence[str],
    columns: Sequence[str],
    path: str | Path,
    *,
    xlabel: str,
    cbar_label: str,
    title: str = "",
    vmin: float = -1.0,
    vmax: float = 1.0,
) -> Path:
    """Heat maps of a (layers x columns) value, one panel per measure, the value written in
    each cell; a diverging colour map centred on 0, clipped to [vmin, vmax] (the written
    values are not clipped). NaN cells stay blank."""
    L = len(layers)
    n = len(panels)
    fig, axes = figure(ncols=n, width=max(2.6, 0.75 * len(columns) + 1.6),
                       height=max(2.8, 0.28 * L + 1.6), squeeze=False)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    im = None
    for k, (ax, (label, values)) in enumerate(zip(axes[0], panels.items(), strict=True)):
        v = np.asarray(values, float).reshape(L, len(columns))
        im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(L):
            for j in range(len(columns)):
                if np.isfinite(v[i, j]):
                    ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(v[i, j]) > 0.6 * max(abs(vmin), vmax) else "black")
        ax.set_xticks(range(len(columns)), list(columns))
        ax.set_yticks(range(L), list(layers) if k == 0 else [""] * L, fontsize=7)
        ax.grid(False)
        ax.set_xlabel(xlabel)
        ax.set_title(label, fontsize=8)
    axes[0][0].set_ylabel("layer (module order)")
    if im is not None:
        # on the last panel only, from its gridspec slot: tight_layout can place it
        cb = fig.colorbar(im, ax=axes[0][-1], use_gridspec=True, shrink=0.9)
        cb.set_label(cbar_label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def ranks_against_sigma(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float] | None]]],
    sigmas: Sequence[float],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    reference: Mapping[str, tuple[Sequence[float], Sequence[float] | None]] | None = None,
    logy: bool = True,
) -> Path:
    """One panel per entry of ``panels`` ({line label: (mean, std or None)} against
    ``sigmas``, std as error bars); the ``reference`` lines (e.g. the data's rank) are drawn
    dashed in black and grey in every panel, beside the panel's own lines."""
    fig, axes = figure(ncols=len(panels), width=4.0, height=3.4, squeeze=False)
    x = np.asarray(sigmas, float)
    # a line keeps its colour in every panel, whichever lines a panel lacks
    colour = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(
        n for lines in panels.values() for n in lines))}
    for ax, (label, lines) in zip(axes[0], panels.items(), strict=True):
        for name, (mean, std) in lines.items():
            line_with_band(ax, x, mean, std, label=name, color=colour[name], ms=4)
        for i, (name, (mean, std)) in enumerate((reference or {}).items()):
            line_with_band(ax, x, mean, std, label=name, color=("k", "0.5", "0.7")[i % 3], ls="--",
                           marker="s", ms=3)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=6, loc="best")
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)
