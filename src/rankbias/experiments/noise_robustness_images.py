"""noise-robustness-images: the noise-robustness analysis on real images (docs/paper1.md).

An image (scikit-learn digits, MNIST, Fashion-MNIST, CIFAR-10) gets background noise of
standard deviation sigma in one of paper 1's two ways (``noise_model``): ``canvas``,
the image placed on a larger canvas whose background is Gaussian noise (zero for the
clean version), or ``background_pixels``, Gaussian noise on the image's own background
pixels (no canvas). A two-class task (a configurable pair of classes) is learned by the
CNN of the paper's form, m filters of size k x k per class over the image's k x k
patches (stride a setting, default k: non-overlapping patches as in the patch model),
Huberised ReLU, sum pooling and a fixed second layer, trained by gradient descent on
the logistic loss. Compared across sigma: the stable rank of the filters (2m x c k k)
and the stable rank of the data's patch matrix, noisy and clean; the verdict is the
relative test of docs/paper1.md ("Verdict").

``dataset="auto"`` (the default) is MNIST when it is at the data root (or downloadable
with ``download``), else the always-present digits; the summary records which and why.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from rankbias.data.images import CanvasPosition, DatasetName, NoiseRegion
from rankbias.errors import UnsupportedError
from rankbias.experiments import _noise
from rankbias.experiments.registry import register
from rankbias.framework.gpu_declarations import DataFolder, GpuRun, GpuStep
from rankbias.framework.runs import RunDir
from rankbias.framework.tables import markdown_table

MAX_DEFAULT_IMAGES = 1000
"""n_train / n_test = null take every image of the two classes, at most this many."""

CLAIM = (
    "On real images with background noise (on a canvas around them, or on their own "
    "background pixels), the stable rank of the CNN filters learned by gradient descent "
    "grows far less than the data's patch-matrix stable rank, which grows by an order of "
    "magnitude while the network's test accuracy stays within 1 pp of its clean accuracy "
    "(Zhang, Gao, Zou & Cao 2025)."
)


@dataclasses.dataclass(frozen=True)
class NoiseImagesConfig(_noise.ImageSourceFields, _noise.NoiseSweepConfig):
    """Real images with background noise (docs/paper1.md, "Real images") and the shared sweep fields."""

    dataset: Literal["auto", DatasetName] = "auto"
    """Image dataset; auto: MNIST if it is at data_root (or download is on), else scikit-learn's
    digits (always present). The summary's data.dataset says which was used and why."""
    classes: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    """The two classes of the binary task: the first is y = +1, the second y = -1."""
    noise_model: Literal["canvas", "background_pixels"] = "canvas"
    """canvas: the image on a larger canvas of noise; background_pixels: noise on the image's own
    background (all-zero) pixels, no canvas (not for CIFAR-10, which has no plain background)."""
    n_train: int | None = None
    """Training images per seed, a seeded stratified sample of the two classes (null: all of
    them, at most 1,000)."""
    n_test: int | None = None
    """Test images per seed (null: all of the two classes' test images, at most 1,000)."""
    canvas: int | None = None
    """Side of the square canvas (noise_model=canvas; null: twice the image side)."""
    patch_size: int | None = None
    """k: filters and patches are k x k (null: half the image side, so with the default canvas
    the image covers 4 of 16 patches: digits 4, MNIST 14, CIFAR-10 16)."""
    stride: int | None = None
    """Patch stride (null: k, non-overlapping patches as in the patch model)."""
    position: CanvasPosition = "center"
    """Where each image sits on the canvas (noise_model=canvas)."""
    noise_region: NoiseRegion = "background"
    """Canvas noise on the background only (the paper's setting) or over the image too."""
    sigmas: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    )
    """Noise standard deviations, in pixel units (images are in [0, 1]); must include 0."""
    init_std: float = 0.1
    """Filters start as N(0, init_std^2 I). Pixels are in [0, 1], so pre-activations
    start ~ init_std * ||patch||; with q = 3 the gradient scales as their square, and
    0.01 leaves gradient descent stuck near init for thousands of steps."""

    def validate(self) -> None:
        super().validate()
        self._require(len(self.classes) == 2 and self.classes[0] != self.classes[1], "classes",
                      "two distinct class indices, e.g. [0, 1]")
        self._require(self.n_train is None or self.n_train >= 2, "n_train", "an int >= 2 or null")
        self._require(self.n_test is None or self.n_test >= 1, "n_test", "an int >= 1 or null")
        self._require(self.patch_size is None or self.patch_size >= 1, "patch_size", "an int >= 1 or null")
        self._require(self.stride is None or self.stride >= 1, "stride", "an int >= 1 or null")
        self._require(self.canvas is None or self.canvas >= (self.patch_size or 1), "canvas",
                      "an int >= patch_size, or null")
        if self.noise_model == "background_pixels":
            no_canvas = "with noise_model='background_pixels' (there is no canvas)"
            self._require(self.canvas is None, "canvas", f"null {no_canvas}")
            self._require(self.position == "center", "position", f"'center' {no_canvas}")
            self._require(self.noise_region == "background", "noise_region", f"'background' {no_canvas}")
            self._require(self.dataset != "cifar10", "dataset",
                          "not cifar10 with noise_model='background_pixels': CIFAR-10 images have no "
                          "plain background; use noise_model='canvas'")


def _load(cfg: NoiseImagesConfig):
    """The dataset to use, why, the command that gets MNIST where the digits stand in for it
    (else ""), and its train and test splits."""
    from rankbias.data.images import choose_mnist_or_digits, load_image_dataset

    name, reason, fix = cfg.dataset, "set by the dataset setting", ""
    if name == "auto":
        choice = choose_mnist_or_digits(cfg.data_root, download=cfg.download)
        name, reason, fix = choice.name, choice.reason, choice.fix
    train = load_image_dataset(name, train=True, root=cfg.data_root, download=cfg.download)
    test = load_image_dataset(name, train=False, root=cfg.data_root, download=cfg.download)
    return name, reason, fix, train, test


def _binary(data, cfg: NoiseImagesConfig, n: int | None, what: str, seed: int):
    """A seeded stratified sample of ``n`` images of the two classes (y = +1 for the first)."""
    sub = data.subset(classes=list(cfg.classes))
    if n is not None and n > len(sub):
        raise UnsupportedError(
            f"{data.name} classes {list(cfg.classes)} have {len(sub)} {what} images; asked for "
            f"n_{what}={n} (accepted: at most {len(sub)}, or null)")
    sub = sub.subset(limit=min(len(sub), MAX_DEFAULT_IMAGES) if n is None else n, seed=seed)
    return sub.images, torch.where(sub.labels == 0, 1.0, -1.0), sub.classes


def build_data(cfg: NoiseImagesConfig):
    """Per seed: a stratified sample of the two classes with background noise, cut into
    patches. Returns stacked (M, n, P, ckk) train/test patches, labels, the data's rank
    measures per (seed, sigma) and a description of the data."""
    from rankbias.data.images import background_pixel_noise, extract_patches, noisy_canvas
    from rankbias.data.patches import data_rank_measures

    name, reason, fix, train, test = _load(cfg)
    side = int(train.images.shape[-1])
    k = cfg.patch_size if cfg.patch_size is not None else max(1, side // 2)
    canvas = None
    if cfg.noise_model == "canvas":
        canvas = cfg.canvas if cfg.canvas is not None else 2 * side
        if canvas < max(train.images.shape[-2:]):
            raise UnsupportedError(f"canvas {canvas} is smaller than the {name} images ({side}); "
                                   f"accepted: >= {side}, or null")
    if k > (canvas or side):
        raise UnsupportedError(f"patch_size {k} exceeds the {'canvas' if canvas else 'image'} side "
                               f"{canvas or side}; accepted: <= {canvas or side}")

    def noisy(images, gen):
        if canvas is None:
            return background_pixel_noise(images, list(cfg.sigmas), generator=gen)
        return noisy_canvas(images, canvas, list(cfg.sigmas), position=cfg.position,
                            noise_region=cfg.noise_region, generator=gen)

    S = len(cfg.sigmas)
    keys = ("data_patch_stable_rank", "data_image_stable_rank", "data_patch_effective_rank",
            "data_patch_stable_rank_clean", "data_image_stable_rank_clean")
    ranks: dict[str, list] = {key: [] for key in keys}
    X = Xt = Y = Yt = None
    for s_i, seed in enumerate(cfg.seeds):
        imgs, y, classes = _binary(train, cfg, cfg.n_train, "train", seed)
        imgs_t, yt, _ = _binary(test, cfg, cfg.n_test, "test", seed)
        gen = torch.Generator().manual_seed(int(seed))
        noisy_tr, clean = noisy(imgs, gen)
        P = extract_patches(noisy_tr, k, cfg.stride)  # (S, n, P, ckk)
        del noisy_tr
        Pt = extract_patches(noisy(imgs_t, gen)[0], k, cfg.stride)  # (S, n_test, P, ckk)
        if X is None:  # filled in place: a real-image sweep's patches are gigabytes
            X = P.new_empty(len(cfg.seeds) * S, *P.shape[1:])
            Xt = Pt.new_empty(len(cfg.seeds) * S, *Pt.shape[1:])
            Y, Yt = y.new_empty(X.shape[:2]), yt.new_empty(Xt.shape[:2])
        rows = slice(_noise.model_index(s_i, 0, S), _noise.model_index(s_i + 1, 0, S))
        X[rows], Xt[rows], Y[rows], Yt[rows] = P, Pt, y, yt
        r = data_rank_measures(P)
        rc = data_rank_measures(extract_patches(clean, k, cfg.stride)[None])  # (1, n, P, ckk)
        del P, Pt
        ranks["data_patch_stable_rank"].append(r["patch"]["stable_rank"].numpy())
        ranks["data_image_stable_rank"].append(r["image"]["stable_rank"].numpy())
        ranks["data_patch_effective_rank"].append(r["patch"]["effective_rank"].numpy())
        ranks["data_patch_stable_rank_clean"].append(np.repeat(rc["patch"]["stable_rank"].numpy(), S))
        ranks["data_image_stable_rank_clean"].append(np.repeat(rc["image"]["stable_rank"].numpy(), S))
    dev = torch.device(cfg.device)
    X, Y, Xt, Yt = (t.to(dev) for t in (X, Y, Xt, Yt))
    info = {"dataset": name, "dataset_reason": reason, "dataset_fallback": bool(fix), "dataset_fix": fix,
            "noise_model": cfg.noise_model, "classes": classes,
            "image_shape": list(train.images.shape[1:]), "canvas": canvas, "patch_size": k,
            "patches_per_image": int(X.shape[-2]), "patch_dim": int(X.shape[-1]),
            "n_train": int(X.shape[1]), "n_test": int(Xt.shape[1])}
    return X, Y, Xt, Yt, {key: np.stack(v) for key, v in ranks.items()}, info


def _fallback_notice(info: dict) -> dict:
    """Where the digits stood in for MNIST: the notice the reports lead with, and a
    ``provisional`` mark, so that a rerun once MNIST is there uses it (never this summary)."""
    if not info["dataset_fallback"]:
        return {}
    notice = (f"Ran on scikit-learn's 8x8 digits instead of MNIST ({info['dataset_reason']}); "
              f"the verdict is on the digits. To run it on MNIST: {info['dataset_fix']}.")
    return {"notices": [notice], "provisional": "the digits stood in for MNIST"}


CIFAR_LR = 0.3
"""The GPU plans' learning rate for paper 1 on CIFAR-10. The paper preset's lr 1 (sized
for MNIST) holds CIFAR networks at the constant predictor for up to ~200 steps and makes the
loss oscillate; 0.3 trains monotonically, to the best clean test accuracy of the CPU check in
docs/gpu.md, and moves the filters far from their init (lower lrs leave them near it)."""


def _gpu_cifar10(data: DataFolder) -> dict:
    """The GPU plans' CIFAR-10 step: the paper preset's network on classes 0 vs 1."""
    return {"data_root": data.root, "dataset": "cifar10", "classes": [0, 1], "patch_size": 16, "lr": CIFAR_LR}


def _smoke_mnist(data: DataFolder) -> dict:
    """``gpu-smoke``'s MNIST step: the digits where the data has no MNIST."""
    mnist = "mnist" if "mnist" in data.has else "digits"
    return {**_noise.GPU_SMOKE_SIZES, "data_root": data.root, "dataset": mnist, "n_train": 60, "n_test": 60,
            **({"patch_size": 14} if mnist == "mnist" else {})}


@register(
    "noise-robustness-images",
    description="Filter rank vs data rank on real images with background noise (Zhang et al. 2025)",
    config_cls=NoiseImagesConfig,
    presets={
        "quick": {},
        # digits, not quick's "auto": a test never reads MNIST from $RANKBIAS_DATA
        "smoke": {"dataset": "digits", "sigmas": [0.0, 0.5], "seeds": [0, 1], "n_train": 100, "n_test": 100,
                  "steps": 20, "log_every": 10},
        "mnist": {"dataset": "mnist"},
        "mnist-background": {"dataset": "mnist", "noise_model": "background_pixels", "patch_size": 7},
        # lr 0.05: at lr 1 a clean CIFAR network collapses to a constant (loss log 2) within 50 steps
        "cifar10": {
            "dataset": "cifar10", "classes": [0, 1], "n_train": 2000, "n_test": 1000,
            "sigmas": [0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0], "seeds": [0, 1], "steps": 300, "lr": 0.05,
        },
        "paper": {
            "dataset": "mnist", "classes": [0, 1], "n_train": 5000, "n_test": 2000, "patch_size": 14,
            "sigmas": [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5], "seeds": [0, 1, 2, 3, 4],
            "filters": 20, "steps": 2000, "log_every": 50,
        },
    },
    claim=CLAIM,
    # the GPU plans (docs/gpu.md: paper 1's shares are sized from its FLOP counts)
    gpu=(
        GpuStep("paper1-mnist", gpu=GpuRun("paper", 0.14, lambda data: {"data_root": data.root}, needs="mnist"),
                smoke=GpuRun("quick", 0.18, _smoke_mnist)),
        GpuStep("paper1-cifar10",
                gpu=GpuRun("paper", 0.12, lambda data: {**_gpu_cifar10(data), "n_train": 2000, "n_test": 2000},
                           needs="cifar10"),
                smoke=GpuRun("quick", 0.18, lambda data: {**_noise.GPU_SMOKE_SIZES, **_gpu_cifar10(data),
                                                          "n_train": 20, "n_test": 20},
                             needs="cifar10", if_missing="omit")),
    ),
)
def run(cfg: NoiseImagesConfig, run: RunDir) -> dict:
    X, y, Xt, yt, data_ranks, info = build_data(cfg)
    fit = _noise.train_sweep(cfg, X, y, Xt, yt)
    clean_rank = float(np.mean(data_ranks["data_patch_stable_rank_clean"]))
    c, k = info["image_shape"][0], info["patch_size"]
    name = f"{info['dataset']} {info['classes'][0]} vs {info['classes'][1]}"
    where = f"canvas {info['canvas']}" if info["canvas"] else "noise on the background pixels"
    labels = _noise.SweepLabels(
        title=f"noise-robustness-images ({name}, {cfg.noise_model})", claim=CLAIM,
        clean_label=f"{clean_rank:.2f} (clean data)", sigma_label="background noise σ (pixel units, symlog scale)",
        figure_title=f"{name}\n{where}, {k}x{k} patches (d={c * k * k}), m={cfg.filters}",
        name=name,
    )
    table = _noise.SweepTable(
        sections=[("Data", markdown_table([{k: v for k, v in info.items() if k != "dataset_fix"}]))],
        clean_data_key="data_patch_stable_rank_clean",
        columns=["sigma", "filter_stable_rank_mean", "filter_stable_rank_std", "filter_effective_rank_mean",
                 "filter_stable_rank_over_clean_rank", "data_patch_stable_rank", "data_patch_stable_rank_clean",
                 "data_image_stable_rank",
                 "train_acc_mean", "test_acc_mean", "n_diverged"],
    )
    return _noise.write_outputs(run, cfg, fit, data_ranks, clean_rank, n_test=info["n_test"], labels=labels,
                                table=table, extra={"data": info, **_fallback_notice(info)})
