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
- The bias lives on the last factor only (a bias on an inner factor would be
  mapped through the later factors and add nothing expressible).

Padding is applied to the input of the first factor only, and every factor is
linear per spatial position after it, so the composition is exact for every
padding mode (zeros, reflect, replicate, circular) and for "same"/"valid".

Forward forms (``mode``):

- ``"kernel"`` (default): build the collapsed kernel from the factors (a chain
  of small matmuls, independent of the batch) and run one conv/linear. Autograd
  goes through the chain, so the gradients are those of the factored
  parameterisation.
- ``"sequential"``: run the factors one after another (what the authors' code
  does); same function and gradients up to rounding.
- ``"auto"``: per call, count the multiply-adds of both forms for the actual
  input shape and run the cheaper one.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OverparamConv2d",
    "OverparamLinear",
    "collapse",
    "expanded_modules",
    "overparameterize",
    "set_forward_mode",
]

Mode = Literal["kernel", "sequential", "auto"]
MODES = ("kernel", "sequential", "auto")
LAYERS = ("all", "conv", "linear")
INITS = ("fresh", "preserve")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    return mode


def _check_depth_width(depth, width) -> tuple[int, float]:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1 (1 = no expansion); got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, int | float) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a finite number > 0 (hidden = round(width * out)); got {width!r}")
    return depth, float(width)


def _hidden(width: float, out: int, groups: int = 1) -> int:
    """round(width * out), at least one channel per group, a multiple of groups."""
    per_group = max(1, round(width * out / groups))
    return per_group * groups


# ------------------------------------------------------------------ factorisation


def _balanced_factors(
    W: torch.Tensor, depth: int, hidden: int, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """Factors F_1 (G, h, n), F_2..F_{L-1} (G, h, h), F_L (G, m, h) with F_L ... F_1 = W (G, m, n).

    Balanced split from the eigendecomposition of the smaller Gram matrix
    (LAPACK's SVD of a 512 x 4608 matrix is ~10x slower): for m <= n,
    W W^T = U diag(s^2) U^T and, with d = s^(1/L) (floored to stay invertible),
    F_L = U d, F_i = diag(d), F_1 = d^(1-L) U^T W, so the product is U U^T W = W
    whatever d is; each factor carries about s^(1/L). (m > n: the mirror image
    with W^T W.) When h > r = min(m, n), the extra hidden units are not left at
    zero (a zero block is a saddle gradient descent never leaves): F_1 gets
    random extra rows and the middle factors a random orthogonal extra block,
    while F_L's columns for them are zero. The product is unchanged, and F_L's
    zero columns receive gradient at once, so the extra capacity is trainable.
    """
    G, m, n = W.shape
    r = min(m, n)
    if hidden < r:
        raise ValueError(
            f"init='preserve' needs hidden width >= min(out, fan_in) = {r} per group to "
            f"factorise the weight exactly; got {hidden} (raise width)"
        )
    dtype, device = W.dtype, W.device
    W64 = W.to(torch.float64)
    wide = m <= n
    gram = W64 @ W64.mT if wide else W64.mT @ W64  # (G, r, r)
    lam, Q = torch.linalg.eigh(gram)  # ascending
    s = lam.clamp_min(0).sqrt()
    floor = s.amax(-1, keepdim=True).clamp_min(1e-300) * 1e-8
    d = s.clamp_min(floor) ** (1.0 / depth)  # (G, r)
    if wide:  # W = U (U^T W): F_L = U d, F_1 = d^(1-L) U^T W
        last_r = Q * d.unsqueeze(-2)
        first_r = (d ** (1 - depth)).unsqueeze(-1) * (Q.mT @ W64)
    else:  # W = (W V) V^T: F_1 = d V^T, F_L = W V d^(1-L)
        first_r = d.unsqueeze(-1) * Q.mT
        last_r = (W64 @ Q) * (d ** (1 - depth)).unsqueeze(-2)
    root = d
    extra = hidden - r
    scale = root.mean(-1, keepdim=True)  # (G, 1): typical factor gain

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, device="cpu").to(device)

    if depth == 1:
        return [W.clone()]
    first = torch.zeros(G, hidden, n, dtype=torch.float64, device=device)
    first[:, :r] = first_r
    if extra:
        # spectral norm of the random block ~ the typical gain (Gaussian: ~sqrt(n) + sqrt(extra))
        first[:, r:] = randn(G, extra, n) * (scale.unsqueeze(-1) / (math.sqrt(n) + math.sqrt(extra)))
    mids = []
    for _ in range(depth - 2):
        M = torch.zeros(G, hidden, hidden, dtype=torch.float64, device=device)
        M[:, :r, :r] = torch.diag_embed(root)
        if extra:
            Qx, _ = torch.linalg.qr(randn(G, extra, extra))
            M[:, r:, r:] = Qx * scale.unsqueeze(-1)
        mids.append(M)
    last = torch.zeros(G, m, hidden, dtype=torch.float64, device=device)
    last[:, :, :r] = last_r
    return [f.to(dtype) for f in (first, *mids, last)]


def _chain(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """mats[-1] @ ... @ mats[0], multiplied from the output side so the inner
    products stay (m x h), never (h x n) with a large n = fan_in * k * k."""
    out = mats[-1]
    for M in reversed(mats[:-1]):
        out = out @ M
    return out


# ------------------------------------------------------------------------ modules


class _Expanded(nn.Module):
    """Shared logic of the expanded modules; ``factors`` is an nn.ModuleList."""

    depth: int
    mode: str
    factors: nn.ModuleList

    @property
    def bias(self) -> torch.Tensor | None:
        """The collapsed bias (the last factor's), differentiable."""
        return self.factors[-1].bias

    def extra_repr(self) -> str:
        return f"depth={self.depth}, hidden={self.hidden}, mode={self.mode!r}"

    def reparameterize(self) -> nn.Module:
        """The plain layer this module collapses to (timm's ``reparameterize``
        convention; a new module, detached from the factors)."""
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
        return self._plain_forward(x, self.weight, self.bias)


class OverparamLinear(_Expanded):
    """``nn.Linear(in_features, out_features)`` as a product of ``depth`` linear maps.

    ``weight`` / ``bias`` are the collapsed (out_features, in_features) matrix and
    (out_features,) vector, computed from the factors (differentiable).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        depth: int = 2,
        width: float = 1.0,
        mode: Mode = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        depth, width = _check_depth_width(depth, width)
        self.in_features, self.out_features = in_features, out_features
        self.depth, self.width, self.mode = depth, width, _check_mode(mode)
        self.hidden = _hidden(width, out_features) if depth > 1 else out_features
        dims = [in_features] + [self.hidden] * (depth - 1) + [out_features]
        kw = {"device": device, "dtype": dtype}
        self.factors = nn.ModuleList(
            nn.Linear(a, b, bias=bias and i == depth - 1, **kw)
            for i, (a, b) in enumerate(zip(dims, dims[1:]))
        )

    @property
    def weight(self) -> torch.Tensor:
        return _chain([f.weight for f in self.factors])  # (out, in)

    def _plain_forward(self, x, weight, bias):
        return F.linear(x, weight, bias)

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

    def reparameterize(self) -> nn.Linear:
        w, b = self.weight.detach(), self.bias
        lin = nn.Linear(self.in_features, self.out_features, bias=b is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b.detach())
        return lin

    @classmethod
    def from_linear(cls, layer: nn.Linear, *, depth: int = 2, width: float = 1.0,
                    init: str = "fresh", mode: Mode = "auto",
                    generator: torch.Generator | None = None) -> OverparamLinear:
        """Expand ``layer``; ``init`` "fresh" or "preserve" (see :func:`overparameterize`)."""
        w = layer.weight
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, depth=depth,
                  width=width, mode=mode, device=w.device, dtype=w.dtype)
        new._init(w.detach().unsqueeze(0), layer.bias, init, generator)
        return new

    def _init(self, W: torch.Tensor, bias, init: str, generator) -> None:
        _init_factors(self, W, bias, init, generator)


class OverparamConv2d(_Expanded):
    """``nn.Conv2d`` as a k x k conv (h channels) followed by ``depth - 1`` grouped 1x1 convs.

    Every setting of the original (stride, padding incl. "same"/"valid",
    padding_mode, dilation, groups, bias) is kept: the first factor carries
    them, the 1x1 factors are grouped like the original, so the collapsed
    ``weight`` (out, in/groups, kh, kw) and ``bias`` define a conv of the
    original architecture.
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
        depth: int = 2,
        width: float = 1.0,
        mode: Mode = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        depth, width = _check_depth_width(depth, width)
        self.depth, self.width, self.mode = depth, width, _check_mode(mode)
        kw = {"device": device, "dtype": dtype}
        self.hidden = _hidden(width, out_channels, groups) if depth > 1 else out_channels
        first = nn.Conv2d(in_channels, self.hidden, kernel_size, stride, padding, dilation,
                          groups, bias=bias and depth == 1, padding_mode=padding_mode, **kw)
        rest = [
            nn.Conv2d(self.hidden, out_channels if i == depth - 1 else self.hidden, 1,
                      groups=groups, bias=bias and i == depth - 1, **kw)
            for i in range(1, depth)
        ]
        self.factors = nn.ModuleList([first, *rest])
        # mirror nn.Conv2d's attributes so code that inspects convs keeps working
        self.in_channels, self.out_channels = in_channels, out_channels
        for name in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
            setattr(self, name, getattr(first, name))

    @property
    def weight(self) -> torch.Tensor:
        G = self.groups
        K = self.factors[0].weight  # (h, in/G, kh, kw)
        if self.depth == 1:
            return K
        h, cin, kh, kw = K.shape
        mats = [K.reshape(G, h // G, cin * kh * kw)]
        for f in self.factors[1:]:
            w = f.weight  # (o, h/G, 1, 1)
            mats.append(w.reshape(G, w.shape[0] // G, w.shape[1]))
        return _chain(mats).reshape(self.out_channels, cin, kh, kw)

    def _plain_forward(self, x, weight, bias):
        # nn.Conv2d's own padding logic (padding modes, "same"), applied to the collapsed kernel
        return self.factors[0]._conv_forward(x, weight, bias)

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

    def reparameterize(self) -> nn.Conv2d:
        f, w, b = self.factors[0], self.weight.detach(), self.bias
        conv = nn.Conv2d(self.in_channels, self.out_channels, f.kernel_size, f.stride, f.padding,
                         f.dilation, f.groups, bias=b is not None, padding_mode=f.padding_mode,
                         device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            if b is not None:
                conv.bias.copy_(b.detach())
        return conv

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, *, depth: int = 2, width: float = 1.0,
                  init: str = "fresh", mode: Mode = "auto",
                  generator: torch.Generator | None = None) -> OverparamConv2d:
        """Expand ``layer``; ``init`` "fresh" or "preserve" (see :func:`overparameterize`)."""
        w = layer.weight
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                  layer.padding_mode, depth=depth, width=width, mode=mode,
                  device=w.device, dtype=w.dtype)
        G = layer.groups
        W = w.detach().reshape(G, layer.out_channels // G, -1)  # (G, out/G, in/G*kh*kw)
        _init_factors(new, W, layer.bias, init, generator)
        return new


def _out_size(size: int, conv: nn.Conv2d, dim: int) -> int:
    if conv.padding == "same":
        return size
    pad = 0 if conv.padding == "valid" else conv.padding[dim]
    k, s, d = conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim]
    return max((size + 2 * pad - d * (k - 1) - 1) // s + 1, 0)


@torch.no_grad()
def _init_factors(mod: _Expanded, W: torch.Tensor, bias, init: str, generator) -> None:
    """W: the original weight as (groups, out/groups, fan_in/groups)."""
    factors = list(mod.factors)
    if init == "preserve":
        G = W.shape[0]
        mats = _balanced_factors(W, mod.depth, mod.hidden // G, generator)
        for f, M in zip(factors, mats):
            f.weight.copy_(M.reshape(f.weight.shape))
        if bias is not None:
            factors[-1].bias.copy_(bias.detach())
        return
    # "fresh", as in the authors' implementation: each factor kaiming-normal with
    # fan_out, gain 1 for the inner (linear) factors and the ReLU gain sqrt(2)
    # for the last one (it feeds the nonlinearity); bias uniform(+-1/sqrt(fan_in))
    # with the collapsed layer's fan_in, as nn.Conv2d / nn.Linear do.
    for i, f in enumerate(factors):
        last = i == len(factors) - 1
        nn.init.kaiming_normal_(f.weight, a=0.0 if last else 1.0, mode="fan_out",
                                nonlinearity="leaky_relu", generator=generator)
    b = factors[-1].bias
    if b is not None:
        bound = 1.0 / math.sqrt(W.shape[-1])
        nn.init.uniform_(b, -bound, bound, generator=generator)


# ---------------------------------------------------------------- model-level API


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def _set_child(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    return model


def overparameterize(
    model: nn.Module,
    depth: int = 2,
    width: float = 1.0,
    layers: Literal["all", "conv", "linear"] = "all",
    ignore: Iterable[str] = (),
    init: Literal["fresh", "preserve"] = "fresh",
    inplace: bool = False,
    *,
    mode: Mode = "auto",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` by its expanded form.

    Args:
        model: any module (a bare Linear/Conv2d is expanded and returned itself).
        depth: factors per layer (>= 1; 1 keeps the layer's shape but still
            re-initialises it with ``init="fresh"``).
        width: hidden width multiplier, hidden = round(width * out) (a multiple of
            ``groups`` for convs).
        layers: which layer types to expand: "all", "conv" or "linear".
        ignore: qualified module names (as in ``model.named_modules()``) to leave
            alone; a name also covers everything below it (``"layer4"``). An unknown
            name is an error.
        init: "fresh" re-initialises the factors as Huh et al.'s code does
            (kaiming-normal, fan_out, gain 1 inside, ReLU gain on the last factor);
            "preserve" factorises the current weights (balanced SVD split) so the
            expanded model computes the same function at step 0 (fine-tuning).
        inplace: modify ``model`` itself instead of a deep copy.
        mode: forward form of the expanded layers: "kernel", "sequential" or "auto"
            (see the module docstring; change later with :func:`set_forward_mode`).
        generator: random source for "fresh" init (and the extra units of "preserve").

    Returns the expanded model; :func:`collapse` turns it back into the original
    architecture.
    """
    depth, width = _check_depth_width(depth, width)
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {', '.join(map(repr, LAYERS))}; got {layers!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}; got {init!r}")
    _check_mode(mode)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignore = tuple(ignore)
    names = {n for n, _ in model.named_modules()}
    unknown = [n for n in ignore if n not in names or n == ""]
    if unknown:
        hints = {n: difflib.get_close_matches(n, names, n=3) for n in unknown}
        raise ValueError(
            f"ignore: unknown module name(s) {unknown}; accepted: qualified names from "
            f"model.named_modules(), e.g. {sorted(x for x in names if x)[:8]}"
            + "".join(f"; did you mean {v} for {k!r}?" for k, v in hints.items() if v)
        )
    if not inplace:
        model = copy.deepcopy(model)
    types: tuple[type, ...] = {"all": (nn.Linear, nn.Conv2d), "conv": (nn.Conv2d,),
                               "linear": (nn.Linear,)}[layers]
    targets = [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, types) and not _matches(n, ignore) and not _inside_expanded(model, n)
    ]
    kw = {"depth": depth, "width": width, "init": init, "mode": mode, "generator": generator}
    for name, m in targets:
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            raise ValueError(f"layer {name!r} is lazy and not initialised yet: run one forward first")
        new = OverparamConv2d.from_conv(m, **kw) if isinstance(m, nn.Conv2d) else OverparamLinear.from_linear(m, **kw)
        new.train(m.training)
        model = _set_child(model, name, new)
    return model


def _inside_expanded(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), _Expanded) for i in range(len(parts)))


def expanded_modules(model: nn.Module) -> list[tuple[str, _Expanded]]:
    """The (name, module) pairs of every expanded layer in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Expanded)]


def set_forward_mode(model: nn.Module, mode: Mode) -> nn.Module:
    """Set the forward form ("kernel", "sequential", "auto") of every expanded layer."""
    _check_mode(mode)
    for _, m in expanded_modules(model):
        m.mode = mode
    return model


def collapse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The model with every expanded layer replaced by the plain nn.Linear /
    nn.Conv2d it collapses to (timm's ``reparameterize_model`` convention).

    The result has the original architecture: its state_dict loads with
    ``strict=True`` into a fresh instance of it.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for name, m in expanded_modules(model):
        new = m.reparameterize()
        new.train(m.training)
        model = _set_child(model, name, new)
    return model
