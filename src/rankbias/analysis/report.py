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
    embedding_targets,
    weight_entries,
    weight_targets,
)
from rankbias.analysis.stream import EmbeddingStream, stream_embeddings
from rankbias.analysis.weights import check_conv_reading, measure_weights, normalized, read_shape
from rankbias.errors import UnsupportedError
from rankbias.framework.config import ConfigError, check_device_available
from rankbias.measures import _check_measure_names

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["rank_report"]


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


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
    data=None,
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

    Args:
        model: any ``nn.Module``; every submodule with a 2-D+ ``weight`` is a
            row (an expanded layer of ``rankbias.overparam`` once, through its
            collapsed weight; an ``nn.MultiheadAttention`` as Q, K, V rows).
        data: optional inputs: a tensor (N, ...), a dict of tensors (a Hugging
            Face batch: ``input_ids``, ``attention_mask``, ...; fed as
            ``model(**batch)``, padding tokens left out of token embeddings),
            a Dataset or a DataLoader (a batch may be ``(inputs, targets, ...)``;
            its first element is fed).
        layers: which weight rows (see :func:`weight_entries`); default all;
            ``[]`` for none (only ``embeddings``).
        measures: weight measures (names of :data:`rankbias.measures.MEASURES`); default all.
        conv_reading: "flatten", "taps" (mean over kernel positions) or
            "pooled" (WeightWatcher's: one spectrum of all taps); see
            :mod:`rankbias.analysis.weights`.
        device: where the forward passes and spectra run; the model is moved
            there (``model.to(device)``). Default: the device of its parameters.
        embeddings: more rows, of any module's input or output:
            ``"NAME_OR_GLOB[:input|:output][@LAYOUT]"`` (default output;
            ``"<root>"`` is the model), e.g. ``"fc:input"`` (penultimate
            features), ``"layer4"``, ``"encoder.layers.*"``. Rows are named
            ``"fc:input"``. Each tensor is read by its layout, found during the
            forward pass (see :mod:`rankbias.analysis.layouts`); a 3-D+ tensor
            whose layout cannot be told gets an error unless LAYOUT states it:
            ``channels_first`` (N, C, ...), ``channels_last`` (N, ..., C) or
            ``sequence_first`` (T, N, C).
        token_index: keep only this token of every token output ((N, T, d),
            or (T, N, d) of a ``batch_first=False`` layer) (e.g. 0, the CLS
            token); default: every token is a sample.
        attention_heads: one Q, K, V row per attention head.
        embedding_reading: channels-first outputs (N, C, *spatial): of a conv
            or of anything after one (a block, an activation, a pool) per
            "position" ((N*H*W) x C) or per "sample" (N x C*H*W).
        embedding_measures: measures of the embedding kernels; default ``measures``.
        centered: subtract the mean embedding before the kernel (default: raw,
            the kernel K = Z Z^T).
        batch_size: batch size when ``data`` is a tensor, a dict or a Dataset.
        max_samples: use only the first ``max_samples`` inputs.
        max_embedding_dim: embeddings wider than this (their d x d kernel side
            would not fit) get an error note instead of a spectrum.
        include_data: add a row ``"<input>"`` with the rank of the flattened
            inputs (tensor inputs only: token ids have no rank to speak of).
        progress: tqdm bars over layers and batches (None: only on a terminal).

    Returns:
        A pandas DataFrame with columns ``name``, ``type``, ``weight_shape``,
        ``matrix_shape``, one column per measure, ``<measure>_normalized``
        (divided by :func:`rankbias.measures.max_measure` of the matrix shape);
        with data ``emb_matrix_shape`` ((samples, d) of the embedding matrix),
        ``emb_<measure>`` and ``emb_<measure>_normalized``; and ``error``
        (empty when the row is complete). A row whose weight is not finite,
        or whose embeddings cannot be measured, has NaN there and the reason in
        ``error``; the other rows are unaffected.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    w_names = _check_measure_names(measures)
    e_names = _check_measure_names(embedding_measures) if embedding_measures is not None else w_names
    check_conv_reading(conv_reading)
    if embedding_reading not in ("position", "sample"):
        raise ConfigError(f"embedding_reading must be 'position' or 'sample', got {embedding_reading!r}")
    _check_positive("batch_size", batch_size)
    _check_positive("max_samples", max_samples, allow_none=True)
    if token_index is not None and (isinstance(token_index, bool) or not isinstance(token_index, int)):
        raise ConfigError(f"token_index must be an int or None, got {token_index!r}")
    if device is not None:
        check_device_available(str(device))  # before any compute
    entries = weight_entries(model, layers, attention_heads=attention_heads)
    _check_has_values(model)
    extra = embedding_targets(model, embeddings)
    if extra and data is None:
        raise ConfigError("embeddings: measuring embeddings needs data (pass data=...)")
    if device is not None:
        model.to(device)
    disable = None if progress is None else not progress

    rows: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        items = [(e.name, e.weight()) for e in entries]
    for e in entries:  # the shape as stored; matrix_shape is the shape as read
        rows[e.name] = {"name": e.name, "type": e.type, "weight_shape": e.weight_shape}
    with tqdm(total=len(items), desc="weights", unit="layer", disable=disable, leave=False) as bar:
        results = measure_weights(items, w_names, conv_reading, progress=bar.update)
    for name, row in rows.items():
        res = results[name]
        if isinstance(res, str):
            row["matrix_shape"] = None
            row["error"] = res
            continue
        vals, M = res
        row["matrix_shape"] = read_shape(M, conv_reading)
        shape = row["matrix_shape"][-2:]
        for key in w_names:
            v = float(vals[key])
            row[key] = v
            row[f"{key}_normalized"] = normalized(key, v, shape)
    for t in extra:
        rows[t.row] = {"name": t.row, "type": type(t.module).__name__, "weight_shape": None,
                       "matrix_shape": None}

    data_row = None
    if data is not None:
        streams = stream_embeddings(
            model, weight_targets(model, entries) + extra, data, reading=embedding_reading,
            centered=centered, batch_size=batch_size, max_samples=max_samples,
            max_dim=max_embedding_dim, include_data=include_data, token_index=token_index,
            device=device, disable=disable,
        )
        for name, stream in streams.items():
            if name == DATA_ROW_NAME:
                data_row = {"name": DATA_ROW_NAME, "type": "data", "weight_shape": None,
                            "matrix_shape": None}
                row = data_row
            else:
                row = rows[name]
            _fill_embedding(row, stream, e_names)

    columns = ["name", "type", "weight_shape", "matrix_shape"]
    columns += list(w_names) + [f"{k}_normalized" for k in w_names]
    if data is not None:
        columns += ["emb_matrix_shape"] + [f"emb_{k}" for k in e_names]
        columns += [f"emb_{k}_normalized" for k in e_names]
    columns.append("error")
    ordered = ([data_row] if data_row is not None else []) + list(rows.values())
    for r in ordered:
        r.setdefault("error", "")
    df = pd.DataFrame(ordered, columns=columns)
    for col in ("numerical_rank", "emb_numerical_rank"):
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
