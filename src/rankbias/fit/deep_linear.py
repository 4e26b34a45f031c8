"""Training deep linear networks to fit a matrix from input/output pairs.

Huh et al. (2023), "The Low-Rank Simplicity Bias in Deep Networks", sec. 4 (see
``docs/paper2-depth.md``, C.2): deeper networks find end-to-end maps of lower
effective rank. The tasks are :mod:`rankbias.data.matrix_tasks`.

:func:`fit_deep_linear` trains many deep linear networks (depths x seeds x
tasks) on their tasks with :func:`rankbias.training.train`, as one batched
computation (shallower networks padded with frozen identity factors, see
:class:`~rankbias.models.deep_linear.DeepLinear`) or one network at a time
(``batched=False``; always so for L-BFGS, whose line search would couple the
networks of a batch). ``optimizer="random_search"`` uses the gradient-free
:func:`rankbias.fit.random_search.fit_random_search` instead, batched over networks.

Stopping (:class:`StopRule`, one mechanism for both criteria): with ``plateau_tol``
set, network m stops after the first step t >= ``plateau_window`` at which its
full-batch training loss moved by at most ``plateau_tol`` relative over the last
``plateau_window`` steps, |l(t - w) - l(t)| <= tol |l(t - w)| (:func:`plateau_step`);
with ``target_train_loss`` set, after the first step at which l(t) <= the target.
``steps`` is the cap; :class:`FitResult` reports each network's steps taken and
whether the cap bound. A stopped network of a batch is frozen where it stopped
(its parameters are restored after every optimiser step, so momentum or Adam state
cannot move it) while the others train on; the batch ends when every network has
stopped or diverged.

Threads: nothing here sets torch's thread count; the caller (the experiment
runner) owns it. Small n x n CPU matmuls gain nothing from intra-op threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from rankbias.data.matrix_tasks import MatrixFitTask
from rankbias.errors import InvalidParameterError
from rankbias.fit.random_search import fit_random_search
from rankbias.measures import rank_measures
from rankbias.models.deep_linear import DeepLinear, end_to_end
from rankbias.training import OPTIMIZERS, make_optimizer, train

__all__ = ["FIT_OPTIMIZERS", "FitResult", "ScaleOf", "StopRule", "fit_deep_linear", "plateau_step"]

ScaleOf = Literal["factor", "end_to_end"]

FIT_OPTIMIZERS = (*OPTIMIZERS, "random_search")


@dataclasses.dataclass
class FitResult:
    end_to_end: torch.Tensor
    """(M, n, n) the trained end-to-end maps."""
    train_loss: torch.Tensor
    """(M,) mean squared error per coordinate on the training pairs (NaN if diverged)."""
    test_loss: torch.Tensor
    """(M,) the same on the held-out pairs."""
    entropy_rank: torch.Tensor
    """(M,) entropy rank of the end-to-end map (NaN if diverged)."""
    status: list[str]
    """Per network: "ok" or "diverged"."""
    history: list[dict]
    """Logged rows: step, model, loss (training objective), train_loss, test_loss, entropy_rank."""
    steps_taken: list[int] = dataclasses.field(default_factory=list)
    """Per network: optimiser steps after which its parameters are the returned ones."""
    cap_bound: list[bool] = dataclasses.field(default_factory=list)
    """Per network: True when a stopping rule was set, it never fired and the step cap ended
    the training (False when the rule fired, or without a rule)."""
    lr: list[float] = dataclasses.field(default_factory=list)
    """Per network: the learning rate it was trained with."""
    lr_selection: list[dict] = dataclasses.field(default_factory=list)
    """When a learning-rate grid was searched (``rankbias.experiments._depth.fit_sweep``):
    per (group, depth) the grid, the criterion's value per grid point and the choice."""


PLATEAU_MIN_DROP = 0.5
"""A plateau counts only once the training loss is at most this fraction of its value at
step 0: a deep linear net with a small end-to-end scale starts on a saddle where the loss is
nearly flat, and stopping there would report its initial (already low) rank as converged.
A network that never gets there trains on to the cap, which is reported."""


def plateau_step(losses: Sequence[float], *, window: int, tol: float,
                 target: float | None = None) -> int | None:
    """The stopping rule on one loss curve (``losses[t]``: the full-batch training loss after
    t steps): the first t >= ``window`` with l(t) <= PLATEAU_MIN_DROP l(0) and
    |l(t - window) - l(t)| <= ``tol`` |l(t - window)|, or the first t with l(t) <= ``target``;
    None when neither happens (the cap binds)."""
    for t, cur in enumerate(losses):
        if target is not None and cur <= target:
            return t
        if (t >= window and cur <= PLATEAU_MIN_DROP * losses[0]
                and abs(losses[t - window] - cur) <= tol * abs(losses[t - window])):
            return t
    return None


class StopRule:
    """Per-network stopping of a batch by :func:`plateau_step`'s rule, applied online.

    ``check(losses, step)`` is handed the full-batch training losses after ``step``
    updates (once per step); a network that meets the rule is snapshotted and
    ``restore()`` (an optimiser post-step hook) puts it back after every later update:
    the exact parameters it had when it stopped, whatever the optimiser's state.
    """

    def __init__(self, params: torch.Tensor, *, tol: float | None, window: int,
                 target: float | None = None):
        M = params.shape[0]
        self.params, self.tol, self.window, self.target = params, tol, window, target
        self.enabled = tol is not None or target is not None
        self.ring = torch.full((window + 1, M), float("nan"), dtype=torch.float64)
        self.active = torch.ones(M, dtype=torch.bool)
        self.stopped_at: list[int | None] = [None] * M
        self.snapshot = params.detach().clone()
        self.start: torch.Tensor | None = None  # l(0) per network, for PLATEAU_MIN_DROP
        self._last = -1

    def check(self, losses: torch.Tensor, step: int) -> None:
        if not self.enabled or step <= self._last:
            return
        self._last = step
        cur = losses.detach().double().cpu()
        if self.start is None:
            self.start = cur.clone()
        self.ring[step % (self.window + 1)] = cur
        hit = torch.zeros_like(self.active)
        if self.target is not None:
            hit |= cur <= self.target
        if self.tol is not None and step >= self.window:
            prev = self.ring[(step - self.window) % (self.window + 1)]
            hit |= ((prev - cur).abs() <= self.tol * prev.abs()) & (cur <= PLATEAU_MIN_DROP * self.start)
        hit &= self.active
        if bool(hit.any()):
            idx = torch.nonzero(hit).flatten()
            with torch.no_grad():
                self.snapshot[idx.to(self.params.device)] = self.params.detach()[idx.to(self.params.device)]
            for i in idx.tolist():
                self.stopped_at[i] = step
            self.active &= ~hit

    @torch.no_grad()
    def restore(self, *_args) -> None:
        frozen = (~self.active).to(self.params.device)
        if bool(frozen.any()):
            self.params[frozen] = self.snapshot[frozen]


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (pred - y).square().mean((-2, -1))


class _Probe:
    """Callback: full-batch train and test loss, the entropy rank and the ``top_k``
    largest singular values (``sv1`` >= ``sv2`` >= ...) of W_e, per network."""

    def __init__(self, net: DeepLinear, xtr, ytr, xte, yte, top_k: int = 0):
        self.net, self.data, self.top_k = net, (xtr, ytr, xte, yte), top_k

    @torch.no_grad()
    def on_log(self, state):
        xtr, ytr, xte, yte = self.data
        We = self.net.end_to_end()
        ok = torch.isfinite(We).all(-1).all(-1)
        h = torch.full(ok.shape, float("nan"), dtype=torch.float64)
        if bool(ok.any()):
            h[ok] = rank_measures(We[ok], ["entropy_rank"])["entropy_rank"].cpu()
        out = {"train_loss": _mse(xtr @ We.mT, ytr), "test_loss": _mse(xte @ We.mT, yte),
               "entropy_rank": h}
        if self.top_k:
            sv = torch.full((We.shape[0], self.top_k), float("nan"), dtype=torch.float64)
            if bool(ok.any()):
                sv[ok] = torch.linalg.svdvals(We[ok])[:, : self.top_k].cpu().double()
            out.update({f"sv{i + 1}": sv[:, i] for i in range(self.top_k)})
        return out


def fit_deep_linear(
    tasks: Sequence[MatrixFitTask],
    task_index: Sequence[int],
    depths: Sequence[int],
    *,
    optimizer: str = "gd",
    lr: float = 0.01,
    steps: int = 1000,
    momentum: float = 0.9,
    batch_size: int | None = None,
    init: str | Sequence[str] = "normal",
    init_scale: float | Sequence[float] = 1.0,
    scale_of: ScaleOf = "factor",
    batched: bool = True,
    group_by_depth: bool = False,
    population: int = 16,
    top_k: int = 0,
    log_every: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = False,
    plateau_tol: float | None = None,
    plateau_window: int = 500,
    target_train_loss: float | None = None,
) -> FitResult:
    """Train M = len(depths) deep linear networks, network m of depth ``depths[m]``
    on ``tasks[task_index[m]]``, and measure them.

    Parameters
    ----------
    tasks : sequence of MatrixFitTask
        The problems (:func:`rankbias.data.matrix_tasks.make_task`), all of one n.
    task_index : sequence of int
        Per network, the index of its task in ``tasks``.
    depths : sequence of int
        Per network, its depth (>= 1).
    optimizer : str, default "gd"
        One of :data:`FIT_OPTIMIZERS`.
    lr : float, default 0.01
        Learning rate (random search's initial step size).
    steps : int, default 1000
        Optimiser steps (the cap when a stopping rule is set).
    momentum : float, default 0.9
        Momentum of the optimisers that have one.
    batch_size : int, optional
        Training pairs per step (mini-batch SGD, drawn from ``generator``); None
        uses all of them.
    init : str or sequence of str, default "normal"
        The factors' distribution, one for all networks or one per network.
    init_scale : float or sequence of float, default 1.0
        One value for all networks or one per network; see ``scale_of``.
    scale_of : {"factor", "end_to_end"}, default "factor"
        ``init_scale`` is each factor's gain (``factor``: the end-to-end map of a
        depth-L network then has gain init_scale^L), or the end-to-end map's gain
        at every depth (``end_to_end``: each factor gets init_scale^(1/L)).
    batched : bool, default True
        ``False`` trains the same networks (same initial factors, same
        mini-batches) one at a time; L-BFGS always does.
    group_by_depth : bool, default False
        When batched: one batch per depth (no padding); else one batch for all,
        shallower networks padded with frozen identity factors.
    population : int, default 16
        Random search's perturbations per step.
    top_k : int, default 0
        Also log the k largest singular values of every end-to-end map (``sv1``
        ... ``svk`` in ``history``).
    log_every : int, optional
        Log every this many steps (default: at the end only).
    generator : torch.Generator, optional
        The source of the initial factors and the mini-batches.
    progress : bool, optional
        A progress bar (None: only on a terminal; default off).
    plateau_tol, plateau_window, target_train_loss : float, int, float
        The stopping rule of the module docstring (first-order optimisers only;
        ``steps`` is then the cap).

    Returns
    -------
    FitResult
        The end-to-end maps (M, n, n), train and test losses, entropy ranks,
        status ("ok" or "diverged"), history and steps taken, per network.

    Raises
    ------
    InvalidParameterError
        An unknown optimizer or ``scale_of``; ``task_index`` of another length than
        ``depths`` or out of range; ``batch_size`` not in [1, n_train], or set
        with L-BFGS or random search (full-batch losses only);
        ``top_k`` not in [0, n]; a stopping rule with an optimiser that does not
        take one, or out of range; a bad ``init`` or ``init_scale``.

    Examples
    --------
    >>> import torch
    >>> from rankbias.data.matrix_tasks import make_task
    >>> from rankbias.papers import fit_deep_linear
    >>> g = torch.Generator().manual_seed(0)
    >>> task = make_task(4, "low_rank", rank=1, n_train=16, n_test=16, generator=g)
    >>> res = fit_deep_linear([task], [0, 0], depths=[1, 3], lr=0.1, steps=20, generator=g)
    >>> res.status, res.steps_taken, tuple(res.end_to_end.shape)
    (['ok', 'ok'], [20, 20], (2, 4, 4))
    >>> bool(res.entropy_rank[1] < res.entropy_rank[0])  # the deeper map has the lower rank
    True
    """
    M = len(depths)
    _check_fit_arguments(optimizer, scale_of, M, task_index, batch_size)
    rule = dict(tol=plateau_tol, window=plateau_window, target=target_train_loss)
    _check_rule(optimizer, **rule)
    t0 = tasks[0]
    n, n_train = t0.target.shape[0], t0.x_train.shape[0]
    if batch_size is not None and not 1 <= batch_size <= n_train:
        raise InvalidParameterError(f"batch_size must be in [1, n_train={n_train}] or None, got {batch_size}")
    data = _stacked_tasks(tasks, task_index)  # (xtr, ytr, xte, yte), each (M, pairs, n)
    dev = t0.target.device
    if not 0 <= top_k <= n:
        raise InvalidParameterError(f"top_k must be in [0, n={n}], got {top_k}")
    net = _initial_network(depths, n, init, init_scale, scale_of, generator, t0.target)
    batches = None
    if batch_size is not None:  # (steps, M, batch): drawn up front, so batched == looped
        batches = torch.rand((steps, M, n_train), generator=generator, device=dev).argsort(-1)[..., :batch_size]
    log_every = log_every or max(steps, 1)

    if optimizer == "random_search":
        history = _deep_linear_random_search(net, *data, steps=steps, sigma=lr, population=population,
                                     generator=generator, batched=batched, top_k=top_k)
        status, taken = ["ok"] * M, [steps] * M
    else:
        groups = _fit_groups(depths, batched=batched and optimizer != "lbfgs", group_by_depth=group_by_depth)
        status, history, taken = _fit_gradient_groups(
            net, depths, groups, data, batches, optimizer=optimizer, lr=lr, steps=steps, momentum=momentum,
            log_every=log_every, top_k=top_k, progress=progress, rule=rule)
    We, trl, tel, h, status = _measure_fits(net, status, data)
    has_rule = plateau_tol is not None or target_train_loss is not None
    bound = [has_rule and t >= steps and s == "ok" for t, s in zip(taken, status)]
    return FitResult(We.detach(), trl, tel, h, status, history, taken, bound, [float(lr)] * M)


def _check_fit_arguments(optimizer: str, scale_of: str, M: int, task_index: Sequence[int],
                         batch_size: int | None) -> None:
    if scale_of not in get_args(ScaleOf):
        raise InvalidParameterError(f"scale_of must be 'factor' or 'end_to_end', got {scale_of!r}")
    if optimizer not in FIT_OPTIMIZERS:
        raise InvalidParameterError(f"optimizer must be one of {FIT_OPTIMIZERS}, got {optimizer!r}")
    if len(task_index) != M:
        raise InvalidParameterError(f"task_index has {len(task_index)} entries for {M} networks")
    if optimizer in ("lbfgs", "random_search") and batch_size is not None:
        raise InvalidParameterError(f"{optimizer} needs full-batch losses: set batch_size=None")


def _stacked_tasks(tasks: Sequence[MatrixFitTask], task_index: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) of every network's task, each (M, pairs, n)."""
    idx = torch.as_tensor(list(task_index))
    return tuple(torch.stack([getattr(t, k) for t in tasks])[idx] for k in ("x_train", "y_train", "x_test", "y_test"))


def _initial_network(depths: Sequence[int], n: int, init, init_scale, scale_of: str,
                     generator: torch.Generator | None, like: torch.Tensor) -> DeepLinear:
    M = len(depths)
    scale = [float(init_scale)] * M if isinstance(init_scale, int | float) else list(init_scale)
    if len(scale) != M:
        raise InvalidParameterError(f"init_scale: expected a float or {M} floats, got {len(scale)}")
    scales = scale if scale_of == "factor" else [s ** (1 / d) for s, d in zip(scale, depths)]
    return DeepLinear(depths, n, init=init, init_scale=scales, generator=generator,
                      dtype=like.dtype, device=like.device)


def _fit_groups(depths: Sequence[int], *, batched: bool, group_by_depth: bool) -> list[list[int]]:
    """Which networks train together: each alone, one batch per depth, or one padded batch."""
    M = len(depths)
    if not batched:
        return [[m] for m in range(M)]
    if group_by_depth:  # one unpadded batch per depth: no work on identity factors
        return [[m for m in range(M) if depths[m] == d] for d in sorted(set(depths))]
    return [list(range(M))]  # one batch, shallower networks padded with identities


def _fit_gradient_groups(net: DeepLinear, depths: Sequence[int], groups: list[list[int]], data, batches, *,
                         progress, **fit) -> tuple[list[str], list[dict], list[int]]:
    """Train each group of ``net``'s networks by :func:`_fit_gradient`; write the trained
    factors back into ``net``; return (status, history, steps taken) per network."""
    xtr, ytr, xte, yte = data
    M = len(depths)
    status, history, taken = ["ok"] * M, [], [fit["steps"]] * M
    factors = net.factors.detach()
    trained = []
    for group in groups:
        sub = DeepLinear.from_factors([list(factors[m, : depths[m]]) for m in group])
        gi = torch.as_tensor(group, device=xtr.device)
        st, hist, tk = _fit_gradient(
            sub, xtr[gi], ytr[gi], xte[gi], yte[gi], None if batches is None else batches[:, gi],
            progress=progress if len(groups) == 1 else False, **fit)
        for j, m in enumerate(group):
            status[m], taken[m] = st[j], tk[j]
        history += [{**r, "model": group[r["model"]]} for r in hist]
        trained.append((group, sub.factors.detach()))
    with torch.no_grad():
        for group, F in trained:
            for j, m in enumerate(group):
                net.factors[m, : depths[m]] = F[j, : depths[m]]
    history.sort(key=lambda r: (r["step"], r["model"]))
    return status, history, taken


def _measure_fits(net: DeepLinear, status: list[str], data) -> tuple:
    """(W_e, train MSE, test MSE, entropy rank, status) per network; NaN where it diverged."""
    xtr, ytr, xte, yte = data
    M = len(status)
    with torch.no_grad():
        We = net.end_to_end()
        alive = torch.tensor([s == "ok" for s in status]) & torch.isfinite(We).all(-1).all(-1).cpu()
        nan = torch.full((M,), float("nan"), dtype=torch.float64)
        h, trl, tel = nan.clone(), nan.clone(), nan.clone()
        if bool(alive.any()):
            h[alive] = rank_measures(We[alive], ["entropy_rank"])["entropy_rank"].cpu()
            trl[alive] = _mse(xtr @ We.mT, ytr)[alive].cpu().double()
            tel[alive] = _mse(xte @ We.mT, yte)[alive].cpu().double()
    return We, trl, tel, h, ["ok" if bool(a) else "diverged" for a in alive]


def _check_rule(optimizer: str, *, tol, window, target) -> None:
    if tol is not None and not tol > 0:
        raise InvalidParameterError(f"plateau_tol must be > 0 or None, got {tol}")
    if window < 1:
        raise InvalidParameterError(f"plateau_window must be >= 1, got {window}")
    if target is not None and not target > 0:
        raise InvalidParameterError(f"target_train_loss must be > 0 or None, got {target}")
    if (tol is not None or target is not None) and optimizer in ("lbfgs", "random_search"):
        # L-BFGS evaluates the loss at line-search points inside a step, and random search has
        # its own loop: the rule reads one full-batch loss per first-order step
        raise InvalidParameterError(f"a stopping rule (plateau_tol, target_train_loss) needs a first-order "
                         f"optimizer ({', '.join(o for o in OPTIMIZERS if o != 'lbfgs')}); "
                         f"{optimizer} takes a fixed number of steps")


def _fit_gradient(net, xtr, ytr, xte, yte, batches, *, optimizer, lr, steps, momentum,
                  log_every, top_k, progress, rule):
    M = net.n_models
    rows = torch.arange(M, device=xtr.device)[:, None]
    stop = StopRule(net.factors, **rule)

    def loss_fn(step: int) -> torch.Tensor:
        if batches is None or step >= steps:
            full = _mse(net(xtr), ytr)  # (M,), after `step` updates
            stop.check(full, step)
            return full
        if stop.enabled:  # the rule reads the full-batch loss, not a mini-batch's
            with torch.no_grad():
                stop.check(_mse(net(xtr), ytr), step)
        b = batches[step]  # (M, batch)
        return _mse(net(xtr[rows, b]), ytr[rows, b])

    opt = make_optimizer(optimizer, [net.factors], lr, momentum=momentum)
    if stop.enabled:
        opt.register_step_post_hook(stop.restore)
    res = train(loss_fn, net, steps=steps, optimizer=opt, log_every=log_every,
                callbacks=[_Probe(net, xtr, ytr, xte, yte, top_k)], progress=progress,
                desc=f"{optimizer} x{M}",
                stop=(lambda s: not bool((stop.active & s.alive).any())) if stop.enabled else None)
    taken = [res.steps if t is None else t for t in stop.stopped_at]
    return res.status, res.history, taken


def _deep_linear_random_search(net, xtr, ytr, xte, yte, *, steps, sigma, population, generator,
                       batched, top_k):
    mask = net.mask

    def loss_of(factors: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        # factors: (B, L_max, n, n) candidates of networks ``models`` (B,)
        We = end_to_end(factors, mask[models])
        return _mse(xtr[models] @ We.mT, ytr[models])

    probe = _Probe(net, xtr, ytr, xte, yte, top_k)
    history: list[dict] = []

    def log(step, loss):
        metrics = probe.on_log(None)
        for m in range(net.n_models):
            history.append({"step": step, "model": m, "loss": float(loss[m]),
                            **{k: float(v[m]) for k, v in metrics.items()}})

    with torch.no_grad():
        groups = [torch.arange(net.n_models)] if batched else [torch.tensor([m]) for m in range(net.n_models)]
        best = torch.empty(net.n_models, dtype=torch.float64)
        for models in groups:
            x0 = net.factors.detach()[models]
            res = fit_random_search(
                lambda F, models=models: loss_of(F, models.repeat_interleave(F.shape[0] // len(models))),
                x0, steps=steps, population=population, sigma=sigma, generator=generator,
                mask=mask[models][..., None, None].expand_as(x0))
            net.factors[models] = res.params
            best[models] = res.loss.cpu().double()
        log(steps, best)
    return history
