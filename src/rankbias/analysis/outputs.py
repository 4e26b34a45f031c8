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
from typing import TYPE_CHECKING, Any

from torch import nn

from rankbias.analysis.layers import DATA_ROW_NAME, ModelData

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Analysis", "analyze", "plot_rank_report", "summarize_report", "weight_esd_panels", "write_report"]


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


def weight_esd_panels(
    model: nn.Module,
    report: pd.DataFrame,
    *,
    conv_reading: str = "flatten",
    attention_heads: bool = False,
    max_layers: int | None = None,
) -> tuple[list, int]:
    """The log-log ESD panels of the report's measured weight rows, read as the report read
    them (``conv_reading``: a conv read per tap or pooled shows the union of its taps'
    eigenvalues, WeightWatcher's ESD), and how many rows there were.

    At most ``max_layers`` (default :data:`rankbias.plots.spectra.MAX_ESD_LAYERS`) rows,
    evenly spaced in module order; only those are decomposed (in float64 by
    :func:`rankbias.measures.singular_values`, the report's engine: the report keeps no
    spectra). Eigenvalues at or below (max(m, n) eps s_1)^2, numerically zero, are
    counted, not drawn.
    """
    import torch

    from rankbias.analysis.layers import weight_entries
    from rankbias.analysis.weights import read_shape, weight_matrices
    from rankbias.measures import singular_values
    from rankbias.plots.spectra import MAX_ESD_LAYERS, EsdPanel, evenly_spaced

    rows = report[(report["name"] != DATA_ROW_NAME) & report["matrix_shape"].notna()]
    names = rows["name"].tolist()
    picked = [names[i] for i in evenly_spaced(len(names), max_layers or MAX_ESD_LAYERS)]
    want = set(picked)
    with torch.no_grad():
        items = [(e.name, e.weight()) for e in weight_entries(model, attention_heads=attention_heads)
                 if e.name in want]
    mats = weight_matrices(items, conv_reading)
    panels = []
    for name in picked:
        M = mats[name]
        if isinstance(M, str):  # not readable now (the report says why in its row)
            continue
        s = singular_values(M.detach()).cpu()  # (k,) or (T, k) per tap; on the report's device
        rtol = max(M.shape[-2:]) * torch.finfo(M.dtype if M.dtype.is_floating_point else torch.float64).eps
        panels.append(EsdPanel.from_singular_values(name, s.numpy(), rtol, read_shape(M, conv_reading)))
    return panels, len(names)


def write_report(df: pd.DataFrame, out, title: str, esd: tuple[list, int] | None = None) -> list[Path]:
    """``rank_report.csv``, ``rank_report.md`` (a markdown table and the figures) and
    ``figures/rank_report.png`` of a report, in the run directory ``out``; with ``esd``
    (:func:`weight_esd_panels`) also ``figures/weight_esd.png``, the per-layer log-log ESD."""
    from rankbias.framework.runs import RunDir
    from rankbias.framework.tables import markdown_table

    out = out if hasattr(out, "figure_path") else RunDir(out)
    csv = out.write_text("rank_report.csv", df.to_csv(index=False))
    rows = [{k: (str(v) if isinstance(v, tuple) else v) for k, v in r.items()}
            for r in df.astype(object).where(df.notna(), None).to_dict("records")]
    figs = [plot_rank_report(df, out.figure_path("rank_report"), title=title)]
    if esd is not None and esd[0]:
        from rankbias.plots.spectra import layer_esd

        panels, total = esd
        note = (f"{len(panels)} of {total} weight layers, evenly spaced in module order" if len(panels) < total
                else f"all {total} weight layers")
        figs.append(layer_esd(panels, out.figure_path("weight_esd"), title=f"{title}: log-log ESD per layer",
                              note=note))
    links = "".join(f"\n![{f.stem}](figures/{f.name})\n" for f in figs)
    md = out.write_text("rank_report.md", f"# Rank report: {title}\n\n" + markdown_table(rows) + links)
    return [csv, md, *figs]


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
    data: str | os.PathLike | ModelData | None = None,
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
    **report_kwargs: Any,
) -> Analysis:
    """Rank report of a model, written to a directory: ``rankbias analyze`` as a function.

    Parameters
    ----------
    model : nn.Module, str or os.PathLike
        An ``nn.Module``, or a spec of :func:`rankbias.io.load_model`
        (``torchvision:NAME``, a state_dict file with ``arch``, a file saved with
        ``torch.save(model)`` with ``trust_pickle=True``).
    data : str, os.PathLike, tensor, dict of tensors, Dataset or DataLoader, optional
        None, a spec of :func:`rankbias.io.load_inputs` (``digits``,
        ``random:3x32x32``, a .pt/.npy file; ``data_root``, ``limit``, ``train`` go
        with it), or inputs as :func:`rank_report` takes them.
    out : str or os.PathLike, optional
        The report directory (default ``runs/analyze/<model>``); created, and
        checked to be writable, before the model is loaded or anything computed.
    arch : str, optional
        The architecture of a state_dict file given as ``model`` (see
        :func:`rankbias.io.load_model`).
    weights : str or os.PathLike, optional
        Weights to load into ``model`` (see :func:`rankbias.io.load_model`).
    data_root : str or os.PathLike, optional
        Where a named data set is found (default: the data root).
    limit : int, optional
        Use at most this many inputs (for inputs given as such: ``max_samples``).
    train : bool, default False
        Take a named data set's training split instead of its test split.
    trust_pickle : bool, default False
        Unpickle model/input files in full (runs code stored in them: only for
        files you trust); otherwise such files are refused.
    device : str, optional
        Torch device; checked before anything is loaded or computed.
    progress : bool, optional
        tqdm bars (None: only on a terminal).
    **report_kwargs
        The other arguments of :func:`rank_report` (``layers``, ``measures``,
        ``conv_reading``, ``embeddings``, ``token_index``, ...).

    Returns
    -------
    Analysis
        The DataFrame, the files (CSV, Markdown, figures), the title and the
        summary lines.

    Raises
    ------
    ConfigError
        A device that is not available, an ``out`` that cannot be written, or an
        option of :func:`rank_report` out of range.
    LoadError
        A model or input spec that cannot be read (unknown, corrupt, or a pickle
        without ``trust_pickle``).
    FileNotFoundError
        A model, weights or input file that does not exist.
    UnsupportedError
        A case :func:`rank_report` refuses (e.g. a model on the meta device).

    Examples
    --------
    >>> import tempfile
    >>> import torch
    >>> from torch import nn
    >>> from rankbias import analyze
    >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> res = analyze(model, out=tempfile.mkdtemp(), measures=["numerical_rank"], progress=False)
    >>> res.headline
    'Sequential: 2 weight layers, 46 parameters'
    >>> sorted(p.name for p in res.files)
    ['rank_report.csv', 'rank_report.md', 'rank_report.png', 'weight_esd.png']
    """
    from rankbias.analysis.rank_table import rank_report
    from rankbias.framework.config import check_device_available
    from rankbias.framework.paths import runs_root
    from rankbias.framework.runs import RunDir, check_writable
    from rankbias.io import load_model

    if device is not None:
        check_device_available(str(device))
    name = type(model).__name__ if isinstance(model, nn.Module) else str(model)
    # an --out that cannot be written fails here, not after the whole analysis
    run = RunDir(check_writable(out if out is not None else runs_root() / "analyze" / _slug(name)))
    if not isinstance(model, nn.Module):
        model = load_model(name, arch=arch, weights=weights, trust_pickle=trust_pickle)
    data, on = _inputs(data, data_root=data_root, limit=limit, train=train, trust_pickle=trust_pickle,
                       report_kwargs=report_kwargs)
    df = rank_report(model, data, device=device, progress=progress, **report_kwargs)
    title = name + on
    esd = weight_esd_panels(model, df, conv_reading=report_kwargs.get("conv_reading", "flatten"),
                            attention_heads=report_kwargs.get("attention_heads", False))
    files = write_report(df, run, title, esd=esd)
    n_params = sum(p.numel() for p in model.parameters())
    return Analysis(df, Path(str(files[0].parent)), files, title, n_params, summarize_report(df))


def _inputs(data, *, data_root, limit: int | None, train: bool, trust_pickle: bool,
            report_kwargs: dict) -> tuple[object, str]:
    """(the inputs, " on <what>" for the title): a spec is loaded (``limit`` inputs); inputs
    given as such are passed on, ``limit`` then becoming ``max_samples``."""
    from rankbias.io import load_inputs

    if isinstance(data, str | os.PathLike):
        spec = str(data)
        data = load_inputs(spec, root=data_root, limit=limit, train=train, trust_pickle=trust_pickle)
        return data, f" on {spec} ({len(data)} inputs)"
    if data is not None:
        if limit is not None:
            report_kwargs.setdefault("max_samples", limit)
        return data, " on data"
    return data, ""
