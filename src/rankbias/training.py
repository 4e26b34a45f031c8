"""The general trainer, and what both of rankbias's trainers share.

rankbias has two trainers, for two kinds of work:

- :func:`train` (here): any loss over a batch of independent models, step by step, with
  callbacks and per-model divergence status; the paper-1 CNN, the deep linear networks
  and the small image classifiers train with it.
- :func:`rankbias.fit.fast_classify.train_group`: image classification by epochs on a
  device-resident uint8 dataset (batches gathered and augmented on the device, one
  evaluation per epoch, a deadline); ``overparam-cifar`` trains with it. It cannot be a
  ``loss_fn`` of :func:`train`: :func:`train` measures the loss again without grad to
  log (a forward pass more per log, and per-epoch accuracy is not a loss), and a
  non-finite loss there marks a model diverged, where ``train_group`` stops and lets
  its caller retry at a smaller learning rate.

Both take their learning rate from :func:`lr_factor`, build their optimiser with
:func:`make_optimizer` and update with :func:`optimizer_step`.

Models a sweep trains many times carry a leading "model" dimension M in their
parameters; ``loss_fn(step)`` returns the per-model losses, shape (M,) (or a
scalar for a single model). The models are independent, so the gradient of the
sum of their losses is each model's own gradient and one backward pass trains
all of them. Optimisers that act element-wise (GD, SGD, momentum, Nesterov,
Adam) keep the models independent; L-BFGS couples them through its line
search and curvature pairs, so train one model per call with it.

A model whose loss becomes NaN or Inf is marked ``diverged`` at that step: its
loss no longer enters the backward pass, its non-finite gradients are zeroed so
that they cannot reach the optimiser state, and the others go on. Training
stops early only when every model has diverged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import nn

from rankbias.errors import InvalidParameterError

__all__ = [
    "OPTIMIZERS",
    "Callback",
    "TrainResult",
    "TrainState",
    "cross_entropy_loss",
    "lr_factor",
    "make_optimizer",
    "optimizer_step",
    "train",
]

OPTIMIZERS = ("gd", "sgd", "momentum", "nesterov", "adam", "lbfgs")
OptimizerName = Literal["gd", "sgd", "momentum", "nesterov", "adam", "lbfgs"]


@dataclasses.dataclass
class TrainState:
    """What callbacks see."""

    step: int
    """Steps taken so far (0 before the first update)."""
    params: list[torch.Tensor]
    """The trained parameters (leading model dimension if batched)."""
    loss: torch.Tensor
    """The last per-model losses, detached, shape (M,)."""
    alive: torch.Tensor
    """Bool (M,): False for diverged models."""
    model: nn.Module | None = None
    """The module, when one was passed."""


class Callback(Protocol):
    def on_log(self, state: TrainState) -> dict[str, Any] | None:
        """Called at step 0, every ``log_every`` steps and at the end. Return
        metrics to log: values of shape (M,) are per model, scalars for all."""


@dataclasses.dataclass
class TrainResult:
    history: list[dict[str, Any]]
    """One row per logged step and model: step, model, loss and callback metrics."""
    status: list[str]
    """Per model: "ok" or "diverged"."""
    diverged_at: list[int | None]
    """Per model: the step at which the loss became non-finite."""
    final_loss: torch.Tensor
    """Per-model loss at the last step (NaN for diverged models)."""
    steps: int
    """Steps taken."""


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier at ``step`` of ``total``: linear warm-up over ``warmup``
    steps, then ``"cosine"`` (to 0), ``"step"`` (x0.1 at 50%, x0.01 at 75%) or ``"constant"``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.01 if t >= 0.75 else (0.1 if t >= 0.5 else 1.0)
    return 1.0


def cross_entropy_loss(
    model: nn.Module, batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
) -> Callable[[int], torch.Tensor]:
    """``loss_fn(step)`` for :func:`train`: the cross-entropy of ``model`` on ``batch(step)``.

    The trainer measures losses without grad; those are taken in eval mode, so that
    batch-norm statistics see only the training steps.
    """
    import torch.nn.functional as F

    def loss_fn(step: int) -> torch.Tensor:
        xb, yb = batch(step)
        if torch.is_grad_enabled():
            return F.cross_entropy(model(xb), yb)
        model.eval()
        try:
            return F.cross_entropy(model(xb), yb)
        finally:
            model.train()

    return loss_fn


def make_optimizer(
    name: OptimizerName,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``params``.

    Parameters
    ----------
    name : str
        ``gd``/``sgd``: plain steps (full batch or mini-batch is the loss's business);
        ``momentum``/``nesterov``: SGD with momentum; ``adam``; ``lbfgs`` (strong-Wolfe
        line search, ``lr`` its initial step).
    params : iterable of Tensor or of dict
        The parameters, or parameter groups (dicts with ``params``; a group's own
        ``weight_decay`` overrides the argument, e.g. none on biases).
    lr, momentum, weight_decay : float
        Learning rate, momentum (momentum / nesterov only), L2 decay (not L-BFGS).

    Returns
    -------
    torch.optim.Optimizer

    Raises
    ------
    InvalidParameterError
        An unknown ``name``.

    Examples
    --------
    >>> w = torch.zeros(2, requires_grad=True)
    >>> type(make_optimizer("nesterov", [w], 0.1)).__name__
    'SGD'
    """
    params = list(params)
    if name in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "lbfgs":
        return torch.optim.LBFGS(params, lr=lr, line_search_fn="strong_wolfe", history_size=20)
    raise InvalidParameterError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")


def optimizer_step(
    opt: torch.optim.Optimizer,
    objective: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    sanitize: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """One update of ``opt``, the step both trainers take (:func:`train` and
    :func:`rankbias.fit.fast_classify.train_group`).

    Parameters
    ----------
    opt : torch.optim.Optimizer
        The optimiser; L-BFGS gets a closure (its line search evaluates ``objective`` again).
    objective : callable
        ``() -> (losses, total)``: the per-model losses and the scalar that is minimised.
    sanitize : sequence of Tensor
        Parameters whose non-finite gradient entries are zeroed before the update, so that
        a diverged model cannot reach the optimiser state (:func:`train`'s divergence
        status); empty: the gradients are used as they are.

    Returns
    -------
    Tensor
        The detached per-model losses of the first evaluation (before the update).
    """
    first: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        losses, total = objective()
        total.backward()
        for p in sanitize:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        if not first:
            first.append(losses.detach())
        return total

    if isinstance(opt, torch.optim.LBFGS):
        opt.step(closure)
    else:
        closure()
        opt.step()
    return first[0]


class _Tracker:
    """What :func:`train` keeps over its steps: the state callbacks see, which models are alive,
    the step at which each diverged, and the logged rows (per model: the loss and the
    callbacks' metrics)."""

    def __init__(
        self,
        loss0: torch.Tensor,
        params: list[torch.Tensor],
        model: nn.Module | None,
        callbacks: Sequence[Callback],
    ):
        self.alive = torch.isfinite(loss0)
        self.diverged_at: list[int | None] = [None if bool(a) else 0 for a in self.alive]
        self.state = TrainState(0, params, loss0.clone(), self.alive.clone(), model)
        self.callbacks = callbacks
        self.history: list[dict[str, Any]] = []

    def update(self, step: int, losses: torch.Tensor, measured_at: int) -> None:
        """The state after ``step``; models whose ``losses`` (measured at step ``measured_at``)
        are not finite diverged there."""
        bad = ~torch.isfinite(losses).cpu() & self.alive
        for i in torch.nonzero(bad).flatten().tolist():
            self.diverged_at[i] = measured_at
        self.alive &= ~bad
        self.state.step, self.state.loss, self.state.alive = step, losses, self.alive.clone()

    def log(self) -> None:
        state, n = self.state, self.alive.shape[0]
        rows = [{"step": state.step, "model": i, "loss": float(state.loss[i])} for i in range(n)]
        for cb in self.callbacks:
            metrics = cb.on_log(state) or {}
            for key, val in metrics.items():
                val = torch.as_tensor(val).detach().cpu().reshape(-1)
                for i, row in enumerate(rows):
                    row[key] = (val[i] if val.numel() == n else val[0]).item()
        self.history.extend(rows)


def train(
    loss_fn: Callable[[int], torch.Tensor],
    params: nn.Module | Sequence[torch.Tensor],
    *,
    steps: int,
    optimizer: OptimizerName | torch.optim.Optimizer = "gd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    log_every: int = 10,
    callbacks: Sequence[Callback] = (),
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    progress: bool | None = False,
    desc: str = "train",
    stop: Callable[[TrainState], bool] | None = None,
) -> TrainResult:
    """Minimise ``loss_fn(step)`` (per-model losses (M,) or a scalar) for ``steps`` steps.

    Parameters
    ----------
    loss_fn : callable
        ``step -> losses``; also called without grad to log (at step 0, every ``log_every``
        steps and at the end).
    params : nn.Module or sequence of Tensor
        A module (its parameters are trained) or a list of leaf tensors.
    steps : int
        Updates to take (>= 0).
    optimizer : str or torch.optim.Optimizer
        A name of :data:`OPTIMIZERS` (built by :func:`make_optimizer` from ``lr``,
        ``momentum`` and ``weight_decay``) or a built optimiser.
    log_every : int
        Steps between logged rows (>= 1).
    callbacks : sequence of Callback
        Asked for metrics at every logged step.
    scheduler : callable, optional
        Built from the optimiser, stepped once per step.
    progress : bool or None
        A tqdm bar (None: only on a terminal).
    desc : str
        The bar's label.
    stop : callable, optional
        Asked after every step; training ends early when it returns True (e.g. once every
        model has met a per-model stopping rule).

    Returns
    -------
    TrainResult

    Raises
    ------
    InvalidParameterError
        ``steps < 0`` or ``log_every < 1``.

    Examples
    --------
    >>> w = torch.zeros(3, requires_grad=True)
    >>> res = train(lambda step: (w - 1).square().sum(), [w], steps=50, lr=0.1)
    >>> res.status, round(float(res.final_loss[0]), 6)
    (['ok'], 0.0)
    """
    if steps < 0:
        raise InvalidParameterError(f"steps must be >= 0, got {steps}")
    if log_every < 1:
        raise InvalidParameterError(f"log_every must be >= 1, got {log_every}")
    model = params if isinstance(params, nn.Module) else None
    plist = [p for p in (model.parameters() if model is not None else params) if p.requires_grad]
    opt = (
        optimizer
        if isinstance(optimizer, torch.optim.Optimizer)
        else make_optimizer(optimizer, plist, lr, momentum=momentum, weight_decay=weight_decay)
    )
    sched = scheduler(opt) if scheduler is not None else None
    with torch.no_grad():
        loss0 = torch.atleast_1d(loss_fn(0)).detach()
    tr = _Tracker(loss0, plist, model, callbacks)
    tr.log()
    bar = _progress_bar(progress, steps, desc)
    step = _steps(loss_fn, opt, sched, tr, steps=steps, log_every=log_every, stop=stop, bar=bar)
    with torch.no_grad():
        final = torch.atleast_1d(loss_fn(step)).detach()
    tr.update(step, final, step)
    if steps > 0 and (not tr.history or tr.history[-1]["step"] != step):
        tr.log()
    final = torch.where(tr.alive.to(final.device), final, torch.full_like(final, float("nan")))
    status = ["ok" if bool(a) else "diverged" for a in tr.alive]
    return TrainResult(tr.history, status, tr.diverged_at, final, step)


def _progress_bar(progress: bool | None, steps: int, desc: str):
    if progress is False:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, disable=None if progress is None else False, leave=False)


def _steps(loss_fn, opt, sched, tr: _Tracker, *, steps: int, log_every: int, stop, bar) -> int:
    """:func:`train`'s loop: returns the steps taken."""
    alive = tr.alive  # updated in place: a diverged model's loss leaves the objective

    def objective(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        losses = torch.atleast_1d(loss_fn(step))
        masked = torch.where(alive.to(losses.device), losses, torch.zeros_like(losses))
        return losses, masked.sum()

    step = 0
    for step in range(1, steps + 1):
        losses = optimizer_step(
            opt, lambda step=step: objective(step - 1), sanitize=tr.state.params
        )
        if sched is not None:
            sched.step()
        tr.update(step, losses, step - 1)
        if bar is not None:
            bar.update(1)
        if not bool(alive.any()) or (stop is not None and stop(tr.state)):
            break
        if step % log_every == 0 and step != steps:
            # losses above were measured before this step's update; re-measure
            with torch.no_grad():
                tr.state.loss = torch.atleast_1d(loss_fn(step)).detach()
            tr.log()
    if bar is not None:
        bar.close()
    return step
