"""Rank figures of a network's layers (rank reports) and of ranks against the noise level
(paper 1, docs/paper1.md; deep noise, docs/deep-noise.md)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from rankbias.plots.core import figure, line_with_band, save

__all__ = ["layer_ranks", "layer_sigma_heatmaps", "ranks_against_sigma", "tracked_ranks"]


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


def tracked_ranks(
    history: Sequence[Mapping[str, float]],
    path: str | Path,
    *,
    title: str = "",
    max_legend: int = 24,
) -> Path:
    """Ranks against the training step, as :class:`rankbias.analysis.RankTracker`
    records them: one panel per measure (``"<layer>/<measure>"`` keys of
    ``history``, rows with ``step`` and, for a batch of models, ``model``), one
    line per layer. A batch of models is drawn as the mean over models with a
    band from the smallest to the largest. NaN values leave gaps."""
    keys = [k for k in dict.fromkeys(k for r in history for k in r) if k not in ("step", "model")]
    by_measure: dict[str, list[str]] = {}
    for k in keys:
        layer, _, measure = k.rpartition("/")
        by_measure.setdefault(measure, []).append(layer)
    steps = np.array(sorted({int(r["step"]) for r in history}))
    batched = any("model" in r for r in history)
    n_models = 1 + max(int(r.get("model", 0)) for r in history)
    fig, axes = figure(ncols=len(by_measure), width=4.4, height=3.4, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (measure, layers) in zip(axes[0], by_measure.items()):
        for i, layer in enumerate(layers):
            key = f"{layer}/{measure}"
            vals = np.full((len(steps), n_models), np.nan)  # (step, model)
            for r in history:
                if key in r:
                    vals[np.searchsorted(steps, int(r["step"])), int(r.get("model", 0))] = r[key]
            color = cmap(i / max(len(layers) - 1, 1))
            line = vals[:, 0]
            if batched:
                with warnings.catch_warnings():  # a step where every model is NaN stays a gap
                    warnings.simplefilter("ignore", RuntimeWarning)
                    line, lo, hi = np.nanmean(vals, 1), np.nanmin(vals, 1), np.nanmax(vals, 1)
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
            ax.plot(steps, line, color=color, lw=1.3, marker="o" if len(steps) <= 30 else None, ms=3,
                    label=layer if i < max_legend else None)
        if len(layers) > max_legend:
            ax.plot([], [], " ", label=f"... {len(layers) - max_legend} more layers")
        ax.set_xlabel("training step")
        ax.set_ylabel(measure.replace("_", " "))
        ax.set_title(measure.replace("_", " ") + (" (mean, band: range over models)" if batched else ""),
                     fontsize=9)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="layer")
    if title:
        fig.suptitle(title)
    return save(fig, path)
