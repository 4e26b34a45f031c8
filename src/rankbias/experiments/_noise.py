"""The shared base of the noise-robustness experiments (paper 1; docs/paper1.md).

:class:`NoiseSweepConfig` holds the fields every noise-robustness experiment has: the
sweep (``sigmas`` x ``seeds``), the network (``filters``, ``q``, ``kappa``,
``init_std``) and its training (``steps``, ``target_train_loss``, ``lr``,
``optimizer``, ``batch_size``, ``log_every``, ``device``). A subclass adds its data
settings (``n_train``, ``n_test``, the data model) and may change a default by
declaring the field again.

A sweep trains ``len(seeds) * len(sigmas)`` networks as one batch; model
``i = seed_index * S + sigma_index`` (:func:`model_index`). The functions below turn
the batch's results into the per-noise-level table, the verdict (the relative test
:func:`rankbias.verdicts.relative_rank_verdict`, docs/paper1.md "Verdict") and the
run directory's files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rankbias.experiments._statements import PAPER1_NOISE
from rankbias.fit.two_layer_cnn import CnnOptimizer
from rankbias.framework.config import Config, DeviceField
from rankbias.verdicts import mean_std, relative_rank_verdict

__all__ = [
    "GPU_SMOKE_SIZES",
    "ImageSourceFields",
    "NoiseSweepConfig",
    "SweepLabels",
    "SweepTable",
    "claim_verdict",
    "history_rows",
    "model_index",
    "per_seed",
    "per_sigma_table",
    "status_rows",
    "train_sweep",
    "write_outputs",
]

PAPER_CLAIM = (
    "background noise inflates the data's rank by an order of magnitude or more while the "
    "filters' stable rank stays near the clean (intrinsic) rank; no figure values: the "
    "paper's full text was not available (docs/paper1.md)"
)
"""The paper's side of the "paper vs measured" table."""


@dataclasses.dataclass(frozen=True, kw_only=True)  # kw_only: see DeviceField
class ImageSourceFields(Config):
    """Where the image experiments of paper 1 read a dataset from."""

    data_root: str | None = None
    """Data root (null: $RANKBIAS_DATA, else ./data)."""
    download: bool = False
    """Let torchvision download a missing dataset (needs internet)."""


@dataclasses.dataclass(frozen=True)
class NoiseSweepConfig(DeviceField):
    """Fields shared by the noise-robustness experiments: the sweep, the CNN, its training."""

    sigmas: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.5, 1.0])
    """Background noise levels (0 = clean images; must be present: the verdict compares with it)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds (a list of distinct ints); each fixes a data draw and the init."""
    filters: int = 10
    """m: filters per class."""
    steps: int = 500
    """Gradient descent steps (the budget when target_train_loss is set)."""
    target_train_loss: float | None = None
    """Stop each network once its full-batch training loss is <= this (> 0); null: run all steps."""
    lr: float = 1.0
    """Step size eta."""
    init_std: float = 0.01
    """sigma_0: filters start as N(0, sigma_0^2 I)."""
    q: float = 3.0
    """Power of the Huberised ReLU (>= 1)."""
    kappa: float = 1.0
    """Threshold of the Huberised ReLU (> 0)."""
    optimizer: CnnOptimizer = "gd"
    """gd: full-batch gradient descent; sgd: mini-batches of batch_size."""
    batch_size: int = 50
    """Mini-batch size for optimizer=sgd (ignored by gd)."""
    log_every: int = 25
    """Steps between logged metrics (and rank measures)."""

    def validate(self) -> None:
        req = self._require
        req(len(self.sigmas) >= 1 and all(s >= 0 and math.isfinite(s) for s in self.sigmas),
            "sigmas", "a non-empty list of finite floats >= 0")
        req(len(set(self.sigmas)) == len(self.sigmas), "sigmas", "distinct values")
        req(0.0 in self.sigmas, "sigmas", "a list that includes 0 (the clean level)")
        req(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
            "a non-empty list of distinct ints")
        req(self.filters >= 1, "filters", "an int >= 1")
        req(self.steps >= 1, "steps", "an int >= 1")
        req(self.target_train_loss is None or self.target_train_loss > 0, "target_train_loss",
            "a float > 0 or null")
        req(self.lr > 0, "lr", "a float > 0")
        req(self.init_std >= 0, "init_std", "a float >= 0")
        req(self.q >= 1, "q", "a float >= 1")
        req(self.kappa > 0, "kappa", "a float > 0")
        req(self.batch_size >= 1, "batch_size", "an int >= 1")
        req(self.log_every >= 1, "log_every", "an int >= 1")

    @property
    def clean_index(self) -> int:
        """Position of sigma = 0 in ``sigmas``."""
        return list(self.sigmas).index(0.0)


GPU_SMOKE_SIZES = {"sigmas": [0.0, 0.5], "seeds": [0, 1], "steps": 20, "log_every": 10}
"""The ``gpu-smoke`` plan's sweep of a paper-1 step (each step adds its data sizes)."""


def model_index(seed_index: int, sigma_index: int, n_sigmas: int) -> int:
    """Where the network of (seed, sigma) sits in the batch."""
    return seed_index * n_sigmas + sigma_index


def train_sweep(cfg: NoiseSweepConfig, X, y, X_test, y_test):
    """Train the sweep's networks (data (M, n, P, d) in :func:`model_index` order) as one batch."""
    from rankbias.fit.two_layer_cnn import fit_two_layer_cnn

    S = len(cfg.sigmas)
    return fit_two_layer_cnn(
        X, y, X_test, y_test, filters=cfg.filters, steps=cfg.steps, lr=cfg.lr, init_std=cfg.init_std,
        q=cfg.q, kappa=cfg.kappa, optimizer=cfg.optimizer, batch_size=min(cfg.batch_size, X.shape[1]),
        target_train_loss=cfg.target_train_loss, init_seeds=[s for s in cfg.seeds for _ in range(S)],
        batch_seed=cfg.seeds[0], log_every=cfg.log_every, progress=None,
    )


def per_seed(fit, key: str, n_seeds: int, n_sigmas: int) -> np.ndarray:
    """``fit.final[key]`` as (seeds, S); NaN for diverged networks."""
    return np.asarray(fit.final[key], float).reshape(n_seeds, n_sigmas)


def per_sigma_table(fit, cfg: NoiseSweepConfig, data: Mapping[str, np.ndarray],
                    clean_rank: float) -> list[dict[str, Any]]:
    """One row per sigma: mean and std over seeds (:func:`rankbias.verdicts.mean_std`) of
    the final metrics of the non-diverged networks, and of the data's ranks
    (``data[key]`` is (seeds, S))."""
    S, n_seeds = len(cfg.sigmas), len(cfg.seeds)
    rows = []
    for j, sigma in enumerate(cfg.sigmas):
        idx = [model_index(s, j, S) for s in range(n_seeds)]
        ok = [i for i in idx if fit.status[i] == "ok"]

        def col(key, ok=ok):
            return [float(fit.final[key][i]) for i in ok]

        row: dict[str, Any] = {"sigma": float(sigma)}
        for key in ("filter_stable_rank", "filter_effective_rank"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(col(key))
        # the filters against the clean rank (2K in the patch model): 1 means "the intrinsic rank"
        row["filter_stable_rank_over_clean_rank"] = row["filter_stable_rank_mean"] / clean_rank
        row["class_block_stable_rank_mean"] = mean_std(col("pos_stable_rank") + col("neg_stable_rank"))[0]
        for key, arr in data.items():
            row[key], row[f"{key}_std"] = mean_std(list(np.asarray(arr)[:, j]))
        row["clean_rank"] = clean_rank
        for key in ("train_acc", "test_acc", "test_loss"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(col(key))
        row["n_ok"], row["n_diverged"] = len(ok), len(idx) - len(ok)
        if cfg.target_train_loss is not None:
            row["n_reached_target"] = sum(fit.reached_target_at[i] is not None for i in idx)
        rows.append(row)
    return rows


def claim_verdict(fit, cfg: NoiseSweepConfig, data_patch_stable_rank: np.ndarray, *, n_test: int,
                  clean_rank: float) -> dict[str, Any]:
    """The verdict: :func:`rankbias.verdicts.relative_rank_verdict` on the test accuracy (of
    ``n_test`` images per seed, two classes), the data's patch-matrix stable rank and the
    filters' stable rank, all (seeds, S), with the paper's ``statement``, the "paper" and
    "measured" entries of the report's comparison table, and the filters' stable rank over
    ``clean_rank`` (2K in the patch model) at the deciding noise level."""
    n_seeds, S = len(cfg.seeds), len(cfg.sigmas)
    filters = per_seed(fit, "filter_stable_rank", n_seeds, S)
    v = relative_rank_verdict(
        cfg.sigmas, per_seed(fit, "test_acc", n_seeds, S), data_patch_stable_rank, filters,
        n_test=n_test, n_classes=2, clean_index=cfg.clean_index,
    )
    if "sigma" in v:
        with np.errstate(invalid="ignore"):
            v["filter_stable_rank_over_clean_rank"] = float(
                np.nanmean(filters[:, list(cfg.sigmas).index(v["sigma"])]) / clean_rank)
    if "ratio_mean" in v:
        measured = (f"data's patch stable rank x{v['max_data_growth']:.3g} at sigma={v['sigma']:g}, "
                    f"filters' x{v['model_growth']:.3g} (stable rank / clean rank "
                    f"{v['filter_stable_rank_over_clean_rank']:.3g}): log ratio {v['ratio_mean']:.3f} "
                    f"[{v['ratio_lo']:.3f}, {v['ratio_hi']:.3f}] over {v['n_seeds_used']} seeds")
    else:
        measured = f"{v['status']} on this data: {v['reason']}"
    return {**v, "statement": PAPER1_NOISE, "paper": PAPER_CLAIM, "measured": measured}


def status_rows(fit, cfg: NoiseSweepConfig) -> list[dict[str, Any]]:
    """Per network: sigma, seed, status, when it diverged and when it reached the loss target."""
    S = len(cfg.sigmas)
    return [
        {"sigma": float(cfg.sigmas[i % S]), "seed": int(cfg.seeds[i // S]), "status": st,
         "diverged_at": fit.diverged_at[i], "reached_target_at": fit.reached_target_at[i]}
        for i, st in enumerate(fit.status)
    ]


def history_rows(fit, cfg: NoiseSweepConfig) -> list[dict[str, Any]]:
    """``fit.history`` with each row's sigma and seed."""
    S = len(cfg.sigmas)
    return [{"sigma": float(cfg.sigmas[r["model"] % S]), "seed": int(cfg.seeds[r["model"] // S]), **r}
            for r in fit.history]


@dataclasses.dataclass(frozen=True)
class SweepLabels:
    """How a noise sweep's report and figures name things."""

    title: str
    """The report's title."""
    claim: str
    """The claim the report tests."""
    name: str
    """The data's short name, in the figures' titles."""
    clean_label: str
    """The clean rank's line label."""
    sigma_label: str
    """The noise axis label."""
    figure_title: str
    """The title of the ranks-against-sigma figure."""


@dataclasses.dataclass(frozen=True)
class SweepTable:
    """What the report's per-sigma table and ranks figure show."""

    columns: Sequence[str]
    """Columns of the per-sigma table."""
    heading: str = "Per noise level (means over seeds)"
    """Heading of the per-sigma table."""
    sections: Sequence[tuple[str, str]] = ()
    """Report sections before the table: (heading, markdown)."""
    clean_data_key: str | None = None
    """The clean data's rank per sigma, drawn beside the noisy one (None: not drawn)."""
    image_key: str | None = "data_image_stable_rank"
    """The whole images' rank per sigma, drawn beside the patches' (None: not drawn)."""


def write_outputs(run, cfg: NoiseSweepConfig, fit, data_ranks: Mapping[str, np.ndarray], clean_rank: float, *,
                  n_test: int, labels: SweepLabels, table: SweepTable,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """metrics.csv, the three figures and report.md of a sweep; returns the summary."""
    history = history_rows(fit, cfg)
    run.write_csv("metrics.csv", history)
    per_sigma = per_sigma_table(fit, cfg, data_ranks, clean_rank)
    verdict = claim_verdict(fit, cfg, data_ranks["data_patch_stable_rank"], n_test=n_test, clean_rank=clean_rank)
    band = verdict.get("accuracy_band", {})
    for r in per_sigma:  # the figures shade what the verdict's band leaves out
        r["in_accuracy_band"] = r["sigma"] == 0 or band.get(str(float(r["sigma"])), {}).get("noninferior", False)
    _write_figures(run, cfg, history, per_sigma, clean_rank, labels, table)
    statuses = status_rows(fit, cfg)
    summary = {"per_sigma": per_sigma, "verdict": verdict, "clean_rank": clean_rank, **(extra or {}),
               "status": statuses, "steps": cfg.steps}
    _write_report(run, cfg, summary, labels, table)
    return summary


def _write_figures(run, cfg: NoiseSweepConfig, history: list[dict[str, Any]], per_sigma: list[dict[str, Any]],
                   clean_rank: float, labels: SweepLabels, table: SweepTable) -> None:
    from rankbias.plots import noise as figs

    clean_acc = per_sigma[cfg.clean_index]["test_acc_mean"]
    figs.stable_ranks_against_sigma(
        per_sigma, run.figure_path("stable_rank_vs_sigma"), clean_rank=clean_rank,
        clean_label=labels.clean_label, sigma_label=labels.sigma_label, title=labels.figure_title,
        clean_acc=clean_acc, image_key=table.image_key, clean_data_key=table.clean_data_key,
    )
    figs.filter_rank_against_steps(
        history, cfg.sigmas, run.figure_path("filter_stable_rank_over_steps"), clean_rank=clean_rank,
        clean_label=labels.clean_label.split(" (")[0],
        title=f"{labels.name}: filter stable rank during GD (lr={cfg.lr:g})",
    )
    figs.accuracy_against_sigma(per_sigma, run.figure_path("accuracy_vs_sigma"), sigma_label=labels.sigma_label,
                                title=f"{labels.name}: accuracy against background noise", clean_acc=clean_acc)


def _write_report(run, cfg: NoiseSweepConfig, summary: dict[str, Any], labels: SweepLabels,
                  table: SweepTable) -> None:
    from rankbias.framework.tables import markdown_table
    from rankbias.run_reports import write_run_report

    diverged = [r for r in summary["status"] if r["status"] != "ok"]
    write_run_report(
        run, title=labels.title, claim=labels.claim, verdict=summary["verdict"],
        sections=[
            *table.sections,
            (table.heading, markdown_table(summary["per_sigma"], table.columns)),
            ("Diverged runs", markdown_table(diverged) if diverged else "none"),
        ],
        figures=["stable_rank_vs_sigma", "filter_stable_rank_over_steps", "accuracy_vs_sigma"],
        config=cfg.to_dict(), notices=summary.get("notices", ()),
    )
