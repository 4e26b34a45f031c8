"""noise-robustness-deep: paper 1's rank robustness to background noise, layer by layer, in deep networks.

Zhang, Gao, Zou & Cao (2025) prove for two-layer CNNs that background noise
inflates the data's rank enormously while gradient descent keeps the filters'
rank near the clean data's; deeper networks, intermediate embeddings and
vision transformers are named open. Here a plain CNN, a CIFAR ResNet, a small
ViT and an MLP (:mod:`rankbias.models`) are trained through the one trainer
(:func:`rankbias.training.train`, SGD or Adam on mini-batches, cross-entropy) on
images carrying paper 1's background noise (``canvas``: the image on a larger
canvas of N(0, sigma^2) noise, :func:`~rankbias.data.images.noisy_canvas`;
``background_pixels``: noise on the image's own background pixels,
:func:`~rankbias.data.images.background_pixel_noise`), one network per noise
model, model, sigma and seed.

Measured per network (``docs/deep-noise.md``): every weight layer's stable and
effective rank (a conv weight read as out x in*k*k) and the kernel effective
rank of its output embeddings on clean and on noisy test images
(:func:`rankbias.rank_report`), the same for the penultimate embeddings (the
input of ``fc``), test accuracy, and the weight ranks over training
(:class:`rankbias.RankTracker`). The data's rank is the stable rank of the
training images' pixel matrix (n x C H W), clean and noisy; its patch matrix's
and its intrinsic dimension (TwoNN, MLE, with scikit-dimension) are reported beside it.

A seed fixes the training and test subsets, the noise draw (the same draw
scaled by every sigma: common random numbers), the init and the batch order.
Data and noise: :mod:`noise_robustness_deep_data`; aggregation, verdicts and figures:
:mod:`noise_robustness_deep_summary`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

from rankbias.data.images import DatasetName
from rankbias.errors import InvalidParameterError
from rankbias.experiments import noise_robustness_deep_summary as summary_mod
from rankbias.experiments._noise import ImageSourceFields
from rankbias.experiments.noise_robustness_deep_data import (
    add_noise,
    canvas_side,
    data_measures,
    intrinsic,
    load_split,
)
from rankbias.experiments.registry import register
from rankbias.framework.config import DeviceField, ThreadsField
from rankbias.framework.runs import RunDir
from rankbias.verdicts import ACCURACY_DROP

CLAIM = summary_mod.CLAIM
PENULTIMATE = summary_mod.PENULTIMATE
MODEL_NAMES = Literal["plain-cnn", "resnet8", "resnet20", "vit", "mlp"]


@dataclasses.dataclass(frozen=True)
class DeepNoiseConfig(ImageSourceFields, DeviceField, ThreadsField):
    dataset: DatasetName = "digits"
    """Image dataset (digits: scikit-learn's 8x8, always present; the others from data_root)."""
    classes: list[int] | None = None
    """Classes of the task, relabelled 0..k-1 (null: all ten; two for a binary task as in paper 1)."""
    train_limit: int | None = None
    """Training images per seed, a stratified seeded sample (null: all of the classes')."""
    test_limit: int | None = None
    """Test images per seed, a stratified seeded sample (null: all)."""
    noise_models: list[Literal["canvas", "background_pixels"]] = dataclasses.field(
        default_factory=lambda: ["canvas", "background_pixels"])
    """Paper 1's noise models: "canvas" (the image centred on a canvas of Gaussian noise) and
    "background_pixels" (Gaussian noise on the image's own zero pixels; not for CIFAR-10)."""
    canvas: int | None = None
    """Side of the noisy canvas (null: twice the image side)."""
    sigmas: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0])
    """Noise standard deviations in pixel units (images in [0, 1]); must include the clean 0."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    """Seeds (error bars are over them)."""
    models: list[MODEL_NAMES] = dataclasses.field(
        default_factory=lambda: ["plain-cnn", "resnet8", "vit", "mlp"])
    """Architectures (names of rankbias.models.MODELS)."""
    width: int = 16
    """Channels of the first conv layer (plain-cnn, resnets)."""
    cnn_depth: int = 4
    """Conv layers of plain-cnn (4-6)."""
    vit_dim: int = 64
    """ViT token width."""
    vit_depth: int = 4
    """ViT transformer blocks."""
    vit_heads: int = 4
    """ViT attention heads."""
    patch_size: int = 4
    """ViT patch side; also the patch size of the data's patch matrix."""
    mlp_width: int = 128
    """MLP hidden width."""
    mlp_depth: int = 3
    """MLP hidden layers."""
    optimizer: Literal["adam", "sgd", "momentum"] = "adam"
    """Optimiser of the one trainer (sgd: plain mini-batch SGD; momentum: SGD with momentum 0.9)."""
    lr: float = 1e-3
    """Learning rate (constant)."""
    weight_decay: float = 0.0
    """L2 weight decay."""
    steps: int = 300
    """Training steps (mini-batches)."""
    batch_size: int = 128
    """Mini-batch size."""
    log_every: int = 50
    """Steps between logged losses and weight ranks (RankTracker)."""
    accuracy_drop: float = ACCURACY_DROP
    """A noise level counts where the mean test accuracy is within this of the clean one."""
    data_factor: float = 10.0
    """The data's stable rank must grow this much for the claim to be testable."""
    max_ratio: float = 0.25
    """Robust: log(layer rank growth) / log(data rank growth) <= this."""
    intrinsic_dimension: bool = True
    """Add TwoNN and MLE intrinsic dimensions (needs scikit-dimension; skipped with a note if missing)."""
    id_samples: int = 1000
    """Points per intrinsic-dimension estimate (a seeded subset)."""
    id_neighbors: int = 10
    """k of the MLE estimator."""
    eval_batch_size: int = 512
    """Batch size of the evaluation and rank-report passes."""
    device: str = "cpu"  # DeviceField's, re-declared for its docstring (it keeps its place)
    """torch device ("cuda" for the paper preset)."""

    def validate(self) -> None:
        req = self._require
        s = self.sigmas
        req(len(s) >= 2 and all(math.isfinite(v) and v >= 0 for v in s) and 0.0 in s
            and len(set(s)) == len(s), "sigmas", "at least two distinct finite values >= 0, one of them 0")
        req(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
            "a non-empty list of distinct ints")
        req(len(self.models) >= 1 and len(set(self.models)) == len(self.models), "models",
            "a non-empty list of distinct model names")
        req(len(self.noise_models) >= 1 and len(set(self.noise_models)) == len(self.noise_models),
            "noise_models", "a non-empty list of distinct names: canvas, background_pixels")
        req(not (self.dataset == "cifar10" and "background_pixels" in self.noise_models), "noise_models",
            "canvas only for cifar10 (its images have no plain background)")
        req(self.classes is None or (len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes)),
            "classes", "null or at least two distinct class indices")
        req(self.train_limit is None or self.train_limit >= 10, "train_limit", "an int >= 10 or null")
        req(self.test_limit is None or self.test_limit >= 10, "test_limit", "an int >= 10 or null")
        for name in ("width", "vit_dim", "vit_depth", "vit_heads", "patch_size", "mlp_width",
                     "mlp_depth", "steps", "batch_size", "log_every", "eval_batch_size", "id_samples"):
            req(getattr(self, name) >= 1, name, "an int >= 1")
        req(1 <= self.cnn_depth <= 12, "cnn_depth", "an int in 1..12")
        req(self.vit_dim % self.vit_heads == 0, "vit_dim", "a multiple of vit_heads")
        req(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite float > 0")
        req(self.weight_decay >= 0, "weight_decay", "a float >= 0")
        req(0 <= self.accuracy_drop < 1, "accuracy_drop", "a float in [0, 1)")
        req(self.data_factor > 1, "data_factor", "a float > 1")
        req(self.max_ratio > 0, "max_ratio", "a float > 0")
        req(self.id_neighbors >= 2, "id_neighbors", "an int >= 2")
        req(self.canvas is None or self.canvas >= 8, "canvas", "an int >= 8 or null")
        req(self.num_threads is None or self.num_threads >= 1, "num_threads", "an int >= 1 or null")


# ------------------------------------------------------------------ training


def model_kwargs(cfg: DeepNoiseConfig, name: str, side: int) -> dict:
    if name == "plain-cnn":
        return {"width": cfg.width, "depth": cfg.cnn_depth}
    if name in ("resnet8", "resnet20"):
        return {"width": cfg.width}
    if name == "vit":
        return {"image_size": side, "patch_size": cfg.patch_size, "dim": cfg.vit_dim,
                "depth": cfg.vit_depth, "heads": cfg.vit_heads}
    return {"image_size": side, "width": cfg.mlp_width, "depth": cfg.mlp_depth}


def train_network(cfg: DeepNoiseConfig, name: str, x: torch.Tensor, y: torch.Tensor, n_classes: int,
                  seed: int, desc: str = "train"):
    """Train model ``name`` on (x, y) through :func:`rankbias.training.train`; returns
    (model, TrainResult). The weight ranks over training come from a RankTracker callback."""
    import rankbias.training as trainer  # looked up at call time: tests spy on the one trainer
    from rankbias.analysis import RankTracker
    from rankbias.models import build_model

    side = x.shape[-1]
    if name == "vit" and side % cfg.patch_size:
        raise InvalidParameterError(f"vit: image side {side} is not a multiple of patch_size "
                                    f"{cfg.patch_size}; accepted: a patch_size that divides the side")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, x.shape[1], n_classes, **model_kwargs(cfg, name, side))
    model.to(cfg.device)
    N = len(y)
    per_epoch = max(1, math.ceil(N / cfg.batch_size))
    perms: dict[int, torch.Tensor] = {}

    def batch(step: int):
        epoch, i = divmod(step, per_epoch)
        if epoch not in perms:  # the data order is a function of (seed, epoch) only
            perms.clear()
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perms[epoch] = torch.randperm(N, generator=g).to(x.device)
        idx = perms[epoch][i * cfg.batch_size:(i + 1) * cfg.batch_size]
        return x[idx], y[idx]

    tracker = RankTracker(measures=("stable_rank", "effective_rank"), every=cfg.log_every)
    model.train()
    res = trainer.train(trainer.cross_entropy_loss(model, batch), model, steps=cfg.steps, optimizer=cfg.optimizer, lr=cfg.lr,
                        weight_decay=cfg.weight_decay, log_every=cfg.log_every, callbacks=[tracker],
                        progress=None, desc=desc)
    model.eval()
    return model, res


@torch.no_grad()
def penultimate(model, x: torch.Tensor, y: torch.Tensor, bs: int) -> tuple[float, torch.Tensor]:
    """Accuracy on (x, y) and the penultimate embeddings Z (N, d), the inputs of ``model.fc``."""
    rows: list[torch.Tensor] = []
    hook = model.fc.register_forward_pre_hook(lambda _m, inp: rows.append(inp[0].flatten(1).cpu()))
    correct = 0
    try:
        for i in range(0, len(y), bs):
            correct += int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum())
    finally:
        hook.remove()
    return correct / len(y), torch.cat(rows)


def measure_network(cfg: DeepNoiseConfig, model, x_noisy, x_clean, y, seed: int) -> dict:
    """Test accuracy and, per layer, weight and embedding ranks on clean and noisy test images."""
    from rankbias.analysis import rank_report
    from rankbias.measures import KernelSpectrum

    kw = dict(measures=("stable_rank", "effective_rank"), embedding_measures=("effective_rank",),
              batch_size=cfg.eval_batch_size, include_data=False, progress=False)
    rep = {"noisy": rank_report(model, x_noisy, **kw), "clean": rank_report(model, x_clean, **kw)}
    layers = []
    for (_, r), (_, rc) in zip(rep["noisy"].iterrows(), rep["clean"].iterrows(), strict=True):
        layers.append({
            "layer": r["name"], "type": r["type"],
            "weight_stable_rank": float(r["stable_rank"]),
            "weight_effective_rank": float(r["effective_rank"]),
            "emb_effective_rank_noisy": float(r["emb_effective_rank"]),
            "emb_effective_rank_clean": float(rc["emb_effective_rank"]),
            "error": str(r["error"]),
        })
    out: dict = {}
    pen = {"layer": PENULTIMATE, "type": "embedding", "error": ""}
    for which, xs in (("noisy", x_noisy), ("clean", x_clean)):
        acc, Z = penultimate(model, xs, y, cfg.eval_batch_size)
        out[f"test_acc_{which}"] = acc
        ks = KernelSpectrum()
        ks.update(Z)
        pen[f"emb_effective_rank_{which}"] = float(ks.measures(["effective_rank"])["effective_rank"])
        out.update(intrinsic(cfg, Z, seed, f"penultimate_id_{which}"))
    out["test_acc"] = out["test_acc_noisy"]
    out["layers"] = layers + [pen]
    return out


def run_one(cfg: DeepNoiseConfig, noise: str, name: str, sigma: float, seed: int, data) -> dict:
    x, y, xt, yt, n_classes = data[(noise, seed)]
    dev = torch.device(cfg.device)
    xs, _ = add_noise(cfg, noise, x, sigma, seed)
    xts, xtc = add_noise(cfg, noise, xt, sigma, seed + 7_919)  # a test draw apart from the training one
    model, res = train_network(cfg, name, xs.to(dev), y.to(dev), n_classes, seed,
                               desc=f"{name} {noise} sigma={sigma:g} seed={seed}")
    row = {"model": name, "noise": noise, "sigma": float(sigma), "seed": int(seed),
           "status": res.status[0], "final_loss": float(res.final_loss[0])}
    history = [{"model": name, "noise": noise, "sigma": float(sigma), "seed": int(seed),
                **{k: v for k, v in h.items() if k != "model"}} for h in res.history]
    if res.status[0] != "ok":
        row["layers"] = []
        return {**row, "history": history}
    row["train_acc"], _ = penultimate(model, xs.to(dev), y.to(dev), cfg.eval_batch_size)
    row.update(measure_network(cfg, model, xts.to(dev), xtc.to(dev), yt.to(dev), seed))
    return {**row, "history": history}


# ------------------------------------------------------------------------ run

SMOKE = {
    "dataset": "digits", "train_limit": 120, "test_limit": 60, "sigmas": [0.0, 1.0], "seeds": [0],
    "noise_models": ["canvas"],
    "models": ["plain-cnn", "resnet8", "vit", "mlp"], "width": 4, "vit_dim": 16, "vit_depth": 1,
    "vit_heads": 2, "mlp_width": 16, "mlp_depth": 2, "steps": 6, "batch_size": 32, "log_every": 3,
    "id_samples": 60,
}
"""The ``smoke`` preset (seconds on one thread): every model, every row and figure (of the
canvas noise; the tests run the background noise on the MLP)."""


@register(
    "noise-robustness-deep",
    description="Paper 1's rank robustness to background noise, layer by layer, in CNN/ResNet/ViT/MLP",
    config_cls=DeepNoiseConfig,
    presets={
        "quick": {
            "dataset": "digits", "sigmas": [0.0, 0.5, 1.0, 1.5], "seeds": [0, 1],
            "noise_models": ["canvas"], "steps": 300, "batch_size": 64, "lr": 2e-3,
            "test_limit": 300, "num_threads": 1,
        },
        "smoke": SMOKE,
        "paper": {
            "dataset": "mnist", "train_limit": 10000, "test_limit": 2000,
            "noise_models": ["canvas", "background_pixels"],
            "sigmas": [0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0], "seeds": [0, 1, 2],
            "models": ["plain-cnn", "resnet20", "vit", "mlp"], "width": 32, "cnn_depth": 6,
            "vit_dim": 128, "vit_depth": 6, "vit_heads": 4, "mlp_width": 512, "steps": 3000,
            "log_every": 250, "id_samples": 2000,
        },
    },
    claim=CLAIM,
)
def run(cfg: DeepNoiseConfig, run: RunDir) -> dict:
    from tqdm.auto import tqdm

    data, data_rows, info = {}, [], {}
    for noise in cfg.noise_models:
        for seed in cfg.seeds:
            x, y, names = load_split(cfg, True, seed)
            xt, yt, _ = load_split(cfg, False, seed)
            data[(noise, seed)] = (x, y, xt, yt, len(names))
            info = {"classes": names, "image_shape": list(x.shape[1:]), "n_train": len(y),
                    "n_test": len(yt)}
            key = f"data-{noise}-{seed}"
            rows = (run.part(key) or {}).get("rows")
            if rows is None:
                _, clean = add_noise(cfg, noise, x, 0.0, seed)
                ref = {f"clean_{k}": v for k, v in data_measures(cfg, clean, seed).items()}
                rows = []
                for sigma in cfg.sigmas:
                    xs, _ = add_noise(cfg, noise, x, sigma, seed)
                    rows.append({"noise": noise, "seed": seed, "sigma": float(sigma),
                                 "input_side": int(xs.shape[-1]), **data_measures(cfg, xs, seed),
                                 **ref})
                run.save_part(key, {"rows": rows})
            data_rows.extend(rows)
    jobs = [(n, m, s, sd) for n in cfg.noise_models for m in cfg.models for s in cfg.sigmas
            for sd in cfg.seeds]
    results = []
    for noise, name, sigma, seed in tqdm(jobs, desc="noise-robustness-deep", unit="net",
                                         disable=None, leave=False):
        key = f"net-{noise}-{name}-{sigma:g}-{seed}"
        res = run.part(key)
        if res is None:
            res = run_one(cfg, noise, name, sigma, seed, data)
            run.save_part(key, res)
        results.append(res)
    return summary_mod.summarize(cfg, run, data_rows, results, info)


__all__ = ["CLAIM", "SMOKE", "DeepNoiseConfig", "add_noise", "canvas_side", "data_measures", "intrinsic",
           "load_split", "run", "train_network"]
