"""Run data through a model once and stream chosen embeddings into kernel spectra.

Each :class:`~rankbias.analysis.layers.Target` gets a forward hook (output,
input, or the Q/K/V projection computed from an attention module's inputs) and
a :class:`rankbias.measures.KernelSpectrum` (O(d^2) memory whatever the number
of samples). A weight layer whose weight the forward pass uses functionally
(``F.linear(x, self.qkv.weight)`` in torchvision's swin attention) never runs
its own forward; a torch function mode sees those calls and streams their
outputs instead, skipping the calls made by the layer's own forward.

How each hooked tensor is read follows its layout, which a
:class:`~rankbias.analysis.layouts.LayoutTracker` finds during the same
forward pass (or the user states): channels-first outputs per position or per
sample, sequence-first ones made batch-first, a 3-D+ tensor of unknown layout
refused.

Batches are tensors (N, ...) ((T, N, ...) for a model that is itself a
``batch_first=False`` layer) or dicts of tensors (Hugging Face:
``input_ids``, ``attention_mask``, ...), fed as ``model(**batch)``; the
padding tokens (mask 0) of a token output (N, T, d) are left out where the
mask is known to be that output's (:meth:`LayoutTracker.mask_for`).
``token_index`` keeps one token (e.g. 0, the CLS token) of every token output
instead.
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
    qkv_projection,
)
from rankbias.analysis.layouts import (
    CHANNELS_FIRST,
    CHANNELS_LAST,
    FEATURES_LAST,
    PACKED,
    SEQUENCE_FIRST,
    Known,
    LayoutTracker,
    batch_first,
    output_tensor,
)
from rankbias.errors import InvalidParameterError, LoadError
from rankbias.measures import KernelSpectrum

# Output elements streamed per KernelSpectrum update: the row copy (float32) and
# its float64 version stay ~12 MiB, small next to a forward pass's activations.
CHUNK_ELEMENTS = 1 << 20
_FUNCTIONAL = (F.linear, F.conv1d, F.conv2d, F.conv3d)

Batch = torch.Tensor | dict[str, torch.Tensor]


# ---------------------------------------------------------------- batches


def _batch_len(batch: Batch, axis: int = 0) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[axis] if batch.ndim > axis else 0
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim)


def _take(batch: Batch, start: int, stop: int | None, axis: int = 0) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch[(slice(None),) * axis + (slice(start, stop),)]
    return {k: v[start:stop] if isinstance(v, torch.Tensor) and v.ndim else v for k, v in batch.items()}


def data_axis(model: nn.Module) -> int:
    """The samples' axis of a tensor batch: 1 for a model that is itself a
    ``batch_first=False`` layer (an ``nn.LSTM``, ``nn.TransformerEncoder``),
    whose input is (T, N, ...), else 0."""
    return 1 if batch_first(model) is False else 0


def _check_dict(data: Mapping) -> dict[str, torch.Tensor]:
    data = dict(data)
    lens = {k: v.shape[0] for k, v in data.items() if isinstance(v, torch.Tensor) and v.ndim}
    if not lens or len(set(lens.values())) != 1 or 0 in lens.values():
        raise LoadError(
            "data: a dict batch needs tensors with the same non-zero first dimension (samples), "
            f"got {({k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in data.items()})}"
        )
    return data


def iter_batches(data, batch_size: int, max_samples: int | None,
                 axis: int = 0) -> tuple[Iterator[Batch], int | None]:
    """Input batches of a tensor, a dict of tensors, a Dataset or a DataLoader, and their
    number if known; a tensor's samples are along ``axis`` (see :func:`data_axis`)."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, torch.Tensor | Mapping):
        if isinstance(data, torch.Tensor) and (data.ndim <= axis or data.shape[axis] == 0):
            want = "(N, ...)" if axis == 0 else "(T, N, ...) (the model is sequence-first)"
            raise LoadError(f"data: expected a non-empty tensor {want}, got shape {tuple(data.shape)}")
        x = data if isinstance(data, torch.Tensor) else _check_dict(data)
        total = _batch_len(x, axis)
        n = total if max_samples is None else min(max_samples, total)
        batches = (_take(x, i, min(i + batch_size, n), axis) for i in range(0, n, batch_size))
        return batches, math.ceil(n / batch_size)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, DataLoader):
        try:
            n = len(data)
        except TypeError:
            n = None
        return _inputs_of(data, max_samples, axis), n
    raise InvalidParameterError(
        "data: expected a torch.Tensor (N, ...), a dict of tensors (e.g. a tokenizer's output), "
        f"a torch Dataset or a DataLoader, got {type(data).__name__}"
    )


def _inputs_of(loader, max_samples: int | None, axis: int = 0) -> Iterator[Batch]:
    seen = 0
    for batch in loader:
        if isinstance(batch, list | tuple):
            batch = batch[0]
        if isinstance(batch, Mapping):
            batch = _check_dict(batch)
        elif not isinstance(batch, torch.Tensor):
            raise InvalidParameterError(
                "data: each batch must be a tensor, a dict of tensors, or a tuple/list whose first "
                f"element is the input tensor, got {type(batch).__name__}"
            )
        if max_samples is not None:
            batch = _take(batch, 0, max_samples - seen, axis)
        if _batch_len(batch, axis) == 0:
            return
        seen += _batch_len(batch, axis)
        yield batch
        if max_samples is not None and seen >= max_samples:
            return


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
    def add(self, out: torch.Tensor, to_rows: Callable[[torch.Tensor], torch.Tensor],
            positions: bool = False) -> None:
        """Stream a batch ``out`` (n, ...) whose samples ``to_rows`` reads as rows (., d);
        ``positions``: ``out`` is channels-first (n, d, *spatial), read per position,
        which :meth:`KernelSpectrum._update_positions` does without the rows' copy.

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
            Z = out[i : i + k] if positions else to_rows(out[i : i + k])
            d = Z.shape[1] if positions else Z.shape[-1]
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
                if positions:
                    self.spectrum._update_positions(Z)
                else:
                    self.spectrum.update(Z)
            except ValueError as e:
                # checked here, only on failure: KernelSpectrum already checks finiteness
                bad = Z.is_floating_point() and not bool(torch.isfinite(Z).all())
                self.error = "output contains NaN/Inf" if bad else str(e)
                return


class _Unreadable(Exception):
    """A hooked tensor that cannot be read as asked; the message is the row's error."""


class _Feeder:
    """Turns a hooked tensor into embedding rows by its layout: made batch-first,
    one token or the non-padding tokens kept, then read per position or sample."""

    def __init__(self, reading: EmbeddingReading, token_index: int | None, tracker: LayoutTracker):
        self.reading = reading
        self.token_index = token_index
        self.tracker = tracker

    def __call__(self, stream: EmbeddingStream, t: torch.Tensor | None, info: Known,
                 target: Target, what: str) -> None:
        if stream.error is not None:
            return
        if t is None:
            stream.error = f"{what} has no tensor"
            return
        layout = target.layout or info.layout
        try:
            t = self._batch_first(t.detach(), layout, info.scope, target, what)
        except _Unreadable as e:
            stream.error = str(e)
            return
        layout = CHANNELS_LAST if layout == SEQUENCE_FIRST else layout
        stream.add(t, lambda c: embedding_rows(c, layout, self.reading),
                   positions=layout == CHANNELS_FIRST and t.ndim >= 3 and self.reading == "position")

    def _batch_first(self, t: torch.Tensor, layout: str | None, scope, target: Target, what: str) -> torch.Tensor:
        name, shape = target.row.split(":")[0], tuple(t.shape)
        if layout is None and t.ndim >= 3:
            raise _Unreadable(
                f"the layout of the {what}, shape {shape}, cannot be told (no convention of its module "
                "type, no agreeing evidence inside it); state it: embeddings=['"
                f"{name}@channels_first'] for (N, C, ...), '@channels_last' for (N, ..., C) or "
                "'@sequence_first' for (T, N, C)")
        if layout == SEQUENCE_FIRST:
            if t.ndim != 3:
                raise _Unreadable(f"sequence_first needs a 3-D (T, N, C) tensor, the {what} has shape {shape}")
            t = t.transpose(0, 1)  # (T, N, d) -> (N, T, d)
        if layout == PACKED and self.token_index is not None:
            raise _Unreadable(
                f"the {what} is a PackedSequence, whose data holds every token of every sequence "
                "(no padding): token_index cannot pick one token per sequence; read it without "
                "token_index, or the output of pad_packed_sequence")
        if t.ndim != 3 or layout not in (CHANNELS_LAST, SEQUENCE_FIRST, FEATURES_LAST):
            return t  # channels-first: token_index and masks are about tokens
        if self.token_index is not None:
            self._batch_axis_known(layout, name, shape, "token_index")
            try:
                return t[:, self.token_index]  # (N, d)
            except IndexError:
                raise _Unreadable(f"token_index={self.token_index} is out of range for output of shape "
                                  f"{tuple(t.shape)}") from None
        mask, error = self.tracker.mask_for(scope, tuple(t.shape[:2]))
        if error is not None:
            raise _Unreadable(error)
        if mask is None:
            return t
        self._batch_axis_known(layout, name, shape, "the padding mask")
        return t[mask]  # (tokens, d): padding left out

    @staticmethod
    def _batch_axis_known(layout: str, name: str, shape: tuple, what: str) -> None:
        if layout == FEATURES_LAST:
            raise _Unreadable(
                f"{what} needs the batch axis of this {shape} output, and the model has "
                "batch_first=False layers, so (N, T, d) and (T, N, d) cannot be told apart here; "
                f"state it: embeddings=['{name}@channels_last'] or ['{name}@sequence_first']")


class _FunctionalUses(TorchFunctionMode):
    """Streams the outputs of F.linear / F.convNd calls made with a tracked
    weight outside its own module's forward."""

    def __init__(self, tracked: dict[int, list[Callable]], active: set[int], tracker: LayoutTracker):
        super().__init__()
        self.tracked = tracked
        self.active = active
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _FUNCTIONAL:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            key = id(w)
            if key in self.tracked and key not in self.active:
                x = args[0] if args else kwargs.get("input")
                layout = self.tracker.linear_layout(x, out.ndim) if func is F.linear else CHANNELS_FIRST
                info = Known(layout, self.tracker.info(None).scope)
                for fn in self.tracked[key]:
                    fn(out, info)
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
    axis = data_axis(model)
    tracker = LayoutTracker(model, axis)
    hooks = _Hooks(tracker, _Feeder(reading, token_index, tracker))
    # before any hook exists: a bad `data` must not leave hooks behind
    batches, n_batches = iter_batches(data, batch_size, max_samples, axis)
    hooks.handles += tracker.attach()
    streams = hooks.attach(targets, max_dim, centered)
    was_training = model.training
    model.eval()
    as_input = _input_caster(model, device)
    try:
        with torch.no_grad(), _FunctionalUses(hooks.tracked, hooks.active, tracker):
            for x in tqdm(batches, total=n_batches, desc="embeddings", unit="batch",
                          disable=disable, leave=False):
                x = as_input(x)
                tracker.new_batch(x)
                if isinstance(x, torch.Tensor) and include_data:  # token-id dicts have no rank of their own
                    data_stream = streams.setdefault(DATA_ROW_NAME, EmbeddingStream(max_dim, centered))
                    data_stream.add(x.movedim(axis, 0), lambda c: c.reshape(c.shape[0], -1))
                hooks.current.clear()
                hooks.active.clear()
                _forward(model, x, hooks.current)
    finally:
        for h in hooks.handles:
            h.remove()
        model.train(was_training)
    return streams


class _Hooks:
    """The forward hooks that feed every target's stream, and what they share: the
    targets whose forward is running (``current``, for error messages), the weights
    whose own module is running (``active``), and the streams of each weight's
    functional uses (``tracked``, read by :class:`_FunctionalUses`)."""

    def __init__(self, tracker: LayoutTracker, feed: _Feeder):
        self.tracker, self.feed = tracker, feed
        self.handles: list = []
        self.current: list[Target] = []
        self.tracked: dict[int, list[Callable]] = {}
        self.active: set[int] = set()

    def attach(self, targets: Sequence[Target], max_dim: int, centered: bool) -> dict[str, EmbeddingStream]:
        """One stream per target (row name -> stream), its hooks registered."""
        streams: dict[str, EmbeddingStream] = {}
        for t in targets:
            streams[t.row] = s = EmbeddingStream(max_dim, centered)
            if t.note is not None:
                s.error = t.note
                continue
            self.handles.append(t.module.register_forward_hook(self._on_output(t, s), with_kwargs=True))
            w = getattr(t.module, "weight", None) if t.kind == "output" and t.reader is t.module else None
            own = id(w) if isinstance(w, nn.Parameter) else None
            self.handles.append(t.module.register_forward_pre_hook(self._on_enter(t, own)))
            if own is not None:
                self.handles.append(t.module.register_forward_hook(self._on_exit(own)))
                self.tracked.setdefault(own, []).append(self._functional_feed(s, t))
        return streams

    def _functional_feed(self, stream: EmbeddingStream, target: Target) -> Callable:
        return lambda out, info: self.feed(stream, out, info, target, "output")

    def _on_output(self, target: Target, stream: EmbeddingStream) -> Callable:
        tracker, feed = self.tracker, self.feed

        def hook(module, args, kwargs, output):
            kind = type(module).__name__
            if target.kind == "output":
                feed(stream, *_read(tracker, output), target, f"output of {kind}")
            elif target.kind == "input":
                t, info = _read(tracker, args)
                feed(stream, *(_read(tracker, kwargs) if t is None else (t, info)), target, f"input of {kind}")
            else:
                w, b = qkv_projection(module, target.part, target.head)
                x = _qkv_input(args, kwargs, target.part)
                q = F.linear(x, w, b) if isinstance(x, torch.Tensor) else None
                layout = SEQUENCE_FIRST if q is not None and q.ndim == 3 and not module.batch_first \
                    else CHANNELS_LAST
                info = Known(layout, tracker.info(output_tensor(output)[0]).scope)
                feed(stream, q, info, target, f"{target.part} projection of {kind}")

        return hook

    def _on_enter(self, target: Target, own_weight: int | None) -> Callable:
        def pre(module, args):
            self.current.append(target)
            if own_weight is not None:
                self.active.add(own_weight)

        return pre

    def _on_exit(self, own_weight: int) -> Callable:
        def post(module, args, output):
            self.active.discard(own_weight)

        return post


def _input_caster(model: nn.Module, device) -> Callable:
    """Batch -> the model's input on ``device``: floats in the model's dtype, token ids kept."""
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    in_dtype = p.dtype if p is not None else torch.get_default_dtype()
    takes_ids = any(isinstance(m, nn.Embedding | nn.EmbeddingBag) for m in model.modules())
    return lambda x: _to_device(x, device, in_dtype, takes_ids)


def _forward(model: nn.Module, x, current: list[Target]) -> None:
    """One forward pass; a failure names the layer it happened in and the input's shape."""
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


def _read(tracker: LayoutTracker, obj) -> tuple[torch.Tensor | None, Known]:
    """The tensor a hook reads from ``obj`` and what the tracker knows of it."""
    t, packed = output_tensor(obj)
    info = tracker.info(t)
    return t, Known(PACKED, info.scope) if packed else info


def _describe(module: nn.Module) -> str:
    text = repr(module)
    return text if len(text) < 120 else type(module).__name__
