"""overparam-cifar: paper 2's linear over-parameterisation at CIFAR-10 scale, fast.

Huh et al. (2023), sec. 6, as ``overparam-classification`` (docs/overparam.md)
but through the GPU trainer :mod:`rankbias.fit.fast_classify` (docs/gpu.md): a
CIFAR ResNet-20 (or the small CNN), every Linear/Conv2d expanded into a product of
``depth`` linear maps (1 = the baseline), the seeds of a depth trained together as
one batched model, SGD + momentum + weight decay, warm-up then cosine decay,
random crop + flip done on the device. After training each model is collapsed
(:func:`rankbias.collapse`; collapsed == expanded is asserted on a test batch) and
measured: test accuracy, train accuracy (a stratified subset, no augmentation) and
the kernel effective rank of the penultimate embeddings (the input of ``fc``) on
the test set. The verdict is the paired test of
:func:`rankbias.verdicts.paired_gain_verdict` on the per-seed differences
(depth d minus the baseline, same seed) of the collapsed test accuracy.

``budget_minutes`` stops training cleanly: the depth being trained finishes its
current epoch and is recorded as stopped (its per-epoch rows kept), the depths not
started are "not run"; finished depths are saved as they finish, and a rerun
resumes from them.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, Literal

import torch

from rankbias.experiments._overparam import (
    AUTO_CROP,
    AUTO_FLIP,
    embedding_measures,
    forward_macs,
    recording_embeddings,
    validate_depths_seeds,
)
from rankbias.experiments.overparam_cifar_summary import CLAIM, PAPER, arms, summarise
from rankbias.experiments.registry import register
from rankbias.fit.fast_classify import FastTrainSettings
from rankbias.framework.config import DeviceField, ThreadsField
from rankbias.framework.gpu_declarations import DataFolder, GpuRun, GpuStep
from rankbias.framework.runs import RunDir, config_hash

# fields (of the config or of its train settings) that do not change what a finished depth's
# training computed
_NOT_TRAINING = ("budget_minutes", "fit_epochs_to_budget", "batch_seeds", "num_threads", "depths",
                 "eval_batch_size", "epochs", "fit_threshold", "ablate_weight_decay")


def training_key(cfg: OverparamCifarConfig) -> str:
    """The identity of a finished depth's training: the hash of the settings that change it.
    The train settings' keys sit beside the others, as before they were grouped under
    ``train``, so the depths a run saved then are still reused."""
    flat = {**{k: v for k, v in cfg.to_dict().items() if k != "train"}, **cfg.train.to_dict()}
    return config_hash({k: v for k, v in flat.items() if k not in _NOT_TRAINING})


def resolved_settings(cfg: OverparamCifarConfig) -> FastTrainSettings:
    """``cfg.train`` with its nulls resolved: crop and flips by dataset, bf16 on CUDA only."""
    s = cfg.train
    return dataclasses.replace(
        s, crop_padding=AUTO_CROP[cfg.dataset] if s.crop_padding is None else s.crop_padding,
        hflip=AUTO_FLIP[cfg.dataset] if s.hflip is None else s.hflip,
        bf16=(torch.device(cfg.device).type == "cuda") if s.bf16 is None else s.bf16)


@dataclasses.dataclass(frozen=True)
class OverparamCifarConfig(DeviceField, ThreadsField):
    dataset: Literal["cifar10", "digits", "mnist", "fashion-mnist"] = "cifar10"
    """Image dataset (digits: scikit-learn's, always present, for smoke runs)."""
    data_root: str | None = None
    """Data root (null: $RANKBIAS_DATA, else ./data); unused when packed_dir is set."""
    packed_dir: str | None = None
    """A folder written by `rankbias prepare-data` to read the dataset from instead (docs/gpu.md)."""
    train_limit: int | None = None
    """A seeded stratified sample of this many training images (null: all)."""
    test_limit: int | None = None
    """A seeded stratified sample of this many test images (null: all)."""
    downsample: int = 1
    """Average-pool every image by this factor (2: CIFAR-10 at 16x16, 4x less compute: the CPU
    preset's concession; 1: the original size)."""
    model: Literal["resnet", "cnn"] = "resnet"
    """Architecture: "resnet" (CIFAR ResNet, 3 stages) or "cnn" (SmallCNN)."""
    resnet_blocks: int = 3
    """Basic blocks per stage of "resnet" (3: ResNet-20, 1: ResNet-8)."""
    model_width: int = 16
    """Channels of the first stage (16: ResNet-20's)."""
    depths: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4])
    """Expansion depths; 1 is the baseline and must be in the list."""
    width: float = 1.0
    """Hidden width multiplier of the expanded layers (hidden = round(width * out))."""
    expand_layers: Literal["all", "conv", "linear"] = "all"
    """Which layers to expand."""
    forward_mode: Literal["kernel", "sequential", "auto"] = "auto"
    """Forward form of the expanded layers (same function and gradients; only the cost differs)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds; each fixes the init, the data order and the augmentation (paired across depths)."""
    train: FastTrainSettings = dataclasses.field(default_factory=FastTrainSettings)
    """The training settings, held whole (``--set train.lr=0.1``; the defaults are FastTrainSettings')."""
    fit_epochs_to_budget: bool = False
    """After the warm-up's last whole epoch (timed), lower the epochs so that every depth fits
    budget_minutes (the result then depends on the machine's speed; the chosen epochs are in
    the summary)."""
    batch_seeds: Literal["auto", "yes", "no"] = "auto"
    """Train a depth's seeds as one vmapped model ("yes"), one after another ("no"), or time a
    few steps of both on the device and take the faster ("auto")."""
    train_eval_limit: int | None = 10000
    """Training images (stratified sample) for the final train accuracy (null: all)."""
    budget_minutes: float | None = None
    """Stop training cleanly when the next epoch would end after this (null: no limit)."""
    ablate_weight_decay: bool = False
    """Also train every depth > 1 with the other weight_decay_on, same seeds (the ablation's
    paired interval is reported beside the verdict; the verdict uses weight_decay_on)."""
    lr_grid: list[float] = dataclasses.field(default_factory=list)
    """Learning rates to choose from per depth on a held-out split of the training set (never
    the test set); empty: lr for every depth. Every arm chooses its own (an ablation arm trains
    differently: without decay on the factors, a product of factors can diverge at its depth's lr)."""
    lr_holdout: float = 0.2
    """Fraction of the training set held out (stratified) to choose the learning rate."""
    lr_grid_seeds: list[int] = dataclasses.field(default_factory=lambda: [1000])
    """Seeds of the learning-rate search (not the paired seeds of the measured runs)."""
    curve_test_limit: int | None = None
    """A stratified sample of this many test images for the per-epoch curves (null: the
    whole test set; the final measurement always uses the whole test set)."""
    fit_threshold: float | None = None
    """Stopping rule check: every baseline seed's final train accuracy (no augmentation) must
    reach this, else the verdict is "not testable" (null: no check)."""

    def validate(self) -> None:
        validate_depths_seeds(self, ("model_width", "resnet_blocks", "downsample"), sgd=False)
        for name in ("train_limit", "test_limit", "train_eval_limit"):
            v = getattr(self, name)
            self._require(v is None or v >= 2, name, "an int >= 2 or null")
        self._require(self.budget_minutes is None or self.budget_minutes > 0, "budget_minutes",
                      "a number > 0 or null")
        self._require(not self.fit_epochs_to_budget or (self.budget_minutes is not None
                                                         and self.train.warmup_epochs >= 1),
                      "fit_epochs_to_budget", "false, or true with budget_minutes set and train.warmup_epochs >= 1")
        self._require(self.num_threads is None or self.num_threads >= 1, "num_threads", "an int >= 1 or null")
        self._require(all(v > 0 and v == v for v in self.lr_grid), "lr_grid", "a list of numbers > 0")
        self._require(0 < self.lr_holdout < 1, "lr_holdout", "a number in (0, 1)")
        self._require(len(self.lr_grid_seeds) >= 1, "lr_grid_seeds", "a non-empty list of ints")
        self._require(self.curve_test_limit is None or self.curve_test_limit >= 2, "curve_test_limit",
                      "an int >= 2 or null")
        self._require(self.fit_threshold is None or 0 < self.fit_threshold <= 1, "fit_threshold",
                      "a number in (0, 1] or null")


# ----------------------------------------------------------------------- data


def _split_uint8(cfg: OverparamCifarConfig, train: bool):
    from rankbias.data.images import load_image_dataset

    if cfg.packed_dir is not None:
        from rankbias.data.packed import load_packed_uint8

        return load_packed_uint8(cfg.packed_dir, cfg.dataset, train)
    d = load_image_dataset(cfg.dataset, train=train, root=cfg.data_root)
    return d.images.mul(255).round_().to(torch.uint8), d.labels, d.classes  # exact for 8-bit sources


def _downsample(x: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 images average-pooled by ``k`` (rounded back to uint8)."""
    if k == 1:
        return x
    return torch.nn.functional.avg_pool2d(x.float(), k).round_().to(torch.uint8)


def load_data(cfg: OverparamCifarConfig):
    """Device-resident train / test / train-eval sets and the number of classes."""
    from rankbias.data.images import stratified_sample
    from rankbias.fit.fast_classify import DeviceImages

    dev = torch.device(cfg.device)
    xtr, ytr, classes = _split_uint8(cfg, True)
    xte, yte, _ = _split_uint8(cfg, False)
    if cfg.train_limit is not None:
        idx = stratified_sample(ytr, cfg.train_limit, seed=0)
        xtr, ytr = xtr[idx], ytr[idx]
    if cfg.test_limit is not None:
        idx = stratified_sample(yte, cfg.test_limit, seed=0)
        xte, yte = xte[idx], yte[idx]
    xtr, xte = _downsample(xtr, cfg.downsample), _downsample(xte, cfg.downsample)
    train = DeviceImages(xtr, ytr, dev)
    test = DeviceImages(xte, yte, dev, train.mean, train.std)
    ev = train
    if cfg.train_eval_limit is not None and cfg.train_eval_limit < len(ytr):
        idx = stratified_sample(ytr, cfg.train_eval_limit, seed=1)
        ev = DeviceImages(xtr[idx], ytr[idx], dev, train.mean, train.std)
    return train, test, ev, len(classes)


def curve_set(cfg: OverparamCifarConfig, test):
    """The test images of the per-epoch curves: a stratified sample when curve_test_limit is
    set (a full test pass every epoch would cost more than a small subset's training)."""
    from rankbias.data.images import stratified_sample
    from rankbias.fit.fast_classify import DeviceImages

    if cfg.curve_test_limit is None or cfg.curve_test_limit >= len(test):
        return test
    idx = stratified_sample(test.labels.cpu(), cfg.curve_test_limit, seed=3).to(test.labels.device)
    return DeviceImages(test.images[idx], test.labels[idx], test.images.device, test.mean, test.std)


def holdout_split(cfg: OverparamCifarConfig, train):
    """A stratified split of the training set into (fit, held-out) for choosing the lr."""
    from rankbias.data.images import stratified_sample
    from rankbias.fit.fast_classify import DeviceImages

    held = stratified_sample(train.labels.cpu(), max(1, round(cfg.lr_holdout * len(train))), seed=2)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[held] = False
    dev = train.images.device
    part = [(keep.to(dev)), (~keep).to(dev)]
    return tuple(DeviceImages(train.images[m], train.labels[m], dev, train.mean, train.std) for m in part)


def _train_arm(cfg, depth, seeds, in_ch, n_classes, models, train, curve, settings, sel: dict,
               batched, deadline, on_epoch, label: str, live: list):
    """Train an arm at its chosen lr; if a seed diverges there (the search trains on 800 images,
    the arm on all of them), retrain every seed at the next smaller rate of the grid that did not
    diverge in the search, down to the smallest, and record each fallback in ``sel``."""
    from rankbias.fit.fast_classify import train_group

    lower = sorted((lr for lr in sel.get("grid", []) if lr < settings.lr
                    and sel["heldout_acc"].get(str(lr)) is not None), reverse=True)
    while True:
        try:
            return train_group(models, seeds, train, curve, settings, batch_seeds=batched,
                               deadline=deadline, on_epoch=on_epoch, desc=label), settings
        except FloatingPointError as e:
            if not lower:
                raise
            sel.setdefault("fallbacks", []).append({"lr": settings.lr, "error": str(e)})
            print(f"overparam-cifar: {label}: {e} at lr {settings.lr:g}; every seed again at lr "
                  f"{lower[0]:g}", file=sys.stderr)
            settings = dataclasses.replace(settings, lr=lower.pop(0))
            models = [build(cfg, depth, s, in_ch, n_classes) for s in seeds]
            live.clear()


def select_lr(cfg: OverparamCifarConfig, arm: dict, train, settings, in_ch: int, n_classes: int,
              run: RunDir, key: str) -> dict:
    """The learning rate of ``arm`` (its depth and weight-decay placement): the lr_grid value
    with the best mean held-out accuracy (after the full schedule on the rest of the training
    set; ties: the first), or cfg.train.lr without a grid. A diverged value is never chosen. Saved as
    a part, so a rerun reuses it."""
    from rankbias.fit.fast_classify import train_group

    if not cfg.lr_grid:
        return {"grid": [], "heldout_acc": {}, "chosen": cfg.train.lr}
    depth, label = arm["depth"], arm["label"]
    settings = dataclasses.replace(settings, weight_decay_on=arm["wd_on"])
    # the search trains with the arm's schedule: its choice belongs to these epochs too (the
    # run's key leaves epochs out, so that a budget-fitted run can resume its finished arms)
    key = config_hash({"key": key, "epochs": settings.epochs})
    saved = run.part(f"lrgrid-{label}", identity=key)
    if saved is not None:
        return saved
    fit, held = holdout_split(cfg, train)
    t0, accs = time.perf_counter(), {}
    for lr in cfg.lr_grid:
        models = [build(cfg, depth, s, in_ch, n_classes) for s in cfg.lr_grid_seeds]
        try:
            res = train_group(models, list(cfg.lr_grid_seeds), fit, held, dataclasses.replace(settings, lr=lr),
                              batch_seeds=cfg.batch_seeds != "no", progress=False, desc=f"lr {lr:g}")
            accs[str(lr)] = sum(r["test_acc"] for r in res.history[-len(models):]) / len(models)
        except FloatingPointError:  # diverged: not a candidate
            accs[str(lr)] = None
        acc = "diverged" if accs[str(lr)] is None else f"{accs[str(lr)]:.4f}"
        print(f"overparam-cifar: {label}, lr {lr:g}: held-out accuracy {acc} "
              f"({time.perf_counter() - t0:.0f} s so far)", file=sys.stderr)
    ok = [lr for lr in cfg.lr_grid if accs[str(lr)] is not None]
    if not ok:
        raise FloatingPointError(f"{label}: every lr of the grid {cfg.lr_grid} diverged")
    chosen = max(ok, key=lambda lr: accs[str(lr)])  # max keeps the first of equal values
    sel = {"grid": list(cfg.lr_grid), "heldout_acc": accs, "chosen": chosen, "fit_n": len(fit),
           "heldout_n": len(held), "seeds": list(cfg.lr_grid_seeds), "time_s": time.perf_counter() - t0}
    run.save_part(f"lrgrid-{label}", sel, identity=key)
    return sel


# ---------------------------------------------------------------- models, cost


def build(cfg: OverparamCifarConfig, depth: int, seed: int, in_channels: int, n_classes: int):
    """The model of ``seed`` at ``depth`` (init fixed by the seed), on the device."""
    from rankbias.models import build_model
    from rankbias.overparam import overparameterize

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = build_model(cfg.model, in_channels, n_classes, width=cfg.model_width,
                           blocks=cfg.resnet_blocks)
    if depth > 1:
        base = overparameterize(base, depth=depth, width=cfg.width, layers=cfg.expand_layers,
                                mode=cfg.forward_mode, generator=torch.Generator().manual_seed(10_000 + seed))
    return base.to(cfg.device)


# ------------------------------------------------------------------ measuring


@torch.no_grad()
def measure_collapsed(expanded, depth: int, test, train_eval, bs: int) -> dict:
    """Collapse, check collapsed == expanded on one test batch (float32, no TF32), and
    measure the collapsed model: test / train accuracy, embedding ranks."""
    from rankbias.overparam import collapse

    model = collapse(expanded) if depth > 1 else expanded
    model.eval()
    expanded.eval()
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        x = test.normalise(test.images[:bs])
        a, b = expanded(x), model(x)
        rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        if rel > 1e-4:
            raise AssertionError(f"collapsed model differs from the expanded one: max rel. diff {rel:.3g}")
        def accuracy(data) -> float:
            correct = 0
            for i in range(0, len(data), bs):
                logits = model(data.normalise(data.images[i:i + bs]))
                correct += int((logits.argmax(1) == data.labels[i:i + bs]).sum())
            return correct / len(data)

        with recording_embeddings(model) as spec:
            out = {"test_acc": accuracy(test)}
        out["train_acc"] = accuracy(train_eval)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    return {**out, **embedding_measures(spec), "collapse_max_rel_diff": rel,
            "params_trained": sum(p.numel() for p in expanded.parameters()),
            "params_collapsed": sum(p.numel() for p in model.parameters())}


def _choose_batched(cfg, models, seeds, train, test, settings) -> bool:
    """"auto": a few steps of both forms on throwaway copies, timed on the device."""
    import copy

    from rankbias.fit.fast_classify import train_group

    if cfg.batch_seeds != "auto" or len(seeds) == 1:
        return cfg.batch_seeds != "no"
    probe = _probe_set(train, settings)
    s1 = dataclasses.replace(settings, epochs=2, warmup_epochs=0.0)
    times = {}
    for batched in (True, False):
        try:
            res = train_group([copy.deepcopy(m) for m in models], seeds, probe, probe, s1,
                              batch_seeds=batched, progress=False)
        except Exception as e:  # vmap lacks a batching rule somewhere: train one after another
            if not batched:
                raise
            print(f"overparam-cifar: batched seeds failed ({type(e).__name__}: {e}); "
                  "training them one after another", file=sys.stderr)
            return False
        times[batched] = res.epoch_times[-1]  # the second epoch: after cudnn's autotuning
    print(f"overparam-cifar: batched seeds {times[True]:.3f} s (float32) vs one after another "
          f"{times[False]:.3f} s (bf16: {settings.bf16}) per probe epoch", file=sys.stderr)
    return times[True] <= times[False]


def _probe_set(train, settings):
    """The first 4 batches of the training set: what a timing probe trains on."""
    n = min(len(train), 4 * settings.batch_size)
    probe = type(train).__new__(type(train))
    probe.__dict__.update(train.__dict__, images=train.images[:n], labels=train.labels[:n])
    return probe


def _arm_costs(cfg, todo: list[dict], train, settings, batched: bool, in_ch: int, n_classes: int,
               ) -> dict[str, float]:
    """Seconds per probe epoch of every arm in ``todo`` (the second of two, after cuDNN's
    autotuning), on fresh throwaway models: a deeper arm costs more per epoch, and the
    budget must cover every arm (:func:`rankbias.experiments._epoch_budget.arm_epoch_costs`).
    The rate is a thousandth of the run's: the cost does not depend on it, and a probe
    without warm-up must not diverge."""
    from rankbias.experiments._epoch_budget import arm_epoch_costs
    from rankbias.fit.fast_classify import train_group

    probe, seeds = _probe_set(train, settings), list(cfg.seeds)

    def time_arm(arm: dict) -> float:
        s1 = dataclasses.replace(settings, epochs=2, warmup_epochs=0.0, lr=settings.lr * 1e-3,
                                 weight_decay_on=arm["wd_on"])
        models = [build(cfg, arm["depth"], s, in_ch, n_classes) for s in seeds]
        res = train_group(models, seeds, probe, probe, s1, batch_seeds=batched, progress=False)
        return res.epoch_times[-1]

    costs = arm_epoch_costs(todo, time_arm)
    print(f"overparam-cifar: probe epoch per arm: {', '.join(f'{k} {v:.3f} s' for k, v in costs.items())}",
          file=sys.stderr)
    return costs


# -------------------------------------------------------------------- the run


def _gpu_data(data: DataFolder) -> dict[str, Any]:
    """Where the GPU plans' step reads its data: the packed folder, else the data root."""
    return {"packed_dir": data.packed} if data.packed is not None else {"data_root": data.root}


def _smoke_cifar10(data: DataFolder) -> dict[str, Any]:
    """``gpu-smoke``'s step: CIFAR-10 at a tiny size, or without it the smoke preset's digits."""
    if "cifar10" not in data.has:
        return {}
    return {**_gpu_data(data), "dataset": "cifar10", "train_limit": 200, "test_limit": 100,
            "train_eval_limit": 100, "train.crop_padding": 4, "train.hflip": True}


@register(
    "overparam-cifar",
    description="Paper 2's over-parameterisation at CIFAR-10 scale on a GPU: ResNet-20, depths 1/2/4, batched seeds",
    config_cls=OverparamCifarConfig,
    presets={
        "quick": {"dataset": "digits", "train_limit": 600, "test_limit": 300, "model_width": 8,
                  "resnet_blocks": 1, "train": {"epochs": 15, "batch_size": 64, "lr": 0.05, "warmup_epochs": 1.0},
                  "batch_seeds": "yes", "num_threads": 1},
        "smoke": {"dataset": "digits", "train_limit": 300, "test_limit": 200, "model_width": 4,
                  "resnet_blocks": 1, "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "warmup_epochs": 1.0},
                  "batch_seeds": "yes", "train_eval_limit": 200, "num_threads": 1},
        # epochs: the paper's schedule length as a ceiling only; the budget sets the number after
        # the warm-up (fit_epochs_to_budget), and a baseline that did not fit its training set
        # makes the verdict "not testable" (docs/gpu.md)
        "gpu": {"dataset": "cifar10", "model": "resnet", "resnet_blocks": 3, "model_width": 16,
                "depths": [1, 4], "seeds": [0, 1, 2, 3, 4, 5], "fit_epochs_to_budget": True,
                "budget_minutes": 6.0, "train": {"epochs": 200, "batch_size": 512, "lr": 0.2, "warmup_epochs": 2.0},
                "fit_threshold": 0.99, "device": "cuda"},
        # issue 18: where the effect can show on 2 CPU cores in <= 45 min (docs/overparam.md)
        "cpu": {"dataset": "cifar10", "model": "resnet", "resnet_blocks": 1, "model_width": 16,
                "downsample": 2, "train_limit": 1000, "test_limit": None, "curve_test_limit": 1000,
                "train_eval_limit": None, "depths": [1, 4], "seeds": [0, 1, 2, 3, 4, 5, 6, 7],
                "train": {"epochs": 60, "batch_size": 100, "lr": 0.1, "warmup_epochs": 1.0, "crop_padding": 0,
                          "hflip": False, "weight_decay": 5e-4, "weight_decay_on": "factors"},
                "lr_grid": [0.05, 0.1, 0.2, 0.4], "lr_grid_seeds": [1000, 1001], "lr_holdout": 0.2,
                "ablate_weight_decay": True,
                "fit_threshold": 0.99, "batch_seeds": "no", "num_threads": 1, "device": "cpu"},
        "paper": {"dataset": "cifar10", "depths": [1, 2, 3, 4], "seeds": [0, 1, 2, 3, 4],
                  "train": {"epochs": 200, "batch_size": 128, "lr": 0.1, "warmup_epochs": 1.0}, "device": "cuda"},
    },
    claim=CLAIM,
    # the GPU plans (docs/gpu.md): last, it stops at its deadline and takes up what paper 1 left
    gpu=(GpuStep("paper2-overparam-cifar", gpu=GpuRun("gpu", 0.67, _gpu_data, needs="cifar10"),
                 smoke=GpuRun("smoke", 0.46, _smoke_cifar10), stops_itself=True),),
)
def run(cfg: OverparamCifarConfig, run: RunDir) -> dict:
    bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    try:
        return _run(cfg, run)
    finally:
        torch.backends.cudnn.benchmark = bench


def _fit_epoch(cfg: OverparamCifarConfig) -> int:
    """The epoch after which the plan is fitted to the budget: the warm-up's last whole epoch
    (the learning rate up to there does not depend on the total, and the later epochs run
    without the first one's one-off costs, e.g. cuDNN's autotuning, so they time a typical one)."""
    return max(1, int(cfg.train.warmup_epochs)) if cfg.fit_epochs_to_budget else 1


def fit_epochs(cfg: OverparamCifarConfig, chosen: dict, info: dict, costs: dict[str, float],
               deadline: float | None, resumed: bool) -> int | None:
    """The epochs of every arm from the first arm's measured epoch, every arm's relative cost
    and the budget left (15 % margin; the epochs done count), at most ``cfg.train.epochs``; None:
    unchanged. ``costs``: label -> seconds per probe epoch of every arm still to train, the
    one being trained first (:func:`_arm_costs`). Prints the projection; with
    fit_epochs_to_budget sets ``chosen["epochs"]``."""
    from rankbias.experiments._epoch_budget import epochs_for_budget

    per, done = info["epoch_time_s"], info["epoch"]
    first = next(iter(costs))
    epoch_s = {label: per * c / costs[first] for label, c in costs.items()}
    print(f"overparam-cifar: epoch {done} took {per:.1f} s; projected total "
          f"{sum(epoch_s.values()) * chosen['epochs']:.0f} s for {len(costs)} arm(s) "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in epoch_s.items())} per epoch) x "
          f"{chosen['epochs']} epochs", file=sys.stderr)
    if not (cfg.fit_epochs_to_budget and deadline is not None and not resumed):
        return None
    fit = epochs_for_budget(deadline - time.perf_counter(), epoch_s, first, done)
    chosen["epochs"] = max(done, min(chosen["epochs"], fit))
    print(f"overparam-cifar: epochs set to {chosen['epochs']} to fit the budget", file=sys.stderr)
    return chosen["epochs"]


def _forward_cost(cfg: OverparamCifarConfig, n_train: int, in_ch: int, n_classes: int, shape) -> int:
    """Multiply-adds of one image's forward pass of the baseline; prints an epoch's FLOPs."""
    macs = forward_macs(build(cfg, 1, cfg.seeds[0], in_ch, n_classes), shape)
    flops_epoch = 6 * macs * n_train * len(cfg.seeds) * len(arms(cfg))  # fwd 2, bwd 4 FLOPs/MAC
    print(f"overparam-cifar: {macs / 1e6:.3g} M multiply-adds per image forward; one epoch of all "
          f"{len(cfg.seeds) * len(arms(cfg))} models = {flops_epoch / 1e12:.3g} TFLOP", file=sys.stderr)
    return macs


def _finished_arms(cfg: OverparamCifarConfig, run: RunDir, key: str):
    """(records, metrics, chosen, todo): the arms a run of the same training settings (``key``,
    its identity) finished, reused, so that a new budget or another list of depths resumes
    them, and the arms still to train."""
    records: dict[str, dict] = {}
    metrics: list[dict] = []
    chosen = {"epochs": cfg.train.epochs, "batched": None}
    todo = []
    for arm in arms(cfg):
        part = run.part(arm["label"], identity=key)
        if part is not None and part.get("status") == "ok" and (
                part["epochs_planned"] == cfg.train.epochs
                or (cfg.fit_epochs_to_budget and part["epochs_planned"] <= cfg.train.epochs)):
            records[arm["label"]] = part
            metrics += part.get("history", [])
            chosen["epochs"] = part.get("epochs_planned", chosen["epochs"])
        else:
            todo.append(arm)
    return records, metrics, chosen, todo


def _arm_outcome(cfg: OverparamCifarConfig, res, depth: int, seeds: list[int], test, train_eval) -> dict:
    """An arm's record from its training: stopped by the budget, or every seed's collapsed model
    measured."""
    if res.stopped:
        return {"status": "stopped", "reason": f"budget: stopped after epoch {res.epochs_done} "
                f"of {res.epochs_planned}", "epochs_done": res.epochs_done}
    per_seed = [{"seed": s, **measure_collapsed(m, depth, test, train_eval, cfg.train.eval_batch_size)}
                for s, m in zip(seeds, res.models)]
    return {"status": "ok", "per_seed": per_seed, "epochs_done": res.epochs_done}


def _run(cfg: OverparamCifarConfig, run: RunDir) -> dict:
    t_start = time.perf_counter()
    deadline = None if cfg.budget_minutes is None else t_start + 60 * cfg.budget_minutes
    train, test, train_eval, n_classes = load_data(cfg)
    curve = curve_set(cfg, test)
    in_ch, shape = train.images.shape[1], tuple(train.images.shape[1:])
    settings = resolved_settings(cfg)
    macs = _forward_cost(cfg, len(train), in_ch, n_classes, shape)
    key = training_key(cfg)
    records, metrics, chosen, todo = _finished_arms(cfg, run, key)
    st = _Arms(cfg, run, key, train, test, train_eval, curve, in_ch, n_classes, settings, deadline,
               records, metrics, chosen, todo)
    group_times: list[float] = []
    for gi, arm in enumerate(todo):
        depth, label = arm["depth"], arm["label"]
        remaining = None if deadline is None else deadline - time.perf_counter()
        if remaining is not None and group_times and remaining < 0.9 * group_times[-1]:
            records[label] = {"depth": depth, "label": label, "wd_on": arm["wd_on"], "status": "not run",
                              "reason": f"budget: {remaining:.0f} s left, a depth took {group_times[-1]:.0f} s"}
            continue
        rec = _fit_arm(st, arm, gi)
        group_times.append(rec["train_time_s"])
        if rec["status"] == "ok":  # a failed or stopped depth is retried by a rerun
            run.save_part(label, rec, identity=key)
        records[label] = rec
        metrics += rec["history"]
        st.write_metrics()
    return summarise(cfg, run, records, chosen, macs, time.perf_counter() - t_start, len(test), n_classes)


@dataclasses.dataclass
class _Arms:
    """What the arms of one run share: the data and settings, the budget's deadline, what the
    first arm chose (``chosen``: epochs, batching, probe costs; ``lr_sel``: each arm's lr search)
    and what is done (``records``, the ``metrics`` rows)."""

    cfg: OverparamCifarConfig
    run: RunDir
    key: str
    train: Any
    test: Any
    train_eval: Any
    curve: Any
    in_ch: int
    n_classes: int
    settings: FastTrainSettings
    deadline: float | None
    records: dict[str, dict]
    metrics: list[dict]
    chosen: dict
    todo: list[dict]
    lr_sel: dict[str, dict] = dataclasses.field(default_factory=dict)

    def write_metrics(self, extra: Sequence[dict] = ()) -> None:
        self.run.write_csv("metrics.csv", [*self.metrics, *extra])


def _fit_arm(st: _Arms, arm: dict, gi: int) -> dict:
    """Train arm number ``gi`` of ``st.todo`` and measure it; its record. A failure is recorded,
    not raised (one failed depth must not lose the others); ``train_time_s``, the time the
    budget plans with, leaves out the lr search and the first arm's probes."""
    cfg, chosen, lr_sel = st.cfg, st.chosen, st.lr_sel
    depth, label = arm["depth"], arm["label"]
    t0 = time.perf_counter()
    live: list[dict] = []

    def on_epoch(info):
        live.extend({"depth": depth, "arm": label, **r} for r in info["rows"])
        st.write_metrics(live)  # each finished epoch is on disk at once
        if info["epoch"] != _fit_epoch(cfg) or gi != 0:
            return None
        costs = chosen.get("costs") or dict.fromkeys([a["label"] for a in st.todo], 1.0)
        return fit_epochs(cfg, chosen, info, costs, st.deadline, bool(st.records))

    try:
        if label not in lr_sel:
            lr_sel[label] = select_lr(cfg, arm, st.train, dataclasses.replace(st.settings, epochs=chosen["epochs"]),
                                      st.in_ch, st.n_classes, st.run, st.key)
            t0 = time.perf_counter()  # a depth's time, for the budget, is without the search
        arm_settings = dataclasses.replace(st.settings, epochs=chosen["epochs"], lr=lr_sel[label]["chosen"],
                                           weight_decay_on=arm["wd_on"])
        seeds = list(cfg.seeds)
        models = [build(cfg, depth, s, st.in_ch, st.n_classes) for s in seeds]
        if chosen["batched"] is None:
            chosen["batched"] = _choose_batched(cfg, models, seeds, st.train, st.test, arm_settings)
            if cfg.fit_epochs_to_budget and st.deadline is not None and not st.records:
                chosen["costs"] = _arm_costs(cfg, st.todo, st.train, arm_settings, chosen["batched"],
                                             st.in_ch, st.n_classes)
            t0 = time.perf_counter()  # a depth's time, for the budget, is without the probes
        res, arm_settings = _train_arm(cfg, depth, seeds, st.in_ch, st.n_classes, models, st.train, st.curve,
                                       arm_settings, lr_sel[label], chosen["batched"], st.deadline,
                                       on_epoch, label, live)
        rec = _arm_outcome(cfg, res, depth, seeds, st.test, st.train_eval)
        rec.update(epochs_planned=res.epochs_planned, epoch_times_s=res.epoch_times,
                   batched=chosen["batched"], lr=arm_settings.lr, lr_selection=lr_sel[label])
    except Exception as e:  # one failed depth must not lose the others
        rec = {"status": "failed", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc(limit=6)}
    return {"depth": depth, "label": label, "wd_on": arm["wd_on"], "key": st.key, **rec,
            "train_time_s": time.perf_counter() - t0, "history": [r for r in live]}

__all__ = ["CLAIM", "PAPER", "OverparamCifarConfig", "build", "forward_macs", "load_data",
           "measure_collapsed", "run"]
