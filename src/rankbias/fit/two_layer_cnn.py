"""Training the two-layer CNNs of paper 1 (:mod:`rankbias.models.two_layer_cnn`).

:func:`fit_two_layer_cnn` trains M networks at once (one per noise level and
seed of a sweep) on the logistic loss with :func:`rankbias.training.train`: full-batch
gradient descent (the paper's algorithm) or mini-batch SGD, for a fixed number of
steps or until each network's training loss reaches a target (docs/paper1.md,
"Training to a loss threshold"). :class:`CNNMetrics` logs losses, accuracies and
the filters' rank measures on the way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch

from rankbias.errors import InvalidParameterError
from rankbias.measures import rank_measures
from rankbias.models.two_layer_cnn import TwoLayerCNN, logistic_loss

__all__ = ["CNNFit", "CNNMetrics", "CnnOptimizer", "fit_two_layer_cnn"]

CnnOptimizer = Literal["gd", "sgd"]


@dataclasses.dataclass
class CNNFit:
    """The result of :func:`fit_two_layer_cnn`."""

    model: TwoLayerCNN
    """The trained networks (weights of diverged models are left as they were)."""
    history: list[dict[str, Any]]
    """One row per logged step and model: step, model, loss, train_acc, test_loss,
    test_acc, filter_<measure>, pos_<measure>, neg_<measure>."""
    status: list[str]
    """Per model: "ok" or "diverged"."""
    diverged_at: list[int | None]
    """Per model: the step at which its loss became non-finite."""
    final: dict[str, torch.Tensor]
    """Per-model (M,) values of the last logged row (NaN for diverged models)."""
    reached_target_at: list[int | None] = dataclasses.field(default_factory=list)
    """Per model: the number of updates after which its full-batch training loss was
    <= ``target_train_loss`` (it took no step after that); None when it never did
    or no target was set."""


class CNNMetrics:
    """Callback: train/test loss and accuracy and the rank measures of the filter
    matrix (2m x d) and of each class's block (m x d), for every model."""

    def __init__(
        self,
        model: TwoLayerCNN,
        X: torch.Tensor,
        y: torch.Tensor,
        X_test: torch.Tensor | None = None,
        y_test: torch.Tensor | None = None,
        measures: Sequence[str] = ("stable_rank", "effective_rank"),
    ):
        self.model, self.X, self.y, self.X_test, self.y_test = model, X, y, X_test, y_test
        self.measures = tuple(measures)

    @torch.no_grad()
    def _eval(self, X, y, prefix: str) -> dict[str, torch.Tensor]:
        f = self.model(X)
        return {f"{prefix}loss": logistic_loss(f, y), f"{prefix}acc": ((f * y) > 0).float().mean(-1)}

    @torch.no_grad()
    def on_log(self, state) -> dict[str, torch.Tensor]:
        out = self._eval(self.X, self.y, "train_")
        if self.X_test is not None:
            out.update(self._eval(self.X_test, self.y_test, "test_"))
        W = self.model.weight.detach()  # (M, 2, m, d)
        ok = torch.isfinite(W).flatten(1).all(1).cpu() & state.alive.cpu()
        mats = {"filter": W.flatten(1, 2), "pos": W[:, 0], "neg": W[:, 1]}
        for name, A in mats.items():
            vals = {k: torch.full((W.shape[0],), float("nan"), dtype=torch.float64) for k in self.measures}
            if bool(ok.any()):
                got = rank_measures(A[ok.to(A.device)], list(self.measures))
                for k in self.measures:
                    vals[k][ok] = got[k].cpu()
            out.update({f"{name}_{k}": v for k, v in vals.items()})
        dead = ~state.alive.cpu()
        return {k: torch.where(dead, torch.nan, v.cpu().double()) for k, v in out.items()}


class _TargetLoss:
    """Per-model stop at a training-loss target.

    ``check(losses, step)`` is handed the full-batch training losses after ``step``
    updates; a model whose loss is <= the target is frozen from then on: its loss
    is returned detached, so its gradient is zero and plain (S)GD leaves it exactly
    where it stopped while the rest of the batch trains on.
    """

    def __init__(self, target: float | None, models: int):
        self.target = target
        self.active = torch.ones(models, dtype=torch.bool)
        self.reached_at: list[int | None] = [None] * models

    def check(self, losses: torch.Tensor, step: int) -> None:
        if self.target is None:
            return
        hit = self.active & (losses.detach().cpu() <= self.target)
        for i in torch.nonzero(hit).flatten().tolist():
            self.reached_at[i] = step
        self.active &= ~hit

    def mask(self, losses: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return losses
        return torch.where(self.active.to(losses.device), losses, losses.detach())


def fit_two_layer_cnn(
    X: torch.Tensor,
    y: torch.Tensor,
    X_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    *,
    # the models
    filters: int = 10,
    q: float = 3.0,
    kappa: float = 1.0,
    init_std: float = 0.01,
    init_seeds: Sequence[int] | None = None,
    # their training
    optimizer: CnnOptimizer = "gd",
    steps: int = 1000,
    lr: float = 1.0,
    batch_size: int | None = None,
    batch_seed: int = 0,
    target_train_loss: float | None = None,
    # what is logged
    log_every: int = 50,
    measures: Sequence[str] = ("stable_rank", "effective_rank"),
    callbacks: Sequence[Any] = (),
    progress: bool | None = False,
) -> CNNFit:
    """Train M two-layer CNNs at once on the logistic loss with :func:`rankbias.training.train`.

    A model whose loss becomes non-finite gets status ``diverged``; the others go on.

    Parameters
    ----------
    X : torch.Tensor
        Patches (M, n, P, d), one training set per model.
    y : torch.Tensor
        Labels in {+1, -1}, (M, n) or (n,).
    X_test, y_test : torch.Tensor, optional
        A test set of the same layout (both or neither).
    filters : int, default 10
        m, the filters per class.
    q, kappa : float, default 3.0 and 1.0
        The Huberised ReLU's power and threshold.
    init_std : float, default 0.01
        The initial weights' standard deviation.
    init_seeds : sequence of int, optional
        One init seed per model (default 0..M-1).
    optimizer : {"gd", "sgd"}, default "gd"
        ``"gd"``: full-batch gradient descent; ``"sgd"``: mini-batches of
        ``batch_size`` images drawn without replacement in epochs (the same
        indices for every model, from ``batch_seed``).
    steps : int, default 1000
        Optimiser steps (the budget).
    lr : float, default 1.0
        Learning rate.
    batch_size : int, optional
        Images per step with ``"sgd"``.
    batch_seed : int, default 0
        The seed of the mini-batches.
    target_train_loss : float, optional
        Stop each model as soon as its full-batch training loss is <= this value
        (it takes no further update; :attr:`CNNFit.reached_target_at` records
        when); ``steps`` stays the budget.
    log_every : int, default 50
        Log (losses, accuracies, rank measures) every this many steps.
    measures : sequence of str, default ("stable_rank", "effective_rank")
        The rank measures logged, of the filter matrix and of each class's block.
    callbacks : sequence, default ()
        More callbacks of :func:`rankbias.training.train`.
    progress : bool, optional
        A progress bar (None: only on a terminal; default off).

    Returns
    -------
    CNNFit
        The trained networks, the logged history, and per model its status, the
        step it diverged at, its last logged values and when it reached the target.

    Raises
    ------
    InvalidParameterError
        ``X`` not (M, n, P, d); labels of another shape or not in {+1, -1}; only
        one of ``X_test``/``y_test`` or of another shape; an unknown optimizer;
        ``"sgd"`` without 1 <= ``batch_size`` <= n; ``target_train_loss <= 0``.

    Examples
    --------
    >>> from rankbias.papers import fit_two_layer_cnn, make_patch_data
    >>> data = make_patch_data(n_train=20, n_test=50, patches=4, dim=20, sigmas=[0.0, 0.5])
    >>> fit = fit_two_layer_cnn(data.X, data.y, data.X_test, data.y_test, filters=4,
    ...                         steps=20, log_every=20)
    >>> fit.status, [row["step"] for row in fit.history if row["model"] == 0]
    (['ok', 'ok'], [0, 20])
    >>> tuple(fit.model.filter_matrix.shape), tuple(fit.final["test_acc"].shape)
    ((2, 8, 20), (2,))
    """
    from rankbias.training import train

    y, y_test = _check_inputs(X, y, X_test, y_test, optimizer, batch_size, target_train_loss)
    M, d = X.shape[0], X.shape[3]
    model = TwoLayerCNN(
        d, filters, M, q=q, kappa=kappa, init_std=init_std, seeds=init_seeds, dtype=X.dtype, device=X.device
    )
    target = _TargetLoss(target_train_loss, M)
    if optimizer == "gd":
        loss_fn = _full_batch_loss(model, X, y, target)
    else:
        loss_fn = _mini_batch_loss(model, X, y, target, batch_size, batch_seed)
    metrics = CNNMetrics(model, X, y, X_test, y_test, measures)
    res = train(
        loss_fn, model, steps=steps, optimizer="gd" if optimizer == "gd" else "sgd", lr=lr,
        log_every=log_every, callbacks=[metrics, *callbacks], progress=progress, desc="two-layer CNN",
    )
    return CNNFit(model, res.history, res.status, res.diverged_at, _final_values(res), target.reached_at)


def _check_inputs(
    X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor | None, y_test: torch.Tensor | None,
    optimizer: str, batch_size: int | None, target_train_loss: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, y_test) as (M, n) tensors of X's dtype and device; a bad argument raises."""
    if X.dim() != 4:
        raise InvalidParameterError(f"X must be (M, n, P, d); got shape {tuple(X.shape)}")
    M, n, P, d = X.shape
    y = _labels(y, M, n, "y", X)
    if (X_test is None) != (y_test is None):
        raise InvalidParameterError("give both X_test and y_test or neither")
    if X_test is not None:
        if X_test.dim() != 4 or X_test.shape[0] != M or X_test.shape[-1] != d:
            raise InvalidParameterError(f"X_test must be (M={M}, n_test, P, d={d}); got {tuple(X_test.shape)}")
        y_test = _labels(y_test, M, X_test.shape[1], "y_test", X_test)
    if optimizer not in get_args(CnnOptimizer):
        raise InvalidParameterError(f"optimizer must be 'gd' or 'sgd', got {optimizer!r}")
    if optimizer == "sgd" and not (batch_size and 1 <= batch_size <= n):
        raise InvalidParameterError(f"sgd needs 1 <= batch_size <= n={n}, got {batch_size}")
    if target_train_loss is not None and not target_train_loss > 0:
        raise InvalidParameterError(f"target_train_loss must be > 0 or None, got {target_train_loss}")
    return y, y_test


def _full_batch_loss(
    model: TwoLayerCNN, X: torch.Tensor, y: torch.Tensor, target: _TargetLoss
) -> Callable[[int], torch.Tensor]:
    """Gradient descent's loss at step ``step``: the (M,) full-batch losses."""
    def loss_fn(step: int) -> torch.Tensor:
        losses = logistic_loss(model(X), y)  # (M,), the full-batch loss after `step` updates
        target.check(losses, step)
        return target.mask(losses)

    return loss_fn


def _mini_batch_loss(
    model: TwoLayerCNN, X: torch.Tensor, y: torch.Tensor, target: _TargetLoss, batch_size: int, batch_seed: int
) -> Callable[[int], torch.Tensor]:
    """SGD's loss at step ``step``: one batch of an epoch's permutation, the same for every model."""
    n = X.shape[1]
    gen = torch.Generator().manual_seed(int(batch_seed))
    per_epoch = n // batch_size
    order: list[torch.Tensor] = []

    def loss_fn(step: int) -> torch.Tensor:
        if target.target is not None:  # the stop rule reads the full-batch loss, not a batch's
            with torch.no_grad():
                target.check(logistic_loss(model(X), y), step)
        epoch, b = divmod(step, per_epoch)
        while len(order) <= epoch:
            order.append(torch.randperm(n, generator=gen).to(X.device))
        idx = order[epoch][b * batch_size:(b + 1) * batch_size]
        return target.mask(logistic_loss(model(X[:, idx]), y[:, idx]))

    return loss_fn


def _final_values(res) -> dict[str, torch.Tensor]:
    """Per-model (M,) values of the last logged row; NaN for a model that did not end "ok"."""
    last_step = res.history[-1]["step"]
    last = [r for r in res.history if r["step"] == last_step]
    keys = [k for k in last[0] if k not in ("step", "model")]
    final = {k: torch.tensor([float(r[k]) for r in last], dtype=torch.float64) for k in keys}
    dead = torch.tensor([s != "ok" for s in res.status])
    return {k: v.masked_fill(dead, float("nan")) for k, v in final.items()}

def _labels(y: torch.Tensor, M: int, n: int, name: str, X: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.dim() == 1:
        y = y.unsqueeze(0).expand(M, -1)
    if tuple(y.shape) != (M, n):
        raise InvalidParameterError(f"{name} must be (n={n},) or (M={M}, n={n}); got {tuple(y.shape)}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise InvalidParameterError(f"{name} must hold labels +1 and -1 only")
    return y.to(dtype=X.dtype, device=X.device)
