"""The outputs of a rank report: its figure (through :mod:`rankbias.plots`), a
short text summary, the files of a report directory, and :func:`analyze`, which
loads a model and inputs by name, runs :func:`rank_report` and writes them all
(the library function under ``rankbias analyze``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from rankbias.analysis.layers import DATA_ROW_NAME

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Analysis", "analyze", "plot_rank_report", "summarize_report", "write_report"]


def _series(df, columns: Sequence[str]) -> dict[str, list[float]]:
    return {c.removesuffix("_normalized").removeprefix("emb_").replace("_", " "): df[c].astype(float).tolist()
            for c in columns if c in df}


def plot_rank_report(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    measures: Sequence[str] = ("effective_rank", "stable_rank", "numerical_rank"),
    title: str = "",
) -> Path:
    """The figure of a report: per-layer normalised ranks, weights and output
    embeddings side by side, the inputs' own values as dashed lines."""
    import rankbias.plots as plots

    layers = df[df["name"] != DATA_ROW_NAME]
    w_cols = [f"{m}_normalized" for m in measures]
    e_cols = [f"emb_{m}_normalized" for m in measures]
    emb = _series(layers, e_cols) if any(c in df for c in e_cols) else None
    data = None
    if emb is not None and (df["name"] == DATA_ROW_NAME).any():
        row = df[df["name"] == DATA_ROW_NAME].iloc[0]
        data = {c.removesuffix("_normalized").removeprefix("emb_").replace("_", " "): float(row[c])
                for c in e_cols if c in df}
    return plots.layer_ranks(
        layers["name"].tolist(), _series(layers, w_cols), path, embeddings=emb, data=data, title=title
    )


def summarize_report(df: pd.DataFrame, measure: str = "effective_rank") -> str:
    """A few lines: the spread of the normalised measure over layers, the
    lowest layers, the inputs' own rank, and the rows with errors."""
    lines = []
    layers = df[df["name"] != DATA_ROW_NAME]
    col = f"{measure}_normalized"
    pretty = measure.replace("_", " ")

    def spread(column: str, label: str) -> None:
        v = layers[column].astype(float)
        if v.notna().any():
            low = layers.loc[v.idxmin()]
            lines.append(f"{label}: median {v.median():.3f}, min {v.min():.3f} ({low['name']}), "
                         f"max {v.max():.3f}")

    if col in df:
        spread(col, f"weights: {pretty} / max over {int(layers[col].notna().sum())} layers")
    ecol = f"emb_{col}"
    if ecol in df:
        spread(ecol, f"embeddings: kernel {pretty} / max")
        d = df[df["name"] == DATA_ROW_NAME]
        if len(d) and _finite(d.iloc[0].get(f"emb_{measure}")):
            r = d.iloc[0]
            lines.append(
                f"input data {r['emb_matrix_shape']}: kernel {pretty} {float(r[f'emb_{measure}']):.4g} "
                f"({float(r[ecol]):.3f} of max)"
            )
    errs = df[df["error"].astype(str) != ""]
    if len(errs):
        lines.append(f"{len(errs)} row(s) with errors: " + "; ".join(
            f"{r['name']}: {r['error']}" for _, r in errs.head(5).iterrows()))
    return "\n".join(lines)


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def write_report(df: pd.DataFrame, out, title: str) -> list[Path]:
    """``rank_report.csv``, ``rank_report.md`` (a markdown table) and
    ``figures/rank_report.png`` of a report, in the run directory ``out``."""
    from rankbias.framework.runs import RunDir
    from rankbias.report import markdown_table

    out = out if hasattr(out, "figure_path") else RunDir(out)
    csv = out.write_text("rank_report.csv", df.to_csv(index=False))
    rows = [{k: (str(v) if isinstance(v, tuple) else v) for k, v in r.items()}
            for r in df.astype(object).where(df.notna(), None).to_dict("records")]
    md = out.write_text("rank_report.md", f"# Rank report: {title}\n\n" + markdown_table(rows))
    fig = plot_rank_report(df, out.figure_path("rank_report"), title=title)
    return [csv, md, fig]


@dataclass
class Analysis:
    """What :func:`analyze` made: the report, where its files are, and its summary."""

    report: pd.DataFrame
    out: Path
    files: list[Path]
    title: str
    n_params: int
    summary: str = field(default="")

    @property
    def headline(self) -> str:
        n = int(self.report["weight_shape"].notna().sum())
        return f"{self.title}: {n} weight layers, {self.n_params:,} parameters"


def _slug(spec: str) -> str:
    name = Path(spec).stem if ":" not in spec else spec
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def analyze(
    model: str | os.PathLike | nn.Module,
    data=None,
    *,
    out: str | os.PathLike | None = None,
    arch: str | None = None,
    weights: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    train: bool = False,
    trust_pickle: bool = False,
    device: str | None = None,
    progress: bool | None = None,
    **report_kwargs,
) -> Analysis:
    """Rank report of a model, written to a directory: ``rankbias analyze`` as a function.

    Args:
        model: an ``nn.Module``, or a spec of :func:`rankbias.io.load_model`
            (``torchvision:NAME``, a state_dict file with ``arch``, a file saved
            with ``torch.save(model)`` with ``trust_pickle=True``).
        data: None, a spec of :func:`rankbias.io.load_inputs` (``digits``,
            ``random:3x32x32``, a .pt/.npy file; ``data_root``, ``limit``,
            ``train`` go with it), or inputs as :func:`rank_report` takes them.
        out: the report directory (default ``runs/analyze/<model>``); created, and checked to
            be writable, before the model is loaded or anything computed.
        trust_pickle: unpickle model/input files in full (runs code stored in
            them: only for files you trust); otherwise such files are refused.
        device: torch device; checked before anything is loaded or computed.
        report_kwargs: the other arguments of :func:`rank_report` (``layers``,
            ``measures``, ``conv_reading``, ``embeddings``, ``token_index``, ...).

    Returns:
        an :class:`Analysis` (the DataFrame, the files, the summary lines).
    """
    from rankbias.analysis.report import rank_report
    from rankbias.framework.config import check_device_available
    from rankbias.framework.paths import runs_root
    from rankbias.framework.runs import RunDir, check_writable
    from rankbias.io import load_inputs, load_model

    if device is not None:
        check_device_available(str(device))
    name = type(model).__name__ if isinstance(model, nn.Module) else str(model)
    # an --out that cannot be written fails here, not after the whole analysis
    run = RunDir(check_writable(out if out is not None else runs_root() / "analyze" / _slug(name)))
    if not isinstance(model, nn.Module):
        model = load_model(name, arch=arch, weights=weights, trust_pickle=trust_pickle)
    if isinstance(data, str | os.PathLike):
        spec = str(data)
        data = load_inputs(spec, root=data_root, limit=limit, train=train, trust_pickle=trust_pickle)
        n = len(data)
        on = f" on {spec} ({n} inputs)"
    elif data is not None:
        if limit is not None:
            report_kwargs.setdefault("max_samples", limit)
        on = " on data"
    else:
        on = ""
    df = rank_report(model, data, device=device, progress=progress, **report_kwargs)
    title = name + on
    files = write_report(df, run, title)
    n_params = sum(p.numel() for p in model.parameters())
    return Analysis(df, Path(str(files[0].parent)), files, title, n_params, summarize_report(df))
