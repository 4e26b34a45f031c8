"""depth-rank-init-sensitivity: the low-rank bias of trained deep linear networks
is insensitive to the initialisation (Huh et al. 2023, "The Low-Rank Simplicity
Bias in Deep Networks", sec. 4; ``docs/paper2-depth.md``, C.2 across
initialisations).

The low-rank fitting task of ``depth-rank-trained`` is trained from several
initialisations: every distribution of ``inits`` (i.i.d. normal, i.i.d.
uniform, Haar-orthogonal factors) at every scale of ``init_scales`` (by default
the end-to-end map's gain, 0.5x to 2x of the default gain 1, at every depth:
per-factor gains of 0.5 or 2 would make a depth-32 product vanish or explode
before any training). The whole grid (inits x depths x seeds) trains as one
padded batch; every init sees the same tasks. Orthogonal factors make a useful
control: their product is orthogonal, so its entropy rank at initialisation is
the maximum log n at every depth (the C.1 effect is absent at init), and any
fall with depth after training comes from training.

The test, fixed before the run, of the paper's statement that the simplicity bias
"is resilient to hyper-parameters and learning methods" (docs/paper2-depth.md, "C.2
across initialisations"): for i.i.d. initial factors (normal, uniform) at every scale,
the bias of depth is there, i.e. per init the paired fall of the converged entropy rank
from the first depth to the last (same seed and task) has a t-interval above 0
(:func:`rankbias.verdicts.paired_gain_verdict` with ``min_fall`` as the effect). Holds
when every i.i.d. init holds; does not hold when one does not (a rise with depth, or a
fall shown to be smaller than ``min_fall``); not testable with fewer than two seeds or
no i.i.d. init; inconclusive otherwise. Orthogonal factors are not i.i.d.: their rows
are reported with their own outcome and decide nothing. The spread across inits is
reported; the paper states no bound on it, so it decides nothing either.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Literal

from rankbias.experiments._depth import (
    DeepLinearTaskConfig,
    Init,
    SweepGroup,
    fit_sweep,
    history_rows,
    paper_preset,
    per_depth_rows,
    per_seed,
    rank_against_steps,
    smoke_preset,
    target_entropy_rank,
    training_record,
    training_table,
)
from rankbias.experiments._statements import PAPER2_RESILIENT
from rankbias.experiments.registry import register
from rankbias.fit.deep_linear import ScaleOf
from rankbias.framework.runs import RunDir
from rankbias.verdicts import mean_std, paired_gain_verdict, verdict

CLAIM = (
    "The low-rank bias of depth is resilient to the initialisation: for i.i.d. normal and uniform "
    "initial factors at scales from 0.5x to 2x, the converged entropy rank of a deep linear network "
    "fitted to a low-rank target falls with depth (Huh et al. 2023, sec. 4); orthogonal factors "
    "are reported beside them."
)
PAPER = "the bias of depth toward low effective rank is there whatever the (i.i.d.) initialisation"
IID = ("normal", "uniform")
"""The i.i.d. init distributions, the ones the resilience test decides on."""


@dataclasses.dataclass(frozen=True)
class DepthRankInitSensitivityConfig(DeepLinearTaskConfig):
    inits: list[Init] = dataclasses.field(default_factory=lambda: ["normal", "uniform", "orthogonal"])
    """Distributions of the initial factors (each with every scale of init_scales)."""
    init_scales: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Initial scales (gain of the end-to-end map or of each factor, see scale_of); 1 is the default."""
    scale_of: ScaleOf = "end_to_end"
    """What init_scales set: the end-to-end map's gain at every depth, or each factor's gain."""
    optimizer: Literal["gd", "sgd", "momentum", "nesterov", "adam"] = "gd"
    """Optimiser (rankbias.training); all networks train as one batch."""
    lr: float = 0.01
    """Learning rate: the centre of the grid lr x lr_factors (chosen per init and depth)."""
    min_fall: float = 0.1
    """Smallest fall of the converged entropy rank (nats) from the first depth to the last that
    counts as the bias of depth (0.1: a 10% lower effective rank); a fall shown smaller is none."""
    confidence: float = 0.95
    """Confidence of the t-intervals over seeds."""

    def validate(self) -> None:
        super().validate()
        self._require(len(self.inits) >= 1 and len(set(self.inits)) == len(self.inits), "inits",
                      "a non-empty list of distinct normal, uniform, orthogonal")
        self._require(len(self.init_scales) >= 1 and all(s > 0 for s in self.init_scales)
                      and len(set(self.init_scales)) == len(self.init_scales), "init_scales",
                      "a non-empty list of distinct floats > 0")
        self._require(self.lr > 0, "lr", "a float > 0")
        self._require(self.min_fall > 0, "min_fall", "a float > 0 (nats)")
        self._require(0 < self.confidence < 1, "confidence", "a float in (0, 1)")

    def groups(self) -> list[SweepGroup]:
        return [SweepGroup("low_rank", i, s) for i, s in itertools.product(self.inits, self.init_scales)]


def init_label(g: SweepGroup) -> str:
    return f"{g.init} x{g.init_scale:g}"


def resilience_verdict(first_minus_last: dict[str, list[float]], means: dict[str, list[float]],
                       depths, iid: list[str], *, min_fall: float, confidence: float = 0.95) -> dict:
    """The test of this module's docstring. ``first_minus_last[init]``: per seed, rank at the
    first depth minus at the last; ``means[init]``: per depth, the mean rank over seeds
    (for the spread, reported); ``iid``: the inits that decide."""
    pct = round(100 * confidence)
    criterion = (f"for every i.i.d. init (distribution and scale), the {pct}% t-interval over seeds of "
                 f"(rank at L={depths[0]} minus rank at L={depths[-1]}, same seed) lies above 0; does not "
                 f"hold when one lies below 0, or holds 0 and ends below {min_fall:g} nats (the fall the "
                 "statement means is excluded); orthogonal inits reported, not deciding")
    rows = {k: paired_gain_verdict({k: v}, confidence, " nats", effect=min_fall)
            for k, v in first_minus_last.items()}
    per_init = {k: {"status": r["status"], "reason": r["reason"], **r["intervals"][k]} for k, r in rows.items()}
    spread = {str(d): max(m[j] for m in means.values()) - min(m[j] for m in means.values())
              for j, d in enumerate(depths)}
    numbers = dict(per_init=per_init, iid_inits=list(iid), spread_by_depth=spread, min_fall=min_fall,
                   drop_across_depths=mean_std([m[0] - m[-1] for m in means.values()])[0],
                   statement=PAPER2_RESILIENT, paper=PAPER)
    by = {s: [k for k in iid if rows[k]["status"] == s] for s in ("does not hold", "inconclusive", "holds")}
    others = [k for k in rows if k not in iid]

    def listed(keys):
        return ", ".join(f"{k} {per_init[k]['mean']:+.3f} [{per_init[k]['lo']:+.3f}, {per_init[k]['hi']:+.3f}]"
                         for k in keys)

    measured = (f"fall L={depths[0]} -> L={depths[-1]} (nats): i.i.d. {listed(iid) or 'none'}"
                + (f"; not deciding: {listed(others)}" if others else ""))
    if not iid or all(rows[k]["status"] == "not testable" for k in iid):
        return verdict("not testable", criterion, "needs an i.i.d. init and two seeds", **numbers,
                       measured=measured)
    if by["does not hold"]:
        status, reason = "does not hold", "no fall with depth shown for " + listed(by["does not hold"])
    elif by["inconclusive"] or len(by["holds"]) < len(iid):
        status, reason = "inconclusive", "the fall is not yet shown for " + listed(
            [k for k in iid if rows[k]["status"] != "holds"])
    else:
        status, reason = "holds", "the rank falls with depth for every i.i.d. init: " + listed(iid)
    return verdict(status, criterion, reason, **numbers, measured=measured)


@register(
    "depth-rank-init-sensitivity",
    description="Converged entropy rank against depth for several init distributions and scales",
    config_cls=DepthRankInitSensitivityConfig,
    presets={
        "quick": {},
        "smoke": smoke_preset(init_scales=[1.0]),
        "paper": paper_preset(lr=0.005, log_every=500, init_scales=[0.25, 0.5, 1.0, 2.0, 4.0]),
    },
    claim=CLAIM,
)
def run(cfg: DepthRankInitSensitivityConfig, run: RunDir) -> dict:
    groups = cfg.groups()
    labels = [init_label(g) for g in groups]
    layout, tasks, res = fit_sweep(cfg, groups, optimizer=cfg.optimizer, lr=cfg.lr, steps=cfg.steps,
                                   batch_size=cfg.batch_size, progress=None)
    h_target = target_entropy_rank(tasks[0])
    at_init = initial_rows(res.history, layout, len(groups), cfg.depths)
    per_init = []
    for gi, g in enumerate(groups):
        rows = per_depth_rows(layout, res, gi, cfg.depths)
        diffs = [a - b for a, b in zip(per_seed(layout, res, gi, cfg.depths[0]),
                                       per_seed(layout, res, gi, cfg.depths[-1]))]
        per_init.append({"init": labels[gi], "distribution": g.init, "scale": g.init_scale,
                         "per_depth": rows, "initial_entropy_rank": at_init[gi],
                         "first_minus_last_per_seed": diffs})
    v = resilience_verdict({p["init"]: p["first_minus_last_per_seed"] for p in per_init},
                           {p["init"]: [r["entropy_rank"] for r in p["per_depth"]] for p in per_init},
                           cfg.depths, [p["init"] for p in per_init if p["distribution"] in IID],
                           min_fall=cfg.min_fall, confidence=cfg.confidence)
    record = training_record(cfg, res, layout, labels, cfg.optimizer)
    run.write_csv("metrics.csv", history_rows(res.history, layout, labels, cfg.seeds, key="init"))
    _write_figures(cfg, run, groups, labels, layout, res, per_init, h_target)
    _write_report(cfg, run, per_init, v, record, h_target)
    return {"per_init": per_init, "target_entropy_rank": h_target, "verdict": v, "training": record}


def _write_figures(cfg: DepthRankInitSensitivityConfig, run: RunDir, groups, labels: list[str], layout, res,
                   per_init: list[dict], h_target: float) -> None:
    import rankbias.plots as plots

    shown = [gi for gi, g in enumerate(groups) if g.init_scale == min(cfg.init_scales, key=lambda x: abs(x - 1))]
    plots.rank_against_steps(
        {labels[gi]: rank_against_steps(res.history, layout, gi, cfg.depths) for gi in shown},
        run.figure_path("rank_against_steps"), hline=(h_target, f"target (rank {cfg.target_rank})"),
        title=f"Rank-{cfg.target_rank} target, n={cfg.n}, {cfg.optimizer}, lr per depth, plateau "
              f"{cfg.plateau_tol}/{cfg.plateau_window}, cap {cfg.steps}, {cfg.n_seeds} seeds")
    markers = {"normal": "o", "uniform": "s", "orthogonal": "^"}
    scales = sorted(cfg.init_scales)
    styles = {labels[gi]: {"color": f"C{cfg.inits.index(g.init)}", "marker": markers[g.init],
                           "alpha": 0.45 + 0.55 * (scales.index(g.init_scale) + 1) / len(scales),
                           "ls": ("--", "-", ":")[min(scales.index(g.init_scale), 2)]}
              for gi, g in enumerate(groups)}
    plots.rank_by_depth_lines(
        {"at initialisation": {p["init"]: p["initial_entropy_rank"] for p in per_init},
         f"after training ({cfg.optimizer}, plateau rule, cap {cfg.steps})":
             {p["init"]: p["per_depth"] for p in per_init}},
        run.figure_path("entropy_rank_by_init"), styles=styles,
        hline=(h_target, f"target (rank {cfg.target_rank})"),
        title=f"Deep linear nets, rank-{cfg.target_rank} target, n={cfg.n}, init scale = gain of "
              f"{'the end-to-end map' if cfg.scale_of == 'end_to_end' else 'each factor'} "
              f"(error bars: std over {cfg.n_seeds} seeds)")


def _write_report(cfg: DepthRankInitSensitivityConfig, run: RunDir, per_init: list[dict], v: dict, record: dict,
                  h_target: float) -> None:
    from rankbias.framework.tables import markdown_table
    from rankbias.run_reports import write_run_report

    table = [{"init": p["init"],
              **{f"L={r['depth']}": f"{r['entropy_rank']:.3f} ± {r['entropy_rank_std']:.3f}"
                 for r in p["per_depth"]},
              "diverged": sum(r["diverged"] for r in p["per_depth"]),
              "fall with depth": v["per_init"][p["init"]]["status"]
              + ("" if p["distribution"] in IID else " (not deciding)")} for p in per_init]
    write_run_report(
        run, title="depth-rank-init-sensitivity: converged entropy rank per initialisation",
        claim=CLAIM, verdict=v,
        sections=[(f"Converged entropy rank (nats, mean ± std over {cfg.n_seeds} seeds; target's "
                   f"{h_target:.3f})", markdown_table(table)),
                  ("Spread across inits per depth (nats; reported, decides nothing)",
                   markdown_table([{"depth": d, "spread": s} for d, s in v["spread_by_depth"].items()])),
                  (f"Training ({record['stopping']['rule']}): learning rate chosen per init and depth, "
                   "steps taken per seed, seeds stopped by the cap", markdown_table(training_table(record)))],
        figures=["entropy_rank_by_init", "rank_against_steps"], config=cfg.to_dict())


def initial_rows(history, layout, n_groups: int, depths) -> list[list[dict]]:
    """Per group and depth, the mean and std over seeds of the entropy rank at step 0."""
    h0 = {r["model"]: r["entropy_rank"] for r in history if r["step"] == 0}
    out = []
    for gi in range(n_groups):
        rows = []
        for d in depths:
            m, s = mean_std([h0[m] for m, (g, dd, _) in enumerate(layout) if g == gi and dd == d])
            rows.append({"depth": d, "entropy_rank": m, "entropy_rank_std": s})
        out.append(rows)
    return out
