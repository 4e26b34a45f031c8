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
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from rankbias.data.matrix_tasks import TARGETS, MatrixFitTask, make_task
from rankbias.fit.deep_linear import FitResult, ScaleOf, fit_deep_linear
from rankbias.framework.config import DeviceField
from rankbias.measures import rank_measures
from rankbias.models.deep_linear import Init
from rankbias.verdicts import mean_std, verdict

__all__ = ["DeepLinearFitConfig", "DeepLinearTaskConfig", "DepthConfig", "SweepGroup",
           "fit_sweep", "paper_preset", "per_depth_rows", "rank_against_steps", "select_lr",
           "target_entropy_rank"]


@dataclasses.dataclass(frozen=True)
class DepthConfig(DeviceField):
    """Fields of every depth experiment."""

    depths: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Depths L of the networks, each >= 1, strictly increasing."""

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
    scale_of: ScaleOf = "factor"
    """What the initial scale sets: each factor's gain, or the end-to-end map's gain at every depth."""
    batch_size: int | None = None
    """Training pairs per step (mini-batch SGD); null: full batch."""
    momentum: float = 0.9
    """Momentum of momentum/nesterov."""
    steps: int = 10000
    """Step cap: the most optimiser steps a network takes (each network's steps taken, and
    whether the cap bound, are in summary.json)."""
    plateau_tol: float | None = 1e-3
    """Stopping rule (first-order optimisers): a network stops after the first step t >=
    plateau_window at which its full-batch training loss l moved by at most this fraction over
    the last plateau_window steps, |l(t - w) - l(t)| <= tol l(t - w); null: train for `steps`."""
    plateau_window: int = 500
    """Window w of the stopping rule, in steps."""
    lr_factors: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Learning-rate grid, as multiples of the experiment's lr: every (group, depth) is trained
    at each and keeps the one with the lowest mean final training loss over seeds among those
    where no seed diverged (never the test set); [1]: no search."""
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
        req(self.plateau_tol is None or self.plateau_tol > 0, "plateau_tol", "a float > 0 or null")
        req(self.plateau_window >= 1, "plateau_window", "an int >= 1")
        req(len(self.lr_factors) >= 1 and all(f > 0 for f in self.lr_factors)
            and len(set(self.lr_factors)) == len(self.lr_factors), "lr_factors",
            "a non-empty list of distinct floats > 0")
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
    up to 32, 10 seeds, 64 training pairs, a cap of 5 x 10^4 steps with a 10^-4 plateau over
    2,000 steps; docs/paper2-depth.md) with the experiment's own ``settings`` on top."""
    return {"n": 32, "depths": [1, 2, 4, 8, 16, 32], "seeds": list(range(10)), "n_train": 64,
            "steps": 50000, "plateau_tol": 1e-4, "plateau_window": 2000, "n_test": 2048,
            **settings}


def smoke_preset(**settings) -> dict:
    """The "smoke" preset of a trained-depth experiment: its quick path at a size that runs
    in seconds on one thread (tests/test_smoke_presets.py), with the experiment's own
    ``settings`` on top. Two seeds, because the verdicts decide on means over seeds."""
    return {"n": 8, "depths": [1, 4], "seeds": [0, 1], "target_rank": 2, "n_train": 16, "n_test": 32,
            "steps": 60, "plateau_window": 30, "log_every": 30, "lr_factors": [1.0], **settings}


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
    """Train every (group, depth, seed) network; returns (layout, tasks per group, FitResult).

    First-order optimisers train under the config's stopping rule, at every learning rate of
    ``lr x cfg.lr_factors`` (each grid point from the same initial factors and mini-batches),
    and every (group, depth) keeps its networks of the rate :func:`select_lr` picks
    (``res.lr_selection``). L-BFGS (line search) and random search (adaptive step) take
    ``lr`` and a fixed number of steps."""
    tasks_by_group = [build_tasks(cfg, g.target) for g in groups]
    layout = sweep_layout(cfg.depths, cfg.n_seeds, len(groups))
    S = cfg.n_seeds
    inits = [groups[g].init for g, _, _ in layout]
    first_order = optimizer in FIRST_ORDER
    grid = [lr * f for f in cfg.lr_factors] if first_order else [lr]
    fits = [fit_deep_linear(
        [t for ts in tasks_by_group for t in ts], [g * S + s for g, _, s in layout],
        [d for _, d, _ in layout], optimizer=optimizer, lr=rate, steps=steps,
        momentum=cfg.momentum, batch_size=batch_size,
        init=inits[0] if len(set(inits)) == 1 else inits,
        init_scale=[groups[g].init_scale for g, _, _ in layout], scale_of=cfg.scale_of,
        batched=batched, group_by_depth=group_by_depth, population=population, top_k=top_k,
        log_every=cfg.log_every, generator=init_generator(cfg), progress=progress,
        plateau_tol=cfg.plateau_tol if first_order else None, plateau_window=cfg.plateau_window)
        for rate in grid]
    return layout, tasks_by_group, select_per_depth(fits, grid, layout)


FIRST_ORDER = ("gd", "sgd", "momentum", "nesterov", "adam")
LR_CRITERION = ("per (group, depth): the grid point with the lowest mean over seeds of the final "
                "full-batch training loss, among those where no seed diverged (the test set is "
                "never read)")


def select_lr(train_loss: dict[float, Sequence[float]]) -> float | None:
    """The learning rate of LR_CRITERION: ``train_loss[lr]`` holds the final training loss of
    each seed (NaN: diverged). None when every rate has a diverged seed."""
    ok = {lr: float(np.mean(v)) for lr, v in train_loss.items() if np.all(np.isfinite(v))}
    return min(ok, key=lambda lr: (ok[lr], lr)) if ok else None


def select_per_depth(fits: Sequence[FitResult], grid: Sequence[float], layout) -> FitResult:
    """One FitResult whose (group, depth) networks come from the fit of the selected rate
    (the first rate when none qualifies: its diverged networks stay reported)."""
    if len(fits) == 1:
        return fits[0]
    pick = [0] * len(layout)
    selection = []
    for g, d in dict.fromkeys((g, d) for g, d, _ in layout):
        ms = [m for m, (gg, dd, _) in enumerate(layout) if (gg, dd) == (g, d)]
        losses = {rate: f.train_loss[ms].tolist() for rate, f in zip(grid, fits)}
        chosen = select_lr(losses)
        k = grid.index(chosen) if chosen is not None else 0
        for m in ms:
            pick[m] = k
        selection.append({"group": g, "depth": d, "grid": list(grid), "criterion": LR_CRITERION,
                          "mean_train_loss": {f"{rate:g}": float(np.mean(v)) for rate, v in losses.items()},
                          "chosen": chosen})
    M = len(layout)
    res = FitResult(
        torch.stack([fits[pick[m]].end_to_end[m] for m in range(M)]),
        *(torch.stack([getattr(fits[pick[m]], k)[m] for m in range(M)])
          for k in ("train_loss", "test_loss", "entropy_rank")),
        [fits[pick[m]].status[m] for m in range(M)],
        sorted((r for k, f in enumerate(fits) for r in f.history if pick[r["model"]] == k),
               key=lambda r: (r["step"], r["model"])),
        [fits[pick[m]].steps_taken[m] for m in range(M)],
        [fits[pick[m]].cap_bound[m] for m in range(M)],
        [fits[pick[m]].lr[m] for m in range(M)], selection)
    return res


def target_entropy_rank(tasks: Sequence[MatrixFitTask]) -> float:
    W = torch.stack([t.target for t in tasks])
    return float(rank_measures(W, ["entropy_rank"])["entropy_rank"].mean())


def per_depth_rows(layout, res: FitResult, group: int, depths: Sequence[int]) -> list[dict]:
    """Mean and std over seeds (finite values only) of the losses and the rank, per depth;
    with the learning rate, the most steps a seed took and how many seeds the cap stopped."""
    rows = []
    for d in depths:
        ms = [m for m, (g, dd, _) in enumerate(layout) if g == group and dd == d]
        row: dict = {"depth": d}
        for k in ("train_loss", "test_loss", "entropy_rank"):
            row[k], row[f"{k}_std"] = mean_std(getattr(res, k)[ms].tolist())
        row["diverged"] = sum(res.status[m] != "ok" for m in ms)
        if res.steps_taken:
            row["lr"] = res.lr[ms[0]]
            row["max_steps_taken"] = max(res.steps_taken[m] for m in ms)
            row["cap_bound"] = sum(res.cap_bound[m] for m in ms)
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


def rank_against_steps(history, layout, group: int, depths: Sequence[int],
                       key: str = "entropy_rank") -> dict[int, dict]:
    """Per depth: the logged steps and the mean and std over seeds of ``key`` at each (a
    network that stopped keeps its last value: it is frozen there), {"step", "mean", "std"}."""
    out = {}
    for d in depths:
        models = {m for m, (g, dd, _) in enumerate(layout) if g == group and dd == d}
        by_step: dict[int, list[float]] = {}
        for r in history:
            if r["model"] in models:
                by_step.setdefault(r["step"], []).append(r[key])
        steps = sorted(by_step)
        stats = [mean_std(by_step[s]) for s in steps]
        out[d] = {"step": steps, "mean": [m for m, _ in stats], "std": [s for _, s in stats]}
    return out


def require_seeds(v: dict, n_seeds: int) -> dict:
    """A verdict decided on means over seeds is "not testable" with one seed: a single draw's
    ranks can fall with depth by chance. The verdict it replaces is kept as ``untested_verdict``."""
    if n_seeds >= 2:
        return v
    out = verdict("not testable", v.get("criterion", ""), f"{n_seeds} seed: a mean over seeds needs at least two",
                  **{k: x for k, x in v.items() if k not in ("status", "holds", "criterion", "reason")})
    out["untested_verdict"] = {k: v[k] for k in ("status", "reason") if k in v}
    return out


def training_record(cfg: DeepLinearTaskConfig, res: FitResult, layout, labels: Sequence[str],
                    optimizer: str) -> dict:
    """summary.json's account of how the networks were trained: the stopping rule, the
    learning-rate grid, criterion and choice per (group, depth), and per network the rate,
    the steps taken and whether the cap bound."""
    first_order = optimizer in FIRST_ORDER
    rule = (f"stop after the first step t >= {cfg.plateau_window} at which the full-batch training "
            f"loss l satisfies |l(t - {cfg.plateau_window}) - l(t)| <= {cfg.plateau_tol:g} "
            f"l(t - {cfg.plateau_window}); cap {cfg.steps} steps"
            if first_order and cfg.plateau_tol is not None else "a fixed number of steps")
    return {
        "stopping": {"rule": rule, "tol": cfg.plateau_tol if first_order else None,
                     "window": cfg.plateau_window, "cap": cfg.steps if first_order else None},
        "lr_selection": [{"label": labels[s["group"]], **s} for s in res.lr_selection],
        "per_network": [{"label": labels[g], "depth": d, "seed": cfg.seeds[s], "lr": res.lr[m],
                         "steps_taken": res.steps_taken[m], "cap_bound": res.cap_bound[m],
                         "status": res.status[m]}
                        for m, (g, d, s) in enumerate(layout)],
    }


def training_table(record: dict) -> list[dict]:
    """The report's rows of :func:`training_record`: per label and depth, the chosen rate,
    the steps taken per seed and how often the cap bound."""
    rows: dict = {}
    for r in record["per_network"]:
        row = rows.setdefault((r["label"], r["depth"]), {
            "group": r["label"], "depth": r["depth"], "lr": r["lr"], "steps taken": [],
            "cap bound": 0})
        row["steps taken"].append(r["steps_taken"])
        row["cap bound"] += bool(r["cap_bound"])
    return [{**r, "steps taken": " / ".join(map(str, r["steps taken"]))} for r in rows.values()]
