"""Linear over-parameterisation: expand any model's Linear/Conv2d layers into
products of linear maps, train, then collapse exactly.

Huh, Mobahi, Zhang, Cheung, Agrawal, Isola (2021/TMLR 2023), "The Low-Rank
Simplicity Bias in Deep Networks", sec. 6 (and Guo et al. 2020, "ExpandNets"):
replacing each linear layer by a product of linear layers (no nonlinearity in
between) does not change what the network can represent, but changes what
gradient descent finds (lower effective rank), and can improve generalisation.
After training the product collapses back into one layer of the original
architecture, so inference costs nothing extra.

- ``nn.Linear(i, o)`` with ``depth`` L becomes ``W_L ... W_1`` with
  ``W_1: h x i``, ``W_2..W_{L-1}: h x h``, ``W_L: o x h``, ``h = round(width * o)``.
- ``nn.Conv2d`` (k x k, any stride/padding/padding_mode/dilation/groups) becomes
  a k x k conv with the original settings and ``h`` output channels, then
  ``L - 1`` grouped 1x1 convs (same ``groups``, stride 1, no padding). Because
  the 1x1 factors are block-diagonal per group, the product is again a grouped
  k x k conv: ``K_e[g] = M_L[g] ... M_2[g] K_1[g]`` per group ``g``. The hidden
  width is rounded to a multiple of ``groups``.
- The bias lives on the last factor only by default (a bias on an inner factor is
  mapped through the later factors into the same output bias); ``factor_bias=True``
  puts one on every factor, as the authors' code does, and the collapsed bias folds
  them: ``b = b_L + W_L (b_{L-1} + ... + W_2 b_1)``.

Padding is applied to the input of the first factor only, and every factor is
linear per spatial position after it, so the composition is exact for every
padding mode (zeros, reflect, replicate, circular) and for "same"/"valid".

Forward forms (``mode``):

- ``"kernel"``: build the collapsed kernel from the factors (a chain
  of small matmuls, independent of the batch) and run one conv/linear. Autograd
  goes through the chain, so the gradients are those of the factored
  parameterisation.
- ``"sequential"``: run the factors one after another (what the authors' code
  does); same function and gradients up to rounding.
- ``"auto"`` (default): per call, count the multiply-adds of both forms for the actual
  input shape and run the cheaper one.

``weight`` (and ``bias`` when more than one factor has one) is computed from the factors
at every read: reading it is exact and differentiable, writing to it raises
:class:`~rankbias.errors.UnsupportedError` (:mod:`rankbias.overparam._computed`). A
layer's parameters and buffers other than weight/bias are carried under their own names.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from rankbias.errors import InvalidParameterError, UnsupportedError
from rankbias.overparam._computed import guard
from rankbias.overparam.factorize import _chain, _init_factors

__all__ = ["OverparamConv1D", "OverparamConv2d", "OverparamLinear"]

Mode = Literal["kernel", "sequential", "auto"]
ExpandLayers = Literal["all", "conv", "linear"]
FactorInit = Literal["fresh", "preserve"]
MODES: tuple[Mode, ...] = get_args(Mode)
LAYERS: tuple[ExpandLayers, ...] = get_args(ExpandLayers)
INITS: tuple[FactorInit, ...] = get_args(FactorInit)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidParameterError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    return mode


def _check_depth_width(depth, width) -> tuple[int, float]:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InvalidParameterError(f"depth must be an int >= 1 (1 = no expansion); got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, int | float) or not math.isfinite(width) or width <= 0:
        raise InvalidParameterError(f"width must be a finite number > 0 (hidden = round(width * out)); got {width!r}")
    return depth, float(width)


def _hidden(width: float, out: int, groups: int = 1) -> int:
    """round(width * out), at least one channel per group, a multiple of groups."""
    per_group = max(1, round(width * out / groups))
    return per_group * groups


# ------------------------------------------------------------------------ modules


def _template(layer: nn.Module) -> nn.Module:
    """A shallow copy of ``layer`` whose parameters and buffers are meta tensors: its class
    and attributes, none of its memory. :meth:`_Expanded.fuse` fills every one of them (the
    collapsed weight and bias, the carried state), so a layer collapses to its own class
    (``nn.Linear``, a subclass without its own forward, Hugging Face's ``Conv1D``), not to a
    look-alike."""
    t = copy.copy(layer)
    for k, v in list(vars(t).items()):  # own hook/state dicts and buffer-name sets, not the original's
        if isinstance(v, dict | set):
            vars(t)[k] = type(v)(v)
    t._parameters = {
        k: None if v is None else nn.Parameter(torch.empty_like(v, device="meta"), v.requires_grad)
        for k, v in layer._parameters.items()
    }
    t._buffers = {k: None if v is None else torch.empty_like(v, device="meta")
                  for k, v in layer._buffers.items()}
    return t


_KNOWN = ("weight", "bias")  # the state the factors replace


@functools.cache
def _reserved(cls: type) -> frozenset[str]:
    """Every attribute name an expanded module of ``cls`` uses itself: a carried
    parameter or buffer must not shadow one."""
    shape = (1, 1, 1) if issubclass(cls, OverparamConv2d) else (1, 1)  # (in, out[, kernel])
    proto = cls(*shape, depth=2, device="meta")
    return frozenset(dir(proto)) | frozenset(vars(proto))


def unsupported_state(layer: nn.Module, cls: type) -> list[str]:
    """Why ``layer``'s state cannot be expanded as ``cls`` exactly (empty: it can).

    The factors replace ``weight`` and ``bias``; every other parameter and buffer is
    carried through expansion and collapse under its own name. Refused: a weight that is
    not a parameter, a bias held as a buffer, submodules, a ``get_extra_state``
    override, and a parameter or buffer whose name the expanded module uses itself."""
    why = []
    if not isinstance(layer._parameters.get("weight"), nn.Parameter):
        why.append("its weight is not a registered parameter")
    if "bias" in layer._buffers:
        why.append("its bias is a buffer, not a parameter")
    if layer._modules:
        why.append(f"submodule(s) {sorted(layer._modules)}")
    if type(layer).get_extra_state is not nn.Module.get_extra_state:
        why.append("extra state (get_extra_state)")
    extra = [n for n in (*layer._parameters, *layer._buffers) if n not in _KNOWN]
    clash = sorted(n for n in extra if n in _reserved(cls))
    if clash:
        why.append(f"parameter/buffer name(s) {clash} clash with {cls.__name__}'s own attributes")
    return why


def _carry_state(new: _Expanded, layer: nn.Module) -> None:
    """Register ``layer``'s parameters and buffers other than weight/bias on ``new`` (the
    same objects, same names, same persistence), or refuse."""
    why = unsupported_state(layer, type(new))
    if why:
        raise UnsupportedError(
            f"cannot expand {type(layer).__name__}: {'; '.join(why)}. An expanded layer replaces "
            "weight and bias by factors and carries every other parameter and buffer; put the "
            "layer in `ignore`")
    for name, p in layer._parameters.items():
        if name not in _KNOWN:
            new.register_parameter(name, p)
    for name, b in layer._buffers.items():
        new.register_buffer(name, b, persistent=name not in layer._non_persistent_buffers_set)


class _Expanded(nn.Module):
    """Shared logic of the expanded modules; ``factors`` is an nn.ModuleList."""

    depth: int
    mode: str
    factors: nn.ModuleList
    _plain: nn.Module | None

    def __init__(self, depth: int, width: float, mode: str):
        super().__init__()
        self.depth, self.width = _check_depth_width(depth, width)
        self.mode = _check_mode(mode)
        # the original layer's template, set by from_*(); not a submodule: no state
        object.__setattr__(self, "_plain", None)

    def _attach(self, layer: nn.Module) -> None:
        """Keep ``layer``'s class and attributes (as a template) and carry its state other
        than weight/bias, or refuse (:func:`unsupported_state`)."""
        _carry_state(self, layer)
        object.__setattr__(self, "_plain", _template(layer))  # not a submodule: no state

    def _matrices(self) -> list[torch.Tensor]:
        """The factors as (groups, out_i/groups, in_i/groups) matrices, input side first."""
        raise NotImplementedError

    def _collapsed_matrix(self) -> torch.Tensor:
        return _chain(self._matrices())  # (G, out/G, fan_in/G)

    def _layout(self, matrix: torch.Tensor) -> torch.Tensor:
        """The collapsed matrix (G, out/G, fan_in/G) in the original layer's weight layout."""
        raise NotImplementedError

    def _collapsed_bias(self) -> torch.Tensor | None:
        """Every factor's bias mapped through the factors after it,
        ``b = b_L + W_L (b_{L-1} + W_{L-1} (... b_1))``."""
        biases = [f.bias for f in self.factors]
        if all(b is None for b in biases):
            return None
        mats = self._matrices()
        G = mats[0].shape[0]
        b = None
        for M, bi in zip(mats, biases):
            if b is not None:
                b = (M @ b.reshape(G, -1, 1)).reshape(-1)
            if bi is not None:
                b = bi if b is None else b + bi
        return b

    def _guard(self, t: torch.Tensor | None, what: str) -> torch.Tensor | None:
        # a computed tensor refuses writes; the factors' own parameters (depth 1, or the
        # bias when only the last factor has one) take them, so they stay writable
        return guard(t, f"{type(self).__name__}.{what}", tuple(self.factors.parameters()))

    @property
    def weight(self) -> torch.Tensor:
        """The collapsed weight in the original layer's layout, computed from the factors
        at every read (differentiable). Writing to it is an error (it would change a copy);
        change ``factors`` instead."""
        return self._guard(self._layout(self._collapsed_matrix()), "weight")

    @property
    def bias(self) -> torch.Tensor | None:
        """The collapsed bias (differentiable); the last factor's own bias when it is the
        only one (then writes to it change the layer), else computed and read-only."""
        return self._guard(self._collapsed_bias(), "bias")

    def __setattr__(self, name: str, value) -> None:
        if name in _KNOWN:  # would shadow the collapsed property (or raise a bare KeyError)
            raise UnsupportedError(
                f"{type(self).__name__}.{name} is computed from the layer's factors and cannot be "
                "assigned (tied weights cannot be expanded either); set the factors "
                "(layer.factors[i].weight), or collapse the model (rankbias.collapse), assign "
                "to the plain layer, and expand it again with init='preserve'")
        super().__setattr__(name, value)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, hidden={self.hidden}, mode={self.mode!r}"

    def fuse(self) -> nn.Module:
        """The plain layer this module collapses to: a new module of the original
        layer's class, detached from the factors, holding copies of the carried parameters
        and buffers. This is timm's ``fuse()`` contract (``timm.utils.reparameterize_model``
        replaces a child by ``child.fuse()``)."""
        w, b = self._layout(self._collapsed_matrix()).detach(), self._collapsed_bias()
        plain = copy.deepcopy(self._plain) if self._plain is not None else self._new_plain(b is not None)
        frozen_w = all(not f.weight.requires_grad for f in self.factors)
        plain.weight = nn.Parameter(w.clone(), requires_grad=not frozen_w)
        if b is not None:
            grads = [f.bias.requires_grad for f in self.factors if f.bias is not None]
            plain.bias = nn.Parameter(b.detach().clone(), requires_grad=any(grads))
        for name, p in plain._parameters.items():
            if name not in _KNOWN and p is not None:
                mine = self._parameters[name]
                plain._parameters[name] = nn.Parameter(mine.detach().clone(), mine.requires_grad)
        for name, v in plain._buffers.items():
            if v is not None:
                plain._buffers[name] = self._buffers[name].detach().clone()
        left = [n for n, t in (*plain.named_parameters(), *plain.named_buffers()) if t.is_meta]
        if left and not w.is_meta:  # the template's state must all have been filled
            raise RuntimeError(f"fuse: {type(plain).__name__} state {left} left on the meta device")
        plain.train(self.training)
        return plain

    def _new_plain(self, bias: bool) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode == "auto":
            seq, ker = self.flops(x.shape)
            mode = "sequential" if seq < ker else "kernel"
        if mode == "sequential":
            for f in self.factors:
                x = f(x)
            return x
        return self._plain_forward(x, self._collapsed_matrix(), self._collapsed_bias())


class OverparamLinear(_Expanded):
    """``nn.Linear(in_features, out_features)`` as a product of ``depth`` linear maps.

    ``weight`` / ``bias`` are the collapsed (out_features, in_features) matrix and
    (out_features,) vector, computed from the factors (differentiable).
    ``factor_bias``: a bias on every factor (the authors' layout) instead of the
    last one only; the collapsed bias folds them.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        depth: int = 2, width: float = 1.0, mode: Mode = "auto", factor_bias: bool = False,
        device=None, dtype=None,
    ):
        super().__init__(depth, width, mode)  # validates them
        self.in_features, self.out_features = in_features, out_features
        self.hidden = _hidden(self.width, out_features) if depth > 1 else out_features
        dims = [in_features] + [self.hidden] * (depth - 1) + [out_features]
        kw = {"device": device, "dtype": dtype}
        self.factors = nn.ModuleList(
            nn.Linear(a, b, bias=bias and (factor_bias or i == depth - 1), **kw)
            for i, (a, b) in enumerate(zip(dims, dims[1:]))
        )

    def _matrices(self):
        return [f.weight.unsqueeze(0) for f in self.factors]

    def _layout(self, matrix):
        return matrix[0]  # (out, in)

    def _plain_forward(self, x, matrix, bias):
        return F.linear(x, matrix[0], bias)

    def flops(self, shape: Sequence[int]) -> tuple[int, int]:
        """Multiply-adds of the (sequential, kernel) forward for an input of ``shape``."""
        rows = math.prod(shape[:-1])
        ws = [tuple(f.weight.shape) for f in self.factors]  # (out_i, in_i)
        seq = sum(rows * o * i for o, i in ws)
        # chain from the output side: (o x h)(h x h)...(h x in)
        chain, rows_c = 0, ws[-1][0]
        for o, i in reversed(ws[:-1]):
            chain += rows_c * o * i
        ker = chain + rows * self.out_features * self.in_features
        return seq, ker

    def _new_plain(self, bias: bool) -> nn.Linear:
        w = self.factors[0].weight
        return nn.Linear(self.in_features, self.out_features, bias=bias, device="meta",
                         dtype=w.dtype)

    @classmethod
    def from_linear(cls, layer: nn.Linear, *, depth: int = 2, width: float = 1.0,
                    init: str = "fresh", mode: Mode = "auto", factor_bias: bool = False,
                    generator: torch.Generator | None = None) -> OverparamLinear:
        """Expand ``layer``; ``init`` "fresh" or "preserve" (see :func:`overparameterize`)."""
        w = layer.weight
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, depth=depth,
                  width=width, mode=mode, factor_bias=factor_bias, device=w.device, dtype=w.dtype)
        new._attach(layer)
        _init_factors(new, w.detach().unsqueeze(0), layer, init, generator, fan_mode="fan_in")
        return new


class OverparamConv1D(OverparamLinear):
    """Hugging Face's ``Conv1D`` (GPT-2's attention and MLP layers: ``y = x W + b``
    with ``W`` stored as (in, out)) as a product of ``depth`` linear maps.

    Same factors as :class:`OverparamLinear`; ``weight`` is the collapsed matrix in
    ``Conv1D``'s (in, out) layout, and :meth:`fuse` returns a ``Conv1D``.
    """

    def _layout(self, matrix):
        return matrix[0].T  # (in, out), Conv1D's layout

    @property
    def nx(self) -> int:
        return self.in_features

    @property
    def nf(self) -> int:
        return self.out_features

    @classmethod
    def from_conv1d(cls, layer: nn.Module, *, depth: int = 2, width: float = 1.0,
                    init: str = "fresh", mode: Mode = "auto", factor_bias: bool = False,
                    generator: torch.Generator | None = None) -> OverparamConv1D:
        """Expand a Hugging Face ``Conv1D`` (weight (nx, nf) = (in, out))."""
        w = layer.weight  # (in, out)
        nx, nf = w.shape
        new = cls(nx, nf, layer.bias is not None, depth=depth, width=width, mode=mode,
                  factor_bias=factor_bias, device=w.device, dtype=w.dtype)
        new._attach(layer)
        _init_factors(new, w.detach().T.unsqueeze(0), layer, init, generator, fan_mode="fan_in")
        return new


class OverparamConv2d(_Expanded):
    """``nn.Conv2d`` as a k x k conv (h channels) followed by ``depth - 1`` grouped 1x1 convs.

    Every setting of the original (stride, padding incl. "same"/"valid",
    padding_mode, dilation, groups, bias) is kept: the first factor carries
    them, the 1x1 factors are grouped like the original, so the collapsed
    ``weight`` (out, in/groups, kh, kw) and ``bias`` define a conv of the
    original architecture. ``factor_bias``: a bias on every factor (the authors'
    layout); exact for every padding mode, since padding acts before the first
    factor's bias is added.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        depth: int = 2, width: float = 1.0, mode: Mode = "auto", factor_bias: bool = False,
        device=None, dtype=None,
    ):
        super().__init__(depth, width, mode)  # validates them
        kw = {"device": device, "dtype": dtype}
        self.hidden = _hidden(self.width, out_channels, groups) if depth > 1 else out_channels
        first = nn.Conv2d(in_channels, self.hidden, kernel_size, stride, padding, dilation,
                          groups, bias=bias and (factor_bias or depth == 1),
                          padding_mode=padding_mode, **kw)
        rest = [
            nn.Conv2d(self.hidden, out_channels if i == depth - 1 else self.hidden, 1,
                      groups=groups, bias=bias and (factor_bias or i == depth - 1), **kw)
            for i in range(1, depth)
        ]
        self.factors = nn.ModuleList([first, *rest])
        # mirror nn.Conv2d's attributes so code that inspects convs keeps working
        self.in_channels, self.out_channels = in_channels, out_channels
        for name in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
            setattr(self, name, getattr(first, name))

    def _matrices(self):
        G = self.groups
        mats = []
        for f in self.factors:
            w = f.weight  # (o_i, in_i/G, kh, kw)
            mats.append(w.reshape(G, w.shape[0] // G, -1))
        return mats

    def _layout(self, matrix):
        _, cin, kh, kw = self.factors[0].weight.shape
        return matrix.reshape(self.out_channels, cin, kh, kw)

    def _plain_forward(self, x, matrix, bias):
        # nn.Conv2d's own padding logic (padding modes, "same"), applied to the collapsed kernel
        return self.factors[0]._conv_forward(x, self._layout(matrix), bias)

    def flops(self, shape: Sequence[int]) -> tuple[int, int]:
        """Multiply-adds of the (sequential, kernel) forward for an input of ``shape`` (N, C, H, W)."""
        first = self.factors[0]
        n = shape[0] if len(shape) == 4 else 1
        Ho, Wo = (_out_size(s, first, d) for d, s in enumerate(shape[-2:]))
        P = n * Ho * Wo
        G = self.groups
        fan = (self.in_channels // G) * first.kernel_size[0] * first.kernel_size[1]
        seq = P * self.hidden * fan + sum(
            P * f.out_channels * (f.in_channels // G) for f in self.factors[1:]
        )
        chain, rows = 0, self.out_channels // G
        for f in reversed(self.factors[1:-1]):  # (o x h)(h x h)...
            chain += G * rows * (f.out_channels // G) * (f.in_channels // G)
        if self.depth > 1:
            chain += G * rows * (self.hidden // G) * fan
        ker = chain + P * self.out_channels * fan
        return seq, ker

    def _new_plain(self, bias: bool) -> nn.Conv2d:
        f = self.factors[0]
        return nn.Conv2d(self.in_channels, self.out_channels, f.kernel_size, f.stride, f.padding,
                         f.dilation, f.groups, bias=bias, padding_mode=f.padding_mode,
                         device="meta", dtype=f.weight.dtype)

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, *, depth: int = 2, width: float = 1.0,
                  init: str = "fresh", mode: Mode = "auto", factor_bias: bool = False,
                  generator: torch.Generator | None = None) -> OverparamConv2d:
        """Expand ``layer``; ``init`` "fresh" or "preserve" (see :func:`overparameterize`)."""
        w = layer.weight
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                  layer.padding_mode, depth=depth, width=width, mode=mode,
                  factor_bias=factor_bias, device=w.device, dtype=w.dtype)
        new._attach(layer)
        G = layer.groups
        W = w.detach().reshape(G, layer.out_channels // G, -1)  # (G, out/G, in/G*kh*kw)
        _init_factors(new, W, layer, init, generator, fan_mode="fan_out")
        return new


def _out_size(size: int, conv: nn.Conv2d, dim: int) -> int:
    if conv.padding == "same":
        return size
    pad = 0 if conv.padding == "valid" else conv.padding[dim]
    k, s, d = conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim]
    return max((size + 2 * pad - d * (k - 1) - 1) // s + 1, 0)
