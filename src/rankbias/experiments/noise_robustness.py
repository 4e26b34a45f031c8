"""noise-robustness: CNN filters keep the data's intrinsic rank under background noise.

Zhang, Gao, Zou & Cao (2025), "Gradient Descent Robustly Learns the Intrinsic
Dimension of Data in Training Convolutional Neural Networks" (SCIENCE.md B; the
data model and network are reconstructed, see docs/paper1.md).

For every noise level sigma_p and seed, the patch data model
(:func:`rankbias.data.patches.make_patch_data`) is drawn and a two-layer CNN
with Huberised ReLU (:mod:`rankbias.models.two_layer_cnn`) is trained by
gradient descent on the logistic loss. All sigma_p x seeds networks train as
one batched computation. Measured: the stable rank of the filters against the
data's stable rank (patch matrix nP x d and image matrix n x Pd) and the clean
rank 2K, and the train/test accuracy.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from rankbias.experiments import _noise_common as common
from rankbias.experiments.registry import register
from rankbias.framework.config import Config
from rankbias.framework.runs import RunDir

CLAIM = (
    "Background noise inflates the rank of the data by an order of magnitude, but the "
    "filters a two-layer CNN learns by gradient descent keep a stable rank close to the "
    "clean data's intrinsic rank 2K, at every noise level where the network still "
    "generalises (Zhang, Gao, Zou & Cao 2025)."
)


@dataclasses.dataclass(frozen=True)
class NoiseRobustnessConfig(Config):
    n_train: int = 300
    """Training images per noise level and seed."""
    n_test: int = 1000
    """Test images per noise level and seed (same signal dictionary)."""
    patches: int = 8
    """P: patches per image (one holds the signal, the others background noise)."""
    dim: int = 100
    """d: dimension of a patch."""
    K: int = 2
    """Signal vectors per class; the clean data has rank 2K."""
    signal_norm: float = 5.0
    """||mu||, the norm of every signal vector. A noise patch has norm ~ sigma_p * sqrt(d)."""
    sigmas: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
    )
    """Background noise levels sigma_p (0 = clean images), each >= 0."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds; each fixes a data draw (dictionary, samples, noise) and the init."""
    filters: int = 10
    """m: filters per class."""
    steps: int = 500
    """Gradient descent steps."""
    lr: float = 1.0
    """Step size eta."""
    init_std: float = 0.01
    """sigma_0: filters start as N(0, sigma_0^2 I)."""
    q: float = 3.0
    """Power of the Huberised ReLU (>= 1)."""
    kappa: float = 1.0
    """Threshold of the Huberised ReLU (> 0)."""
    signal_position: Literal["random", "fixed"] = "random"
    """Which patch holds the signal: uniformly random, or always patch 0."""
    orthogonal_noise: bool = False
    """Project the background noise onto the orthogonal complement of the signal span."""
    optimizer: Literal["gd", "sgd"] = "gd"
    """gd: full-batch gradient descent; sgd: mini-batches of batch_size."""
    batch_size: int = 50
    """Mini-batch size for optimizer=sgd (ignored by gd)."""
    log_every: int = 25
    """Steps between logged metrics (and rank measures)."""
    device: str = "cpu"
    """torch device, e.g. "cpu" or "cuda"."""

    def validate(self) -> None:
        self._require(self.n_train >= 2, "n_train", "an int >= 2")
        self._require(self.n_test >= 1, "n_test", "an int >= 1")
        self._require(self.patches >= 1, "patches", "an int >= 1")
        self._require(self.K >= 1, "K", "an int >= 1")
        self._require(self.dim >= 2 * self.K + int(self.orthogonal_noise), "dim",
                      f"an int >= 2K (= {2 * self.K}){' + 1 with orthogonal_noise' if self.orthogonal_noise else ''}")
        self._require(self.signal_norm > 0, "signal_norm", "a float > 0")
        common.validate_training(self)
        self._require(self.optimizer == "gd" or 1 <= self.batch_size <= self.n_train, "batch_size",
                      "an int in 1..n_train with optimizer=sgd")


def build_data(cfg: NoiseRobustnessConfig):
    """Stacked train/test sets of every (seed, sigma) and the data's rank measures."""
    from rankbias.data.patches import data_rank_measures, make_patch_data

    S = len(cfg.sigmas)
    X, y, Xt, yt = [], [], [], []
    ranks = {"data_patch_stable_rank": [], "data_image_stable_rank": [],
             "data_patch_effective_rank": [], "data_patch_stable_rank_clean": [],
             "data_patch_numerical_rank_clean": []}
    for seed in cfg.seeds:
        d = make_patch_data(
            cfg.n_train, cfg.n_test, cfg.patches, cfg.dim, cfg.K, cfg.signal_norm, list(cfg.sigmas),
            signal_position=cfg.signal_position, orthogonal_noise=cfg.orthogonal_noise, seed=seed,
        )
        X.append(d.X)
        Xt.append(d.X_test)
        y.append(d.y.expand(S, -1))
        yt.append(d.y_test.expand(S, -1))
        r = data_rank_measures(d.X)
        rc = data_rank_measures(d.X_clean[None])
        ranks["data_patch_stable_rank"].append(r["patch"]["stable_rank"].numpy())
        ranks["data_image_stable_rank"].append(r["image"]["stable_rank"].numpy())
        ranks["data_patch_effective_rank"].append(r["patch"]["effective_rank"].numpy())
        ranks["data_patch_stable_rank_clean"].append(np.repeat(rc["patch"]["stable_rank"].numpy(), S))
        ranks["data_patch_numerical_rank_clean"].append(
            np.repeat(rc["patch"]["numerical_rank"].numpy().astype(float), S))
    dev = torch.device(cfg.device)
    stack = [torch.cat(t).to(dev) for t in (X, y, Xt, yt)]
    return (*stack, {k: np.stack(v) for k, v in ranks.items()})


@register(
    "noise-robustness",
    description="CNN filters keep the clean data's rank 2K under background noise (Zhang et al. 2025)",
    config_cls=NoiseRobustnessConfig,
    presets={
        "quick": {},
        "paper": {
            "n_train": 1000, "n_test": 1000, "patches": 16, "dim": 400, "K": 4, "signal_norm": 10.0,
            "sigmas": [0.0, 0.0625, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0, 1.25],
            "seeds": [0, 1, 2, 3, 4], "filters": 20, "steps": 2000, "lr": 1.0, "log_every": 50,
        },
    },
    claim=CLAIM,
)
def run(cfg: NoiseRobustnessConfig, run: RunDir) -> dict:
    from rankbias.models.two_layer_cnn import train_two_layer_cnn
    from rankbias.report import markdown_table, write_run_report

    X, y, Xt, yt, data_ranks = build_data(cfg)
    S = len(cfg.sigmas)
    fit = train_two_layer_cnn(
        X, y, Xt, yt, filters=cfg.filters, steps=cfg.steps, lr=cfg.lr, init_std=cfg.init_std,
        q=cfg.q, kappa=cfg.kappa, optimizer=cfg.optimizer, batch_size=cfg.batch_size,
        init_seeds=[s for s in cfg.seeds for _ in range(S)], batch_seed=cfg.seeds[0],
        log_every=cfg.log_every, progress=None,
    )
    clean_rank = 2 * cfg.K
    history = common.history_rows(fit.history, cfg.sigmas, cfg.seeds)
    run.write_csv("metrics.csv", history)
    per_sigma = common.per_sigma_table(fit.final, fit.status, cfg.sigmas, cfg.seeds, data_ranks, clean_rank)
    verdict = common.verdict(per_sigma, clean_rank)
    verdict["clean_patch_numerical_rank"] = float(np.min(data_ranks["data_patch_numerical_rank_clean"]))

    sig_label = "background noise σ_p (symlog scale)"
    common.plot_ranks_vs_sigma(
        per_sigma, run.figure_path("stable_rank_vs_sigma"), clean_rank=clean_rank,
        clean_label=f"2K = {clean_rank} (clean rank)", sigma_label=sig_label,
        title=f"Patch model: n={cfg.n_train}, P={cfg.patches}, d={cfg.dim}, K={cfg.K}, ||μ||={cfg.signal_norm:g}",
    )
    common.plot_filter_rank_over_steps(
        history, cfg.sigmas, run.figure_path("filter_stable_rank_over_steps"), clean_rank=clean_rank,
        clean_label=f"2K = {clean_rank}", title=f"Filter stable rank during GD (lr={cfg.lr:g}, m={cfg.filters})",
    )
    common.plot_acc_vs_sigma(per_sigma, run.figure_path("accuracy_vs_sigma"), sigma_label=sig_label,
                             title="Accuracy against background noise")
    statuses = common.status_rows(fit.status, fit.diverged_at, cfg.sigmas, cfg.seeds)
    summary = {"per_sigma": per_sigma, "verdict": verdict, "clean_rank": clean_rank,
               "status": statuses, "steps": cfg.steps}
    cols = ["sigma", "filter_stable_rank_mean", "filter_stable_rank_std", "filter_effective_rank_mean",
            "data_patch_stable_rank", "data_image_stable_rank", "clean_rank", "train_acc_mean",
            "test_acc_mean", "n_diverged"]
    diverged = [r for r in statuses if r["status"] != "ok"]
    write_run_report(
        run,
        title="noise-robustness: filter rank vs data rank under background noise",
        claim=CLAIM,
        verdict=verdict,
        sections=[
            ("Per noise level (means over seeds; noise patch norm ≈ σ_p·√d = "
             f"σ_p·{cfg.dim ** 0.5:.3g}, signal norm {cfg.signal_norm:g})", markdown_table(per_sigma, cols)),
            ("Diverged runs", markdown_table(diverged) if diverged else "none"),
        ],
        figures=["stable_rank_vs_sigma", "filter_stable_rank_over_steps", "accuracy_vs_sigma"],
        config=cfg.to_dict(),
    )
    return summary
