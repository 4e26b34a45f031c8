"""noise-robustness-images: the noise-robustness analysis on real images.

SCIENCE.md B, real images: an image (scikit-learn digits, MNIST, Fashion-MNIST,
CIFAR-10) is placed on a larger canvas whose background is Gaussian noise of
standard deviation sigma (zero for the clean version); a two-class task (a
configurable pair of classes) is learned by the CNN of the paper's form, m
filters of size k x k per class over the canvas' k x k patches (stride a
setting, default k: non-overlapping patches as in the patch model), Huberised
ReLU, sum pooling and a fixed second layer, trained by gradient descent on the
logistic loss. Compared across sigma: the stable rank of the filters (2m x c k k)
and the stable rank of the data's patch matrix, noisy and clean.

The verdict uses the criterion of the synthetic experiment with the clean
data's patch-matrix stable rank in the role of 2K (real images have no exact
intrinsic rank).
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
    "On real images placed on a noisy canvas, the stable rank of the CNN filters learned "
    "by gradient descent stays close to that of the clean data's patch matrix while the "
    "noisy data's patch-matrix stable rank grows by an order of magnitude, at every noise "
    "level where the network still generalises (Zhang, Gao, Zou & Cao 2025)."
)


@dataclasses.dataclass(frozen=True)
class NoiseImagesConfig(Config):
    dataset: Literal["digits", "mnist", "fashion-mnist", "cifar10"] = "digits"
    """Image dataset (digits: scikit-learn's, always present; the others from data_root)."""
    classes: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    """The two classes of the binary task: the first is y = +1, the second y = -1."""
    n_train: int | None = None
    """Training images per seed, drawn from the two classes (null: all of them)."""
    n_test: int | None = None
    """Test images per seed (null: all of the two classes' test images)."""
    canvas: int | None = None
    """Side of the square canvas (null: twice the image side)."""
    patch_size: int = 4
    """k: filters and patches are k x k."""
    stride: int | None = None
    """Patch stride (null: k, non-overlapping patches as in the patch model)."""
    position: Literal["center", "random"] = "center"
    """Where each image sits on the canvas."""
    noise_region: Literal["background", "all"] = "background"
    """Noise on the background only (the paper's setting) or over the image too."""
    sigmas: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    )
    """Noise standard deviations, in pixel units (images are in [0, 1])."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds; each fixes the image subset, positions, noise and init."""
    filters: int = 10
    """m: filters per class."""
    steps: int = 500
    """Gradient descent steps."""
    lr: float = 1.0
    """Step size."""
    init_std: float = 0.1
    """Filters start as N(0, init_std^2 I). Pixels are in [0, 1], so pre-activations
    start ~ init_std * ||patch||; with q = 3 the gradient scales as their square, and
    0.01 leaves gradient descent stuck near init for thousands of steps."""
    q: float = 3.0
    """Power of the Huberised ReLU (>= 1)."""
    kappa: float = 1.0
    """Threshold of the Huberised ReLU (> 0)."""
    optimizer: Literal["gd", "sgd"] = "gd"
    """gd: full-batch gradient descent; sgd: mini-batches of batch_size."""
    batch_size: int = 64
    """Mini-batch size for optimizer=sgd."""
    log_every: int = 25
    """Steps between logged metrics."""
    data_root: str | None = None
    """Data root (null: $RANKBIAS_DATA, else ./data)."""
    download: bool = False
    """Let torchvision download a missing dataset (needs internet)."""
    device: str = "cpu"
    """torch device."""

    def validate(self) -> None:
        self._require(len(self.classes) == 2 and self.classes[0] != self.classes[1], "classes",
                      "two distinct class indices, e.g. [0, 1]")
        self._require(self.n_train is None or self.n_train >= 2, "n_train", "an int >= 2 or null")
        self._require(self.n_test is None or self.n_test >= 1, "n_test", "an int >= 1 or null")
        self._require(self.patch_size >= 1, "patch_size", "an int >= 1")
        self._require(self.stride is None or self.stride >= 1, "stride", "an int >= 1 or null")
        self._require(self.canvas is None or self.canvas >= self.patch_size, "canvas",
                      "an int >= patch_size, or null")
        common.validate_training(self)
        self._require(self.batch_size >= 1, "batch_size", "an int >= 1")


def _binary(cfg: NoiseImagesConfig, train: bool):
    from rankbias.data.images import load_image_dataset

    data = load_image_dataset(cfg.dataset, train=train, root=cfg.data_root, download=cfg.download)
    sub = data.subset(classes=list(cfg.classes))
    y = torch.where(sub.labels == 0, 1.0, -1.0)
    return sub.images, y, sub.classes


def build_data(cfg: NoiseImagesConfig):
    """Per seed: a subset of the two classes on noisy canvases, cut into patches.
    Returns stacked (M, n, P, ckk) train/test patches, labels, the data's rank
    measures per (seed, sigma) and a description."""
    from rankbias.data.images import extract_patches, noisy_canvas
    from rankbias.data.patches import data_rank_measures

    imgs, y_all, names = _binary(cfg, True)
    imgs_t, yt_all, _ = _binary(cfg, False)
    n = len(y_all) if cfg.n_train is None else cfg.n_train
    nt = len(yt_all) if cfg.n_test is None else cfg.n_test
    if n > len(y_all) or nt > len(yt_all):
        raise ValueError(
            f"{cfg.dataset} classes {list(cfg.classes)} have {len(y_all)} train / {len(yt_all)} test "
            f"images; asked for n_train={n}, n_test={nt}"
        )
    side = imgs.shape[-1]
    canvas = cfg.canvas if cfg.canvas is not None else 2 * side
    if canvas < max(imgs.shape[-2:]):
        raise ValueError(f"canvas {canvas} is smaller than the {cfg.dataset} images ({side})")
    S = len(cfg.sigmas)
    X, Y, Xt, Yt = [], [], [], []
    keys = ("data_patch_stable_rank", "data_image_stable_rank", "data_patch_effective_rank",
            "data_patch_stable_rank_clean", "data_image_stable_rank_clean")
    ranks: dict[str, list] = {k: [] for k in keys}
    for seed in cfg.seeds:
        gen = torch.Generator().manual_seed(int(seed))
        tr = torch.randperm(len(y_all), generator=gen)[:n]
        te = torch.randperm(len(yt_all), generator=gen)[:nt]
        noisy, clean = noisy_canvas(imgs[tr], canvas, list(cfg.sigmas), position=cfg.position,
                                    noise_region=cfg.noise_region, generator=gen)
        noisy_t, _ = noisy_canvas(imgs_t[te], canvas, list(cfg.sigmas), position=cfg.position,
                                  noise_region=cfg.noise_region, generator=gen)
        P = extract_patches(noisy, cfg.patch_size, cfg.stride)  # (S, n, P, ckk)
        Pc = extract_patches(clean, cfg.patch_size, cfg.stride)  # (n, P, ckk)
        X.append(P)
        Xt.append(extract_patches(noisy_t, cfg.patch_size, cfg.stride))
        Y.append(y_all[tr].expand(S, -1))
        Yt.append(yt_all[te].expand(S, -1))
        r = data_rank_measures(P)
        rc = data_rank_measures(Pc[None])
        ranks["data_patch_stable_rank"].append(r["patch"]["stable_rank"].numpy())
        ranks["data_image_stable_rank"].append(r["image"]["stable_rank"].numpy())
        ranks["data_patch_effective_rank"].append(r["patch"]["effective_rank"].numpy())
        ranks["data_patch_stable_rank_clean"].append(np.repeat(rc["patch"]["stable_rank"].numpy(), S))
        ranks["data_image_stable_rank_clean"].append(np.repeat(rc["image"]["stable_rank"].numpy(), S))
    dev = torch.device(cfg.device)
    stack = [torch.cat(t).to(dev) for t in (X, Y, Xt, Yt)]
    info = {"classes": names, "image_shape": list(imgs.shape[1:]), "canvas": canvas,
            "patches_per_image": int(X[0].shape[-2]), "patch_dim": int(X[0].shape[-1]),
            "n_train": n, "n_test": nt}
    return (*stack, {k: np.stack(v) for k, v in ranks.items()}, info)


@register(
    "noise-robustness-images",
    description="Filter rank vs data rank on real images on a noisy canvas (Zhang et al. 2025)",
    config_cls=NoiseImagesConfig,
    presets={
        "quick": {},
        "mnist": {
            "dataset": "mnist", "classes": [0, 1], "n_train": 1000, "n_test": 1000, "patch_size": 14,
            "sigmas": [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0], "seeds": [0, 1], "steps": 500,
        },
        "paper": {
            "dataset": "mnist", "classes": [0, 1], "n_train": 5000, "n_test": 2000, "patch_size": 14,
            "sigmas": [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5], "seeds": [0, 1, 2, 3, 4],
            "filters": 20, "steps": 2000, "log_every": 50,
        },
    },
    claim=CLAIM,
)
def run(cfg: NoiseImagesConfig, run: RunDir) -> dict:
    from rankbias.models.two_layer_cnn import train_two_layer_cnn
    from rankbias.report import markdown_table, write_run_report

    X, y, Xt, yt, data_ranks, info = build_data(cfg)
    S = len(cfg.sigmas)
    fit = train_two_layer_cnn(
        X, y, Xt, yt, filters=cfg.filters, steps=cfg.steps, lr=cfg.lr, init_std=cfg.init_std,
        q=cfg.q, kappa=cfg.kappa, optimizer=cfg.optimizer, batch_size=min(cfg.batch_size, X.shape[1]),
        init_seeds=[s for s in cfg.seeds for _ in range(S)], batch_seed=cfg.seeds[0],
        log_every=cfg.log_every, progress=None,
    )
    clean_rank = float(np.mean(data_ranks["data_patch_stable_rank_clean"]))
    history = common.history_rows(fit.history, cfg.sigmas, cfg.seeds)
    run.write_csv("metrics.csv", history)
    per_sigma = common.per_sigma_table(fit.final, fit.status, cfg.sigmas, cfg.seeds, data_ranks, clean_rank)
    verdict = common.verdict(per_sigma, clean_rank, clean_rank_name="clean data's patch stable rank")
    c, k = info["image_shape"][0], cfg.patch_size
    sig_label = "background noise σ (pixel units, symlog scale)"
    name = f"{cfg.dataset} {info['classes'][0]} vs {info['classes'][1]}"
    common.plot_ranks_vs_sigma(
        per_sigma, run.figure_path("stable_rank_vs_sigma"), clean_rank=clean_rank,
        clean_label=f"{clean_rank:.2f} (clean data)", sigma_label=sig_label,
        title=f"{name}\ncanvas {info['canvas']}, {k}x{k} patches (d={c * k * k}), m={cfg.filters}",
        clean_data_key="data_patch_stable_rank_clean",
    )
    common.plot_filter_rank_over_steps(
        history, cfg.sigmas, run.figure_path("filter_stable_rank_over_steps"), clean_rank=clean_rank,
        clean_label="clean data", title=f"{name}: filter stable rank during GD (lr={cfg.lr:g})",
    )
    common.plot_acc_vs_sigma(per_sigma, run.figure_path("accuracy_vs_sigma"), sigma_label=sig_label,
                             title=f"{name}: accuracy against background noise")
    statuses = common.status_rows(fit.status, fit.diverged_at, cfg.sigmas, cfg.seeds)
    summary = {"per_sigma": per_sigma, "verdict": verdict, "clean_rank": clean_rank,
               "data": info, "status": statuses, "steps": cfg.steps}
    cols = ["sigma", "filter_stable_rank_mean", "filter_stable_rank_std", "filter_effective_rank_mean",
            "data_patch_stable_rank", "data_patch_stable_rank_clean", "data_image_stable_rank",
            "train_acc_mean", "test_acc_mean", "n_diverged"]
    diverged = [r for r in statuses if r["status"] != "ok"]
    write_run_report(
        run,
        title=f"noise-robustness-images ({name})",
        claim=CLAIM,
        verdict=verdict,
        sections=[
            ("Data", markdown_table([info])),
            ("Per noise level (means over seeds)", markdown_table(per_sigma, cols)),
            ("Diverged runs", markdown_table(diverged) if diverged else "none"),
        ],
        figures=["stable_rank_vs_sigma", "filter_stable_rank_over_steps", "accuracy_vs_sigma"],
        config=cfg.to_dict(),
    )
    return summary
