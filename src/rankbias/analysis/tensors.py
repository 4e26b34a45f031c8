"""``measure_tensors``: the rank measures of every 2-D+ tensor of a file (``rankbias measure``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rankbias.analysis.layers import ConvReading
from rankbias.analysis.weights import check_conv_reading, measure_weights, read_shape
from rankbias.measures import _check_measure_names

__all__ = ["measure_tensors"]


def _dims(shape) -> str:
    return "x".join(map(str, shape))


def measure_tensors(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    conv_reading: ConvReading = "flatten",
    measures: Sequence[str] | None = None,
    trust_pickle: bool = False,
) -> list[dict[str, Any]]:
    """One dict per tensor with 2 or more dimensions of ``source`` (a file read by
    :func:`rankbias.io.load_tensors`, or a mapping name -> tensor): ``name``,
    ``shape`` ("8x3x3x3"), ``matrix`` (the matrix as read: "8x27", "9 x 8x3"
    per tap, "72x27" pooled), one value per measure (a conv read per tap: the
    mean over taps; ``numerical_rank`` an int when it is one), or ``error``
    (non-finite values) for that tensor alone.
    Pickled objects in a torch file are refused unless ``trust_pickle``.
    """
    from rankbias.io import load_tensors

    check_conv_reading(conv_reading)
    names = _check_measure_names(measures)
    tensors = source if isinstance(source, Mapping) else load_tensors(source, trust_pickle=trust_pickle)
    items = [(k, t) for k, t in tensors.items() if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.numel()]
    results = measure_weights(items, names, conv_reading)
    rows = []
    for name, t in items:
        row: dict[str, Any] = {"name": name, "shape": _dims(t.shape)}
        res = results[name]
        if isinstance(res, str):
            row["matrix"] = ""
            row["error"] = res
            rows.append(row)
            continue
        vals, M = res
        shape = read_shape(M, conv_reading)
        row["matrix"] = f"{shape[0]} x {_dims(shape[1:])}" if len(shape) == 3 else _dims(shape)
        for k in names:
            v = float(vals[k])
            row[k] = int(v) if k == "numerical_rank" and v.is_integer() else v
        rows.append(row)
    return rows
