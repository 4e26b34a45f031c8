"""depth-rank-optimizers: the low-rank bias of depth is not the optimiser's doing
(Huh et al. 2023, "The Low-Rank Simplicity Bias in Deep Networks", sec. 4).

The low-rank fitting problem of ``depth-rank-trained`` is solved with several
optimisers -- SGD (mini-batch), SGD with Nesterov momentum, Adam, L-BFGS and,
for contrast, gradient-free random search ((1+lambda)-ES with the 1/5 success
rule, :func:`rankbias.fit.random_search.random_search`) -- and the converged
entropy rank of the end-to-end map is compared across depths. Every optimiser
except L-BFGS trains the whole sweep (depths x seeds) as one batched
computation; L-BFGS, whose line search couples the models of a batch, trains
one network at a time. All optimisers start from the same initial factors and
see the same tasks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from rankbias.experiments.depth_rank_trained import (
    fit_sweep,
    per_depth_rows,
    plot_sweep,
    target_entropy_rank,
    validate_task,
)
from rankbias.experiments.registry import register
from rankbias.framework.config import Config
from rankbias.framework.runs import RunDir, config_hash

CLAIM = (
    "Depth lowers the entropy rank of the solution whatever the optimiser: for SGD, SGD with "
    "Nesterov momentum, Adam, L-BFGS and gradient-free random search, the converged entropy rank "
    "of a deep linear network fitted to a low-rank target is lower at the largest depth than at "
    "depth 1 (Huh et al. 2023, sec. 4)."
)
OPTIMIZER_NAMES = ("sgd", "nesterov", "adam", "lbfgs", "random_search")
LABELS = {"sgd": "SGD", "nesterov": "SGD + Nesterov", "adam": "Adam", "lbfgs": "L-BFGS",
          "random_search": "random search (1+λ)-ES"}


@dataclasses.dataclass(frozen=True)
class DepthRankOptimizersConfig(Config):
    optimizers: list[Literal["sgd", "nesterov", "adam", "lbfgs", "random_search"]] = dataclasses.field(
        default_factory=lambda: list(OPTIMIZER_NAMES))
    """Optimisers to compare."""
    n: int = 16
    """Size of the target and of every factor (n x n)."""
    depths: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Depths L, each >= 1, strictly increasing."""
    seeds: int = 3
    """Seeds per depth (target, data and initialisation)."""
    seed: int = 0
    """Base seed; fixes the run completely."""
    target_rank: int = 4
    """Rank r of the target."""
    n_train: int = 32
    """Training pairs per task."""
    n_test: int = 512
    """Held-out test pairs per task."""
    noise: float = 0.5
    """Std of the noise on the training outputs."""
    init: Literal["normal", "uniform", "orthogonal"] = "normal"
    """Distribution of the initial factors."""
    init_scale: float = 1.0
    """Gain of each initial factor (or of the end-to-end map, see scale_of)."""
    scale_of: Literal["factor", "end_to_end"] = "factor"
    """What init_scale sets: each factor's gain or the end-to-end map's."""
    batch_size: int | None = 8
    """Mini-batch size of sgd, nesterov and adam (null: full batch); L-BFGS and random search use all pairs."""
    momentum: float = 0.9
    """Nesterov momentum."""
    steps: int = 2000
    """Steps of sgd, nesterov and adam."""
    sgd_lr: float = 0.01
    """SGD learning rate."""
    nesterov_lr: float = 0.002
    """SGD + Nesterov learning rate."""
    adam_lr: float = 0.001
    """Adam learning rate."""
    lbfgs_lr: float = 1.0
    """L-BFGS initial step (strong-Wolfe line search)."""
    lbfgs_steps: int = 50
    """L-BFGS outer steps (each up to 20 function evaluations)."""
    random_search_sigma: float = 0.01
    """Random search initial perturbation std per coordinate."""
    random_search_steps: int = 1000
    """Random search steps."""
    population: int = 16
    """Random search candidates per step and network."""
    log_every: int = 500
    """Steps between logged metrics."""
    device: str = "cpu"
    """torch device."""

    def validate(self) -> None:
        self._require(len(self.optimizers) >= 1 and len(set(self.optimizers)) == len(self.optimizers),
                      "optimizers", f"a non-empty list of distinct: {', '.join(OPTIMIZER_NAMES)}")
        validate_task(self)
        for f in ("steps", "lbfgs_steps", "random_search_steps", "population", "log_every"):
            self._require(getattr(self, f) >= 1, f, "an int >= 1")
        for f in ("sgd_lr", "nesterov_lr", "adam_lr", "lbfgs_lr", "random_search_sigma"):
            self._require(getattr(self, f) > 0, f, "a float > 0")

    # what fit_sweep reads
    @property
    def batched(self) -> bool:
        return True


def _settings(cfg: DepthRankOptimizersConfig, name: str) -> dict:
    if name == "lbfgs":
        return dict(optimizer="lbfgs", lr=cfg.lbfgs_lr, steps=cfg.lbfgs_steps, batch_size=None)
    if name == "random_search":
        return dict(optimizer="random_search", lr=cfg.random_search_sigma,
                    steps=cfg.random_search_steps, batch_size=None, population=cfg.population)
    lr = {"sgd": cfg.sgd_lr, "nesterov": cfg.nesterov_lr, "adam": cfg.adam_lr}[name]
    return dict(optimizer=name, lr=lr, steps=cfg.steps, batch_size=cfg.batch_size)


@register(
    "depth-rank-optimizers",
    description="Converged entropy rank against depth for SGD, Nesterov, Adam, L-BFGS and random search",
    config_cls=DepthRankOptimizersConfig,
    presets={
        "quick": {},
        "paper": {"n": 32, "depths": [1, 2, 4, 8, 16, 32], "seeds": 10, "n_train": 64, "steps": 10000,
                  "lbfgs_steps": 200, "random_search_steps": 10000, "n_test": 2048},
    },
    claim=CLAIM,
)
def run(cfg: DepthRankOptimizersConfig, run: RunDir) -> dict:
    from tqdm.auto import tqdm

    from rankbias.report import markdown_table, write_run_report

    per_optimizer, history_rows, h_target = [], [], None
    # a part is reused (resume) only by a run of the same settings
    chash = config_hash({k: v for k, v in cfg.to_dict().items() if k != "optimizers"})
    for name in tqdm(cfg.optimizers, desc="optimizers", disable=None, leave=False):
        part = run.part(f"optimizer-{name}-{chash}")
        if part is None:
            layout, tasks, res = fit_sweep(cfg, ["low_rank"], **_settings(cfg, name))
            rows = per_depth_rows(layout, res, 0, cfg.depths)
            part = {"rows": rows, "target_entropy_rank": target_entropy_rank(tasks),
                    "history": [{"optimizer": name, **r} for r in res.history],
                    "layout": layout}
            run.save_part(f"optimizer-{name}-{chash}", part)
        h_target = part["target_entropy_rank"]
        history_rows += part["history"]
        rows = part["rows"]
        h1, hL = rows[0]["entropy_rank"], rows[-1]["entropy_rank"]
        per_optimizer.append({
            "optimizer": name, "per_depth": rows,
            "rank_depth_1": h1, "rank_largest_depth": hL,
            "holds": bool(math.isfinite(h1) and math.isfinite(hL) and hL < h1),
        })
    layout = [tuple(x) for x in part["layout"]]
    run.write_csv("metrics.csv", ({"optimizer": r["optimizer"], "depth": layout[r["model"]][1],
                                   "seed": layout[r["model"]][2],
                                   **{k: v for k, v in r.items() if k != "optimizer"}}
                                  for r in history_rows))
    verdict = {
        "holds": all(p["holds"] for p in per_optimizer),
        "criterion": "mean converged entropy rank at the largest depth < at depth 1, for every optimiser",
        **{f"{p['optimizer']}": f"{p['rank_depth_1']:.3f} -> {p['rank_largest_depth']:.3f}"
           for p in per_optimizer},
        "target_entropy_rank": h_target,
    }
    table = [{"optimizer": LABELS[p["optimizer"]],
              **{f"L={r['depth']}": f"{r['entropy_rank']:.3f} ± {r['entropy_rank_std']:.3f}"
                 for r in p["per_depth"]},
              "falls": p["holds"]} for p in per_optimizer]
    losses = [{"optimizer": LABELS[p["optimizer"]], "depth": r["depth"], "train_loss": r["train_loss"],
               "test_loss": r["test_loss"], "entropy_rank": r["entropy_rank"], "diverged": r["diverged"]}
              for p in per_optimizer for r in p["per_depth"]]
    plot_sweep([{"label": LABELS[p["optimizer"]], "per_depth": p["per_depth"]} for p in per_optimizer],
               run.figure_path("depth_rank_optimizers"), label_key="label",
               title=f"Low-rank target (rank {cfg.target_rank}, n={cfg.n}), {cfg.seeds} seeds")
    _plot_rank(per_optimizer, h_target, run.figure_path("entropy_rank_by_optimizer"), cfg)
    write_run_report(
        run, title="depth-rank-optimizers: converged entropy rank against depth, per optimiser",
        claim=CLAIM, verdict=verdict,
        sections=[(f"Converged entropy rank (nats, mean ± std over {cfg.seeds} seeds; target's "
                   f"{h_target:.3f})", markdown_table(table)),
                  ("Losses", markdown_table(losses))],
        figures=["entropy_rank_by_optimizer", "depth_rank_optimizers"], config=cfg.to_dict())
    return {"per_optimizer": per_optimizer, "target_entropy_rank": h_target, "verdict": verdict}


def _plot_rank(per_optimizer, h_target, path, cfg):
    import rankbias.plots as plots

    fig, ax = plots.figure(width=5.8, height=3.8)
    for i, p in enumerate(per_optimizer):
        rows = p["per_depth"]
        plots.line_with_band(ax, [r["depth"] for r in rows], [r["entropy_rank"] for r in rows],
                             [r["entropy_rank_std"] for r in rows], label=LABELS[p["optimizer"]],
                             color=f"C{i}", ms=4)
    ax.axhline(h_target, color="k", ls="--", lw=1, label=f"target (rank {cfg.target_rank})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(cfg.depths), [str(d) for d in cfg.depths])
    ax.minorticks_off()
    ax.set_xlabel("depth L")
    ax.set_ylabel("converged entropy rank of $W_L\\cdots W_1$ (nats)")
    ax.set_title(f"Deep linear nets, rank-{cfg.target_rank} target, n={cfg.n}\n"
                 f"(error bars: std over {cfg.seeds} seeds)", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return plots.save(fig, path)
