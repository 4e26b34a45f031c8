"""Factorisations of a weight into ``depth`` factors whose product is exactly it
(``init="preserve"``), the initialisation of an expanded layer's factors, and the
product of a chain of factors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from rankbias.errors import InvalidParameterError


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
        raise InvalidParameterError(
            f"init='preserve' needs hidden width >= min(out, fan_in) = {r} per group to "
            f"factorise the weight exactly; got {hidden} (raise width)"
        )
    first_r, last_r, root = _balanced_split(W.to(torch.float64), depth)
    if depth == 1:
        return [W.clone()]
    return [f.to(W.dtype) for f in _padded_factors(first_r, last_r, root, depth, hidden, generator)]


def _balanced_split(W64: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(F_1 (G, r, n), F_L (G, m, r), d (G, r)) of the balanced split of W64 (G, m, n), r = min(m, n)."""
    m, n = W64.shape[-2:]
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
    return first_r, last_r, d


def _padded_factors(first_r: torch.Tensor, last_r: torch.Tensor, root: torch.Tensor, depth: int, hidden: int,
                    generator: torch.Generator | None) -> list[torch.Tensor]:
    """The float64 factors at ``hidden`` width: the split's, plus trainable extra units (random
    rows of F_1, a random orthogonal block of each middle factor, zero columns of F_L)."""
    (G, r, n), m = first_r.shape, last_r.shape[-2]
    device = first_r.device
    extra = hidden - r
    scale = root.mean(-1, keepdim=True)  # (G, 1): typical factor gain

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, device="cpu").to(device)

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
    return [first, *mids, last]


def _chain(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """mats[-1] @ ... @ mats[0], multiplied from the output side so the inner
    products stay (m x h), never (h x n) with a large n = fan_in * k * k."""
    out = mats[-1]
    for M in reversed(mats[:-1]):
        out = out @ M
    return out


@torch.no_grad()
def _init_factors(mod: nn.Module, W: torch.Tensor, layer: nn.Module, init: str, generator,
                  fan_mode: str) -> None:
    """Set the factors of the expanded module ``mod`` (its ``factors``, ``depth``, ``hidden``).
    W: the original weight as (groups, out/groups, fan_in/groups); ``layer`` the
    original (its bias, and which of its parameters are frozen)."""
    factors = list(mod.factors)
    bias = layer.bias
    if init == "preserve":
        G = W.shape[0]
        mats = _balanced_factors(W, mod.depth, mod.hidden // G, generator)
        for f, M in zip(factors, mats):
            f.weight.copy_(M.reshape(f.weight.shape))
            if f.bias is not None:
                f.bias.zero_()
        if bias is not None:
            factors[-1].bias.copy_(bias.detach())
    else:
        # "fresh", as in the authors' code (minyoungg/overparam): kaiming-normal with
        # fan_in for linear factors and fan_out for conv factors, gain 1 for the inner
        # factors (no nonlinearity follows them) and the ReLU gain sqrt(2) for the last.
        for i, f in enumerate(factors):
            last = i == len(factors) - 1
            nn.init.kaiming_normal_(f.weight, a=0.0 if last else 1.0, mode=fan_mode,
                                    nonlinearity="leaky_relu", generator=generator)
        # a bias on every factor: uniform(+-1/sqrt(fan_in)) with that factor's fan_in, as the
        # authors'; the last factor's bias alone: with the collapsed layer's fan_in, as torch
        per_factor = sum(f.bias is not None for f in factors) > 1
        for f in factors:
            if f.bias is None:
                continue
            bound = 1.0 / math.sqrt(f.weight[0].numel() if per_factor else W.shape[-1])
            nn.init.uniform_(f.bias, -bound, bound, generator=generator)
    # frozen stays frozen: each factor's weight/bias trains exactly when the original did
    for f in factors:
        f.weight.requires_grad_(layer.weight.requires_grad)
        if f.bias is not None:
            f.bias.requires_grad_(bias.requires_grad)
