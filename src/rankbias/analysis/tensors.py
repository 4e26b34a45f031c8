"""``measure_tensors``: the rank measures of every 2-D+ tensor of a file (``rankbias measure``)."""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import torch

from rankbias.analysis.layers import ConvReading
from rankbias.analysis.weights import (
    check_conv_reading,
    measure_weights,
    read_shape,
    weight_matrices,
)
from rankbias.errors import InvalidParameterError
from rankbias.measures import SPECS, SlowComputationWarning, _check_measure_names, rank_measures
from rankbias.measures._checks import _unreadable

__all__ = ["iter_measure_tensors", "measure_tensors"]

P = ParamSpec("P")
R = TypeVar("R")

# A streamed checkpoint's small tensors are read and measured together (stacked by
# rank_measures_many) up to this many elements; a larger tensor is read alone.
_CHUNK_ELEMENTS = 1 << 20


def _dims(shape) -> str:
    return "x".join(map(str, shape))


def iter_measure_tensors(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    conv_reading: ConvReading = "flatten",
    measures: Sequence[str] | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
    method: str = "auto",
    progress: bool | None = False,
) -> Iterator[dict[str, Any]]:
    """The rows of :func:`measure_tensors`, one at a time, as the tensors are read.

    Parameters and errors: those of :func:`measure_tensors`.
    """
    from rankbias.framework.config import check_device_available

    check_conv_reading(conv_reading)
    names = _check_names(measures, method)
    if device is not None:
        check_device_available(str(device))
    if conv_reading == "pooled" and method != "auto":
        raise InvalidParameterError(f"method={method!r}: the pooled reading computes its own "
                                    "spectra; accepted with conv_reading='pooled': 'auto'")
    total, chunks = _chunks(source, trust_pickle)  # a bad file fails here, before any compute
    return _stream(chunks, total, names, conv_reading, device, method, progress)


def _listed(rows: Callable[P, Iterable[R]]) -> Callable[[Callable[[], list[R]]], Callable[P, list[R]]]:
    """Make the decorated stub (its name, docstring and return annotation) the function
    that returns the rows of ``rows`` as a list. It takes ``rows``' parameters, declared
    once: type checkers follow them through ``P``, ``inspect.signature`` and ``help``
    through ``__signature__``."""

    def make(stub: Callable[[], list[R]]) -> Callable[P, list[R]]:
        def listed(*args: P.args, **kwargs: P.kwargs) -> list[R]:
            return list(rows(*args, **kwargs))

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(listed, attr, getattr(stub, attr))
        returns = stub.__annotations__["return"]
        listed.__annotations__ = {**rows.__annotations__, "return": returns}
        listed.__signature__ = inspect.signature(rows).replace(return_annotation=returns)  # type: ignore[attr-defined]
        return listed

    return make


@_listed(iter_measure_tensors)
def measure_tensors() -> list[dict[str, Any]]:  # the parameters of iter_measure_tensors
    """The rank measures of every tensor of a file or mapping, one dict per tensor.

    Tensors with 2 or more dimensions are measured; :func:`iter_measure_tensors`
    gives the same rows one at a time, as the tensors are read.

    Parameters
    ----------
    source : str, PathLike or Mapping
        A file read by :func:`rankbias.io.load_tensors`, a mapping name -> tensor,
        or a safetensors checkpoint (a ``.safetensors`` file, a
        ``*.safetensors.index.json`` with its shards, or a directory holding
        either), which is **streamed**: tensors are memory-mapped a few at a
        time (one when large, small ones together up to 2^20 elements) and
        released once measured, so memory stays a small multiple of the largest
        tensor whatever the file's size. 1-D tensors are never read.
    conv_reading, measures
        How a 3-D+ tensor is read (``"flatten"``, ``"taps"``, ``"pooled"``), and
        the measures (default all).
    trust_pickle : bool, default False
        Unpickle torch files in full (runs code stored in them); refused otherwise.
    device : str or torch.device, optional
        Where the spectra are computed (each tensor is moved there), e.g. ``"cuda"``.
    method : str, default "auto"
        ``rank_measures``' route: "auto", "gram", "svd", or "fast" (estimates:
        stable, effective and entropy rank and RankMe, all four by default, each
        row with ``<measure>_error``, the half-width of its error bar). The pooled
        reading takes only "auto".
    progress : bool or None, default False
        A progress bar with an ETA on stderr (None: only on a terminal).

    Returns
    -------
    list of dict
        One dict per tensor with 2 or more dimensions of ``source``: ``name``,
        ``shape`` ("8x3x3x3"), ``matrix`` (the matrix as read: "8x27", "9 x 8x3"
        per tap, "72x27" pooled), one value per measure (a conv read per tap: the
        mean over taps; a count (``SPECS[k].integer``) an int when it is one), or
        ``error`` (non-finite values) for that tensor alone.

    Raises
    ------
    InvalidParameterError
        A bad reading, measure, device or method.
    LoadError, FileNotFoundError
        A file that cannot be read.

    Examples
    --------
    >>> import torch
    >>> from rankbias import measure_tensors
    >>> tensors = {"fc": torch.eye(3), "conv": torch.ones(8, 3, 3, 3), "bias": torch.ones(3)}
    >>> for row in measure_tensors(tensors, measures=["numerical_rank"]):
    ...     print(row)
    {'name': 'fc', 'shape': '3x3', 'matrix': '3x3', 'numerical_rank': 3}
    {'name': 'conv', 'shape': '8x3x3x3', 'matrix': '8x27', 'numerical_rank': 1}
    """


def _stream(chunks, total: int, names, conv_reading, device, method, progress) -> Iterator[dict[str, Any]]:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="rankbias measure", unit="tensor", dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        for items in chunks:
            more = f" +{len(items) - 1}" if len(items) > 1 else ""
            bar.set_postfix_str(items[0][0] + more, refresh=False)  # what is being measured
            items = [(k, t if device is None or _unreadable(t) else t.to(device)) for k, t in items]
            with warnings.catch_warnings():
                if not bar.disable:  # the bar's ETA says it better than a warning per tensor
                    warnings.simplefilter("ignore", SlowComputationWarning)
                if method == "fast":
                    results = _measure_fast(items, names, conv_reading, progress=bar.update)
                else:
                    results = measure_weights(items, names, conv_reading, progress=bar.update, method=method)
            rows = [_row(k, t, results[k], names, conv_reading) for k, t in items]
            bar.update(sum(isinstance(r, str) for r in results.values()))  # rows not measured
            del items, results  # released before the next chunk is read
            yield from rows


def _measurable(shape) -> bool:
    return len(shape) >= 2 and math.prod(shape) > 0


def _chunks(source, trust_pickle: bool) -> tuple[int, Iterator[list[tuple[str, torch.Tensor]]]]:
    """The number of tensors to measure, and them in chunks: streamed from a safetensors
    checkpoint, else all at once."""
    from rankbias.io import is_safetensors_checkpoint, load_tensors, read_stored, safetensors_index

    if isinstance(source, Mapping) or not is_safetensors_checkpoint(source):
        tensors = source if isinstance(source, Mapping) else load_tensors(source, trust_pickle=trust_pickle)
        items = [(k, t) for k, t in tensors.items() if isinstance(t, torch.Tensor) and _measurable(t.shape)]
        return len(items), iter([items] if items else [])
    entries = [e for e in safetensors_index(source) if _measurable(e.shape)]

    def read() -> Iterator[list[tuple[str, torch.Tensor]]]:
        chunk, count = [], 0
        for e in entries:
            n = math.prod(e.shape)
            if chunk and count + n > _CHUNK_ELEMENTS:
                yield list(read_stored(chunk).items())
                chunk, count = [], 0
            chunk.append(e)
            count += n
        if chunk:
            yield list(read_stored(chunk).items())

    return len(entries), read()


def _row(name: str, t: torch.Tensor, res, names: Sequence[str], conv_reading: ConvReading) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "shape": _dims(t.shape)}
    if isinstance(res, str):
        row["matrix"] = ""
        row["error"] = res
        return row
    vals, M, *errors = res
    shape = read_shape(M, conv_reading)
    row["matrix"] = f"{shape[0]} x {_dims(shape[1:])}" if len(shape) == 3 else _dims(shape)
    for k in names:
        v = float(vals[k])
        row[k] = int(v) if SPECS[k].integer and v.is_integer() else v
        if errors:
            row[f"{k}_error"] = float(errors[0][k])
    return row


def _check_names(measures: Sequence[str] | None, method: str) -> list[str]:
    """The measures asked for; with ``method="fast"``, those it estimates (all by default)."""
    from rankbias.measures.approx import FAST_MEASURES

    if method != "fast":
        return list(_check_measure_names(measures))
    names = list(FAST_MEASURES if measures is None else _check_measure_names(measures))
    bad = [k for k in names if k not in FAST_MEASURES]
    if bad:
        raise InvalidParameterError(f"the fast route does not estimate {bad}; accepted with "
                                    f"method='fast': {list(FAST_MEASURES)} (default: all of them)")
    return names


def _measure_fast(items, names: Sequence[str], reading: ConvReading, progress) -> dict[str, Any]:
    """As :func:`measure_weights`, with ``rank_measures(method="fast")``: name -> (values,
    matrix, error bars), or an error message. A conv read per tap holds the means over its
    taps of the values and of the half-widths (a bound on the mean's error)."""
    out: dict[str, Any] = {}
    for name, M in weight_matrices(items, reading).items():
        if isinstance(M, str):
            out[name] = M
            continue
        est = rank_measures(M, names, method="fast")
        out[name] = ({k: est[k].double().mean() for k in names}, M,
                     {k: est.errors[k].double().mean() for k in names})
        progress(1)
    return out
