"""Rank report of any PyTorch model: its weights, what each layer computes on
data, and the data itself; and a tracker that records ranks during training.

Weights (SCIENCE.md A): every module with a 2-D+ ``weight`` (Linear, ConvNd,
ConvTransposeNd, Embedding, Bilinear, custom modules) is read as a matrix by
:func:`rankbias.measures.as_matrix` (a conv weight (out, in, *k) as
out x in*prod(k), or per tap) and measured by :func:`rankbias.measures.rank_measures`.
Layers whose matrices have the same shape are stacked and measured in one
batched call, which is where the speed comes from.

Embeddings: forward hooks stream every selected layer's output into a
:class:`rankbias.measures.KernelSpectrum` (O(d^2) memory whatever the number of
samples), so the ``emb_`` columns are the measures of the kernel K = Z Z^T of
the layer's output embeddings Z (N x d): the "kernel effective rank" uses
p_i = lambda_i / sum lambda_j with lambda the eigenvalues of K. A conv output
(N, C, *spatial) is read per position, (N * prod(spatial)) x C, or per sample,
N x (C * prod(spatial)) (``embedding_reading``); every other output (..., d)
as (prod(...)) x d, so tokens of a sequence model are samples.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from rankbias.measures import (
    KernelSpectrum,
    _check_measure_names,
    as_matrix,
    max_measure,
    rank_measures_many,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from rankbias.framework.runs import RunDir
    from rankbias.train import TrainState

__all__ = [
    "DATA_ROW_NAME",
    "RankTracker",
    "build_arch",
    "load_inputs",
    "load_model",
    "plot_rank_report",
    "rank_report",
    "summarize_report",
    "weight_layers",
]

ConvReading = Literal["flatten", "taps"]
EmbeddingReading = Literal["position", "sample"]
LayerSelector = str | type | Sequence[str | type] | Callable[[str, nn.Module], bool] | None

#: ``name`` of the row that holds the rank of the (flattened) input data.
DATA_ROW_NAME = "<input>"

_CONV_TYPES = (nn.modules.conv._ConvNd,)
# Matrices per batched rank_measures call are capped at this many float64
# elements (256 MiB), so a large model is measured in a few big calls, not one huge one.
# Output elements streamed per KernelSpectrum update: the row copy (float32) and
# its float64 version stay ~12 MiB, small next to a forward pass's activations.
_CHUNK_ELEMENTS = 1 << 20


# ----------------------------------------------------------------- layer choice


def _weight_of(module: nn.Module) -> torch.Tensor | None:
    try:
        w = getattr(module, "weight", None)
    except Exception:  # a parametrization that cannot be evaluated
        return None
    if isinstance(w, torch.Tensor) and w.ndim >= 2:
        return w
    return None


def weight_layers(model: nn.Module, layers: LayerSelector = None) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of ``model`` with a 2-D+ ``weight``, in module order.

    ``layers``: None (all of them); module names or glob patterns
    (``"layer1.*"``); module classes (``nn.Conv2d``); a mix of both; or a
    predicate ``f(name, module) -> bool``. A name or pattern that matches no
    weight layer is an error listing the names there are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    found = [(n or "<root>", m) for n, m in model.named_modules() if _weight_of(m) is not None]
    if layers is None:
        return found
    if callable(layers) and not isinstance(layers, type):
        return [(n, m) for n, m in found if layers(n, m)]
    sel = [layers] if isinstance(layers, str | type) else list(layers)
    names = [s for s in sel if isinstance(s, str)]
    types = tuple(s for s in sel if isinstance(s, type))
    bad_sel = [s for s in sel if not isinstance(s, str | type)]
    if bad_sel:
        raise TypeError(f"layers: expected names, glob patterns or module classes, got {bad_sel!r}")
    unmatched = [p for p in names if not any(fnmatch.fnmatchcase(n, p) for n, _ in found)]
    if unmatched:
        avail = ", ".join(n for n, _ in found[:40]) + (" ..." if len(found) > 40 else "")
        raise ValueError(f"layers: {unmatched} match no layer with a 2-D+ weight; layers are: {avail}")
    return [
        (n, m)
        for n, m in found
        if any(fnmatch.fnmatchcase(n, p) for p in names) or (types and isinstance(m, types))
    ]


# ------------------------------------------------------------ weight measures


def _weight_matrices(
    items: Sequence[tuple[str, torch.Tensor]], reading: ConvReading, batched: bool = False
) -> dict[str, torch.Tensor | str]:
    """name -> matrix (or batch of matrices), or an error message."""
    out: dict[str, torch.Tensor | str] = {}
    for name, w in items:
        w = w.detach()
        if w.dtype.is_floating_point and not bool(torch.isfinite(w).all()):
            n_bad = int((~torch.isfinite(w)).sum())
            out[name] = f"weight contains {n_bad} NaN/Inf value(s) of {w.numel()}"
            continue
        if w.is_complex():
            out[name] = "complex weight: not measured"
            continue
        if batched:
            if w.ndim < 3:
                out[name] = f"batched: expected (models, m, n, ...) weights, got shape {tuple(w.shape)}"
                continue
            mats = torch.stack([as_matrix(wi, reading) for wi in w.unbind(0)])
        else:
            mats = as_matrix(w, reading)
        out[name] = mats
    return out


def _scalar(v: torch.Tensor) -> float:
    """One value per layer: the mean over taps (a conv read per tap), else the value."""
    v = v.double()
    return float(v.mean()) if v.numel() else float("nan")


def _normalized(name: str, value: float, shape: tuple[int, int]) -> float:
    top = max_measure(name, shape)
    return value / top if top > 0 and math.isfinite(value) else float("nan")


# ---------------------------------------------------------------- data handling


def _iter_batches(data, batch_size: int, max_samples: int | None) -> tuple[Iterator[torch.Tensor], int | None]:
    """Input batches of a tensor, a Dataset or a DataLoader, and their number if known."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, torch.Tensor):
        x = data[:max_samples] if max_samples is not None else data
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"data: expected a non-empty tensor (N, ...), got shape {tuple(data.shape)}")
        n = math.ceil(x.shape[0] / batch_size)
        return (x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)), n
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, DataLoader):
        try:
            n = len(data)
        except TypeError:
            n = None
        return _inputs_of(data, max_samples), n
    raise TypeError(
        f"data: expected a torch.Tensor (N, ...), a torch Dataset or a DataLoader, got {type(data).__name__}"
    )


def _inputs_of(loader, max_samples: int | None) -> Iterator[torch.Tensor]:
    seen = 0
    for batch in loader:
        if isinstance(batch, list | tuple):
            batch = batch[0]
        if not isinstance(batch, torch.Tensor):
            raise TypeError(
                "data: each batch must be a tensor or a tuple/list whose first element is the "
                f"input tensor, got {type(batch).__name__}"
            )
        if max_samples is not None:
            batch = batch[: max_samples - seen]
        if batch.shape[0] == 0:
            return
        seen += batch.shape[0]
        yield batch
        if max_samples is not None and seen >= max_samples:
            return


def _embedding_rows(
    out: torch.Tensor, module: nn.Module, reading: EmbeddingReading
) -> torch.Tensor:
    """A layer output as an embedding matrix, one row per sample (see the module docstring)."""
    is_conv = isinstance(module, _CONV_TYPES) and out.ndim >= 3
    if is_conv and reading == "position":
        return out.movedim(1, -1).reshape(-1, out.shape[1])  # (N * prod(spatial), C)
    if is_conv and reading == "sample":
        return out.reshape(out.shape[0], -1)  # (N, C * prod(spatial))
    if out.ndim == 1:
        return out.reshape(-1, 1)
    return out.reshape(-1, out.shape[-1])  # (..., d) -> (prod(...), d)


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


class _EmbeddingStream:
    """A layer's streamed kernel spectrum, or the reason it could not be measured."""

    def __init__(self, max_dim: int, centered: bool, device, chunk_elements: int):
        self.max_dim = max_dim
        self.centered = centered
        self.device = device
        self.chunk_elements = chunk_elements
        self.spectrum: KernelSpectrum | None = None
        self.error: str | None = None

    @torch.no_grad()
    def add(self, out: torch.Tensor, to_rows: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Stream a batch ``out`` (n, ...) whose samples ``to_rows`` reads as rows (., d).

        The batch is taken a few samples at a time so that the row copies (a
        conv output moved channels-last) and their float64 versions stay a
        small chunk next to the forward pass's own activations."""
        if self.error is not None:
            return
        if out.ndim == 0:
            out = out.reshape(1)
        n = out.shape[0]
        per_sample = max(1, out.numel() // max(n, 1))
        k = max(1, self.chunk_elements // per_sample)
        for i in range(0, n, k):
            Z = to_rows(out[i : i + k])
            d = Z.shape[-1]
            if d > self.max_dim:
                self.error = (
                    f"embedding dimension {d} > max_embedding_dim={self.max_dim} (the streamed "
                    f"kernel needs a {d}x{d} float64 matrix); read conv outputs per position or "
                    "raise max_embedding_dim"
                )
                return
            if self.spectrum is None:
                self.spectrum = KernelSpectrum(d, centered=self.centered, device=self.device or Z.device)
            try:
                self.spectrum.update(Z)
            except ValueError as e:
                # checked here, only on failure: KernelSpectrum already checks finiteness
                bad = Z.is_floating_point() and not bool(torch.isfinite(Z).all())
                self.error = "output contains NaN/Inf" if bad else str(e)
                return


# ------------------------------------------------------------------ the report


def rank_report(
    model: nn.Module,
    data=None,
    layers: LayerSelector = None,
    measures: Sequence[str] | None = None,
    conv_reading: ConvReading = "flatten",
    device: str | torch.device | None = None,
    *,
    embedding_reading: EmbeddingReading = "position",
    embedding_measures: Sequence[str] | None = None,
    centered: bool = False,
    batch_size: int = 256,
    max_samples: int | None = None,
    max_embedding_dim: int = 4096,
    include_data: bool = True,
    progress: bool | None = None,
) -> pd.DataFrame:
    """One row per weight layer of ``model``: its weight's rank measures and,
    with ``data``, those of the kernel of its output embeddings.

    Args:
        model: any ``nn.Module``; every submodule with a 2-D+ ``weight`` is a row.
        data: optional inputs: a tensor (N, ...), a Dataset or a DataLoader
            (a batch may be ``(inputs, targets, ...)``; its first element is fed).
        layers: which layers (see :func:`weight_layers`); default all.
        measures: weight measures (names of :data:`rankbias.measures.MEASURES`); default all.
        conv_reading: a conv weight (out, in, *k) as one out x in*prod(k) matrix
            ("flatten") or one out x in matrix per tap ("taps", the row holds the
            mean over taps, normalised by the max for out x in).
        device: where the forward passes and spectra run; the model is moved
            there (``model.to(device)``). Default: the device of its parameters.
        embedding_reading: conv outputs per "position" ((N*H*W) x C) or per
            "sample" (N x C*H*W).
        embedding_measures: measures of the embedding kernels; default ``measures``.
        centered: subtract the mean embedding before the kernel (default: raw,
            as the kernel K = Z Z^T of SCIENCE.md A).
        batch_size: batch size when ``data`` is a tensor or a Dataset.
        max_samples: use only the first ``max_samples`` inputs.
        max_embedding_dim: embeddings wider than this (their d x d kernel side
            would not fit) get an error note instead of a spectrum.
        include_data: add a row ``"<input>"`` with the rank of the flattened inputs.
        progress: tqdm bars over layers and batches (None: only on a terminal).

    Returns:
        A pandas DataFrame with columns ``name``, ``type``, ``weight_shape``,
        ``matrix_shape``, one column per measure, ``<measure>_normalized``
        (divided by :func:`rankbias.measures.max_measure` of the matrix shape);
        with data ``emb_matrix_shape`` ((samples, d) of the embedding matrix),
        ``emb_<measure>`` and ``emb_<measure>_normalized``; and ``error``
        (empty when the row is complete). A layer whose weight is not finite,
        or whose output cannot be measured, has NaN there and the reason in
        ``error``; the other rows are unaffected.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    w_names = _check_measure_names(measures)
    e_names = _check_measure_names(embedding_measures) if embedding_measures is not None else w_names
    if conv_reading not in ("flatten", "taps"):
        raise ValueError(f"conv_reading must be 'flatten' or 'taps', got {conv_reading!r}")
    if embedding_reading not in ("position", "sample"):
        raise ValueError(f"embedding_reading must be 'position' or 'sample', got {embedding_reading!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    chosen = weight_layers(model, layers)
    if device is not None:
        model.to(device)
    disable = None if progress is None else not progress

    rows: dict[str, dict[str, Any]] = {}
    items = []
    for name, mod in chosen:
        w = _weight_of(mod)
        rows[name] = {"name": name, "type": type(mod).__name__, "weight_shape": tuple(w.shape)}
        items.append((name, w))
    mats = _weight_matrices(items, conv_reading)
    good = {k: v for k, v in mats.items() if isinstance(v, torch.Tensor)}
    with tqdm(total=len(good), desc="weights", unit="layer", disable=disable, leave=False) as bar:
        results = rank_measures_many(good, w_names, progress=bar.update)
    for name, row in rows.items():
        M = mats[name]
        if isinstance(M, str):
            row["matrix_shape"] = None
            row["error"] = M
            continue
        shape = tuple(M.shape[-2:])
        row["matrix_shape"] = tuple(M.shape)
        for key in w_names:
            v = _scalar(results[name][key])
            row[key] = v
            row[f"{key}_normalized"] = _normalized(key, v, shape)

    data_row = None
    if data is not None:
        streams = _stream_embeddings(
            model, chosen, data, embedding_reading=embedding_reading, centered=centered,
            batch_size=batch_size, max_samples=max_samples, max_dim=max_embedding_dim,
            include_data=include_data, device=device, disable=disable,
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


def _fill_embedding(row: dict, stream: _EmbeddingStream, names: Sequence[str]) -> None:
    sp = stream.spectrum
    if stream.error is not None or sp is None:
        msg = stream.error or "layer was not called by the forward pass"
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
        row[f"emb_{key}_normalized"] = _normalized(key, v, shape)


def _stream_embeddings(
    model: nn.Module,
    chosen: Sequence[tuple[str, nn.Module]],
    data,
    *,
    embedding_reading: EmbeddingReading,
    centered: bool,
    batch_size: int,
    max_samples: int | None,
    max_dim: int,
    include_data: bool,
    device,
    disable,
) -> dict[str, _EmbeddingStream]:
    """Run the data through the model once, streaming every chosen layer's output."""
    from tqdm.auto import tqdm

    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    chunk = _CHUNK_ELEMENTS
    streams: dict[str, _EmbeddingStream] = {}
    if include_data:
        streams[DATA_ROW_NAME] = _EmbeddingStream(max_dim, centered, None, chunk)
    handles = []
    current: list[str] = []

    def make_hook(name: str, stream: _EmbeddingStream):
        def hook(module, inputs, output):
            t = _first_tensor(output)
            if t is None:
                stream.error = stream.error or f"output of type {type(output).__name__} has no tensor"
                return
            stream.add(t.detach(), lambda c: _embedding_rows(c, module, embedding_reading))

        return hook

    def make_pre_hook(name: str):
        def pre(module, inputs):
            current.append(name)

        return pre

    # before any hook exists: a bad `data` must not leave hooks behind
    batches, n_batches = _iter_batches(data, batch_size, max_samples)
    for name, mod in chosen:
        streams[name] = _EmbeddingStream(max_dim, centered, None, chunk)
        handles.append(mod.register_forward_hook(make_hook(name, streams[name])))
        handles.append(mod.register_forward_pre_hook(make_pre_hook(name)))
    was_training = model.training
    model.eval()
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    in_dtype = p.dtype if p is not None else torch.get_default_dtype()
    takes_ids = any(isinstance(m, nn.Embedding | nn.EmbeddingBag) for m in model.modules())
    try:
        with torch.no_grad():
            for x in tqdm(batches, total=n_batches, desc="embeddings", unit="batch",
                          disable=disable, leave=False):
                # integer images etc. are fed in the model's floating dtype;
                # integer token ids (an Embedding first) stay as they are
                if x.is_floating_point() or not takes_ids:
                    x = x.to(device=device, dtype=in_dtype)
                else:
                    x = x.to(device)
                if include_data:
                    streams[DATA_ROW_NAME].add(x, lambda c: c.reshape(c.shape[0], -1))
                current.clear()
                try:
                    model(x)
                except (RuntimeError, ValueError, TypeError) as e:
                    where = (
                        f" in layer {current[-1]!r} ({_describe(dict(chosen)[current[-1]])})"
                        if current else ""
                    )
                    raise ValueError(
                        f"the model's forward pass failed on inputs of shape {tuple(x.shape)}"
                        f"{where}: {e}. Check that the data matches the model's expected "
                        "input (channels, size, dtype)."
                    ) from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return streams


def _describe(module: nn.Module) -> str:
    text = repr(module)
    return text if len(text) < 120 else type(module).__name__


# ---------------------------------------------------------------- the tracker


class RankTracker:
    """Records rank measures of chosen layers' weights every ``every`` steps.

    Two ways to use it::

        # 1. as a callback of rankbias.train.train: values join its history
        train(loss_fn, model, steps=1000, log_every=10, callbacks=[RankTracker(every=100)])

        # 2. in your own loop: two lines
        tracker = RankTracker(every=100, run="runs/mine")      # before the loop
        tracker.step(model)                                     # after optimizer.step()

    Metric keys are ``"<layer>/<measure>"`` (e.g. ``"fc1/effective_rank"``).
    ``batched=True`` reads the weights of a batch of models trained at once
    (leading model dimension, as rankbias's trainer trains sweeps): values are
    then per model.

    Args:
        layers: which layers (see :func:`weight_layers`); for a plain list of
            parameters (a callback without a module) the names ``param<i>``.
        measures: which measures; default effective and stable rank.
        every: record every ``every`` steps (step % every == 0).
        conv_reading: "flatten" or "taps" (the mean over taps).
        batched: the weights carry a leading model dimension.
        run: a :class:`rankbias.framework.runs.RunDir` (or a path): the records are
            written to ``run/filename`` (CSV, atomically) as they come.
        filename: the CSV's name in the run directory.
        tensorboard: a log directory (or a ``SummaryWriter``): the records are
            also written as TensorBoard scalars (needs ``rankbias[tensorboard]``).
        write_every: write the CSV every this many records (and on ``close``).

    Fitted attributes: ``history_`` (one dict per record and model: ``step``,
    ``model`` when batched, and the metrics), ``step_`` (steps seen by
    :meth:`step`).
    """

    def __init__(
        self,
        layers: LayerSelector = None,
        measures: Sequence[str] | None = ("effective_rank", "stable_rank"),
        every: int = 1,
        *,
        conv_reading: ConvReading = "flatten",
        batched: bool = False,
        run: RunDir | str | os.PathLike | None = None,
        filename: str = "rank_metrics.csv",
        tensorboard=None,
        write_every: int = 1,
    ):
        self.measures = _check_measure_names(measures)
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if conv_reading not in ("flatten", "taps"):
            raise ValueError(f"conv_reading must be 'flatten' or 'taps', got {conv_reading!r}")
        if not isinstance(write_every, int) or write_every < 1:
            raise ValueError(f"write_every must be a positive int, got {write_every!r}")
        self.layers = layers
        self.every = every
        self.conv_reading = conv_reading
        self.batched = bool(batched)
        self.filename = filename
        self.write_every = write_every
        if run is not None and not hasattr(run, "write_csv"):
            from rankbias.framework.runs import RunDir

            run = RunDir(run)
        self.run = run
        self._writer = self._make_writer(tensorboard) if tensorboard is not None else None
        self._owns_writer = tensorboard is not None and not hasattr(tensorboard, "add_scalar")
        self.history_: list[dict[str, Any]] = []
        self.step_ = 0
        self._unwritten = 0

    @staticmethod
    def _make_writer(tensorboard):
        if hasattr(tensorboard, "add_scalar"):
            return tensorboard
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "RankTracker(tensorboard=...) needs the tensorboard package, an optional "
                "dependency: pip install 'rankbias[tensorboard]' (or pip install tensorboard); "
                "leave tensorboard=None to write only the CSV"
            ) from e
        return SummaryWriter(log_dir=str(tensorboard))

    # -------------------------------------------------------------- measuring
    def _items(self, source) -> list[tuple[str, torch.Tensor]]:
        if isinstance(source, nn.Module):
            return [(n, _weight_of(m)) for n, m in weight_layers(source, self.layers)]
        params = list(source)
        min_dim = 3 if self.batched else 2
        items = [(f"param{i}", p) for i, p in enumerate(params) if p.ndim >= min_dim]
        if self.layers is not None:
            sel = [self.layers] if isinstance(self.layers, str) else list(self.layers)
            items = [(n, p) for n, p in items if any(fnmatch.fnmatchcase(n, s) for s in sel)]
        return items

    @torch.no_grad()
    def measure(self, source) -> dict[str, torch.Tensor]:
        """The metrics now: ``{"<layer>/<measure>": value}`` (shape (M,) when batched)."""
        items = self._items(source)
        mats = _weight_matrices(items, self.conv_reading, batched=self.batched)
        good = {k: v for k, v in mats.items() if isinstance(v, torch.Tensor)}
        res = rank_measures_many(good, self.measures)
        out: dict[str, torch.Tensor] = {}
        for name, M in mats.items():
            for key in self.measures:
                if isinstance(M, str):
                    val = torch.tensor(float("nan"), dtype=torch.float64)
                else:
                    v = res[name][key].double()
                    if self.batched:
                        val = v.reshape(M.shape[0], -1).mean(-1)  # (M,), mean over taps
                    else:
                        val = v.mean()
                out[f"{name}/{key}"] = val.cpu()
        return out

    def record(self, source, step: int) -> dict[str, torch.Tensor]:
        """Measure ``source`` (a module or a list of parameters) now, as step ``step``."""
        metrics = self.measure(source)
        n_models = 1
        for v in metrics.values():
            n_models = max(n_models, v.numel())
        for i in range(n_models):
            row: dict[str, Any] = {"step": int(step)}
            if self.batched:
                row["model"] = i
            for k, v in metrics.items():
                row[k] = float(v.reshape(-1)[i] if v.numel() == n_models else v.reshape(-1)[0])
            self.history_.append(row)
            if self._writer is not None:
                for k, val in row.items():
                    if k in ("step", "model"):
                        continue
                    tag = f"rank/{k}" if not self.batched else f"rank/{k}/model{i}"
                    self._writer.add_scalar(tag, val, global_step=int(step))
        self._unwritten += 1
        if self.run is not None and self._unwritten >= self.write_every:
            self.flush()
        return metrics

    def step(self, model, step: int | None = None) -> dict[str, torch.Tensor] | None:
        """Call once per training step (after ``optimizer.step()``); records every
        ``every`` steps and returns the metrics then, else None. ``step``
        defaults to the number of calls so far (1, 2, ...)."""
        self.step_ = self.step_ + 1 if step is None else int(step)
        if self.step_ % self.every:
            return None
        return self.record(model, self.step_)

    def on_log(self, state: TrainState) -> dict[str, torch.Tensor]:
        """Callback of :func:`rankbias.train.train`: measures ``state.model`` (or
        ``state.params``) at the logged steps that are multiples of ``every``."""
        if state.step % self.every:
            return {}
        self.step_ = state.step
        source = state.model if state.model is not None else state.params
        return self.record(source, state.step)

    # ----------------------------------------------------------------- output
    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.history_)

    def flush(self) -> Path | None:
        """Write the records so far to ``run/filename``; flush TensorBoard."""
        if self._writer is not None:
            self._writer.flush()
        self._unwritten = 0
        if self.run is None:
            return None
        return self.run.write_csv(self.filename, self.history_)

    def close(self) -> None:
        self.flush()
        if self._writer is not None and self._owns_writer:
            self._writer.close()

    def __enter__(self) -> RankTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------- models and inputs by name


def build_arch(arch: str) -> nn.Module:
    """A model with random weights from an architecture name: a torchvision
    model (``resnet18`` or ``torchvision:resnet18``) or ``package.module:Class``
    (constructed without arguments)."""
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch: expected a name such as 'resnet18' or 'pkg.module:Class', got {arch!r}")
    if arch.startswith("torchvision:"):
        arch = arch.split(":", 1)[1]
    if ":" in arch:
        import importlib

        mod_name, cls_name = arch.split(":", 1)
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"arch {arch!r}: cannot import {cls_name} from {mod_name}: {e}") from e
        model = cls()
        if not isinstance(model, nn.Module):
            raise ValueError(f"arch {arch!r}: {cls_name}() is a {type(model).__name__}, not an nn.Module")
        return model
    import torchvision

    names = torchvision.models.list_models()
    if arch not in names:
        close = [n for n in names if arch.lower().rstrip("0123456789_") in n][:12]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ValueError(
            f"unknown torchvision model {arch!r}{hint}; accepted: any of torchvision.models.list_models() "
            f"({len(names)} names), or 'package.module:Class'"
        )
    return torchvision.models.get_model(arch, weights=None)


_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "ema")


def _unwrap_checkpoint(obj):
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in _CHECKPOINT_KEYS:
            if key in obj and isinstance(obj[key], nn.Module | Mapping):
                return _unwrap_checkpoint(obj[key])
    raise ValueError(
        f"cannot read a model from a {type(obj).__name__}: expected a module saved with "
        "torch.save(model), a state_dict (name -> tensor), or a checkpoint dict holding one "
        f"under one of the keys {list(_CHECKPOINT_KEYS)}"
    )


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shape = [k for k in own if k in state and own[k].shape != state[k].shape]
        raise ValueError(
            f"{source} does not fit the architecture {type(model).__name__}: "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(shape)} shape mismatch(es) {shape[:5]}"
        ) from e
    return model


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # a pickled module needs the full unpickler (and its class importable):
        # load only files you trust
        return torch.load(path, map_location="cpu", weights_only=False)


def load_model(spec: str, *, arch: str | None = None, weights: str | os.PathLike | None = None) -> nn.Module:
    """A model from a spec, as the CLI's ``analyze MODEL`` reads it.

    ``spec``: ``torchvision:NAME`` (random weights, or the state_dict file
    ``weights``); a file saved with ``torch.save(model)``; or a state_dict /
    checkpoint file together with ``arch`` (see :func:`build_arch`).
    Pickled modules are loaded with ``weights_only=False``: only trust your own files.
    """
    if spec.startswith("torchvision:"):
        model = build_arch(spec)
        if weights is not None:
            wpath = Path(weights)
            if not wpath.exists():
                raise FileNotFoundError(f"--weights {wpath}: no such file")
            state = _unwrap_checkpoint(_torch_load(wpath))
            if isinstance(state, nn.Module):
                state = state.state_dict()
            _load_state(model, state, str(wpath))
        return model
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"model {spec!r}: no such file; MODEL is 'torchvision:NAME', a file saved with "
            "torch.save(model), or a state_dict file with --arch NAME"
        )
    if weights is not None:
        raise ValueError("--weights goes with a torchvision:NAME model; for a file, pass the file itself")
    obj = _unwrap_checkpoint(_torch_load(path))
    if isinstance(obj, nn.Module):
        return obj
    if arch is None:
        raise ValueError(
            f"{path} holds a state_dict ({len(obj)} tensors), not a model: name its architecture "
            "with --arch (a torchvision name such as resnet18, or package.module:Class)"
        )
    return _load_state(build_arch(arch), obj, str(path))


def load_inputs(
    spec: str,
    *,
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    train: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Input tensors (N, ...) from a name: a dataset of
    :func:`rankbias.data.images.load_image_dataset` (digits, mnist,
    fashion-mnist, cifar10; the test split unless ``train``), ``random:CxHxW``
    (standard normal inputs of that shape, ``limit`` of them, 64 by default,
    seeded), or a .pt/.npy file holding a tensor."""
    from rankbias.data.images import _ALIASES, DATASETS, load_image_dataset

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit}")
    if spec.startswith("random:"):
        try:
            shape = tuple(int(v) for v in spec.split(":", 1)[1].lower().split("x"))
            if not shape or min(shape) < 1:
                raise ValueError
        except ValueError as e:
            raise ValueError(f"data {spec!r}: expected random:DIMS such as random:3x32x32") from e
        g = torch.Generator().manual_seed(seed)
        return torch.randn((limit or 64, *shape), generator=g)
    key = _ALIASES.get(spec.lower(), spec.lower())
    if key in DATASETS:
        x = load_image_dataset(key, train=train, root=root).images
        return x[:limit] if limit is not None else x
    path = Path(spec)
    if path.suffix.lower() in (".pt", ".pth", ".npy") and path.exists():
        import numpy as np

        x = torch.from_numpy(np.load(path)) if path.suffix.lower() == ".npy" else torch.load(path, map_location="cpu")
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor (N, ...), got {type(x).__name__}")
        return x[:limit] if limit is not None else x
    raise ValueError(
        f"unknown data {spec!r}; accepted: a dataset ({', '.join(DATASETS)}), random:CxHxW, "
        "or a .pt/.npy file holding an input tensor"
    )


# ------------------------------------------------------------ report outputs


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
