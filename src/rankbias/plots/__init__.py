"""Every figure of rankbias, in one style (matplotlib, Agg backend).

Figures are meant for a paper: labelled axes with units, legends, error bars
over seeds. Each function takes plain data (lists / dicts from a summary) and a
path, writes a PNG and returns the path.

Modules: ``core`` (the style, :func:`figure`, :func:`save`, :func:`line_with_band`,
:func:`mean_std_lines` and the generic figures), ``depth`` (paper 2), ``ranks`` (per-layer ranks and ranks
against the noise level), ``noise`` (the noise-robustness sweeps), ``overparam``
(accuracy and rank against the expansion depth), ``spectra`` (per-layer ESDs).
Importing this package imports matplotlib; importing ``rankbias`` does not.

This package is the one home of drawing: no module outside it imports matplotlib
or draws on axes (tests/test_figure_home.py); an experiment hands a figure
function plain data and ``run_dir.figure_path(name)``.
"""

# core first: it selects the Agg backend before anything imports pyplot
from rankbias.plots.core import (
    STYLE,
    distributions_by_group,
    figure,
    line_with_band,
    mean_std_lines,
    quantile_lines,
    save,
    style,
    sweep_figure,
)
from rankbias.plots.depth import (
    depth_sweep_lines,
    rank_against_steps,
    rank_by_depth_lines,
    singular_value_dynamics,
)
from rankbias.plots.noise import (
    accuracy_against_sigma,
    filter_rank_against_steps,
    stable_ranks_against_sigma,
)
from rankbias.plots.overparam import accuracy_rank_against_depth, accuracy_rank_curves
from rankbias.plots.ranks import (
    layer_ranks,
    layer_sigma_heatmaps,
    ranks_against_sigma,
    tracked_ranks,
)

__all__ = [
    "STYLE",
    "figure",
    "save",
    "style",
    "line_with_band",
    "mean_std_lines",
    "distributions_by_group",
    "sweep_figure",
    "quantile_lines",
    "layer_ranks",
    "depth_sweep_lines",
    "rank_against_steps",
    "rank_by_depth_lines",
    "singular_value_dynamics",
    "layer_sigma_heatmaps",
    "ranks_against_sigma",
    "tracked_ranks",
    "stable_ranks_against_sigma",
    "filter_rank_against_steps",
    "accuracy_against_sigma",
    "accuracy_rank_against_depth",
    "accuracy_rank_curves",
]
