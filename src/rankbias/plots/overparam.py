"""The figures of the over-parameterisation experiments (paper 2, docs/overparam.md):
the collapsed model's accuracy and its embeddings' rank against the expansion depth,
for overparam-classification (one line per architecture) and overparam-cifar (with
the accuracy per epoch beside them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankbias.framework.docs import shared_doc
from rankbias.plots.core import FIGURE_DOC, figure, mean_std_lines, save

__all__ = ["accuracy_rank_against_depth", "accuracy_rank_curves"]

Row = Mapping[str, Any]
_DEPTHS_TITLE_DOC = """depths : sequence of int
    The depths asked for (the x ticks).
title : str
    Title of the accuracy panel."""


def _accuracy_rank(
    ax1, ax2, x, rows: Sequence[Row], depths: Sequence[int], label: str = "", **kw
) -> None:
    """Test / train accuracy (%) of ``rows`` on ``ax1`` and their embedding rank on ``ax2``,
    mean +- std over seeds, against the depths ``x``."""
    pre = f"{label} " if label else ""
    mean_std_lines(ax1, x, rows, [
        ("test_acc_mean", {"label": f"{pre}test"}),
        ("train_acc_mean", {"label": f"{pre}train", "ls": "--", "marker": "s", **({"alpha": 0.6} if label else {})}),
    ], scale=100, **kw)
    mean_std_lines(ax2, x, rows, [("embed_erank_mean", {"label": label} if label else {})], **kw)
    for ax in (ax1, ax2):
        ax.set_xlabel("expansion depth (1 = baseline)")
        ax.set_xticks(sorted(depths))
    ax1.set_ylabel("accuracy of collapsed model (%)")
    ax2.set_ylabel("kernel effective rank")
    ax2.set_title("penultimate embeddings, test set")


@shared_doc(**FIGURE_DOC, depths_title=_DEPTHS_TITLE_DOC)
def accuracy_rank_against_depth(
    per_model: Mapping[str, Sequence[Row]], path: str | Path, *, depths: Sequence[int], title: str
) -> Path:
    """Accuracy (left) and embedding rank (right) against the expansion depth, one colour
    per model, the models' x positions spread a little so their error bars do not overlap.

    Parameters
    ----------
    per_model : mapping of str to sequence of dict
        Per model (in legend order, an empty one keeps its colour but draws nothing), its
        rows sorted by depth: ``depth``, ``test_acc_mean`` / ``_std``, ``train_acc_mean`` /
        ``_std`` (fractions), ``embed_erank_mean`` / ``_std``.
    {path}
    {depths_title}

    {returns}
    """
    fig, (ax1, ax2) = figure(ncols=2, width=4.4, height=3.3)
    for k, (model_name, rows) in enumerate(per_model.items()):
        if not rows:
            continue
        x = np.array([r["depth"] for r in rows], float) + (k - (len(per_model) - 1) / 2) * 0.06
        _accuracy_rank(ax1, ax2, x, rows, depths, label=model_name, color=f"C{k}")
    for ax in (ax1, ax2):
        ax.legend()
    ax1.set_title(title)
    return save(fig, path)


@shared_doc(**FIGURE_DOC, depths_title=_DEPTHS_TITLE_DOC)
def accuracy_rank_curves(
    per_depth: Sequence[Row],
    histories: Mapping[str, Sequence[Row]],
    path: str | Path,
    *,
    depths: Sequence[int],
    title: str,
) -> Path:
    """Accuracy and embedding rank against the expansion depth (the arms without ``-wd-`` in
    their name that finished a seed), and every arm's test (solid) and train (dashed)
    accuracy per epoch, mean over seeds.

    Parameters
    ----------
    per_depth : sequence of dict
        One row per arm: ``arm``, ``depth``, ``n_ok``, ``test_acc_mean`` / ``_std``,
        ``train_acc_mean`` / ``_std`` (fractions), ``embed_erank_mean`` / ``_std``.
    histories : mapping of str to sequence of dict
        Per arm, its logged rows: ``epoch``, ``test_acc``, ``train_acc_augmented``.
    {path}
    {depths_title}

    {returns}
    """
    fig, (ax1, ax2, ax3) = figure(ncols=3, width=4.0, height=3.2)
    rows = [r for r in per_depth if r["n_ok"] and "-wd-" not in r["arm"]]
    _accuracy_rank(ax1, ax2, [r["depth"] for r in rows], rows, depths)
    for k, row in enumerate(per_depth):
        hist = histories.get(row["arm"]) or []
        epochs = sorted({h["epoch"] for h in hist})
        for key, ls, lab in (("test_acc", "-", row["arm"]), ("train_acc_augmented", "--", None)):
            acc = [100 * np.mean([h[key] for h in hist if h["epoch"] == e]) for e in epochs]
            if epochs:
                ax3.plot(epochs, acc, color=f"C{k}", ls=ls, label=lab)
    ax1.legend()
    ax1.set_title(title)
    ax3.set_xlabel("epoch")
    ax3.set_ylabel("accuracy (%), mean over seeds (dashed: train)")
    ax3.legend()
    return save(fig, path)
