"""The plots' mean-and-std primitive: each line reads its mean column and the std column
beside it, so a figure function lists columns instead of repeating a call per column."""

from __future__ import annotations

import numpy as np
import pytest

import rankbias.plots.noise as noise_plots
from rankbias.plots.core import figure, mean_std_lines, std_column

ROWS = [
    {"acc_mean": 0.5, "acc_std": 0.1, "rank": 3.0, "rank_std": 0.5},
    {"acc_mean": 0.75, "acc_std": 0.05, "rank": 2.0, "rank_std": 0.25},
]


def _bars(ax):
    """Per errorbar container: (label, x, y, half-width of each bar)."""
    out = []
    for c in ax.containers:
        line, _caps, (bars,) = c.lines
        segs = bars.get_segments()
        half = [(s[1][1] - s[0][1]) / 2 for s in segs]
        out.append((c.get_label(), list(line.get_xdata()), list(line.get_ydata()), half))
    return out


def test_std_column_pairs_a_mean_column_with_its_std():
    assert std_column("test_acc_mean") == "test_acc_std"
    assert std_column("data_patch_stable_rank") == "data_patch_stable_rank_std"


def test_mean_std_lines_draws_each_column_with_its_std_scaled():
    fig, ax = figure()
    mean_std_lines(
        ax, [1, 2], ROWS, [("acc_mean", {"label": "acc"}), ("rank", {"label": "rank"})], scale=100
    )
    (l1, x1, y1, h1), (l2, x2, y2, h2) = _bars(ax)
    assert (l1, x1, y1) == ("acc", [1.0, 2.0], [50.0, 75.0])
    assert h1 == pytest.approx([10.0, 5.0])
    assert (l2, y2) == ("rank", [300.0, 200.0])
    assert h2 == pytest.approx([50.0, 25.0])


def test_stable_ranks_against_sigma_draws_one_line_per_column(monkeypatch, tmp_path):
    # the optional image and clean-data columns each add a line with their own std
    drawn = {}
    monkeypatch.setattr(noise_plots, "save", lambda fig, path: drawn.setdefault("ax", fig.axes[0]))
    rows = [
        {
            "sigma": s,
            "filter_stable_rank_mean": 2.0 + s,
            "filter_stable_rank_std": 0.1,
            "data_patch_stable_rank": 5.0 * (1 + s),
            "data_patch_stable_rank_std": 0.2,
            "img": 7.0,
            "img_std": 0.3,
            "clean": 4.0,
            "clean_std": 0.4,
            "test_acc_mean": 0.9,
        }
        for s in (0.0, 1.0)
    ]
    noise_plots.stable_ranks_against_sigma(
        rows,
        tmp_path / "f.png",
        clean_rank=4,
        clean_label="clean",
        sigma_label="sigma",
        title="t",
        clean_acc=0.9,
        image_key="img",
        clean_data_key="clean",
    )
    bars = _bars(drawn["ax"])
    assert [b[0] for b in bars] == [
        "filters W (2m x d)",
        "data: patch matrix",
        "data: image matrix",
        "clean data: patch matrix",
    ]
    assert [b[2] for b in bars] == [[2.0, 3.0], [5.0, 10.0], [7.0, 7.0], [4.0, 4.0]]
    assert np.allclose([b[3] for b in bars], [[0.1] * 2, [0.2] * 2, [0.3] * 2, [0.4] * 2])
