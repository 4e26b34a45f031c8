"""Run data through a model once and stream chosen embeddings into kernel spectra.

Each :class:`~rankbias.analysis.layers.Target` gets a forward hook (output,
input, or the Q/K/V projection computed from an attention module's inputs) and
a :class:`rankbias.measures.KernelSpectrum` (O(d^2) memory whatever the number
of samples). A weight layer whose weight the forward pass uses functionally
(``F.linear(x, self.qkv.weight)`` in torchvision's swin attention) never runs
its own forward; a torch function mode sees those calls and streams their
outputs instead, skipping the calls made by the layer's own forward.

Batches are tensors (N, ...) or dicts of tensors (Hugging Face:
``input_ids``, ``attention_mask``, ...), fed as ``model(**batch)``; with an
``attention_mask`` (N, T), the padding tokens (mask 0) of every (N, T, ...)
output are left out. ``token_index`` keeps one token (e.g. 0, the CLS token)
of every (N, T, d) output instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from rankbias.analysis.layers import (
    DATA_ROW_NAME,
    EmbeddingReading,
    Target,
    embedding_rows,
    is_conv,
    qkv_projection,
)
from rankbias.errors import LoadError
from rankbias.measures import KernelSpectrum

# Output elements streamed per KernelSpectrum update: the row copy (float32) and
# its float64 version stay ~12 MiB, small next to a forward pass's activations.
CHUNK_ELEMENTS = 1 << 20
_FUNCTIONAL = (F.linear, F.conv1d, F.conv2d, F.conv3d)

Batch = torch.Tensor | dict[str, torch.Tensor]


# ---------------------------------------------------------------- batches


def _batch_len(batch: Batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 0
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim)


def _take(batch: Batch, start: int, stop: int | None) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    return {k: v[start:stop] if isinstance(v, torch.Tensor) and v.ndim else v for k, v in batch.items()}


def _check_dict(data: Mapping) -> dict[str, torch.Tensor]:
    data = dict(data)
    lens = {k: v.shape[0] for k, v in data.items() if isinstance(v, torch.Tensor) and v.ndim}
    if not lens or len(set(lens.values())) != 1 or 0 in lens.values():
        raise LoadError(
            "data: a dict batch needs tensors with the same non-zero first dimension (samples), "
            f"got {({k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in data.items()})}"
        )
    return data


def iter_batches(data, batch_size: int, max_samples: int | None) -> tuple[Iterator[Batch], int | None]:
    """Input batches of a tensor, a dict of tensors, a Dataset or a DataLoader, and their number if known."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, torch.Tensor | Mapping):
        if isinstance(data, torch.Tensor) and (data.ndim < 1 or data.shape[0] == 0):
            raise LoadError(f"data: expected a non-empty tensor (N, ...), got shape {tuple(data.shape)}")
        x = data if isinstance(data, torch.Tensor) else _check_dict(data)
        n = _batch_len(x) if max_samples is None else min(max_samples, _batch_len(x))
        return (_take(x, i, min(i + batch_size, n)) for i in range(0, n, batch_size)), math.ceil(n / batch_size)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, DataLoader):
        try:
            n = len(data)
        except TypeError:
            n = None
        return _inputs_of(data, max_samples), n
    raise TypeError(
        "data: expected a torch.Tensor (N, ...), a dict of tensors (e.g. a tokenizer's output), "
        f"a torch Dataset or a DataLoader, got {type(data).__name__}"
    )


def _inputs_of(loader, max_samples: int | None) -> Iterator[Batch]:
    seen = 0
    for batch in loader:
        if isinstance(batch, list | tuple):
            batch = batch[0]
        if isinstance(batch, Mapping):
            batch = _check_dict(batch)
        elif not isinstance(batch, torch.Tensor):
            raise TypeError(
                "data: each batch must be a tensor, a dict of tensors, or a tuple/list whose first "
                f"element is the input tensor, got {type(batch).__name__}"
            )
        if max_samples is not None:
            batch = _take(batch, 0, max_samples - seen)
        if _batch_len(batch) == 0:
            return
        seen += _batch_len(batch)
        yield batch
        if max_samples is not None and seen >= max_samples:
            return


def _first_tensor(obj) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, list | tuple) else ()
    for o in values:
        if isinstance(o, torch.Tensor):
            return o
    return None


# ---------------------------------------------------------------- streams


class EmbeddingStream:
    """A row's streamed kernel spectrum, or the reason it could not be measured."""

    def __init__(self, max_dim: int, centered: bool, chunk_elements: int = CHUNK_ELEMENTS):
        self.max_dim = max_dim
        self.centered = centered
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
                self.spectrum = KernelSpectrum(d, centered=self.centered, device=Z.device)
            try:
                self.spectrum.update(Z)
            except ValueError as e:
                # checked here, only on failure: KernelSpectrum already checks finiteness
                bad = Z.is_floating_point() and not bool(torch.isfinite(Z).all())
                self.error = "output contains NaN/Inf" if bad else str(e)
                return


class _Feeder:
    """Turns a hooked tensor into embedding rows: batch-first, one token or the
    non-padding tokens, then the reading of its module."""

    def __init__(self, reading: EmbeddingReading, token_index: int | None):
        self.reading = reading
        self.token_index = token_index
        self.mask: torch.Tensor | None = None  # (N, T) bool of the current batch

    def __call__(self, stream: EmbeddingStream, t: torch.Tensor | None, target: Target, what: str) -> None:
        if t is None:
            stream.error = stream.error or f"{what} has no tensor"
            return
        t = t.detach()
        if isinstance(target.module, nn.MultiheadAttention) and not target.module.batch_first and t.ndim == 3:
            t = t.transpose(0, 1)  # (L, N, E) -> (N, L, E)
        tokens = t.ndim == 3 and not is_conv(target.reader)
        if tokens and self.token_index is not None:
            try:
                t = t[:, self.token_index]  # (N, d)
            except IndexError:
                stream.error = f"token_index={self.token_index} is out of range for output of shape {tuple(t.shape)}"
                return
        elif self.mask is not None and t.ndim >= 3 and not is_conv(target.reader) \
                and tuple(t.shape[:2]) == tuple(self.mask.shape):
            t = t[self.mask]  # (tokens, ..., d): padding left out
        stream.add(t, lambda c: embedding_rows(c, target.reader, self.reading))


class _FunctionalUses(TorchFunctionMode):
    """Streams the outputs of F.linear / F.convNd calls made with a tracked
    weight outside its own module's forward."""

    def __init__(self, tracked: dict[int, list[Callable[[torch.Tensor], None]]], active: set[int]):
        super().__init__()
        self.tracked = tracked
        self.active = active

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _FUNCTIONAL:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            key = id(w)
            if key in self.tracked and key not in self.active:
                for fn in self.tracked[key]:
                    fn(out)
        return out


def _qkv_input(args, kwargs, part: str):
    i = "qkv".index(part)
    return args[i] if len(args) > i else kwargs.get(("query", "key", "value")[i])


def _to_device(batch: Batch, device, in_dtype, takes_ids: bool) -> Batch:
    def move(x):
        if not isinstance(x, torch.Tensor):
            return x
        # integer images are fed in the model's floating dtype; integer token
        # ids (an Embedding first, or any dict batch) stay as they are
        if x.is_floating_point() or (not takes_ids and isinstance(batch, torch.Tensor)):
            return x.to(device=device, dtype=in_dtype)
        return x.to(device)

    return move(batch) if isinstance(batch, torch.Tensor) else {k: move(v) for k, v in batch.items()}


def stream_embeddings(
    model: nn.Module,
    targets: Sequence[Target],
    data,
    *,
    reading: EmbeddingReading,
    centered: bool,
    batch_size: int,
    max_samples: int | None,
    max_dim: int,
    include_data: bool,
    token_index: int | None,
    device,
    disable,
) -> dict[str, EmbeddingStream]:
    """Run the data through the model once, streaming every target (row name -> stream)."""
    from tqdm.auto import tqdm

    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    streams: dict[str, EmbeddingStream] = {}
    feed = _Feeder(reading, token_index)
    handles, current = [], []
    tracked: dict[int, list[Callable[[torch.Tensor], None]]] = {}
    active: set[int] = set()

    def make_hook(target: Target, stream: EmbeddingStream):
        def hook(module, args, kwargs, output):
            if target.kind == "output":
                feed(stream, _first_tensor(output), target, f"output of type {type(output).__name__}")
            elif target.kind == "input":
                t = _first_tensor(args)
                feed(stream, t if t is not None else _first_tensor(kwargs), target, "input")
            else:
                w, b = qkv_projection(module, target.part, target.head)
                x = _qkv_input(args, kwargs, target.part)
                feed(stream, F.linear(x, w, b) if isinstance(x, torch.Tensor) else None, target, "input")

        return hook

    def make_pre(target: Target, own_weight: int | None):
        def pre(module, args):
            current.append(target)
            if own_weight is not None:
                active.add(own_weight)

        return pre

    def make_post(own_weight: int):
        def post(module, args, output):
            active.discard(own_weight)

        return post

    # before any hook exists: a bad `data` must not leave hooks behind
    batches, n_batches = iter_batches(data, batch_size, max_samples)
    for t in targets:
        streams[t.row] = s = EmbeddingStream(max_dim, centered)
        handles.append(t.module.register_forward_hook(make_hook(t, s), with_kwargs=True))
        w = getattr(t.module, "weight", None) if t.kind == "output" and t.reader is t.module else None
        own = id(w) if isinstance(w, nn.Parameter) else None
        handles.append(t.module.register_forward_pre_hook(make_pre(t, own)))
        if own is not None:
            handles.append(t.module.register_forward_hook(make_post(own)))
            tracked.setdefault(own, []).append(
                (lambda s_, t_: lambda out: feed(s_, out, t_, "output"))(s, t))
    was_training = model.training
    model.eval()
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    in_dtype = p.dtype if p is not None else torch.get_default_dtype()
    takes_ids = any(isinstance(m, nn.Embedding | nn.EmbeddingBag) for m in model.modules())
    try:
        with torch.no_grad(), _FunctionalUses(tracked, active):
            for x in tqdm(batches, total=n_batches, desc="embeddings", unit="batch",
                          disable=disable, leave=False):
                x = _to_device(x, device, in_dtype, takes_ids)
                if isinstance(x, torch.Tensor):
                    feed.mask = None
                    if include_data:  # the inputs' own rank; token-id dicts have none
                        data_stream = streams.setdefault(DATA_ROW_NAME, EmbeddingStream(max_dim, centered))
                        data_stream.add(x, lambda c: c.reshape(c.shape[0], -1))
                else:
                    m = x.get("attention_mask")
                    feed.mask = m.bool() if isinstance(m, torch.Tensor) and m.ndim == 2 else None
                current.clear()
                active.clear()
                try:
                    model(**x) if isinstance(x, Mapping) else model(x)
                except (RuntimeError, ValueError, TypeError, IndexError) as e:
                    where = ""
                    if current:
                        t = current[-1]
                        where = f" in layer {t.row.split(':')[0]!r} ({_describe(t.module)})"
                    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else \
                        {k: tuple(v.shape) for k, v in x.items() if isinstance(v, torch.Tensor)}
                    raise LoadError(
                        f"the model's forward pass failed on inputs of shape {shape}{where}: {e}. "
                        "Check that the data matches the model's expected input (channels, size, dtype)."
                    ) from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return streams


def _describe(module: nn.Module) -> str:
    text = repr(module)
    return text if len(text) < 120 else type(module).__name__
