"""Deep linear networks, batched over a leading model dimension.

Huh et al. (2023), "The Low-Rank Simplicity Bias in Deep Networks", sec. 4: a
deep linear network maps x to W_e x with the end-to-end map
W_e = W_L ... W_1, each factor n x n. Its function class is that of one n x n
matrix, yet gradient descent on the factors finds end-to-end maps of lower
effective rank as the depth L grows.

:class:`DeepLinear` holds M such networks of possibly different depths in one
parameter tensor ``factors`` of shape (M, L_max, n, n). A network of depth
L < L_max is padded with L_max - L identity factors that are never trained:
the forward pass substitutes the exact identity for them (``torch.where``),
so their gradient is exactly zero, and multiplying by an exact identity is
exact in floating point (each output is one product plus exact zeros), so the
padded product equals the product of the network's own L factors by the same
batched routine bit for bit. (A different routine, e.g. a per-matrix loop, may
pick other BLAS kernels and agree only to round-off.) One batched matmul chain
thus trains every depth and seed of a sweep at once.

Following timm's ``reparameterize_model`` convention, :meth:`DeepLinear.collapse`
returns the end-to-end maps as a plain (M, n, n) tensor: the network's
inference form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from rankbias.errors import InvalidParameterError

__all__ = ["DeepLinear", "end_to_end", "sample_factors"]

Init = Literal["normal", "uniform", "orthogonal"]
INITS: tuple[Init, ...] = get_args(Init)


def sample_factors(
    shape: tuple[int, ...],
    *,
    init: Init = "normal",
    scale: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random square factors of shape (..., n, n) with E|W x|^2 = scale^2 |x|^2
    (``scale`` a float or a tensor broadcasting against ``shape``).

    ``normal``: i.i.d. N(0, scale^2 / n); ``uniform``: i.i.d. uniform with the
    same variance; ``orthogonal``: scale times a Haar-random orthogonal matrix
    (QR of a Gaussian with the signs of R's diagonal fixed).
    """
    if init not in INITS:
        raise InvalidParameterError(f"init must be one of {INITS}, got {init!r}")
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise InvalidParameterError(f"shape must end in (n, n), got {tuple(shape)}")
    n = shape[-1]
    kw = dict(generator=generator, dtype=dtype, device=device)
    if init == "normal":
        return torch.randn(shape, **kw) * (scale / n**0.5)
    if init == "uniform":
        return (torch.rand(shape, **kw) * 2 - 1) * (scale * (3 / n) ** 0.5)
    G = torch.randn(shape, **kw)
    Q, R = torch.linalg.qr(G)
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2) * scale


def end_to_end(factors: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """W_L ... W_1 for factors (..., L, n, n) (W_1 = factors[..., 0, :, :]);
    slots where ``mask`` (..., L) is False count as the exact identity."""
    if mask is not None:
        eye = torch.eye(factors.shape[-1], dtype=factors.dtype, device=factors.device)
        factors = torch.where(mask[..., None, None], factors, eye)
    # unbind: one backward op for all slices (indexing would zero-fill a full-size
    # gradient per slice). Padded identities come last, and I @ P == P exactly, so
    # a padded network's product equals its own L-factor chain bit for bit.
    Fs = factors.unbind(-3)
    P = Fs[0]
    for W in Fs[1:]:
        P = W @ P  # (..., n, n)
    return P


class DeepLinear(nn.Module):
    """M deep linear networks x -> W_L ... W_1 x with n x n factors.

    Parameters
    ----------
    depths : sequence of int
        The depth of each of the M networks (ints >= 1).
    n : int
        Width (input = hidden = output dimension).
    init : str or sequence of str, default "normal"
        See :func:`sample_factors`; each factor of network m is drawn from init (a
        name) or init[m] (a sequence of M names).
    init_scale : float or sequence of float, default 1.0
        E|W x|^2 = s_m^2 |x|^2, s_m = init_scale (a float) or init_scale[m] (a
        sequence of M floats).
    generator : torch.Generator, optional
        A seeded generator (for a deterministic draw).
    dtype : torch.dtype, default torch.float64
        The factors' dtype.
    device : str or torch.device, optional
        The factors' device.

    Attributes
    ----------
    factors : nn.Parameter
        (M, L_max, n, n); padded slots hold identity matrices.
    depths : torch.Tensor
        Buffer, (M,) long.
    mask : torch.Tensor
        Buffer, (M, L_max) bool, True where a factor is the network's own.

    Raises
    ------
    InvalidParameterError
        An empty ``depths`` or a depth < 1, ``n < 1``, an unknown ``init``, or an
        ``init``/``init_scale`` sequence of another length than ``depths``.

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import DeepLinear
    >>> net = DeepLinear([1, 3], n=4, generator=torch.Generator().manual_seed(0))
    >>> net
    DeepLinear(n_models=2, depths=[1, 3], n=4)
    >>> tuple(net.factors.shape), net.mask.tolist()
    ((2, 3, 4, 4), [[True, False, False], [True, True, True]])
    >>> tuple(net(torch.randn(5, 4, dtype=torch.float64)).shape)  # 5 inputs shared by both networks
    (2, 5, 4)
    """

    def __init__(
        self,
        depths: Sequence[int],
        n: int,
        *,
        init: Init | Sequence[Init] = "normal",
        init_scale: float | Sequence[float] = 1.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        depths = [int(d) for d in depths]
        if not depths or any(d < 1 for d in depths):
            raise InvalidParameterError(f"depths must be a non-empty list of ints >= 1, got {depths}")
        if int(n) < 1:
            raise InvalidParameterError(f"n must be an int >= 1, got {n}")
        M, L, n = len(depths), max(depths), int(n)
        if isinstance(init_scale, int | float):
            scale = float(init_scale)
        else:
            scale = torch.as_tensor(list(init_scale), dtype=dtype, device=device)
            if scale.shape != (M,):
                raise InvalidParameterError(f"init_scale: expected a float or {M} floats, got {scale.shape[0]}")
            scale = scale.view(M, 1, 1, 1)
        kw = dict(generator=generator, dtype=dtype, device=device)
        if isinstance(init, str):
            W = sample_factors((M, L, n, n), init=init, scale=scale, **kw)
        else:
            inits = list(init)
            if len(inits) != M:
                raise InvalidParameterError(f"init: expected a name or {M} names, got {len(inits)}")
            per_model = [scale] * M if isinstance(scale, float) else list(scale.view(M))
            W = torch.stack([sample_factors((L, n, n), init=i, scale=s, **kw)
                             for i, s in zip(inits, per_model)])  # (M, L, n, n)
        d = torch.tensor(depths, device=device)
        mask = torch.arange(L, device=device) < d[:, None]  # (M, L)
        eye = torch.eye(n, dtype=dtype, device=device)
        self.factors = nn.Parameter(torch.where(mask[..., None, None], W, eye))
        self.register_buffer("depths", d)
        self.register_buffer("mask", mask)
        self.n = n

    @classmethod
    def from_factors(cls, factors: Sequence[Sequence[torch.Tensor]]) -> DeepLinear:
        """M networks from their factor lists [[W_1, ..., W_L], ...] (applied W_1 first)."""
        if not factors or any(len(fs) == 0 for fs in factors):
            raise InvalidParameterError("factors must be a non-empty list of non-empty factor lists")
        W0 = factors[0][0]
        n = W0.shape[-1]
        if any(W.shape != (n, n) for fs in factors for W in fs):
            raise InvalidParameterError(f"every factor must be {n} x {n}")
        net = cls([len(fs) for fs in factors], n, dtype=W0.dtype, device=W0.device)
        with torch.no_grad():
            for m, fs in enumerate(factors):
                net.factors[m, : len(fs)] = torch.stack(list(fs))
        return net

    @property
    def n_models(self) -> int:
        return self.factors.shape[0]

    def end_to_end(self) -> torch.Tensor:
        """W_e = W_L ... W_1 of every network, shape (M, n, n), differentiable."""
        return end_to_end(self.factors, self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, B, n) or (B, n) shared by all models -> (M, B, n)."""
        We = self.end_to_end()  # (M, n, n)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_models, -1, -1)
        return x @ We.mT

    @torch.no_grad()
    def collapse(self) -> torch.Tensor:
        """The inference form: the end-to-end maps (M, n, n), detached."""
        return self.end_to_end().detach().clone()

    def extra_repr(self) -> str:
        return f"n_models={self.n_models}, depths={self.depths.tolist()}, n={self.n}"
