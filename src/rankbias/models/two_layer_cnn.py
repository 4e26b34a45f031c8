"""The two-layer CNN of Zhang, Gao, Zou & Cao (2025), "Gradient Descent Robustly
Learns the Intrinsic Dimension of Data in Training Convolutional Neural
Networks" (reconstructed; docs/paper1.md, "The model"):

    f(W, x) = F_{+1}(W_{+1}, x) - F_{-1}(W_{-1}, x),
    F_j(W_j, x) = (1/m) sum_{r=1..m} sum_{p=1..P} sigma(<w_{j,r}, x^(p)>),

m filters per class shared over the P patches, a fixed second layer (+1/m for
class +1, -1/m for class -1), and the Huberised ReLU sigma of power q and
threshold kappa.

Every tensor carries a leading model dimension M: M independent networks (a
sweep over noise levels x seeds) run as one batched matmul
(M, n P, d) @ (M, d, 2m). The trainer is :func:`rankbias.fit.two_layer_cnn.fit_two_layer_cnn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rankbias.errors import InvalidParameterError
from rankbias.framework.docs import shared_doc

__all__ = [
    "HuberizedReLU",
    "TwoLayerCNN",
    "huberized_relu",
    "logistic_loss",
]


def _act_and_slope(z: torch.Tensor, q: float, kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma(z) and zc = clamp(z, 0, kappa), from which sigma'(z) = (zc / kappa)^(q-1)."""
    zc = z.clamp(0.0, kappa)
    out = (z - kappa).clamp_min_(0.0).add_(_pow(zc, q), alpha=1.0 / (q * kappa ** (q - 1)))
    return out, zc


def _pow(x: torch.Tensor, e: float) -> torch.Tensor:
    # small integer powers by multiplication: several times faster than pow on CPU
    if e == 2.0:
        return x * x
    if e == 3.0:
        return (x * x).mul_(x)
    return x.pow(e)


def _slope(zc: torch.Tensor, q: float, kappa: float) -> torch.Tensor:
    if q == 1.0:
        return (zc > 0).to(zc.dtype)
    return _pow(zc, q - 1).mul_(kappa ** (1.0 - q))


class _HuberizedReLUFn(torch.autograd.Function):
    # Saves clamp(z, 0, kappa) only, and one fused backward instead of autograd
    # through clamp/pow/add: the activation is most of a step's elementwise work.
    @staticmethod
    def forward(ctx, z: torch.Tensor, q: float, kappa: float) -> torch.Tensor:
        out, zc = _act_and_slope(z, q, kappa)
        ctx.save_for_backward(zc)
        ctx.q, ctx.kappa = q, kappa
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (zc,) = ctx.saved_tensors
        return grad * _slope(zc, ctx.q, ctx.kappa), None, None


class _Workspace:
    """Reusable buffers for the layer's dead temporaries (pre-activations, powers).

    A batched sweep's pre-activations are large (M n P 2m floats); allocating
    fresh ones for every elementwise step costs page faults that a single
    model's cache-sized tensors never see. Buffers are keyed by shape and only
    hold values that are dead when the op that wrote them returns.
    """

    def __init__(self, max_entries: int = 12):
        self.bufs: dict[tuple, torch.Tensor] = {}
        self.max_entries = max_entries

    def get(self, name: str, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        key = (name, shape, like.dtype, like.device)
        buf = self.bufs.get(key)
        if buf is None:
            if len(self.bufs) >= self.max_entries:
                self.bufs.clear()
            buf = self.bufs[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


# Models are processed in blocks whose pre-activations fit in cache (~4 MB): the
# elementwise passes then run at cache rather than DRAM bandwidth. Each block
# is still one batched matmul; a small sweep is a single block.
_BLOCK_BYTES = 4 << 20


def _blocks(M: int, per_model_bytes: int):
    size = max(1, min(M, _BLOCK_BYTES // max(per_model_bytes, 1)))
    return [slice(i, min(i + size, M)) for i in range(0, M, size)]


def _layer_forward(x, w, n, P, q, kappa, ws: _Workspace, keep_zc: bool):
    """x (M, nP, d), w (M, 2m, d) -> class scores (M, n, 2) and clamp(z, 0, kappa)."""
    M, nP, _ = x.shape
    m = w.shape[1] // 2
    zc_all = x.new_empty(M, nP, 2 * m) if keep_zc else None
    F = x.new_empty(M, n, 2)
    for sl in _blocks(M, nP * 2 * m * x.element_size()):
        b = sl.stop - sl.start
        shape = (b, nP, 2 * m)
        z = torch.bmm(x[sl], w[sl].transpose(1, 2), out=ws.get("z", x, shape))  # (b, nP, 2m)
        zc = torch.clamp(z, 0.0, kappa, out=zc_all[sl] if keep_zc else ws.get("zc", x, shape))
        # sigma(z) = (z - kappa)_+ + zc^q / (q kappa^(q-1)), each pooled over (p, r) as it is made
        Fb = z.sub_(kappa).clamp_min_(0.0).view(b, n, P, 2, m).sum(dim=(2, 4))
        t = ws.get("t", x, shape)
        if q == 3.0:
            torch.mul(zc, zc, out=t).mul_(zc)
        else:
            torch.pow(zc, q, out=t)
        F[sl] = Fb.add_(t.view(b, n, P, 2, m).sum(dim=(2, 4)), alpha=1.0 / (q * kappa ** (q - 1)))
    return F.div_(m), zc_all


class _CNNLayerFn(torch.autograd.Function):
    """Patches (M, nP, d) and filters (M, 2m, d) -> class scores (M, n, 2):
    one batched matmul, the Huberised ReLU and sum pooling, fused.

    Saves clamp(z, 0, kappa) only; the backward builds the pre-activation
    gradient in one pass (slope times the broadcast score gradient, in a reused
    buffer) and the filter gradient with one batched matmul. No gradient flows
    to the patches (they are data).
    """

    @staticmethod
    def forward(ctx, x, w, n, P, q, kappa, ws):
        F, zc = _layer_forward(x, w, n, P, q, kappa, ws, keep_zc=True)
        ctx.save_for_backward(x, zc)
        ctx.q, ctx.kappa, ctx.ws, ctx.n, ctx.P = q, kappa, ws, n, P
        return F

    @staticmethod
    def backward(ctx, gF):
        x, zc = ctx.saved_tensors
        q, kappa, n, P = ctx.q, ctx.kappa, ctx.n, ctx.P
        M, nP, two_m = zc.shape
        m = two_m // 2
        gw = x.new_empty(M, two_m, x.shape[-1])
        scale = (gF * (kappa ** (1.0 - q) / m))[:, :, None, :, None]  # (M, n, 1, 2, 1)
        for sl in _blocks(M, nP * two_m * zc.element_size()):
            b = sl.stop - sl.start
            g = ctx.ws.get("z", zc, (b, nP, two_m))  # the forward's z buffer is dead by now
            if q == 1.0:
                g.copy_(zc[sl] > 0)
            elif q == 3.0:
                torch.mul(zc[sl], zc[sl], out=g)
            else:
                torch.pow(zc[sl], q - 1, out=g)
            # sigma'(z) = (zc / kappa)^(q-1); dF/dz = sigma'(z) / m
            g.view(b, n, P, 2, m).mul_(scale[sl])
            torch.bmm(g.transpose(1, 2), x[sl], out=gw[sl])  # (b, 2m, d)
        return None, gw, None, None, None, None, None


# huberized_relu's and HuberizedReLU's parameters and errors, written once
_HUBER_DOC = {
    "q_kappa": """q : float, default 3.0
    The power of the polynomial piece (>= 1; 1 is the ReLU).
kappa : float, default 1.0
    The threshold between the polynomial and the linear piece (> 0).""",
    "raises": """Raises
------
InvalidParameterError
    ``q < 1`` or ``kappa <= 0``.""",
}


@shared_doc(**_HUBER_DOC)
def huberized_relu(z: torch.Tensor, q: float = 3.0, kappa: float = 1.0) -> torch.Tensor:
    """sigma(z) = 0 (z <= 0); z^q / (q kappa^(q-1)) (0 < z <= kappa); z - (1 - 1/q) kappa (z > kappa).

    Continuous with a continuous first derivative for every q >= 1 (q = 1 is
    the ReLU). Elementwise; differentiable (derivative (clamp(z,0,kappa)/kappa)^(q-1)).

    Parameters
    ----------
    z : torch.Tensor
        Pre-activations, any shape.
    {q_kappa}

    Returns
    -------
    torch.Tensor
        sigma(z), of the shape of ``z``.

    {raises}

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import huberized_relu
    >>> huberized_relu(torch.tensor([-1.0, 0.5, 2.0]))  # 0, 0.5^3 / 3, 2 - 2/3
    tensor([0.0000, 0.0417, 1.3333])
    """
    if not q >= 1:
        raise InvalidParameterError(f"q must be >= 1, got {q}")
    if not kappa > 0:
        raise InvalidParameterError(f"kappa must be > 0, got {kappa}")
    return _HuberizedReLUFn.apply(z, float(q), float(kappa))


@shared_doc(**_HUBER_DOC)
class HuberizedReLU(nn.Module):
    """The Huberised ReLU as a module (see :func:`huberized_relu`).

    Parameters
    ----------
    {q_kappa}

    Attributes
    ----------
    q, kappa : float
        The parameters, as floats.

    {raises}

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import HuberizedReLU
    >>> HuberizedReLU(q=2.0, kappa=0.5)
    HuberizedReLU(q=2, kappa=0.5)
    >>> HuberizedReLU(q=1.0)(torch.tensor([-1.0, 2.0]))  # q = 1: the ReLU
    tensor([0., 2.])
    """

    def __init__(self, q: float = 3.0, kappa: float = 1.0) -> None:
        super().__init__()
        if not q >= 1:
            raise InvalidParameterError(f"q must be >= 1, got {q}")
        if not kappa > 0:
            raise InvalidParameterError(f"kappa must be > 0, got {kappa}")
        self.q, self.kappa = float(q), float(kappa)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _HuberizedReLUFn.apply(z, self.q, self.kappa)

    def extra_repr(self) -> str:
        return f"q={self.q:g}, kappa={self.kappa:g}"


class TwoLayerCNN(nn.Module):
    """M independent two-layer CNNs with m filters per class over d-dimensional patches.

    Input: patches (M, n, P, d) (one data set per model) or (n, P, d) (shared).
    Output: f (M, n).

    Parameters
    ----------
    dim : int
        d, the dimension of a patch (>= 1).
    filters : int
        m, the filters per class (>= 1).
    models : int, default 1
        M, the independent networks (>= 1).
    q, kappa : float, default 3.0 and 1.0
        The Huberised ReLU's power and threshold (see :func:`huberized_relu`).
    init_std : float, default 0.01
        w ~ N(0, init_std^2 I) (>= 0).
    seeds : sequence of int, optional
        One init seed per model (default 0..M-1); a model's init depends on its
        seed only.
    dtype : torch.dtype, default torch.float32
        The weights' dtype.
    device : str or torch.device, default "cpu"
        The weights' device.

    Attributes
    ----------
    weight : nn.Parameter
        (M, 2, m, d); index 0 of dim 1 is class +1, index 1 class -1.
    filter_matrix : torch.Tensor
        (M, 2m, d): the filters as one matrix per model (the matrix whose rank
        the papers follow).
    act : HuberizedReLU
        The activation.

    Raises
    ------
    InvalidParameterError
        ``dim``, ``filters`` or ``models`` < 1, ``init_std < 0``, a bad ``q`` or
        ``kappa``, or ``seeds`` of another length than ``models``. In the forward
        pass: an input whose shape is not (M, n, P, d) or (n, P, d).

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import TwoLayerCNN
    >>> net = TwoLayerCNN(dim=5, filters=3, models=2)
    >>> tuple(net.weight.shape), tuple(net.filter_matrix.shape)
    ((2, 2, 3, 5), (2, 6, 5))
    >>> tuple(net(torch.randn(4, 6, 5)).shape)  # 4 images of 6 patches, shared by both models
    (2, 4)
    """

    def __init__(
        self,
        dim: int,
        filters: int,
        models: int = 1,
        *,
        q: float = 3.0,
        kappa: float = 1.0,
        init_std: float = 0.01,
        seeds: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("filters", filters), ("models", models)):
            if int(v) < 1:
                raise InvalidParameterError(f"{name} must be >= 1, got {v}")
        if not init_std >= 0:
            raise InvalidParameterError(f"init_std must be >= 0, got {init_std}")
        self.dim, self.filters, self.models = int(dim), int(filters), int(models)
        self.act = HuberizedReLU(q, kappa)
        if seeds is None:
            seeds = range(models)
        seeds = list(seeds)
        if len(seeds) != models:
            raise InvalidParameterError(f"seeds must have one entry per model ({models}), got {len(seeds)}")
        # One generator per model: a model's init depends on its seed only, not
        # on which other models share the batch (batched == one at a time).
        w = torch.stack([
            torch.randn(2, filters, dim, generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ]) * init_std
        self.weight = nn.Parameter(w.to(dtype=dtype, device=device))  # (M, 2, m, d)
        self._ws = _Workspace()

    @property
    def filter_matrix(self) -> torch.Tensor:
        """(M, 2m, d): rows 0..m-1 are class +1's filters, m..2m-1 class -1's."""
        return self.weight.reshape(self.models, 2 * self.filters, self.dim)

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(F_{+1}, F_{-1}) of every image: (M, n, 2)."""
        M, m, d = self.models, self.filters, self.dim
        if x.shape[-1] != d:
            raise InvalidParameterError(f"patch dimension {x.shape[-1]} != the model's dim {d}")
        if x.dim() == 3:
            x = x.unsqueeze(0).expand(M, *x.shape)
        if x.dim() != 4 or x.shape[0] != M:
            raise InvalidParameterError(f"input must be (M={M}, n, P, d) or (n, P, d); got {tuple(x.shape)}")
        _, n, P, _ = x.shape
        x = x.reshape(M, n * P, d)
        q, kappa = self.act.q, self.act.kappa
        if x.requires_grad:  # gradients w.r.t. the input: plain autograd
            z = torch.bmm(x, self.filter_matrix.transpose(1, 2))  # (M, nP, 2m)
            return self.act(z).view(M, n, P, 2, m).sum(dim=(2, 4)) / m
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return _CNNLayerFn.apply(x, self.filter_matrix, n, P, q, kappa, self._ws)  # (M, n, 2)
        return _layer_forward(x, self.filter_matrix.detach(), n, P, q, kappa, self._ws, keep_zc=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = self.class_scores(x)
        return F[..., 0] - F[..., 1]  # (M, n)


def logistic_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of log(1 + exp(-y f)) over the last dimension: (M, n) -> (M,)."""
    return nn.functional.softplus(-y * f).mean(-1)
