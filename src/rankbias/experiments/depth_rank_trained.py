"""depth-rank-trained: deeper linear networks trained by gradient descent find
lower-rank solutions (Huh et al. 2023, "The Low-Rank Simplicity Bias in Deep
Networks", sec. 4; ``docs/paper2-depth.md``, C.2).

Deep linear networks W_L ... W_1 (n x n factors, depths 1..32) are trained to
fit a target n x n matrix W* from noisy input/output pairs (x, W* x + noise),
for a low-rank target (rank r) and a full-rank one, several seeds each. Every
network of the sweep (targets x depths x seeds) trains in one batched
computation (shallower networks padded with frozen identity factors, see
:mod:`rankbias.models.deep_linear`). Measured per network: train loss, test loss
on clean held-out pairs (= ||W_e - W*||_F^2 / n in expectation), the entropy
rank of the converged end-to-end map W_e and, during training, the top-k
singular values of W_e against step (the singular-value dynamics).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from rankbias.data.matrix_tasks import TARGETS, TargetKind
from rankbias.experiments._depth import (
    DeepLinearFitConfig,
    SweepGroup,
    fit_sweep,
    history_rows,
    paper_preset,
    per_depth_rows,
    rank_against_steps,
    require_seeds,
    smoke_preset,
    target_entropy_rank,
    training_record,
    training_table,
)
from rankbias.experiments._statements import PAPER2_TRAINED
from rankbias.experiments.registry import register
from rankbias.framework.runs import RunDir
from rankbias.verdicts import mean_std, verdict

CLAIM = (
    "Deep linear networks trained by gradient descent on a low-rank target find end-to-end "
    "maps whose entropy rank falls with depth toward the target's, and the test loss is "
    "lowest at an intermediate depth; on a full-rank target the deepest networks fit worse "
    "(higher train loss) than shallow ones (Huh et al. 2023, sec. 4)."
)
PAPER = ("deeper linear networks converge to lower effective-rank solutions; for a low-rank "
         "target a moderate depth generalises best, and deep networks fail on full-rank targets")


@dataclasses.dataclass(frozen=True)
class DepthRankTrainedConfig(DeepLinearFitConfig):
    targets: list[TargetKind] = dataclasses.field(
        default_factory=lambda: list(TARGETS))
    """Targets to fit: low_rank (rank target_rank, equal singular values), full_rank (Gaussian)."""
    optimizer: Literal["gd", "sgd", "momentum", "nesterov", "adam", "lbfgs"] = "gd"
    """Optimiser (rankbias.training); lbfgs trains one network at a time."""
    lr: float = 0.01
    """Learning rate (L-BFGS: initial step); the centre of the grid lr x lr_factors."""
    log_every: int = 50
    """Steps between logged metrics and singular values (metrics.csv, the dynamics figure)."""
    top_k: int = 6
    """Largest singular values of W_e logged against step (0: none, no dynamics figure)."""
    batched: bool = True
    """Train the whole sweep as one batched computation (False: one network at a time)."""
    group_by_depth: bool = False
    """When batched: one batch per depth (no identity padding) instead of one padded batch."""

    def validate(self) -> None:
        super().validate()
        self._require(len(self.targets) >= 1 and len(set(self.targets)) == len(self.targets),
                      "targets", "a non-empty list of distinct low_rank, full_rank")
        self._require(self.lr > 0, "lr", "a float > 0")
        self._require(0 <= self.top_k <= self.n, "top_k", f"an int in [0, n = {self.n}]")
        self._require(not (self.optimizer == "lbfgs" and self.batch_size is not None), "batch_size",
                      "null with optimizer lbfgs (it needs full-batch losses)")


def _finite(xs) -> bool:
    return all(math.isfinite(x) for x in xs)


def low_rank_verdict(rows, h_target: float) -> dict:
    h = [r["entropy_rank"] for r in rows]
    test = [r["test_loss"] for r in rows]
    falls = _finite(h) and all(b < a for a, b in zip(h, h[1:]))
    toward = _finite(h) and abs(h[-1] - h_target) < abs(h[0] - h_target)
    best = int(np.nanargmin(test)) if any(math.isfinite(x) for x in test) else -1
    intermediate = 0 < best < len(rows) - 1
    best_depth = rows[best]["depth"] if best >= 0 else None
    ok = falls and toward and intermediate
    reason = (f"entropy rank {h[0]:.3f} (L={rows[0]['depth']}) -> {h[-1]:.3f} (L={rows[-1]['depth']}), "
              f"{'strictly falling' if falls else 'not strictly falling'}, target's {h_target:.3f}; "
              f"lowest test loss at L={best_depth}")
    return verdict(
        "holds" if ok else "does not hold",
        "mean converged entropy rank strictly falls with depth, the deepest is closer to the "
        "target's than depth 1, and the mean test loss is lowest at neither the first nor the "
        "last depth", reason,
        rank_strictly_falls_with_depth=bool(falls),
        deepest_closer_to_target_than_depth_1=bool(toward),
        target_entropy_rank=h_target,
        entropy_rank_by_depth={str(r["depth"]): r["entropy_rank"] for r in rows},
        test_loss_by_depth={str(r["depth"]): r["test_loss"] for r in rows},
        best_test_depth=best_depth,
        test_best_at_intermediate_depth=bool(intermediate),
        paper="converged rank falls with depth toward the target's; test loss best at a moderate depth",
        measured=reason)


def full_rank_verdict(rows) -> dict:
    train = [r["train_loss"] for r in rows]
    shallow = max(train[:2])
    # a diverged deepest network fits worse than any finite one
    deep = train[-1] if math.isfinite(train[-1]) else float("inf")
    ok = _finite(train[:2]) and deep > shallow
    reason = (f"train loss at L={rows[-1]['depth']}: {train[-1]:.3f}; the two shallowest: "
              f"{train[0]:.3f}, {train[1]:.3f}")
    return verdict(
        "holds" if ok else "does not hold",
        "the deepest's mean train loss exceeds those of the two shallowest depths", reason,
        train_loss_by_depth={str(r["depth"]): r["train_loss"] for r in rows},
        deepest_train_loss=train[-1], max_train_loss_two_shallowest=shallow,
        paper="deep networks fit a full-rank target worse", measured=reason)


@register(
    "depth-rank-trained",
    description="Deep linear nets trained on low-/full-rank targets: rank, train and test loss against depth",
    config_cls=DepthRankTrainedConfig,
    presets={
        "quick": {},
        "smoke": smoke_preset(log_every=20, top_k=2),
        "paper": paper_preset(depths=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32], target_rank=4, lr=0.005,
                              log_every=250),
    },
    claim=CLAIM,
)
def run(cfg: DepthRankTrainedConfig, run: RunDir) -> dict:
    import rankbias.plots as plots
    from rankbias.framework.tables import markdown_table
    from rankbias.run_reports import write_run_report

    groups = [SweepGroup(t, cfg.init, cfg.init_scale) for t in cfg.targets]
    layout, tasks, res = fit_sweep(
        cfg, groups, optimizer=cfg.optimizer, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size,
        batched=cfg.batched, group_by_depth=cfg.group_by_depth, top_k=cfg.top_k)
    summary, sections, verdicts = {"per_target": []}, [], {}
    for ti, target in enumerate(cfg.targets):
        rows = per_depth_rows(layout, res, ti, cfg.depths)
        h_t = target_entropy_rank(tasks[ti])
        v = low_rank_verdict(rows, h_t) if target == "low_rank" else full_rank_verdict(rows)
        verdicts[target] = v
        summary["per_target"].append({"target": target, "target_entropy_rank": h_t, "per_depth": rows,
                                      "verdict": v})
        sections.append((f"{target} target (entropy rank {h_t:.3f} nats; mean and std over "
                         f"{cfg.n_seeds} seeds)", markdown_table(rows)))
    ok = all(v["holds"] for v in verdicts.values())
    verdict_ = verdict(
        "holds" if ok else "does not hold",
        "; ".join(f"{t}: {v['criterion']}" for t, v in verdicts.items()),
        "; ".join(f"{t}: {v['reason']}" for t, v in verdicts.items()),
        **{f"{t}_holds": v["holds"] for t, v in verdicts.items()},
        **({"best_test_depth_low_rank": verdicts["low_rank"]["best_test_depth"]}
           if "low_rank" in verdicts else {}),
        statement=PAPER2_TRAINED, paper=PAPER,
        measured="; ".join(f"{t}: {v['measured']}" for t, v in verdicts.items()))
    summary["verdict"] = require_seeds(verdict_, cfg.n_seeds)
    summary["per_depth"] = [{"target": p["target"], **r} for p in summary["per_target"] for r in p["per_depth"]]
    summary["training"] = record = training_record(cfg, res, layout, cfg.targets, cfg.optimizer)
    sections.append(("Training: learning rate chosen per depth, steps taken per seed, seeds stopped "
                     f"by the cap ({record['stopping']['rule']})", markdown_table(training_table(record))))
    run.write_csv("metrics.csv", history_rows(res.history, layout, cfg.targets, cfg.seeds))
    stopping = (f"plateau {cfg.plateau_tol:g}/{cfg.plateau_window}, cap {cfg.steps}"
                if cfg.plateau_tol is not None else f"{cfg.steps} steps")
    plots.depth_sweep_lines(summary["per_target"], run.figure_path("depth_rank_trained"),
                            title=f"Deep linear nets, n={cfg.n}, {cfg.optimizer}, lr per depth, "
                                  f"{stopping}, {cfg.n_seeds} seeds")
    plots.rank_against_steps(
        {t: rank_against_steps(res.history, layout, ti, cfg.depths) for ti, t in enumerate(cfg.targets)},
        run.figure_path("rank_against_steps"),
        title=f"Deep linear nets, n={cfg.n}, {cfg.optimizer}, {stopping}, {cfg.n_seeds} seeds")
    figures = ["depth_rank_trained", "rank_against_steps"]
    if cfg.top_k and cfg.optimizer != "lbfgs":
        for ti, target in enumerate(cfg.targets):
            name = f"singular_values_{target}"
            plots.singular_value_dynamics(
                sv_dynamics(res.history, layout, ti, cfg.depths, cfg.top_k),
                run.figure_path(name),
                reference=target_singular_values(tasks[ti], cfg.top_k),
                title=f"{target} target: top-{cfg.top_k} singular values of $W_L\\cdots W_1$ "
                      f"during training (n={cfg.n}, {cfg.optimizer}, lr per depth; mean over "
                      f"{cfg.n_seeds} seeds; dashed: the target's)")
            figures.append(name)
    write_run_report(run, title="depth-rank-trained: trained deep linear networks against depth",
                     claim=CLAIM, verdict=verdict_, sections=sections, figures=figures,
                     config=cfg.to_dict())
    return summary


def sv_dynamics(history, layout, group: int, depths, top_k: int) -> dict[int, dict]:
    """Per depth: logged steps and the mean over seeds of each of the top-k singular
    values, {"step": (T,), "sv": (T, k)} (diverged networks left out)."""
    out = {}
    for d in depths:
        models = {m for m, (g, dd, _) in enumerate(layout) if g == group and dd == d}
        by_step: dict[int, list[list[float]]] = {}
        for r in history:
            if r["model"] in models:
                by_step.setdefault(r["step"], []).append([r[f"sv{i + 1}"] for i in range(top_k)])
        steps = sorted(by_step)
        sv = np.array([[mean_std(col)[0] for col in zip(*by_step[s])] for s in steps])
        out[d] = {"step": steps, "sv": sv}
    return out


def target_singular_values(tasks, top_k: int) -> list[float]:
    """The mean over seeds of the target's top-k non-zero singular values (a rank-r
    target's zero ones, at round-off level, would only stretch a log axis)."""
    import torch

    sv = torch.linalg.svdvals(torch.stack([t.target for t in tasks]))[:, :top_k].mean(0)
    return sv[sv > 1e-8 * sv[0]].tolist()
