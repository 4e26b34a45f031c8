"""Figures have one home: ``src/rankbias/plots/``.

The rule: no module of ``rankbias`` outside ``rankbias/plots/``

- imports matplotlib (``import matplotlib...`` or ``from matplotlib... import``),
- calls a matplotlib drawing method: one only matplotlib has (``.errorbar(``,
  ``.fill_between(``, ``.imshow(``, ``.savefig(``, ``.axhline(``, ``.set_xlabel(``,
  ...) on anything, or one whose name other objects share too (``.plot(``,
  ``.bar(``, ``.hist(``, ``.scatter(``, ``.legend(``, ...) on a receiver named like
  axes or a figure (``ax``, ``ax1``, ``axes``, ``fig``, ``plt``, ...), so that
  ``tracker.plot(path)`` and ``KernelSpectrum.scatter()`` stay allowed,
- or uses the plots package's drawing primitives (``figure``, ``save``,
  ``line_with_band``, ``mean_std_lines``, ``style``), which would let it draw without importing matplotlib.

An experiment computes plain data (lists of dicts, arrays, numbers) and hands it,
with ``run_dir.figure_path(name)``, to a figure function of ``rankbias.plots``;
``plots`` never sees a config or a run directory (it sits below the experiments in
tests/test_import_graph.py's layering). The source is read with ``ast``, so an import
inside a function counts like one at the top.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rankbias

ROOT = Path(rankbias.__file__).parent

# methods only matplotlib's axes / figures / pyplot have among the package's objects
MATPLOTLIB_ONLY = frozenset(
    {
        "errorbar",
        "fill_between",
        "fill_betweenx",
        "imshow",
        "pcolormesh",
        "contour",
        "contourf",
        "savefig",
        "axhline",
        "axvline",
        "axhspan",
        "axvspan",
        "set_xlabel",
        "set_ylabel",
        "set_xscale",
        "set_yscale",
        "set_xticks",
        "set_yticks",
        "set_xticklabels",
        "set_yticklabels",
        "set_xlim",
        "set_ylim",
        "twinx",
        "twiny",
        "subplots",
        "tight_layout",
        "suptitle",
        "colorbar",
        "barh",
        "semilogx",
        "semilogy",
        "loglog",
        "stackplot",
        "violinplot",
        "boxplot",
    }
)
# names other objects use too (RankTracker.plot, KernelSpectrum.scatter): flagged on axes only
SHARED_NAMES = frozenset(
    {
        "plot",
        "bar",
        "hist",
        "scatter",
        "legend",
        "set_title",
        "text",
        "annotate",
        "grid",
        "close",
        "figure",
    }
)
AXES_LIKE = re.compile(r"^(ax|axs|axes|fig|figs|plt|pyplot)(\d+|_\w+)?$")
PLOTS_PRIMITIVES = frozenset({"figure", "save", "line_with_band", "mean_std_lines", "style"})


def _receiver_name(node: ast.expr) -> str | None:
    """The last name of a call's receiver: ``ax`` for ``ax.plot``, ``ax`` for
    ``self.ax.plot``, ``axes`` for ``axes[0].plot``, ``axes`` for ``axes.flat[0].plot``."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute) and node.attr == "flat":
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def drawing_calls(source: str, filename: str = "<source>") -> list[str]:
    """Where ``source`` draws: one ``line: what`` entry per matplotlib import, drawing
    call or use of a plots primitive (the rule of this module's docstring)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [
                f"{line}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] == "matplotlib"
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "matplotlib":
                found.append(f"{line}: from {node.module} import ...")
            elif node.module in ("rankbias.plots", "rankbias.plots.core"):
                found += [
                    f"{line}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name in PLOTS_PRIMITIVES
                ]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, _receiver_name(node.func.value)
            if receiver == "plots" and method in PLOTS_PRIMITIVES:
                found.append(f"{line}: plots.{method}(...)")
            elif method in MATPLOTLIB_ONLY or (
                method in SHARED_NAMES and receiver is not None and AXES_LIKE.match(receiver)
            ):
                found.append(f"{line}: {receiver}.{method}(...)")
    return found


def offenders(root: Path = ROOT) -> dict[str, list[str]]:
    """Every module of the package at ``root`` outside ``plots/`` that draws, with where."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == "plots":
            continue
        hits = drawing_calls(path.read_text(encoding="utf-8"), str(path))
        if hits:
            out[str(rel)] = hits
    return out


def test_only_plots_draws():
    found = offenders()
    assert not found, (
        "figures are drawn only in rankbias/plots/ (move the drawing into a function of a "
        f"plots module that takes plain data): {found}"
    )


def test_checker_flags_each_way_of_drawing():
    src = (
        "import matplotlib.pyplot as plt\n"
        "from matplotlib.ticker import NullLocator\n"
        "import rankbias.plots as plots\n"
        "from rankbias.plots import line_with_band, sweep_figure\n"
        "fig, (ax1, ax2) = plots.figure(ncols=2)\n"
        "ax1.plot([0, 1], [1, 0])\n"
        "axes[0].bar([0], [1])\n"
        "self.ax.hist([1, 2])\n"
        "thing.fill_between([0], [0], [1])\n"
        "plots.save(fig, 'x.png')\n"
    )
    lines = sorted(int(hit.split(":")[0]) for hit in drawing_calls(src))
    # line 3 (importing the package) and sweep_figure (a figure function) are allowed
    assert lines == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_checker_allows_calls_that_only_share_a_name():
    src = (
        "tracker.plot('ranks.png')\n"
        "self.plot(self.run.figure_path('ranks'))\n"
        "spectrum.scatter()\n"
        "parser.legend\n"
        "from rankbias.plots import layer_ranks\n"
        "plots.sweep_figure(series, metrics, path, xlabel='x', title='t')\n"
    )
    assert drawing_calls(src) == []
