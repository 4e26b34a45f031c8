"""noise-robustness: CNN filters keep the data's intrinsic rank under background noise.

Zhang, Gao, Zou & Cao (2025), "Gradient Descent Robustly Learns the Intrinsic
Dimension of Data in Training Convolutional Neural Networks" (the data model and
network are reconstructed, see docs/paper1.md).

For every noise level sigma_p and seed, the patch data model
(:func:`rankbias.data.patches.make_patch_data`) is drawn and a two-layer CNN
with Huberised ReLU (:mod:`rankbias.models.two_layer_cnn`) is trained by
gradient descent on the logistic loss. All sigma_p x seeds networks train as
one batched computation. Measured: the stable rank of the filters against the
data's stable rank (patch matrix nP x d and image matrix n x Pd) and the clean
rank 2K, and the train/test accuracy. The verdict is the relative test of
docs/paper1.md ("Verdict").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from rankbias.data.patches import SignalPosition
from rankbias.experiments import _noise
from rankbias.experiments.registry import register
from rankbias.framework.gpu_declarations import GpuRun, GpuStep
from rankbias.framework.runs import RunDir

CLAIM = (
    "Background noise inflates the rank of the data by an order of magnitude, while the "
    "stable rank of the filters a two-layer CNN learns by gradient descent grows far less "
    "(log growth ratio <= 0.25), at the noise levels where the network's test accuracy stays "
    "within 1 pp of its clean accuracy (Zhang, Gao, Zou & Cao 2025)."
)


@dataclasses.dataclass(frozen=True)
class NoiseRobustnessConfig(_noise.NoiseSweepConfig):
    """The patch data model (docs/paper1.md, "The model") and the shared sweep fields."""

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
    signal_position: SignalPosition = "random"
    """Which patch holds the signal: uniformly random, or always patch 0."""
    orthogonal_noise: bool = False
    """Project the background noise onto the orthogonal complement of the signal span."""
    sigmas: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
    )
    """Background noise levels sigma_p (0 = clean images, must be present), each >= 0."""

    def validate(self) -> None:
        super().validate()
        self._require(self.n_train >= 2, "n_train", "an int >= 2")
        self._require(self.n_test >= 1, "n_test", "an int >= 1")
        self._require(self.patches >= 1, "patches", "an int >= 1")
        self._require(self.K >= 1, "K", "an int >= 1")
        self._require(self.dim >= 2 * self.K + int(self.orthogonal_noise), "dim",
                      f"an int >= 2K (= {2 * self.K}){' + 1 with orthogonal_noise' if self.orthogonal_noise else ''}")
        self._require(self.signal_norm > 0, "signal_norm", "a float > 0")
        self._require(self.optimizer == "gd" or self.batch_size <= self.n_train, "batch_size",
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
        "smoke": {"sigmas": [0.0, 0.5], "seeds": [0, 1], "n_train": 40, "n_test": 40, "dim": 20, "steps": 20,
                  "log_every": 10},
        "paper": {
            "n_train": 1000, "n_test": 1000, "patches": 16, "dim": 400, "K": 4, "signal_norm": 10.0,
            "sigmas": [0.0, 0.0625, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0, 1.25],
            "seeds": [0, 1, 2, 3, 4], "filters": 20, "steps": 2000, "lr": 1.0, "log_every": 50,
        },
    },
    claim=CLAIM,
    # the GPU plans (docs/gpu.md: paper 1's shares are sized from its FLOP counts)
    gpu=(GpuStep("paper1-synthetic", gpu=GpuRun("paper", 0.07),
                 smoke=GpuRun("quick", 0.18, lambda data: {**_noise.GPU_SMOKE_SIZES, "n_train": 40, "n_test": 40})),),
)
def run(cfg: NoiseRobustnessConfig, run: RunDir) -> dict:
    X, y, Xt, yt, data_ranks = build_data(cfg)
    fit = _noise.train_sweep(cfg, X, y, Xt, yt)
    clean_rank = 2 * cfg.K
    labels = _noise.SweepLabels(
        title="noise-robustness: filter rank vs data rank under background noise", claim=CLAIM,
        clean_label=f"2K = {clean_rank} (clean rank)", sigma_label="background noise σ_p (symlog scale)",
        figure_title=(f"Patch model: n={cfg.n_train}, P={cfg.patches}, d={cfg.dim}, K={cfg.K}, "
                      f"||μ||={cfg.signal_norm:g}"),
        name="patch model",
    )
    table = _noise.SweepTable(
        heading=("Per noise level (means over seeds; noise patch norm ≈ σ_p·√d = "
                 f"σ_p·{cfg.dim ** 0.5:.3g}, signal norm {cfg.signal_norm:g})"),
        columns=["sigma", "filter_stable_rank_mean", "filter_stable_rank_std", "filter_effective_rank_mean",
                 "filter_stable_rank_over_clean_rank", "data_patch_stable_rank", "data_image_stable_rank",
                 "clean_rank", "train_acc_mean",
                 "test_acc_mean", "n_diverged"],
    )
    return _noise.write_outputs(
        run, cfg, fit, data_ranks, clean_rank, n_test=cfg.n_test, labels=labels, table=table,
        extra={"clean_patch_numerical_rank": float(np.min(data_ranks["data_patch_numerical_rank_clean"]))},
    )
