"""depth-rank-optimizers: the low-rank bias of depth is not the optimiser's doing
(Huh et al. 2023, "The Low-Rank Simplicity Bias in Deep Networks", sec. 4;
``docs/paper2-depth.md``, C.2 across optimisers).

The low-rank fitting problem of ``depth-rank-trained`` is solved with several
optimisers -- SGD (mini-batch), SGD with Nesterov momentum, Adam, L-BFGS and,
for contrast, gradient-free random search ((1+lambda)-ES with the 1/5 success
rule, :func:`rankbias.fit.random_search.fit_random_search`) -- and the converged
entropy rank of the end-to-end map is compared across depths. Every optimiser
except L-BFGS trains the whole sweep (depths x seeds) as one batched
computation; L-BFGS, whose line search couples the models of a batch, trains
one network at a time. All optimisers start from the same initial factors and
see the same tasks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

from rankbias.experiments._depth import (
    FIRST_ORDER,
    DeepLinearFitConfig,
    SweepGroup,
    fit_sweep,
    paper_preset,
    per_depth_rows,
    rank_against_steps,
    require_seeds,
    smoke_preset,
    target_entropy_rank,
    training_record,
    training_table,
)
from rankbias.experiments._statements import PAPER2_OPTIMIZERS
from rankbias.experiments.registry import register
from rankbias.framework.runs import RunDir, config_hash
from rankbias.verdicts import verdict

CLAIM = (
    "Depth lowers the entropy rank of the solution whatever the optimiser: for SGD, SGD with "
    "Nesterov momentum, Adam, L-BFGS and gradient-free random search, the converged entropy rank "
    "of a deep linear network fitted to a low-rank target is lower at the largest depth than at "
    "depth 1 (Huh et al. 2023, sec. 4)."
)
OptimizerName = Literal["sgd", "nesterov", "adam", "lbfgs", "random_search"]
OPTIMIZER_NAMES: tuple[OptimizerName, ...] = get_args(OptimizerName)
LABELS = {"sgd": "SGD", "nesterov": "SGD + Nesterov", "adam": "Adam", "lbfgs": "L-BFGS",
          "random_search": "random search (1+λ)-ES"}


@dataclasses.dataclass(frozen=True)
class DepthRankOptimizersConfig(DeepLinearFitConfig):
    optimizers: list[OptimizerName] = dataclasses.field(
        default_factory=lambda: list(OPTIMIZER_NAMES))
    """Optimisers to compare."""
    batch_size: int | None = 8
    """Mini-batch size of sgd, nesterov and adam (null: full batch); L-BFGS and random search use all pairs."""
    sgd_lr: float = 0.01
    """SGD learning rate (the centre of its grid sgd_lr x lr_factors)."""
    nesterov_lr: float = 0.002
    """SGD + Nesterov learning rate (the centre of its grid)."""
    adam_lr: float = 0.001
    """Adam learning rate (the centre of its grid)."""
    lbfgs_lr: float = 1.0
    """L-BFGS initial step (strong-Wolfe line search)."""
    lbfgs_steps: int = 50
    """L-BFGS outer steps (each up to 20 function evaluations); a fixed count, no stopping rule."""
    random_search_sigma: float = 0.01
    """Random search initial perturbation std per coordinate."""
    random_search_steps: int = 1000
    """Random search steps."""
    population: int = 16
    """Random search candidates per step and network."""
    log_every: int = 500
    """Steps between logged metrics."""

    def validate(self) -> None:
        self._require(len(self.optimizers) >= 1 and len(set(self.optimizers)) == len(self.optimizers),
                      "optimizers", f"a non-empty list of distinct: {', '.join(OPTIMIZER_NAMES)}")
        super().validate()
        for f in ("lbfgs_steps", "random_search_steps", "population"):
            self._require(getattr(self, f) >= 1, f, "an int >= 1")
        for f in ("sgd_lr", "nesterov_lr", "adam_lr", "lbfgs_lr", "random_search_sigma"):
            self._require(getattr(self, f) > 0, f, "a float > 0")


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
        "smoke": smoke_preset(lbfgs_steps=5, random_search_steps=40, population=4),
        "paper": paper_preset(lbfgs_steps=200, random_search_steps=10000),
    },
    claim=CLAIM,
)
def run(cfg: DepthRankOptimizersConfig, run: RunDir) -> dict:
    from tqdm.auto import tqdm

    per_optimizer, history_rows, h_target = [], [], None
    # an optimizer's part is reused (resume) by a run of the same settings, whatever its
    # list of optimizers
    chash = config_hash({k: v for k, v in cfg.to_dict().items() if k != "optimizers"})
    for name in tqdm(cfg.optimizers, desc="optimizers", disable=None, leave=False):
        part = _optimizer_part(cfg, run, name, chash)
        h_target = part["target_entropy_rank"]
        history_rows += part["history"]
        rows = part["rows"]
        h1, hL = rows[0]["entropy_rank"], rows[-1]["entropy_rank"]
        per_optimizer.append({
            "optimizer": name, "per_depth": rows, "training": part["training"],
            "rank_against_steps": part["rank_against_steps"],
            "rank_depth_1": h1, "rank_largest_depth": hL,
            "holds": bool(math.isfinite(h1) and math.isfinite(hL) and hL < h1),
        })
    layout = [tuple(x) for x in part["layout"]]
    run.write_csv("metrics.csv", ({"optimizer": r["optimizer"], "depth": layout[r["model"]][1],
                                   "seed": cfg.seeds[layout[r["model"]][2]],
                                   **{k: v for k, v in r.items() if k != "optimizer"}}
                                  for r in history_rows))
    verdict_ = _verdict(cfg, per_optimizer, h_target)
    figures = _write_figures(cfg, run, per_optimizer, h_target)
    _write_report(cfg, run, per_optimizer, h_target, verdict_, figures)
    return {"per_optimizer": per_optimizer, "target_entropy_rank": h_target, "verdict": verdict_}


def _optimizer_part(cfg: DepthRankOptimizersConfig, run: RunDir, name: str, chash: str) -> dict:
    """One optimiser's sweep over depths and seeds: saved as a part, reused when saved under ``chash``."""
    part = run.part(f"optimizer-{name}", identity=chash)
    if part is None:
        layout, tasks, res = fit_sweep(cfg, [SweepGroup("low_rank", cfg.init, cfg.init_scale)],
                                       **_settings(cfg, name))
        rows = per_depth_rows(layout, res, 0, cfg.depths)
        part = {"rows": rows, "target_entropy_rank": target_entropy_rank(tasks[0]),
                "history": [{"optimizer": name, **r} for r in res.history],
                "layout": layout,
                "training": training_record(cfg, res, layout, [name], _settings(cfg, name)["optimizer"]),
                "rank_against_steps": {str(d): v for d, v in
                                       rank_against_steps(res.history, layout, 0, cfg.depths).items()}}
        run.save_part(f"optimizer-{name}", part, identity=chash)
    return part


def _verdict(cfg: DepthRankOptimizersConfig, per_optimizer: list[dict], h_target: float) -> dict:
    falls = [p["optimizer"] for p in per_optimizer if p["holds"]]
    measured = "; ".join(f"{LABELS[p['optimizer']]} {p['rank_depth_1']:.3f} -> {p['rank_largest_depth']:.3f}"
                         for p in per_optimizer)
    verdict_ = verdict(
        "holds" if len(falls) == len(per_optimizer) else "does not hold",
        "mean converged entropy rank at the largest depth < at depth 1, for every optimiser",
        f"entropy rank at L={cfg.depths[0]} -> L={cfg.depths[-1]}: {measured}",
        **{f"{p['optimizer']}": f"{p['rank_depth_1']:.3f} -> {p['rank_largest_depth']:.3f}"
           for p in per_optimizer},
        target_entropy_rank=h_target, statement=PAPER2_OPTIMIZERS,
        paper="the low-rank bias of depth holds for SGD, momentum, Adam and L-BFGS alike",
        measured=measured)
    return require_seeds(verdict_, cfg.n_seeds)


def _write_figures(cfg: DepthRankOptimizersConfig, run: RunDir, per_optimizer: list[dict],
                   h_target: float) -> list[str]:
    """The figures of the run; returns their names."""
    import rankbias.plots as plots

    plots.depth_sweep_lines(
        [{"label": LABELS[p["optimizer"]], "per_depth": p["per_depth"]} for p in per_optimizer],
        run.figure_path("depth_rank_optimizers"), label_key="label",
        title=f"Low-rank target (rank {cfg.target_rank}, n={cfg.n}), {cfg.n_seeds} seeds")
    plots.rank_by_depth_lines(
        {"": {LABELS[p["optimizer"]]: p["per_depth"] for p in per_optimizer}},
        run.figure_path("entropy_rank_by_optimizer"),
        hline=(h_target, f"target (rank {cfg.target_rank})"),
        ylabel="converged entropy rank of $W_L\\cdots W_1$ (nats)",
        title=f"Deep linear nets, rank-{cfg.target_rank} target, n={cfg.n}\n"
              f"(error bars: std over {cfg.n_seeds} seeds)")
    dynamic = [p for p in per_optimizer if p["optimizer"] in FIRST_ORDER]
    figures = ["entropy_rank_by_optimizer", "depth_rank_optimizers"]
    if dynamic:
        plots.rank_against_steps(
            {LABELS[p["optimizer"]]: {int(d): v for d, v in p["rank_against_steps"].items()} for p in dynamic},
            run.figure_path("rank_against_steps"), hline=(h_target, f"target (rank {cfg.target_rank})"),
            title=f"Rank-{cfg.target_rank} target, n={cfg.n}, lr per depth, plateau "
                  f"{cfg.plateau_tol}/{cfg.plateau_window}, cap {cfg.steps}, {cfg.n_seeds} seeds")
        figures.append("rank_against_steps")
    return figures


def _write_report(cfg: DepthRankOptimizersConfig, run: RunDir, per_optimizer: list[dict], h_target: float,
                  verdict_: dict, figures: list[str]) -> None:
    from rankbias.framework.tables import markdown_table
    from rankbias.run_reports import write_run_report

    table = [{"optimizer": LABELS[p["optimizer"]],
              **{f"L={r['depth']}": f"{r['entropy_rank']:.3f} ± {r['entropy_rank_std']:.3f}"
                 for r in p["per_depth"]},
              "falls": p["holds"]} for p in per_optimizer]
    losses = [{"optimizer": LABELS[p["optimizer"]], "depth": r["depth"], "train_loss": r["train_loss"],
               "test_loss": r["test_loss"], "entropy_rank": r["entropy_rank"], "diverged": r["diverged"]}
              for p in per_optimizer for r in p["per_depth"]]
    training = [{**r, "group": LABELS[p["optimizer"]]} for p in per_optimizer
                for r in training_table(p["training"])]
    write_run_report(
        run, title="depth-rank-optimizers: converged entropy rank against depth, per optimiser",
        claim=CLAIM, verdict=verdict_,
        sections=[(f"Converged entropy rank (nats, mean ± std over {cfg.n_seeds} seeds; target's "
                   f"{h_target:.3f})", markdown_table(table)),
                  ("Losses", markdown_table(losses)),
                  ("Training: learning rate chosen per depth (first-order optimisers: grid lr x "
                   f"{cfg.lr_factors}), steps taken per seed, seeds stopped by the cap",
                   markdown_table(training))],
        figures=figures, config=cfg.to_dict())

