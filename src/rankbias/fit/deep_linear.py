"""Fitting an n x n matrix from input/output pairs with deep linear networks.

Huh et al. (2023), "The Low-Rank Simplicity Bias in Deep Networks", sec. 4: a
target map W* (low rank, or full rank) is observed through pairs (x, W* x)
with fewer pairs than dimensions, so many matrices fit the training set; which
one the optimiser finds is decided by the parameterisation's implicit bias.
Deeper networks find end-to-end maps of lower effective rank.

:func:`make_task` draws one such problem; :func:`fit_deep_linear` trains many
deep linear networks (depths x seeds x tasks) on their tasks with
:func:`rankbias.train.train`, as one batched computation (shallower networks
padded with frozen identity factors, see :class:`~rankbias.models.deep_linear.DeepLinear`)
or one network at a time (``batched=False``; always so for L-BFGS, whose line
search would couple the networks of a batch). ``optimizer="random_search"``
uses the gradient-free :func:`rankbias.fit.random_search.random_search` instead,
batched over networks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Literal

import torch

from rankbias.fit.random_search import random_search
from rankbias.measures import rank_measures
from rankbias.models.deep_linear import DeepLinear, end_to_end
from rankbias.train import OPTIMIZERS, train

__all__ = ["MatrixFitTask", "FitResult", "make_task", "fit_deep_linear", "FIT_OPTIMIZERS"]

FIT_OPTIMIZERS = (*OPTIMIZERS, "random_search")
TargetKind = Literal["low_rank", "full_rank"]


@dataclasses.dataclass(frozen=True)
class MatrixFitTask:
    """One problem: fit ``target`` (n x n) from ``x_train`` -> ``y_train``."""

    target: torch.Tensor
    """W* (n, n), scaled so that ||W*||_F^2 = n (E|W* x|^2 = n for x ~ N(0, I))."""
    x_train: torch.Tensor
    """(n_train, n) Gaussian inputs."""
    y_train: torch.Tensor
    """(n_train, n) = x_train W*^T (+ noise)."""
    x_test: torch.Tensor
    """(n_test, n) held-out Gaussian inputs."""
    y_test: torch.Tensor
    """(n_test, n) = x_test W*^T."""


def make_task(
    n: int,
    kind: TargetKind,
    *,
    rank: int = 1,
    n_train: int,
    n_test: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> MatrixFitTask:
    """A random target and its data. ``low_rank``: U V^T with U, V random n x
    ``rank`` orthonormal frames, all non-zero singular values equal (entropy
    rank log ``rank``). ``full_rank``: an i.i.d. Gaussian matrix (singular
    values spread by the quarter-circle law). Both rescaled to ||W*||_F^2 = n.
    ``noise``: std of i.i.d. Gaussian noise added to the training outputs (the
    test outputs stay clean, so the test loss is ||W - W*||_F^2 / n in expectation)."""
    if kind not in ("low_rank", "full_rank"):
        raise ValueError(f"kind must be 'low_rank' or 'full_rank', got {kind!r}")
    if not 1 <= rank <= n:
        raise ValueError(f"rank must be in [1, n={n}], got {rank}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    kw = dict(generator=generator, dtype=dtype, device=device)
    if kind == "low_rank":
        U, _ = torch.linalg.qr(torch.randn(n, rank, **kw))
        V, _ = torch.linalg.qr(torch.randn(n, rank, **kw))
        W = U @ V.T
    else:
        W = torch.randn(n, n, **kw)
    W = W * (n**0.5 / torch.linalg.matrix_norm(W))
    x_tr = torch.randn(n_train, n, **kw)
    x_te = torch.randn(n_test, n, **kw)
    y_tr = x_tr @ W.T + noise * torch.randn(n_train, n, **kw)
    return MatrixFitTask(W, x_tr, y_tr, x_te, x_te @ W.T)


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
    """Callback: full-batch train and test loss and the entropy rank, per network."""

    def __init__(self, net: DeepLinear, xtr, ytr, xte, yte):
        self.net, self.data = net, (xtr, ytr, xte, yte)

    @torch.no_grad()
    def on_log(self, state):
        xtr, ytr, xte, yte = self.data
        We = self.net.end_to_end()
        ok = torch.isfinite(We).all(-1).all(-1)
        h = torch.full(ok.shape, float("nan"), dtype=torch.float64)
        if bool(ok.any()):
            h[ok] = rank_measures(We[ok], ["entropy_rank"])["entropy_rank"].cpu()
        return {"train_loss": _mse(xtr @ We.mT, ytr), "test_loss": _mse(xte @ We.mT, yte),
                "entropy_rank": h}


@contextlib.contextmanager
def _single_thread(device) -> Iterator[None]:
    """Small (n x n) CPU matmuls gain nothing from intra-op threads and lose a lot
    to them on a busy machine (measured: ~10x slower with 2 threads under load)."""
    if torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _single_threaded(fn):
    @functools.wraps(fn)
    def wrapper(tasks, *args, **kwargs):
        with _single_thread(tasks[0].target.device):
            return fn(tasks, *args, **kwargs)

    return wrapper


@_single_threaded
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
    init: str = "normal",
    init_scale: float = 1.0,
    scale_of: Literal["factor", "end_to_end"] = "factor",
    batched: bool = True,
    group_by_depth: bool = False,
    population: int = 16,
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
    each factor gets init_scale^(1/L)).
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
    scales = init_scale if scale_of == "factor" else [init_scale ** (1 / d) for d in depths]
    net = DeepLinear(depths, n, init=init, init_scale=scales, generator=generator,
                     dtype=dtype, device=dev)
    batches = None
    if batch_size is not None:  # (steps, M, batch): drawn up front, so batched == looped
        batches = torch.rand((steps, M, n_train), generator=generator, device=dev).argsort(-1)[..., :batch_size]
    log_every = log_every or max(steps, 1)

    if optimizer == "random_search":
        history = _fit_random_search(net, xtr, ytr, xte, yte, steps=steps, sigma=lr,
                                     population=population, generator=generator,
                                     log_every=log_every, batched=batched)
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
                steps=steps, momentum=momentum, log_every=log_every,
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
                  log_every, progress):
    M = net.n_models
    rows = torch.arange(M, device=xtr.device)[:, None]

    def loss_fn(step: int) -> torch.Tensor:
        if batches is None or step >= steps:
            return _mse(net(xtr), ytr)
        b = batches[step]  # (M, batch)
        return _mse(net(xtr[rows, b]), ytr[rows, b])

    res = train(loss_fn, net, steps=steps, optimizer=optimizer, lr=lr, momentum=momentum,
                log_every=log_every, callbacks=[_Probe(net, xtr, ytr, xte, yte)],
                progress=progress, desc=f"{optimizer} x{M}")
    return res.status, res.history


def _fit_random_search(net, xtr, ytr, xte, yte, *, steps, sigma, population, generator,
                       log_every, batched):
    mask = net.mask

    def loss_of(factors: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        # factors: (B, L_max, n, n) candidates of networks ``models`` (B,)
        We = end_to_end(factors, mask[models])
        return _mse(xtr[models] @ We.mT, ytr[models])

    probe = _Probe(net, xtr, ytr, xte, yte)
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
