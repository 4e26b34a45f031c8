"""How a hooked tensor is laid out, decided from what is known about it.

The number of dimensions alone does not say how to read a tensor: a 3-D
output may be (N, C, L) conv features, (N, T, d) tokens or (T, N, d) tokens of
a ``batch_first=False`` layer; a 4-D one (N, C, H, W) or torchvision swin's
(N, H, W, C). :class:`LayoutTracker` hooks every module of the model and, for
each forward call, records the layout of its output from, in this order:

1. the module's documented convention: convs, batch/instance/group norms,
   pooling, padding, upsampling, pixel/channel shuffles, ``Dropout1d/2d/3d``,
   ``Fold`` are channels-first; ``Linear``, ``Bilinear``, ``Embedding``,
   ``LayerNorm``, ``RMSNorm`` (and Hugging Face's ``Conv1D``) keep their input's
   batch axis and put features last; ``MultiheadAttention``, ``Transformer*``
   and ``RNN``/``LSTM``/``GRU`` are sequence-first unless ``batch_first``;
   torchvision's ``Permute`` permutes its input's layout. A subclass that
   overrides ``forward`` (timm's ``LayerNorm2d``) has no convention of its own;
2. the tensor itself: a block or ``Sequential`` returns an output some inner
   module produced (the same object), whose layout is known;
3. the same-shape evidence of the call: the layouts of the outputs made
   inside it (and of its input) that have the output's exact shape, when they
   agree (an activation, a residual ``x + f(x)``, a custom norm).

Where none of these decides, the layout is unknown and a 3-D+ tensor is not
read (the user states it: ``"name@channels_first"``). The batch axis is the
first one (the data's samples) unless a sequence-first module moved it; in a
model that has such a module, a features-last tensor whose batch axis no
evidence fixes is ``features_last``: read whole, but not by ``token_index`` or
a padding mask.

Each call is also given the input sequence it is over, for padding masks of
dict batches (see :meth:`LayoutTracker.mask_for`).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from rankbias.overparam import OverparamConv2d, OverparamLinear

CHANNELS_FIRST = "channels_first"  # (N, C, *spatial): PyTorch's conv convention
CHANNELS_LAST = "channels_last"  # (N, *, d): batch first, features last; (N, T, d) tokens
SEQUENCE_FIRST = "sequence_first"  # (T, N, d): a batch_first=False layer's
FEATURES_LAST = "features_last"  # (..., d): features last, batch axis not known
PACKED = "packed"  # a PackedSequence's data (tokens, d): every token, no padding
#: The layouts a user may state for an embedding (``"name@channels_first"``).
LAYOUTS = (CHANNELS_FIRST, CHANNELS_LAST, SEQUENCE_FIRST)

_M = nn.modules
_CHANNELS_FIRST_TYPES = (
    _M.conv._ConvNd, _M.batchnorm._BatchNorm, _M.instancenorm._InstanceNorm, nn.GroupNorm,
    nn.LocalResponseNorm, nn.CrossMapLRN2d, _M.pooling._MaxPoolNd, _M.pooling._AvgPoolNd,
    _M.pooling._AdaptiveAvgPoolNd, _M.pooling._AdaptiveMaxPoolNd, _M.pooling._LPPoolNd,
    _M.pooling._MaxUnpoolNd, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.FeatureAlphaDropout, nn.Upsample,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.Fold,
    _M.padding._ReflectionPadNd, _M.padding._ReplicationPadNd, _M.padding._ConstantPadNd,
    _M.padding._CircularPadNd,
)
_FEATURES_LAST_TYPES = (nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, nn.RMSNorm)
_SEQUENCE_TYPES = (
    nn.MultiheadAttention, _M.rnn.RNNBase, nn.Transformer, nn.TransformerEncoder,
    nn.TransformerDecoder, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
)
# rankbias's own layers compute through factors (their forward is their own):
_OWN = {OverparamConv2d: CHANNELS_FIRST, OverparamLinear: FEATURES_LAST}
# third-party layers whose convention is documented, by qualified class name
_NAMED = {"transformers.pytorch_utils.Conv1D": FEATURES_LAST}
_PERMUTE = "torchvision.ops.misc.Permute"
# Hugging Face's keyword for the token sequence a call is over
_TOKEN_KWARGS = ("input_ids", "inputs_embeds")


def batch_first(module: nn.Module) -> bool | None:
    """A sequence layer's ``batch_first`` (None for any other module).

    ``TransformerEncoderLayer``/``DecoderLayer`` keep it on their ``self_attn``
    and ``TransformerEncoder``/``Decoder`` take their first layer's, as torch does."""
    if isinstance(module, nn.TransformerEncoder | nn.TransformerDecoder):
        return batch_first(module.layers[0]) if len(module.layers) else None
    if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
        return bool(module.self_attn.batch_first)
    if isinstance(module, _SEQUENCE_TYPES):
        return bool(module.batch_first)
    return None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _stock_forward(module: nn.Module) -> bool:
    """Whether ``module`` runs torch's own forward (a subclass may do anything in its own)."""
    owner = next(c for c in type(module).__mro__ if "forward" in vars(c))
    return owner.__module__.startswith("torch.")


def _convention(module: nn.Module) -> str | None:
    """The layout kind a module's type documents (None: no convention)."""
    for cls, kind in _OWN.items():
        if isinstance(module, cls):
            return kind
    kind = next((_NAMED[n] for n in map(_qualname, type(module).__mro__) if n in _NAMED), None)
    if kind is not None:
        return kind
    if not _stock_forward(module):
        return None
    if isinstance(module, _CHANNELS_FIRST_TYPES):
        return CHANNELS_FIRST
    if isinstance(module, _SEQUENCE_TYPES):
        return CHANNELS_LAST if batch_first(module) else SEQUENCE_FIRST
    if isinstance(module, _FEATURES_LAST_TYPES):
        return FEATURES_LAST
    return None


def permuted(layout: str | None, dims: list[int], ndim: int) -> str | None:
    """The layout of ``t.permute(dims)`` when ``t`` has ``layout`` (None if it is none of ours)."""
    if layout not in (CHANNELS_FIRST, CHANNELS_LAST, SEQUENCE_FIRST) or ndim < 3:
        return None
    batch, chan = {CHANNELS_FIRST: (0, 1), CHANNELS_LAST: (0, ndim - 1), SEQUENCE_FIRST: (1, 2)}[layout]
    dims = [d % ndim for d in dims]
    new_batch, new_chan = dims.index(batch), dims.index(chan)
    if new_batch == 0 and new_chan == 1:
        return CHANNELS_FIRST
    if new_batch == 0 and new_chan == ndim - 1:
        return CHANNELS_LAST
    return SEQUENCE_FIRST if ndim == 3 and (new_batch, new_chan) == (1, 2) else None


def merge(layouts: set[str]) -> str | None:
    """One layout from agreeing evidence; features-last evidence that disagrees
    only on the batch axis is ``features_last``; anything else is unknown."""
    if len(layouts) == 1:
        return next(iter(layouts))
    if layouts and layouts <= {CHANNELS_LAST, SEQUENCE_FIRST, FEATURES_LAST}:
        return FEATURES_LAST
    return None


def output_tensor(obj) -> tuple[torch.Tensor | None, bool]:
    """The tensor a hook reads from a module's output or inputs, and whether it
    is a PackedSequence's data; an LSTM's ``(output, (h, c))`` gives ``output``."""
    if isinstance(obj, PackedSequence):
        return obj.data, True
    if isinstance(obj, torch.Tensor):
        return obj, False
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, list | tuple) else ()
    for o in values:
        if isinstance(o, PackedSequence):
            return o.data, True
        if isinstance(o, torch.Tensor):
            return o, False
    return None, False


@dataclass
class _Frame:
    module: nn.Module
    start: int  # where this call's outputs begin in the log
    in_layout: str | None
    in_shape: tuple | None
    marks: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Known:
    """What the tracker knows of one tensor: its layout (None: unknown) and the
    input sequences (``"input"``, ``"decoder"``, ``"other"``) of the innermost
    call over a sequence when it was made."""

    layout: str | None
    scope: frozenset[str]


class LayoutTracker:
    """Forward hooks on every module of ``model`` that record, one batch at a
    time, the layout of each call's output (see the module docstring) and the
    input sequence it is over.

    ``data_axis``: the samples' axis of a tensor batch (1 for a model that is
    itself a ``batch_first=False`` layer, whose input is then sequence-first).
    Its hooks go first, so that a target's hook finds its tensor already known.
    """

    def __init__(self, model: nn.Module, data_axis: int = 0):
        self.model = model
        self.data_axis = data_axis
        self.sequence_first = any(batch_first(m) is False for m in model.modules())
        self._known: dict[int, tuple[weakref.ref, Known]] = {}
        self._log: list[tuple[tuple[int, ...], str]] = []  # (shape, layout) of outputs, in call order
        self._stack: list[_Frame] = []
        self._groups: dict[int, tuple[torch.Tensor, str]] = {}  # the batch's token tensors
        self._masks: dict[str, torch.Tensor] = {}

    def attach(self) -> list:
        handles = []
        for m in self.model.modules():
            handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True))
            handles.append(m.register_forward_hook(self._post, prepend=True))
        return handles

    def new_batch(self, batch: torch.Tensor | Mapping[str, torch.Tensor]) -> None:
        """Forget the previous batch (its tensors are not kept alive) and read this one's keys.

        A dict batch follows Hugging Face's names: ``attention_mask`` is the
        padding of the input sequence (``input_ids``, ``inputs_embeds``, any
        other key), ``decoder_attention_mask`` that of ``decoder_*`` keys;
        ``labels`` and other masks are over no sequence of the forward pass."""
        self._known.clear()
        self._log.clear()
        self._stack.clear()
        self._groups.clear()
        self._masks = {}
        if isinstance(batch, torch.Tensor):
            if self.data_axis == 1 and batch.ndim in (2, 3):
                self._remember(batch, Known(SEQUENCE_FIRST, frozenset()))
            return
        for k, v in batch.items():
            if not isinstance(v, torch.Tensor):
                continue
            group = "decoder" if k.startswith("decoder_") else "input"
            if k in ("attention_mask", "decoder_attention_mask"):
                if v.ndim == 2:
                    self._masks[group] = v.bool()
            elif "mask" not in k and k != "labels":
                self._groups[id(v)] = (v, group)

    # ------------------------------------------------------------ queries

    def info(self, t: torch.Tensor | None) -> Known:
        """What is known of ``t``: its record, else the current call's sequence and no layout."""
        got = self._known.get(id(t)) if t is not None else None
        if got is not None and got[0]() is t:
            return got[1]
        return Known(None, self._scope(None))

    def linear_layout(self, x: torch.Tensor | None, ndim: int) -> str | None:
        """The layout of a features-last map (F.linear, a Linear) of ``x``: ``x``'s batch axis."""
        return self._features_last(self.info(x).layout, ndim)

    def mask_for(self, scope: frozenset[str], lead: tuple[int, ...]) -> tuple[torch.Tensor | None, str | None]:
        """(the padding mask of a batch-first (N, T, d) tensor made over ``scope``, or an error).

        The mask of a sequence applies only inside a call that received that
        sequence's tensor (``model(**batch)``, a Hugging Face encoder given
        ``input_ids``); a decoder given ``decoder_input_ids`` without
        ``decoder_attention_mask`` has no stated padding and is read whole. A
        call given another token sequence (ids the model derived itself) or
        several is refused when a mask has its (N, T): it cannot be told
        whether that mask is its padding."""
        if len(scope) == 1 and next(iter(scope)) in ("input", "decoder"):
            m = self._masks.get(next(iter(scope)))
            return (m if m is not None and tuple(m.shape) == lead else None), None
        clash = [g for g, m in self._masks.items() if tuple(m.shape) == lead]
        if not clash:
            return None, None
        over = "a token sequence not in the batch" if scope == {"other"} else \
            f"the sequences {sorted(scope)}" if scope else "no sequence of the batch"
        return None, (
            f"cannot tell whether the batch's padding mask belongs to this output: its (N, T) = {lead} "
            f"is the mask's, but it is computed over {over}; pass decoder_input_ids and "
            "decoder_attention_mask for a decoder, or use token_index")

    # ------------------------------------------------------------ hooks

    def _remember(self, t: torch.Tensor, known: Known) -> None:
        # a weak reference: the record must not keep a batch's activations alive
        self._known[id(t)] = (weakref.ref(t), known)

    def _scope(self, frame: _Frame | None) -> frozenset[str]:
        frames = ([frame] if frame is not None else []) + self._stack[::-1]
        return next((frozenset(f.marks) for f in frames if f.marks), frozenset())

    def _features_last(self, in_layout: str | None, ndim: int) -> str | None:
        if in_layout in (CHANNELS_LAST, SEQUENCE_FIRST):
            return in_layout
        if in_layout == CHANNELS_FIRST and ndim >= 3:
            return None  # a map over the last spatial axis of an image: no features axis
        # inside a sequence layer (a TransformerEncoderLayer's norms and linears) its batch_first holds
        enclosing = next((batch_first(f.module) for f in self._stack[::-1]
                          if batch_first(f.module) is not None), None)
        if enclosing is not None:
            return CHANNELS_LAST if enclosing else SEQUENCE_FIRST
        return FEATURES_LAST if self.sequence_first else CHANNELS_LAST

    def _evidence(self, start: int, shape: tuple[int, ...], extra: set[str]) -> str | None:
        return merge({lay for s, lay in self._log[start:] if s == shape} | extra)

    def _pre(self, module, args, kwargs):
        t, _ = output_tensor(args)
        if t is None:
            t, _ = output_tensor(kwargs)
        layout = None
        if t is not None:
            layout = self.info(t).layout
            if layout is None and self._stack:  # made in the caller's own code: the caller's evidence
                parent = self._stack[-1]
                extra = {parent.in_layout} if parent.in_layout and parent.in_shape == tuple(t.shape) else set()
                layout = self._evidence(parent.start, tuple(t.shape), extra)
        frame = _Frame(module, len(self._log), layout, tuple(t.shape) if t is not None else None)
        self._mark(frame, args, kwargs)
        self._stack.append(frame)
        if t is not None and self.info(t).layout is None:
            self._remember(t, Known(layout, self._scope(None)))

    def _mark(self, frame: _Frame, args, kwargs) -> None:
        for v in (*args, *kwargs.values()):
            got = self._groups.get(id(v)) if isinstance(v, torch.Tensor) else None
            if got is not None and got[0] is v:
                frame.marks.add(got[1])
        if self._groups and any(isinstance(kwargs.get(k), torch.Tensor) and id(kwargs[k]) not in self._groups
                                for k in _TOKEN_KWARGS):
            frame.marks.add("other")

    def _post(self, module, args, output):
        frame = None
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i].module is module:
                frame = self._stack[i]
                del self._stack[i:]  # calls that raised inside (and were caught) leave no frame
                break
        t, packed = output_tensor(output)
        if t is None:
            return
        layout = PACKED if packed else self._output_layout(module, frame, t)
        got = self._known.get(id(t))
        if got is None or got[0]() is not t:
            self._remember(t, Known(layout, self._scope(frame)))
        elif layout is not None and (got[1].layout is None or _convention(module) is not None):
            # returned as an inner call made it: that call's sequence; a layer's own
            # convention (a TransformerEncoder's batch_first) outranks its inner modules'
            self._remember(t, Known(layout, got[1].scope))
        if layout is not None:
            self._log.append((tuple(t.shape), layout))

    def _output_layout(self, module: nn.Module, frame: _Frame | None, t: torch.Tensor) -> str | None:
        kind = _convention(module)
        in_layout = frame.in_layout if frame is not None else None
        if kind == FEATURES_LAST:
            return self._features_last(in_layout, t.ndim)
        if kind is not None:
            return kind
        if isinstance(module, nn.Embedding) and frame is not None and frame.in_shape is not None \
                and tuple(t.shape) == (*frame.in_shape, module.embedding_dim):
            return self._features_last(in_layout, t.ndim)  # a lookup with its own forward (a scale)
        if _qualname(type(module)) == _PERMUTE:
            return permuted(in_layout, list(module.dims), t.ndim)
        known = self.info(t).layout
        if known is not None or frame is None:
            return known
        extra = {in_layout} if in_layout is not None and frame.in_shape == tuple(t.shape) else set()
        return self._evidence(frame.start, tuple(t.shape), extra)
