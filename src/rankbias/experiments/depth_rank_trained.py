"""depth-rank-trained: deeper linear networks trained by gradient descent find
lower-rank solutions (Huh et al. 2023, "The Low-Rank Simplicity Bias in Deep
Networks", sec. 4).

Deep linear networks W_L ... W_1 (n x n factors, depths 1..32) are trained to
fit a target n x n matrix W* from noisy input/output pairs (x, W* x + noise),
for a low-rank target (rank r) and a full-rank one, several seeds each. Every
network of the sweep (targets x depths x seeds) trains in one batched
computation (shallower networks padded with frozen identity factors, see
:mod:`rankbias.models.deep_linear`). Measured per network: train loss, test loss
on clean held-out pairs (= ||W_e - W*||_F^2 / n in expectation) and the entropy
rank of the converged end-to-end map W_e.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch

from rankbias.experiments.registry import register
from rankbias.fit.deep_linear import fit_deep_linear, make_task
from rankbias.framework.config import Config
from rankbias.framework.runs import RunDir
from rankbias.measures import rank_measures

CLAIM = (
    "Deep linear networks trained by gradient descent on a low-rank target find end-to-end "
    "maps whose entropy rank falls with depth toward the target's, and the test loss is "
    "lowest at an intermediate depth; on a full-rank target the deepest networks fit worse "
    "(higher train loss) than shallow ones (Huh et al. 2023, sec. 4)."
)
TARGETS = ("low_rank", "full_rank")


@dataclasses.dataclass(frozen=True)
class DepthRankTrainedConfig(Config):
    n: int = 16
    """Size of the target and of every factor (n x n)."""
    depths: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Depths L of the networks, each >= 1, strictly increasing."""
    seeds: int = 3
    """Seeds per (target, depth): each draws its own target, data and initialisation."""
    seed: int = 0
    """Base seed; fixes the run completely."""
    targets: list[Literal["low_rank", "full_rank"]] = dataclasses.field(
        default_factory=lambda: list(TARGETS))
    """Targets to fit: low_rank (rank target_rank, equal singular values), full_rank (Gaussian)."""
    target_rank: int = 4
    """Rank r of the low-rank target (its entropy rank is log r)."""
    n_train: int = 32
    """Training pairs per task."""
    n_test: int = 512
    """Held-out test pairs per task (clean outputs)."""
    noise: float = 0.5
    """Std of the Gaussian noise on the training outputs (outputs have unit variance per coordinate)."""
    init: Literal["normal", "uniform", "orthogonal"] = "normal"
    """Distribution of the initial factors."""
    init_scale: float = 1.0
    """Gain of each initial factor (E|W x|^2 = init_scale^2 |x|^2), or of the end-to-end map (scale_of)."""
    scale_of: Literal["factor", "end_to_end"] = "factor"
    """What init_scale sets: each factor's gain, or the end-to-end map's gain at every depth."""
    optimizer: Literal["gd", "sgd", "momentum", "nesterov", "adam", "lbfgs"] = "gd"
    """Optimiser (rankbias.train); lbfgs trains one network at a time."""
    lr: float = 0.01
    """Learning rate (L-BFGS: initial step)."""
    momentum: float = 0.9
    """Momentum of momentum/nesterov."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int | None = None
    """Training pairs per step (mini-batch SGD); null: full batch."""
    log_every: int = 200
    """Steps between logged metrics (metrics.csv)."""
    batched: bool = True
    """Train the whole sweep as one batched computation (False: one network at a time)."""
    device: str = "cpu"
    """torch device."""

    def validate(self) -> None:
        validate_task(self)
        self._require(len(self.targets) >= 1 and len(set(self.targets)) == len(self.targets),
                      "targets", "a non-empty list of distinct low_rank, full_rank")
        self._require(self.lr > 0, "lr", "a float > 0")
        self._require(self.steps >= 1, "steps", "an int >= 1")
        self._require(self.log_every >= 1, "log_every", "an int >= 1")
        self._require(not (self.optimizer == "lbfgs" and self.batch_size is not None), "batch_size",
                      "null with optimizer lbfgs (it needs full-batch losses)")


def validate_task(cfg) -> None:
    """Checks shared with depth-rank-optimizers: the sweep, the target and the data."""
    req = cfg._require
    req(cfg.n >= 2, "n", "an int >= 2")
    req(len(cfg.depths) >= 2 and all(d >= 1 for d in cfg.depths), "depths",
        "a list of at least two ints >= 1")
    req(all(a < b for a, b in zip(cfg.depths, cfg.depths[1:])), "depths", "strictly increasing depths")
    req(cfg.seeds >= 1, "seeds", "an int >= 1")
    req(1 <= cfg.target_rank < cfg.n, "target_rank", f"an int in [1, n - 1 = {cfg.n - 1}]")
    req(cfg.n_train >= 1, "n_train", "an int >= 1")
    req(cfg.n_test >= 1, "n_test", "an int >= 1")
    req(cfg.noise >= 0, "noise", "a float >= 0")
    req(cfg.init_scale > 0, "init_scale", "a float > 0")
    req(cfg.batch_size is None or 1 <= cfg.batch_size <= cfg.n_train, "batch_size",
        f"null or an int in [1, n_train = {cfg.n_train}]")


def sweep_layout(depths, seeds: int, n_targets: int) -> list[tuple[int, int, int]]:
    """(target index, depth, seed) of every network, target-major."""
    return [(t, d, s) for t in range(n_targets) for d in depths for s in range(seeds)]


def build_tasks(cfg, target: str, gen_seed: int) -> list:
    """One task per seed, identical across depths (paired comparison)."""
    tasks = []
    for s in range(cfg.seeds):
        g = torch.Generator(device=cfg.device).manual_seed(gen_seed * 1_000_003 + 7919 * s + TARGETS.index(target))
        tasks.append(make_task(cfg.n, target, rank=cfg.target_rank, n_train=cfg.n_train,
                               n_test=cfg.n_test, noise=cfg.noise, generator=g, device=cfg.device))
    return tasks


def nanstats(values) -> dict[str, float]:
    v = np.asarray(values, float)
    ok = v[np.isfinite(v)]
    if ok.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n_ok": 0}
    return {"mean": float(ok.mean()), "std": float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
            "n_ok": int(ok.size)}


def fit_sweep(cfg, targets, *, optimizer=None, lr=None, steps=None, batch_size="cfg",
              batched=None, group_by_depth=None, population: int = 16, progress=None):
    """Train every (target, depth, seed) network of ``cfg``; returns (layout, tasks, FitResult)."""
    tasks, index = [], {}
    for ti, target in enumerate(targets):
        index[ti] = len(tasks)
        tasks += build_tasks(cfg, target, cfg.seed)
    layout = sweep_layout(cfg.depths, cfg.seeds, len(targets))
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    res = fit_deep_linear(
        tasks, [index[t] + s for t, _, s in layout], [d for _, d, _ in layout],
        optimizer=optimizer or cfg.optimizer, lr=lr or cfg.lr, steps=steps or cfg.steps,
        momentum=cfg.momentum, batch_size=cfg.batch_size if batch_size == "cfg" else batch_size,
        init=cfg.init, init_scale=cfg.init_scale, scale_of=cfg.scale_of,
        batched=cfg.batched if batched is None else batched,
        group_by_depth=getattr(cfg, "group_by_depth", False) if group_by_depth is None else group_by_depth,
        population=population,
        log_every=getattr(cfg, "log_every", None), generator=gen, progress=progress)
    return layout, tasks, res


def target_entropy_rank(tasks) -> float:
    W = torch.stack([t.target for t in tasks])
    return float(rank_measures(W, ["entropy_rank"])["entropy_rank"].mean())


def per_depth_rows(layout, res, target_index: int, depths) -> list[dict]:
    rows = []
    for d in depths:
        ms = [m for m, (t, dd, _) in enumerate(layout) if t == target_index and dd == d]
        st = {k: nanstats(getattr(res, k)[ms].numpy()) for k in ("train_loss", "test_loss", "entropy_rank")}
        rows.append({
            "depth": d,
            "train_loss": st["train_loss"]["mean"], "train_loss_std": st["train_loss"]["std"],
            "test_loss": st["test_loss"]["mean"], "test_loss_std": st["test_loss"]["std"],
            "entropy_rank": st["entropy_rank"]["mean"], "entropy_rank_std": st["entropy_rank"]["std"],
            "diverged": sum(res.status[m] != "ok" for m in ms),
        })
    return rows


def _finite(xs) -> bool:
    return all(math.isfinite(x) for x in xs)


def low_rank_verdict(rows, h_target: float) -> dict:
    h = [r["entropy_rank"] for r in rows]
    test = [r["test_loss"] for r in rows]
    falls = _finite(h) and all(b < a for a, b in zip(h, h[1:]))
    toward = _finite(h) and abs(h[-1] - h_target) < abs(h[0] - h_target)
    best = int(np.nanargmin(test)) if any(math.isfinite(x) for x in test) else -1
    intermediate = 0 < best < len(rows) - 1
    return {
        "holds": bool(falls and toward and intermediate),
        "rank_strictly_falls_with_depth": bool(falls),
        "deepest_closer_to_target_than_depth_1": bool(toward),
        "target_entropy_rank": h_target,
        "entropy_rank_by_depth": {str(r["depth"]): r["entropy_rank"] for r in rows},
        "test_loss_by_depth": {str(r["depth"]): r["test_loss"] for r in rows},
        "best_test_depth": rows[best]["depth"] if best >= 0 else None,
        "test_best_at_intermediate_depth": bool(intermediate),
    }


def full_rank_verdict(rows) -> dict:
    train = [r["train_loss"] for r in rows]
    shallow = max(train[:2])
    # a diverged deepest network fits worse than any finite one
    deep = train[-1] if math.isfinite(train[-1]) else float("inf")
    return {
        "holds": bool(_finite(train[:2]) and deep > shallow),
        "train_loss_by_depth": {str(r["depth"]): r["train_loss"] for r in rows},
        "deepest_train_loss": train[-1],
        "max_train_loss_two_shallowest": shallow,
    }


@register(
    "depth-rank-trained",
    description="Deep linear nets trained on low-/full-rank targets: rank, train and test loss against depth",
    config_cls=DepthRankTrainedConfig,
    presets={
        "quick": {},
        "paper": {"n": 32, "depths": [1, 2, 3, 4, 6, 8, 12, 16, 24, 32], "seeds": 10, "target_rank": 4,
                  "n_train": 64, "steps": 10000, "lr": 0.005, "n_test": 2048, "log_every": 500},
    },
    claim=CLAIM,
)
def run(cfg: DepthRankTrainedConfig, run: RunDir) -> dict:
    from rankbias.report import markdown_table, write_run_report

    layout, tasks, res = fit_sweep(cfg, cfg.targets)
    summary, sections = {"per_target": []}, []
    verdicts = {}
    for ti, target in enumerate(cfg.targets):
        rows = per_depth_rows(layout, res, ti, cfg.depths)
        h_t = target_entropy_rank(tasks[ti * cfg.seeds:(ti + 1) * cfg.seeds])
        v = low_rank_verdict(rows, h_t) if target == "low_rank" else full_rank_verdict(rows)
        verdicts[target] = v
        summary["per_target"].append({"target": target, "target_entropy_rank": h_t, "per_depth": rows,
                                      "verdict": v})
        sections.append((f"{target} target (entropy rank {h_t:.3f} nats; mean and std over "
                         f"{cfg.seeds} seeds)", markdown_table(rows)))
    verdict = {"holds": all(v["holds"] for v in verdicts.values()),
               "criterion": ("low_rank: mean converged entropy rank strictly falls with depth, the "
                             "deepest is closer to the target's than depth 1, and the mean test loss "
                             "is lowest at neither the first nor the last depth; full_rank: the "
                             "deepest's mean train loss exceeds those of the two shallowest depths"),
               **{f"{t}_holds": v["holds"] for t, v in verdicts.items()},
               **({"best_test_depth_low_rank": verdicts["low_rank"]["best_test_depth"]}
                  if "low_rank" in verdicts else {})}
    summary["verdict"] = verdict
    summary["per_depth"] = [{"target": p["target"], **r} for p in summary["per_target"] for r in p["per_depth"]]
    write_history(run, res.history, layout, cfg.targets)
    plot_sweep(summary["per_target"], run.figure_path("depth_rank_trained"),
               title=f"Deep linear nets, n={cfg.n}, {cfg.optimizer} lr={cfg.lr:g}, {cfg.steps} steps, "
                     f"{cfg.seeds} seeds")
    write_run_report(run, title="depth-rank-trained: trained deep linear networks against depth",
                     claim=CLAIM, verdict=verdict, sections=sections, figures=["depth_rank_trained"],
                     config=cfg.to_dict())
    return summary


def write_history(run: RunDir, history, layout, targets) -> None:
    def rows():
        for r in history:
            t, d, s = layout[r["model"]]
            yield {"target": targets[t], "depth": d, "seed": s, **r}
    run.write_csv("metrics.csv", rows())


def plot_sweep(per_target, path, *, title: str, label_key: str = "target"):
    """Train loss, test loss and entropy rank against depth, a line per entry of ``per_target``."""
    import rankbias.plots as plots

    fig, axes = plots.figure(ncols=3, width=4.0, height=3.4)
    for i, p in enumerate(per_target):
        rows = p["per_depth"]
        d = [r["depth"] for r in rows]
        c = f"C{i}"
        for ax, key in zip(axes, ("train_loss", "test_loss", "entropy_rank")):
            plots.line_with_band(ax, d, [r[key] for r in rows], [r[f"{key}_std"] for r in rows],
                                 label=p[label_key], color=c, ms=4)
        if p.get("target_entropy_rank") is not None:
            axes[2].axhline(p["target_entropy_rank"], color=c, ls="--", lw=1,
                            label=f"{p[label_key]}: target's")
    for ax, ylabel in zip(axes, ("train loss (MSE per coordinate)", "test loss (MSE per coordinate)",
                                 "entropy rank of $W_L\\cdots W_1$ (nats)")):
        ax.set_xscale("log", base=2)
        ticks = sorted({r["depth"] for p in per_target for r in p["per_depth"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("depth L")
        ax.set_ylabel(ylabel)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.suptitle(title + " (error bars: std over seeds)", fontsize=10)
    return plots.save(fig, path)
