"""The one trainer: a gradient loop over a batch of independent models, with
callbacks and per-model divergence status.

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

__all__ = ["Callback", "TrainResult", "TrainState", "cross_entropy_loss", "lr_factor", "make_optimizer", "train", "OPTIMIZERS"]

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
    params: Iterable[torch.Tensor],
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """``gd``/``sgd``: plain steps (full batch or mini-batch is the loss's
    business); ``momentum``/``nesterov``: SGD with momentum; ``adam``; ``lbfgs``
    (strong-Wolfe line search, ``lr`` its initial step)."""
    params = list(params)
    if name in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "lbfgs":
        return torch.optim.LBFGS(params, lr=lr, line_search_fn="strong_wolfe", history_size=20)
    raise ValueError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")


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

    ``params``: a module (its parameters are trained) or a list of leaf tensors.
    ``scheduler``: built from the optimiser, stepped once per step.
    ``progress``: a tqdm bar (None: only on a terminal).
    ``stop``: asked after every step; training ends early when it returns True (e.g. once
    every model has met a per-model stopping rule).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    model = params if isinstance(params, nn.Module) else None
    plist = [p for p in (model.parameters() if model is not None else params) if p.requires_grad]
    opt = (
        optimizer
        if isinstance(optimizer, torch.optim.Optimizer)
        else make_optimizer(optimizer, plist, lr, momentum=momentum, weight_decay=weight_decay)
    )
    sched = scheduler(opt) if scheduler is not None else None
    is_lbfgs = isinstance(opt, torch.optim.LBFGS)

    with torch.no_grad():
        loss0 = torch.atleast_1d(loss_fn(0)).detach()
    n_models = loss0.shape[0]
    alive = torch.isfinite(loss0)
    diverged_at: list[int | None] = [None if bool(a) else 0 for a in alive]
    history: list[dict[str, Any]] = []
    state = TrainState(0, plist, loss0.clone(), alive.clone(), model)

    def log(state: TrainState) -> None:
        rows = [{"step": state.step, "model": i, "loss": float(state.loss[i])} for i in range(n_models)]
        for cb in callbacks:
            metrics = cb.on_log(state) or {}
            for key, val in metrics.items():
                val = torch.as_tensor(val).detach().cpu()
                for i, row in enumerate(rows):
                    row[key] = (val.reshape(-1)[i] if val.numel() == n_models else val.reshape(-1)[0]).item()
        history.extend(rows)

    def objective(step: int) -> torch.Tensor:
        losses = torch.atleast_1d(loss_fn(step))
        masked = torch.where(alive.to(losses.device), losses, torch.zeros_like(losses))
        return losses, masked.sum()

    log(state)
    bar = None
    if progress is not False:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, disable=None if progress is None else False, leave=False)
    step = 0
    for step in range(1, steps + 1):
        last: dict[str, torch.Tensor] = {}

        def closure(step=step, last=last):
            opt.zero_grad(set_to_none=True)
            losses, total = objective(step - 1)
            total.backward()
            for p in plist:
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
            if "losses" not in last:
                last["losses"] = losses.detach()
            return total

        if is_lbfgs:
            opt.step(closure)
        else:
            closure()
            opt.step()
        if sched is not None:
            sched.step()
        losses = last["losses"]
        bad = ~torch.isfinite(losses).cpu() & alive
        if bool(bad.any()):
            for i in torch.nonzero(bad).flatten().tolist():
                diverged_at[i] = step - 1
            alive &= ~bad
        state.step, state.loss, state.alive = step, losses, alive.clone()
        if bar is not None:
            bar.update(1)
        if not bool(alive.any()) or (stop is not None and stop(state)):
            break
        if step % log_every == 0 and step != steps:
            # losses above were measured before this step's update; re-measure
            with torch.no_grad():
                state.loss = torch.atleast_1d(loss_fn(step)).detach()
            log(state)
    if bar is not None:
        bar.close()
    with torch.no_grad():
        final = torch.atleast_1d(loss_fn(step)).detach()
    newly = ~torch.isfinite(final).cpu() & alive
    for i in torch.nonzero(newly).flatten().tolist():
        diverged_at[i] = step
    alive &= ~newly
    state.step, state.loss, state.alive = step, final, alive.clone()
    if steps > 0 and (not history or history[-1]["step"] != step):
        log(state)
    final = torch.where(alive.to(final.device), final, torch.full_like(final, float("nan")))
    status = ["ok" if bool(a) else "diverged" for a in alive]
    return TrainResult(history, status, diverged_at, final, step)
