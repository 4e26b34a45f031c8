"""``rank_report``: one table of a model's weight ranks, the ranks of the
kernels of chosen embeddings on data, and the rank of the data itself.

Weights (definitions in ``docs/measures.md``): every weight row of
:func:`rankbias.analysis.layers.weight_entries` is read as a matrix (see
:mod:`rankbias.analysis.weights` for conv weights) and measured by
:func:`rankbias.measures.rank_measures`; matrices of the same shape are
measured in one batched call.

Embeddings: the ``emb_`` columns are the measures of the kernel K = Z Z^T of a
row's embeddings Z (N x d), streamed into a
:class:`rankbias.measures.KernelSpectrum` (see :mod:`rankbias.analysis.stream`),
so the "kernel effective rank" uses p_i = lambda_i / sum lambda_j with lambda
the eigenvalues of K.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankbias.analysis.layers import (
    DATA_ROW_NAME,
    ConvReading,
    EmbeddingReading,
    LayerSelector,
    ModelData,
    embedding_targets,
    weight_entries,
    weight_targets,
)
from rankbias.analysis.options import DataOptions, EmbeddingOptions, WeightOptions
from rankbias.analysis.stream import EmbeddingStream, stream_embeddings
from rankbias.analysis.weights import measure_weights, normalized, read_shape
from rankbias.errors import UnsupportedError
from rankbias.framework.config import ConfigError, check_device_available
from rankbias.measures import SPECS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["rank_report"]


def _check_has_values(model: nn.Module) -> None:
    # A meta tensor has a shape but no values: neither its weights nor a forward pass can
    # be measured, and model.to(device) cannot copy it out.
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise UnsupportedError(
            f"model: {len(meta)} parameter(s)/buffer(s) on the meta device hold no values "
            f"({', '.join(meta[:3])}{', ...' if len(meta) > 3 else ''}); accepted: a model with "
            "values: load them first (model.load_state_dict(state, assign=True), or "
            "model.to_empty(device='cpu') then model.load_state_dict(state))"
        )


def rank_report(
    model: nn.Module,
    data: ModelData | None = None,
    layers: LayerSelector = None,
    measures: Sequence[str] | None = None,
    conv_reading: ConvReading = "flatten",
    device: str | torch.device | None = None,
    *,
    embeddings: str | Sequence[str] | None = None,
    token_index: int | None = None,
    attention_heads: bool = False,
    embedding_reading: EmbeddingReading = "position",
    embedding_measures: Sequence[str] | None = None,
    centered: bool = False,
    batch_size: int = 256,
    max_samples: int | None = None,
    max_embedding_dim: int = 4096,
    include_data: bool = True,
    progress: bool | None = None,
) -> pd.DataFrame:
    """One row per weight of ``model`` (its rank measures and, with ``data``,
    those of the kernel of its output embeddings), plus one row per requested
    embedding of any module.

    Parameters
    ----------
    model : nn.Module
        Any module; every submodule with a 2-D+ ``weight`` is a row (an expanded
        layer of ``rankbias.overparam`` once, through its collapsed weight; an
        ``nn.MultiheadAttention`` as Q, K, V rows).
    data : tensor, dict of tensors, Dataset or DataLoader, optional
        Inputs: a tensor (N, ...), a dict of tensors (a Hugging Face batch:
        ``input_ids``, ``attention_mask``, ...; fed as ``model(**batch)``,
        padding tokens left out of token embeddings), a Dataset or a DataLoader
        (a batch may be ``(inputs, targets, ...)``; its first element is fed).
    layers : str, type, sequence of them, or callable, optional
        Which weight rows (see :func:`weight_entries`); default all; ``[]`` for
        none (only ``embeddings``).
    measures : sequence of str, optional
        Weight measures (names of :data:`rankbias.measures.MEASURES`); default all.
    conv_reading : {"flatten", "taps", "pooled"}, default "flatten"
        "taps" is the mean over kernel positions, "pooled" WeightWatcher's reading
        (one spectrum of all taps); see :mod:`rankbias.analysis.weights`.
    device : str or torch.device, optional
        Where the forward passes and spectra run; the model is moved there
        (``model.to(device)``). Default: the device of its parameters.
    embeddings : str or sequence of str, optional
        More rows, of any module's input or output:
        ``"NAME_OR_GLOB[:input|:output][@LAYOUT]"`` (default output; ``"<root>"``
        is the model), e.g. ``"fc:input"`` (penultimate features), ``"layer4"``,
        ``"encoder.layers.*"``. Rows are named ``"fc:input"``. Each tensor is read
        by its layout, found during the forward pass (see
        :mod:`rankbias.analysis.layouts`); a 3-D+ tensor whose layout cannot be
        told gets an error unless LAYOUT states it: ``channels_first`` (N, C, ...),
        ``channels_last`` (N, ..., C) or ``sequence_first`` (T, N, C).
    token_index : int, optional
        Keep only this token of every token output ((N, T, d), or (T, N, d) of a
        ``batch_first=False`` layer) (e.g. 0, the CLS token); default: every
        token is a sample.
    attention_heads : bool, default False
        One Q, K, V row per attention head.
    embedding_reading : {"position", "sample"}, default "position"
        Channels-first outputs (N, C, *spatial) (of a conv or of anything after
        one: a block, an activation, a pool) are read per "position"
        ((N*H*W) x C) or per "sample" (N x C*H*W).
    embedding_measures : sequence of str, optional
        Measures of the embedding kernels; default ``measures``.
    centered : bool, default False
        Subtract the mean embedding before the kernel (default: raw, the kernel
        K = Z Z^T).
    batch_size : int, default 256
        Batch size when ``data`` is a tensor, a dict or a Dataset.
    max_samples : int, optional
        Use only the first ``max_samples`` inputs.
    max_embedding_dim : int, default 4096
        Embeddings wider than this (their d x d kernel side would not fit) get an
        error note instead of a spectrum.
    include_data : bool, default True
        Add a row ``"<input>"`` with the rank of the flattened inputs (tensor
        inputs only: token ids have no rank to speak of).
    progress : bool, optional
        tqdm bars over layers and batches (None: only on a terminal).

    Returns
    -------
    pandas.DataFrame
        Columns ``name``, ``type``, ``weight_shape``, ``matrix_shape``, one column
        per measure, ``<measure>_normalized`` (divided by
        :func:`rankbias.measures.max_measure` of the matrix shape); with data
        ``emb_matrix_shape`` ((samples, d) of the embedding matrix),
        ``emb_<measure>`` and ``emb_<measure>_normalized``; and ``error`` (empty
        when the row is complete). A row whose weight is not finite, or whose
        embeddings cannot be measured, has NaN there and the reason in
        ``error``; the other rows are unaffected.

    Raises
    ------
    ConfigError
        An option out of range (an :class:`~rankbias.errors.InvalidParameterError`):
        an unknown measure or reading, ``layers`` or ``embeddings`` that name
        nothing in ``model``, ``embeddings`` without ``data``, a device that is
        not available.
    InvalidParameterError
        ``data`` is not a tensor, a dict of tensors, a Dataset or a DataLoader.
    LoadError
        ``data`` is an empty tensor.
    UnsupportedError
        A model whose parameters are on the meta device (no values).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from rankbias import rank_report
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> df = rank_report(model, torch.randn(32, 8), measures=["numerical_rank"], progress=False)
    >>> print(df[["name", "numerical_rank", "emb_numerical_rank"]].to_string(index=False))
       name  numerical_rank  emb_numerical_rank
    <input>            <NA>                   8
          0               4                   4
          2               2                   2
    """
    weights = WeightOptions(layers=layers, measures=measures, conv_reading=conv_reading,
                            attention_heads=attention_heads)
    reading = EmbeddingOptions(embeddings=embeddings, token_index=token_index,
                               embedding_reading=embedding_reading, centered=centered,
                               embedding_measures=embedding_measures, max_embedding_dim=max_embedding_dim,
                               include_data=include_data)
    batching = DataOptions(batch_size=batch_size, max_samples=max_samples)
    return _rank_report(model, data, weights, reading, batching, device=device, progress=progress)


def _rank_report(model: nn.Module, data, weights: WeightOptions, reading: EmbeddingOptions,
                 batching: DataOptions, *, device, progress: bool | None) -> pd.DataFrame:
    """:func:`rank_report` on checked options: the weight rows, then the embedding rows, then the table."""
    entries, extra = _targets(model, data, weights, reading, device)
    e_names = reading.embedding_measures or weights.measures
    disable = None if progress is None else not progress
    rows = _weight_rows(entries, weights, disable)
    for t in extra:
        rows[t.row] = {"name": t.row, "type": type(t.module).__name__, "weight_shape": None,
                       "matrix_shape": None}
    data_row = None
    if data is not None:
        streams = stream_embeddings(
            model, weight_targets(model, entries) + extra, data, reading=reading.embedding_reading,
            centered=reading.centered, batch_size=batching.batch_size, max_samples=batching.max_samples,
            max_dim=reading.max_embedding_dim, include_data=reading.include_data,
            token_index=reading.token_index,
            device=device, disable=disable,
        )
        data_row = _fill_embedding_rows(rows, streams, e_names)
    return _table(rows, data_row, weights.measures, e_names, data is not None)


def _targets(model: nn.Module, data, weights: WeightOptions, reading: EmbeddingOptions, device) -> tuple:
    """The weight entries and the embedding targets, checked before any compute; the model on ``device``."""
    if device is not None:
        check_device_available(str(device))  # before any compute
    entries = weight_entries(model, weights.layers, attention_heads=weights.attention_heads)
    _check_has_values(model)
    extra = embedding_targets(model, reading.embeddings)
    if extra and data is None:
        raise ConfigError("embeddings: measuring embeddings needs data (pass data=...)")
    if device is not None:
        model.to(device)
    return entries, extra


def _weight_rows(entries, weights: WeightOptions, disable: bool | None) -> dict[str, dict[str, Any]]:
    """One row per weight entry: its shapes, measures and normalised measures, or its error."""
    from tqdm.auto import tqdm

    rows: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        items = [(e.name, e.weight()) for e in entries]
    for e in entries:  # the shape as stored; matrix_shape is the shape as read
        rows[e.name] = {"name": e.name, "type": e.type, "weight_shape": e.weight_shape}
    with tqdm(total=len(items), desc="weights", unit="layer", disable=disable, leave=False) as bar:
        results = measure_weights(items, weights.measures, weights.conv_reading, progress=bar.update)
    for name, row in rows.items():
        res = results[name]
        if isinstance(res, str):
            row["matrix_shape"] = None
            row["error"] = res
            continue
        vals, M = res
        row["matrix_shape"] = read_shape(M, weights.conv_reading)
        shape = row["matrix_shape"][-2:]
        for key in weights.measures:
            v = float(vals[key])
            row[key] = v
            row[f"{key}_normalized"] = normalized(key, v, shape)
    return rows


def _fill_embedding_rows(rows: dict[str, dict[str, Any]], streams: dict[str, EmbeddingStream],
                         names: Sequence[str]) -> dict[str, Any] | None:
    """Fill each row's ``emb_`` columns from its stream; return the data row, if any."""
    data_row = None
    for name, stream in streams.items():
        if name == DATA_ROW_NAME:
            data_row = {"name": DATA_ROW_NAME, "type": "data", "weight_shape": None, "matrix_shape": None}
            row = data_row
        else:
            row = rows[name]
        _fill_embedding(row, stream, names)
    return data_row


def _table(rows: dict[str, dict[str, Any]], data_row: dict[str, Any] | None, w_names: Sequence[str],
           e_names: Sequence[str], with_data: bool) -> pd.DataFrame:
    import pandas as pd

    columns = ["name", "type", "weight_shape", "matrix_shape"]
    columns += list(w_names) + [f"{k}_normalized" for k in w_names]
    if with_data:
        columns += ["emb_matrix_shape"] + [f"emb_{k}" for k in e_names]
        columns += [f"emb_{k}_normalized" for k in e_names]
    columns.append("error")
    ordered = ([data_row] if data_row is not None else []) + list(rows.values())
    for r in ordered:
        r.setdefault("error", "")
    df = pd.DataFrame(ordered, columns=columns)
    counts = [k for k in w_names if SPECS[k].integer] + [f"emb_{k}" for k in e_names if SPECS[k].integer]
    for col in counts:
        # integers, unless a mean over taps made them fractional
        if col in df and bool((df[col].dropna() % 1 == 0).all()):
            df[col] = df[col].astype("Int64")
    df["error"] = df["error"].fillna("")
    return df


_NOT_CALLED = ("not called by the forward pass (neither the module nor its weight through "
               "F.linear/F.convNd)")


def _fill_embedding(row: dict, stream: EmbeddingStream, names: Sequence[str]) -> None:
    sp = stream.spectrum
    if stream.error is not None or sp is None:
        msg = stream.error or _NOT_CALLED
        row["error"] = "; ".join(e for e in (row.get("error"), f"embedding: {msg}") if e)
        return
    shape = (sp.n_samples_, sp.dim_)
    row["emb_matrix_shape"] = shape
    try:
        vals = sp.measures(names)
    except (ValueError, torch.linalg.LinAlgError) as e:  # pragma: no cover - defensive
        row["error"] = "; ".join(x for x in (row.get("error"), f"embedding: {e}") if x)
        return
    for key in names:
        v = float(vals[key])
        row[f"emb_{key}"] = v
        row[f"emb_{key}_normalized"] = normalized(key, v, shape)
