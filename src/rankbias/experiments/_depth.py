"""Shared parts of the paper-2 depth experiments (``docs/paper2-depth.md``): the
config bases, the sweep of deep linear networks over (group, depth, seed) and
its per-depth statistics.

A sweep is a list of groups (target kind, initial distribution, initial scale);
every group trains one network per (depth, seed), and every depth of a seed
sees the same task (a paired comparison across depths).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch

from rankbias.data.matrix_tasks import TARGETS, MatrixFitTask, make_task
from rankbias.fit.deep_linear import FitResult, fit_deep_linear
from rankbias.framework.config import Config
from rankbias.measures import rank_measures
from rankbias.verdicts import mean_std

__all__ = ["DeepLinearFitConfig", "DeepLinearTaskConfig", "DepthConfig", "SweepGroup",
           "fit_sweep", "paper_preset", "per_depth_rows", "target_entropy_rank"]

Init = Literal["normal", "uniform", "orthogonal"]


@dataclasses.dataclass(frozen=True)
class DepthConfig(Config):
    """Fields of every depth experiment."""

    depths: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Depths L of the networks, each >= 1, strictly increasing."""
    device: str = "cpu"
    """torch device, e.g. "cpu" or "cuda"."""

    min_depths: ClassVar[int] = 1

    def validate(self) -> None:
        k = self.min_depths
        self._require(len(self.depths) >= k and all(d >= 1 for d in self.depths), "depths",
                      "a non-empty list of ints >= 1" if k == 1 else f"a list of at least {k} ints >= 1")
        self._require(all(a < b for a, b in zip(self.depths, self.depths[1:])), "depths",
                      "strictly increasing depths")


@dataclasses.dataclass(frozen=True)
class DeepLinearTaskConfig(DepthConfig):
    """The fitting task and the training loop shared by the trained-depth experiments."""

    n: int = 16
    """Size of the target and of every factor (n x n)."""
    num_threads: int | None = 1
    """torch threads for the run, applied by the runner (None: leave as is). One by default:
    these small batched matmuls ran up to 16x slower with two threads on a busy machine."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds; seed s fixes the task (target, data) of every depth; the initial factors and
    mini-batches come from one stream seeded by the whole list."""
    target_rank: int = 4
    """Rank r of the low-rank target (equal singular values; its entropy rank is log r)."""
    n_train: int = 32
    """Training pairs per task."""
    n_test: int = 512
    """Held-out test pairs per task (clean outputs)."""
    noise: float = 0.5
    """Std of the Gaussian noise on the training outputs (outputs have unit variance per coordinate)."""
    scale_of: Literal["factor", "end_to_end"] = "factor"
    """What the initial scale sets: each factor's gain, or the end-to-end map's gain at every depth."""
    batch_size: int | None = None
    """Training pairs per step (mini-batch SGD); null: full batch."""
    momentum: float = 0.9
    """Momentum of momentum/nesterov."""
    steps: int = 2000
    """Optimiser steps."""
    log_every: int = 200
    """Steps between logged metrics (metrics.csv)."""

    min_depths: ClassVar[int] = 2

    def validate(self) -> None:
        super().validate()
        req = self._require
        req(self.n >= 2, "n", "an int >= 2")
        req(self.num_threads is None or self.num_threads >= 1, "num_threads", "an int >= 1 or null")
        req(len(self.seeds) >= 1 and all(s >= 0 for s in self.seeds)
            and len(set(self.seeds)) == len(self.seeds), "seeds", "a non-empty list of distinct ints >= 0")
        req(1 <= self.target_rank < self.n, "target_rank", f"an int in [1, n - 1 = {self.n - 1}]")
        req(self.n_train >= 1, "n_train", "an int >= 1")
        req(self.n_test >= 1, "n_test", "an int >= 1")
        req(self.noise >= 0, "noise", "a float >= 0")
        req(self.batch_size is None or 1 <= self.batch_size <= self.n_train, "batch_size",
            f"null or an int in [1, n_train = {self.n_train}]")
        req(self.steps >= 1, "steps", "an int >= 1")
        req(self.log_every >= 1, "log_every", "an int >= 1")

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


@dataclasses.dataclass(frozen=True)
class DeepLinearFitConfig(DeepLinearTaskConfig):
    """A task config with one initialisation for every network."""

    init: Init = "normal"
    """Distribution of the initial factors."""
    init_scale: float = 1.0
    """Gain of each initial factor (E|W x|^2 = init_scale^2 |x|^2), or of the end-to-end map (scale_of)."""

    def validate(self) -> None:
        super().validate()
        self._require(self.init_scale > 0, "init_scale", "a float > 0")


def paper_preset(**settings) -> dict:
    """The "paper" preset of a trained-depth experiment: the paper's scale (n = 32, depths
    up to 32, 10 seeds, 64 training pairs, 10^4 steps; docs/paper2-depth.md) with the
    experiment's own ``settings`` on top."""
    return {"n": 32, "depths": [1, 2, 4, 8, 16, 32], "seeds": list(range(10)), "n_train": 64,
            "steps": 10000, "n_test": 2048, **settings}


class SweepGroup(NamedTuple):
    """One line of a sweep: a target kind and an initialisation."""

    target: str
    init: str
    init_scale: float


def sweep_layout(depths: Sequence[int], n_seeds: int, n_groups: int) -> list[tuple[int, int, int]]:
    """(group index, depth, seed index) of every network, group-major."""
    return [(g, d, s) for g in range(n_groups) for d in depths for s in range(n_seeds)]


def build_tasks(cfg: DeepLinearTaskConfig, target: str) -> list[MatrixFitTask]:
    """One task per seed, identical across depths (paired comparison)."""
    tasks = []
    for s in cfg.seeds:
        g = torch.Generator(device=cfg.device).manual_seed(7919 * s + TARGETS.index(target))
        tasks.append(make_task(cfg.n, target, rank=cfg.target_rank, n_train=cfg.n_train,
                               n_test=cfg.n_test, noise=cfg.noise, generator=g, device=cfg.device))
    return tasks


def init_generator(cfg: DeepLinearTaskConfig) -> torch.Generator:
    """The stream of initial factors and mini-batches, fixed by the seed list."""
    seed = int(np.random.SeedSequence(list(cfg.seeds)).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator(device=cfg.device).manual_seed(seed)


def fit_sweep(
    cfg: DeepLinearTaskConfig,
    groups: Sequence[SweepGroup],
    *,
    optimizer: str,
    lr: float,
    steps: int,
    batch_size: int | None,
    batched: bool = True,
    group_by_depth: bool = False,
    population: int = 16,
    top_k: int = 0,
    progress: bool | None = None,
) -> tuple[list[tuple[int, int, int]], list[list[MatrixFitTask]], FitResult]:
    """Train every (group, depth, seed) network; returns (layout, tasks per group, FitResult)."""
    tasks_by_group = [build_tasks(cfg, g.target) for g in groups]
    layout = sweep_layout(cfg.depths, cfg.n_seeds, len(groups))
    S = cfg.n_seeds
    inits = [groups[g].init for g, _, _ in layout]
    res = fit_deep_linear(
        [t for ts in tasks_by_group for t in ts], [g * S + s for g, _, s in layout],
        [d for _, d, _ in layout], optimizer=optimizer, lr=lr, steps=steps,
        momentum=cfg.momentum, batch_size=batch_size,
        init=inits[0] if len(set(inits)) == 1 else inits,
        init_scale=[groups[g].init_scale for g, _, _ in layout], scale_of=cfg.scale_of,
        batched=batched, group_by_depth=group_by_depth, population=population, top_k=top_k,
        log_every=cfg.log_every, generator=init_generator(cfg), progress=progress)
    return layout, tasks_by_group, res


def target_entropy_rank(tasks: Sequence[MatrixFitTask]) -> float:
    W = torch.stack([t.target for t in tasks])
    return float(rank_measures(W, ["entropy_rank"])["entropy_rank"].mean())


def per_depth_rows(layout, res: FitResult, group: int, depths: Sequence[int]) -> list[dict]:
    """Mean and std over seeds (finite values only) of the losses and the rank, per depth."""
    rows = []
    for d in depths:
        ms = [m for m, (g, dd, _) in enumerate(layout) if g == group and dd == d]
        row: dict = {"depth": d}
        for k in ("train_loss", "test_loss", "entropy_rank"):
            row[k], row[f"{k}_std"] = mean_std(getattr(res, k)[ms].tolist())
        row["diverged"] = sum(res.status[m] != "ok" for m in ms)
        rows.append(row)
    return rows


def per_seed(layout, res: FitResult, group: int, depth: int, key: str = "entropy_rank") -> list[float]:
    """``key`` of the networks of ``group`` at ``depth``, in seed order (NaN if diverged)."""
    return [float(getattr(res, key)[m]) for m, (g, d, _) in enumerate(layout)
            if g == group and d == depth]


def history_rows(history, layout, labels: Sequence[str], seeds: Sequence[int], key: str = "target"):
    """metrics.csv rows: the trainer's history with each network's group label, depth and seed."""
    for r in history:
        g, d, s = layout[r["model"]]
        yield {key: labels[g], "depth": d, "seed": seeds[s], **r}
