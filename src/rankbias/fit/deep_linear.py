"""Training deep linear networks to fit a matrix from input/output pairs.

Huh et al. (2023), "The Low-Rank Simplicity Bias in Deep Networks", sec. 4 (see
``docs/paper2-depth.md``, C.2): deeper networks find end-to-end maps of lower
effective rank. The tasks are :mod:`rankbias.data.matrix_tasks`.

:func:`fit_deep_linear` trains many deep linear networks (depths x seeds x
tasks) on their tasks with :func:`rankbias.train.train`, as one batched
computation (shallower networks padded with frozen identity factors, see
:class:`~rankbias.models.deep_linear.DeepLinear`) or one network at a time
(``batched=False``; always so for L-BFGS, whose line search would couple the
networks of a batch). ``optimizer="random_search"`` uses the gradient-free
:func:`rankbias.fit.random_search.random_search` instead, batched over networks.

Threads: nothing here sets torch's thread count; the caller (the experiment
runner) owns it. Small n x n CPU matmuls gain nothing from intra-op threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch

from rankbias.data.matrix_tasks import MatrixFitTask, TargetKind, make_task
from rankbias.fit.random_search import random_search
from rankbias.measures import rank_measures
from rankbias.models.deep_linear import DeepLinear, end_to_end
from rankbias.train import OPTIMIZERS, train

# MatrixFitTask and make_task moved to rankbias.data.matrix_tasks; re-exported here
__all__ = ["FIT_OPTIMIZERS", "FitResult", "MatrixFitTask", "TargetKind", "fit_deep_linear",
           "make_task"]

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
    scale_of: Literal["factor", "end_to_end"] = "factor",
    batched: bool = True,
    group_by_depth: bool = False,
    population: int = 16,
    top_k: int = 0,
    log_every: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = False,
) -> FitResult:
    """Train M = len(depths) deep linear networks, network m of depth ``depths[m]``
    on ``tasks[task_index[m]]``, and measure them.

    ``optimizer``: one of :data:`FIT_OPTIMIZERS` (``lr`` is random search's
    initial step size). ``batch_size``: training pairs per step (mini-batch
    SGD, drawn from ``generator``); None uses all of them. ``batched=False``
    trains the same networks (same initial factors, same mini-batches) one at
    a time; L-BFGS always does. ``group_by_depth`` (when batched): one batch
    per depth (no padding); else one batch for all, shallower networks padded
    with frozen identity factors. ``scale_of``: ``init_scale`` is each factor's
    gain (``factor``: the end-to-end map of a depth-L network then has gain
    init_scale^L), or the end-to-end map's gain at every depth (``end_to_end``:
    each factor gets init_scale^(1/L)). ``init`` and ``init_scale`` are one
    value for all networks or one per network. ``top_k``: also log the k largest
    singular values of every end-to-end map (``sv1`` ... ``svk`` in ``history``).
    """
    if scale_of not in ("factor", "end_to_end"):
        raise ValueError(f"scale_of must be 'factor' or 'end_to_end', got {scale_of!r}")
    if optimizer not in FIT_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {FIT_OPTIMIZERS}, got {optimizer!r}")
    M = len(depths)
    if len(task_index) != M:
        raise ValueError(f"task_index has {len(task_index)} entries for {M} networks")
    if optimizer in ("lbfgs", "random_search") and batch_size is not None:
        raise ValueError(f"{optimizer} needs full-batch losses: set batch_size=None")
    t0 = tasks[0]
    n, n_train = t0.target.shape[0], t0.x_train.shape[0]
    if batch_size is not None and not 1 <= batch_size <= n_train:
        raise ValueError(f"batch_size must be in [1, n_train={n_train}] or None, got {batch_size}")
    idx = torch.as_tensor(list(task_index))
    xtr = torch.stack([t.x_train for t in tasks])[idx]  # (M, n_train, n)
    ytr = torch.stack([t.y_train for t in tasks])[idx]
    xte = torch.stack([t.x_test for t in tasks])[idx]  # (M, n_test, n)
    yte = torch.stack([t.y_test for t in tasks])[idx]
    dev, dtype = t0.target.device, t0.target.dtype
    if not 0 <= top_k <= n:
        raise ValueError(f"top_k must be in [0, n={n}], got {top_k}")
    scale = [float(init_scale)] * M if isinstance(init_scale, int | float) else list(init_scale)
    if len(scale) != M:
        raise ValueError(f"init_scale: expected a float or {M} floats, got {len(scale)}")
    scales = scale if scale_of == "factor" else [s ** (1 / d) for s, d in zip(scale, depths)]
    net = DeepLinear(depths, n, init=init, init_scale=scales, generator=generator,
                     dtype=dtype, device=dev)
    batches = None
    if batch_size is not None:  # (steps, M, batch): drawn up front, so batched == looped
        batches = torch.rand((steps, M, n_train), generator=generator, device=dev).argsort(-1)[..., :batch_size]
    log_every = log_every or max(steps, 1)

    if optimizer == "random_search":
        history = _fit_random_search(net, xtr, ytr, xte, yte, steps=steps, sigma=lr,
                                     population=population, generator=generator,
                                     batched=batched, top_k=top_k)
        status = ["ok"] * M
    else:
        if not batched or optimizer == "lbfgs":
            groups = [[m] for m in range(M)]
        elif group_by_depth:  # one unpadded batch per depth: no work on identity factors
            groups = [[m for m in range(M) if depths[m] == d] for d in sorted(set(depths))]
        else:  # one batch, shallower networks padded with identities
            groups = [list(range(M))]
        status, history = ["ok"] * M, []
        factors = net.factors.detach()
        trained = []
        for group in groups:
            sub = DeepLinear.from_factors([list(factors[m, : depths[m]]) for m in group])
            gi = torch.as_tensor(group, device=xtr.device)
            st, hist = _fit_gradient(
                sub, xtr[gi], ytr[gi], xte[gi], yte[gi],
                None if batches is None else batches[:, gi], optimizer=optimizer, lr=lr,
                steps=steps, momentum=momentum, log_every=log_every, top_k=top_k,
                progress=progress if len(groups) == 1 else False)
            for j, m in enumerate(group):
                status[m] = st[j]
            history += [{**r, "model": group[r["model"]]} for r in hist]
            trained.append((group, sub.factors.detach()))
        with torch.no_grad():
            for group, F in trained:
                for j, m in enumerate(group):
                    net.factors[m, : depths[m]] = F[j, : depths[m]]
        history.sort(key=lambda r: (r["step"], r["model"]))
    with torch.no_grad():
        We = net.end_to_end()
        alive = torch.tensor([s == "ok" for s in status]) & torch.isfinite(We).all(-1).all(-1).cpu()
        nan = torch.full((M,), float("nan"), dtype=torch.float64)
        h, trl, tel = nan.clone(), nan.clone(), nan.clone()
        if bool(alive.any()):
            h[alive] = rank_measures(We[alive], ["entropy_rank"])["entropy_rank"].cpu()
            trl[alive] = _mse(xtr @ We.mT, ytr)[alive].cpu().double()
            tel[alive] = _mse(xte @ We.mT, yte)[alive].cpu().double()
    status = ["ok" if bool(a) else "diverged" for a in alive]
    return FitResult(We.detach(), trl, tel, h, status, history)


def _fit_gradient(net, xtr, ytr, xte, yte, batches, *, optimizer, lr, steps, momentum,
                  log_every, top_k, progress):
    M = net.n_models
    rows = torch.arange(M, device=xtr.device)[:, None]

    def loss_fn(step: int) -> torch.Tensor:
        if batches is None or step >= steps:
            return _mse(net(xtr), ytr)
        b = batches[step]  # (M, batch)
        return _mse(net(xtr[rows, b]), ytr[rows, b])

    res = train(loss_fn, net, steps=steps, optimizer=optimizer, lr=lr, momentum=momentum,
                log_every=log_every, callbacks=[_Probe(net, xtr, ytr, xte, yte, top_k)],
                progress=progress, desc=f"{optimizer} x{M}")
    return res.status, res.history


def _fit_random_search(net, xtr, ytr, xte, yte, *, steps, sigma, population, generator,
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
            res = random_search(
                lambda F, models=models: loss_of(F, models.repeat_interleave(F.shape[0] // len(models))),
                x0, steps=steps, population=population, sigma=sigma, generator=generator,
                mask=mask[models][..., None, None].expand_as(x0))
            net.factors[models] = res.params
            best[models] = res.loss.cpu().double()
        log(steps, best)
    return history
