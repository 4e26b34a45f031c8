"""Every figure of rankbias, in one style (matplotlib, Agg backend).

Figures are meant for a paper: labelled axes with units, legends, error bars
over seeds. Each function takes plain data (lists / dicts from a summary) and a
path, writes a PNG and returns the path.

Modules: ``core`` (the style, :func:`figure`, :func:`save`, :func:`line_with_band`
and the generic figures), ``depth`` (paper 2), ``ranks`` (per-layer ranks and ranks
against the noise level). Importing this package imports matplotlib; importing
``rankbias`` does not.
"""

# core first: it selects the Agg backend before anything imports pyplot
from rankbias.plots.core import (
    STYLE,
    distributions_by_group,
    figure,
    line_with_band,
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
]
