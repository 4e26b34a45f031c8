"""Empirical spectral densities (ESD) of weight matrices, one small log-log panel per layer:
the figure WeightWatcher draws per layer (Martin & Mahoney 2021), the histogram of the
eigenvalues lambda = s^2 of W^T W over logarithmic bins, as a density per unit lambda."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rankbias.plots.core import figure, save

__all__ = ["MAX_ESD_LAYERS", "EsdPanel", "evenly_spaced", "layer_esd"]

MAX_ESD_LAYERS = 16
"""Panels in one figure (a 4 x 4 grid); a deeper model shows this many layers, evenly
spaced in module order, first and last included."""


@dataclasses.dataclass(frozen=True)
class EsdPanel:
    """What one panel draws."""

    name: str
    """The layer (report row name)."""
    eigenvalues: np.ndarray
    """lambda = s^2 of every singular value s of the matrix as read, descending (zeros included)."""
    edges: np.ndarray
    """Logarithmic bin edges spanning the shown eigenvalues."""
    density: np.ndarray
    """Per bin: count / (shown * bin width), per unit lambda (integrates to 1)."""
    n_hidden: int
    """Eigenvalues at or below rtol^2 lambda_max (numerically zero: no place on a log axis)."""
    shape: tuple[int, ...] = ()
    """The matrix as read (for the caption)."""

    @classmethod
    def from_singular_values(
        cls, name: str, s, rtol: float, shape: tuple[int, ...] = ()
    ) -> EsdPanel:
        """The panel of singular values ``s`` (any order); ``rtol``: s <= rtol * s_max is
        numerically zero (the numerical rank's default is max(m, n) eps)."""
        lam = np.sort(np.asarray(s, dtype=np.float64).ravel() ** 2)[::-1]
        shown = lam[lam > (rtol**2) * lam[0]] if lam.size and lam[0] > 0 else lam[:0]
        if shown.size == 0:
            return cls(name, lam, np.empty(0), np.empty(0), int(lam.size), tuple(shape))
        lo, hi = float(shown[-1]), float(shown[0])
        if hi <= lo * (1 + 1e-9):  # one value (or all equal): a bin around it
            lo, hi = lo / 1.5, hi * 1.5
        bins = int(np.clip(2 * math.sqrt(shown.size), 8, 60))
        edges = np.geomspace(lo, hi, bins + 1)
        counts, _ = np.histogram(shown, bins=edges)
        density = counts / (shown.size * np.diff(edges))
        return cls(name, lam, edges, density, int(lam.size - shown.size), tuple(shape))


def evenly_spaced(n: int, cap: int = MAX_ESD_LAYERS) -> list[int]:
    """``min(n, cap)`` indices of 0..n-1, evenly spaced, first and last included."""
    if n <= cap:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, cap)})


def _few_log_ticks(ax) -> None:
    # a panel often spans less than a decade: label 1, 2, 5 x 10^k, never every minor tick
    from matplotlib import ticker

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=4))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
        axis.set_minor_formatter(ticker.NullFormatter())


def layer_esd(
    panels: Sequence[EsdPanel], path: str | Path, *, title: str = "", note: str = ""
) -> Path:
    """One log-log ESD panel per layer (at most 4 per row); ``note`` goes under the title."""
    n = max(len(panels), 1)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = figure(ncols=ncols, nrows=nrows, width=2.7, height=2.3, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        p = panels[i]
        if p.density.size:
            floor = p.density[p.density > 0].min() / 3
            ax.stairs(
                np.where(p.density > 0, p.density, floor),
                p.edges,
                baseline=floor,
                fill=True,
                color="C0",
                alpha=0.55,
            )
            ax.stairs(
                np.where(p.density > 0, p.density, floor),
                p.edges,
                baseline=floor,
                color="C0",
                lw=0.8,
            )
            ax.set_xscale("log")
            ax.set_yscale("log")
            _few_log_ticks(ax)
        shape = " x ".join(map(str, p.shape))
        hidden = f", {p.n_hidden} ~0 not shown" if p.n_hidden else ""
        ax.set_title(f"{p.name}\n{shape}: {p.eigenvalues.size} eigenvalues{hidden}", fontsize=7)
        ax.tick_params(which="both", labelsize=6)
        if i // ncols == nrows - 1 or i + ncols >= len(panels):
            ax.set_xlabel("eigenvalue λ of WᵀW (weight units²)", fontsize=7)
        if i % ncols == 0:
            ax.set_ylabel("density p(λ) (per unit λ)", fontsize=7)
    if title or note:
        fig.suptitle("\n".join(x for x in (title, note) if x), fontsize=8)
    return save(fig, path)
