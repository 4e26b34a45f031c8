"""Gradient-free optimisation, batched over a leading model dimension.

:func:`fit_random_search` is the (1+lambda) evolution strategy with Rechenberg's
1/5 success rule (Rechenberg 1973; Beyer & Schwefel 2002, "Evolution
strategies: a comprehensive introduction"): each step every model draws
``population`` Gaussian perturbations of its parameters, moves to the best one
if it lowers the loss, and widens its step size on a success and narrows it on
a failure so that about one step in five succeeds. It uses loss values only,
so it contrasts gradient descent's implicit bias in the depth experiments
(Huh et al. 2023, sec. 4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from rankbias.errors import InvalidParameterError

__all__ = ["RandomSearchResult", "fit_random_search"]


@dataclasses.dataclass
class RandomSearchResult:
    params: torch.Tensor
    """(M, ...) best parameters found per model."""
    loss: torch.Tensor
    """(M,) their losses."""
    sigma: torch.Tensor
    """(M,) final step sizes."""
    accepted: torch.Tensor
    """(M,) number of accepted steps."""


@torch.no_grad()
def fit_random_search(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    steps: int,
    population: int = 16,
    sigma: float = 0.01,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    grow: float = 1.5,
) -> RandomSearchResult:
    """Minimise ``loss_fn`` for M independent models from ``x0`` (M, ...).

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(candidates)``: candidates (M * population, ...) ordered
        model-major (candidate i belongs to model i // population) -> losses
        (M * population,).
    x0 : torch.Tensor
        (M, ...) the starting parameters of the M models.
    steps : int
        Steps (>= 0).
    population : int, default 16
        Gaussian perturbations drawn per model and step (>= 1).
    sigma : float, default 0.01
        Initial step size (std of a perturbation's coordinates, > 0); multiplied
        by ``grow`` after a success and by ``grow ** -0.25`` after a failure (the
        1/5 rule's equilibrium).
    generator : torch.Generator, optional
        The source of the perturbations (for a deterministic run).
    mask : torch.Tensor, optional
        Bool, shape of x0: only these coordinates are perturbed.
    grow : float, default 1.5
        The step size's growth factor on a success (> 1).

    Returns
    -------
    RandomSearchResult
        Per model: the best parameters found, their loss, the final step size
        and the number of accepted steps.

    Raises
    ------
    InvalidParameterError
        ``steps < 0``, ``population < 1``, ``sigma <= 0`` or ``grow <= 1``.

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import fit_random_search
    >>> target = torch.tensor([[1.0, -2.0], [0.5, 0.5]])  # M = 2 models of 2 coordinates
    >>> def loss_fn(c):  # c: (2 * population, 2), model-major
    ...     return ((c.view(2, -1, 2) - target[:, None]) ** 2).sum(-1).reshape(-1)
    >>> res = fit_random_search(loss_fn, torch.zeros(2, 2), steps=300, sigma=0.5,
    ...                         generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(res.params, target, atol=1e-4)
    True
    """
    if steps < 0 or population < 1:
        raise InvalidParameterError(f"steps must be >= 0 and population >= 1, got {steps}, {population}")
    if not sigma > 0 or not grow > 1:
        raise InvalidParameterError(f"sigma must be > 0 and grow > 1, got {sigma}, {grow}")
    M, K = x0.shape[0], population
    x = x0.clone()
    cur = loss_fn(x.repeat_interleave(K, 0)).reshape(M, K)[:, 0]
    cur = torch.where(torch.isfinite(cur), cur, torch.full_like(cur, float("inf")))
    s = torch.full((M,), float(sigma), dtype=x.dtype, device=x.device)
    accepted = torch.zeros(M, dtype=torch.long, device=x.device)
    view = (M, 1) + (1,) * (x.dim() - 1)
    for _ in range(steps):
        noise = torch.randn((M, K, *x.shape[1:]), generator=generator, dtype=x.dtype, device=x.device)
        if mask is not None:
            noise = noise * mask.unsqueeze(1)
        cand = x.unsqueeze(1) + s.view(view) * noise  # (M, K, ...)
        losses = loss_fn(cand.reshape(M * K, *x.shape[1:])).reshape(M, K)
        losses = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, float("inf")))
        best, arg = losses.min(1)
        ok = best < cur
        x = torch.where(ok.view(view[:1] + view[2:]), cand[torch.arange(M), arg], x)
        cur = torch.where(ok, best, cur)
        accepted += ok
        s = torch.where(ok, s * grow, s * grow**-0.25)
    return RandomSearchResult(x, cur, s, accepted)
