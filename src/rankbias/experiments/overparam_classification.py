"""overparam-classification: linear over-parameterisation on real image data.

Huh et al. (2023), "The Low-Rank Simplicity Bias in Deep Networks", sec. 6:
expanding every Linear/Conv2d of a classifier into a product of ``depth``
linear maps (no nonlinearity in between), training, and collapsing back gives
the original architecture with -- they report -- better test accuracy and
lower-rank embeddings. Here: for each model, each depth (1 = the baseline) and
each seed, train with SGD + momentum, a cosine (or step) schedule, weight decay
and standard augmentation (random crop with padding; horizontal flips where the
classes are mirror-symmetric: CIFAR-10 and Fashion-MNIST, not digits or MNIST),
collapse with :func:`rankbias.collapse`, and measure on the collapsed model:
test and train accuracy, and the kernel effective rank of the penultimate
embeddings (the input of ``fc``) on the test set, via :class:`KernelSpectrum`
and a forward hook.

Pairing: a seed fixes the data order and the augmentation draws for every
depth, so depth d and the baseline see the same batches. The verdict is
:func:`rankbias.verdicts.paired_gain_verdict` on the per-seed difference of test
accuracy (depth d minus baseline, same seed): "holds" when the 95% t-interval at
some depth is above 0 and none is below 0.

Baselines (``baseline_init``): "default" keeps PyTorch's default init of the plain
model; "same as factors" re-initialises its Linear/Conv2d layers as a depth-1 factor
(kaiming-normal, fan_in for linear / fan_out for conv layers, ReLU gain), so the
comparison isolates the depth from the init. ``compare_both_baselines`` trains the
other one too and reports both comparisons; the verdict uses ``baseline_init``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from typing import Literal

import torch
from torch import nn

from rankbias.data.images import DatasetName
from rankbias.experiments._overparam import (
    AUTO_CROP,
    AUTO_FLIP,
    augment,
    embedding_measures,
    recording_embeddings,
    validate_depths_seeds,
)
from rankbias.experiments.overparam_classification_summary import (
    BASELINE_KEY,
    PAPER,
    _baselines,
    aggregate,
    make_verdict,
    plot,
)
from rankbias.experiments.registry import register
from rankbias.framework.config import DeviceField
from rankbias.framework.runs import RunDir
from rankbias.overparam.layers import ExpandLayers, Mode
from rankbias.training import lr_factor
from rankbias.verdicts import t_interval

CLAIM = (
    "Linearly over-parameterising a CNN (every Linear/Conv2d a product of depth linear maps, "
    "collapsed after training) improves the collapsed model's test accuracy over the baseline "
    "trained identically, and lowers the effective rank of its embeddings (Huh et al. 2023, sec. 6)."
)


@dataclasses.dataclass(frozen=True)
class OverparamClassificationConfig(DeviceField):
    dataset: DatasetName = "digits"
    """Image dataset: scikit-learn digits (always present) or one from the data root."""
    data_root: str | None = None
    """Data root for MNIST / Fashion-MNIST / CIFAR-10 (default: $RANKBIAS_DATA, else ./data)."""
    models: list[Literal["cnn", "resnet", "resnet18"]] = dataclasses.field(
        default_factory=lambda: ["cnn", "resnet"])
    """Architectures: "cnn" (SmallCNN), "resnet" (CIFAR ResNet, 3 stages), "resnet18" (CIFAR ResNet-18)."""
    model_width: int = 16
    """Channels of the first stage (cnn / resnet)."""
    resnet_blocks: int = 1
    """Basic blocks per stage of "resnet" (1: ResNet-8, 3: ResNet-20)."""
    depths: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4])
    """Expansion depths; 1 is the baseline and must be in the list."""
    width: float = 1.0
    """Hidden width multiplier of the expanded layers (hidden = round(width * out))."""
    expand_layers: ExpandLayers = "all"
    """Which layers to expand."""
    forward_mode: Mode = "auto"
    """Forward form of the expanded layers (same function and gradients; only the cost differs)."""
    factor_bias: bool = False
    """A bias on every factor (the authors' layout) instead of on the last one only."""
    baseline_init: Literal["default", "same as factors"] = "default"
    """Init of the depth-1 baseline that the verdict compares against: PyTorch's default,
    or the factors' init (kaiming-normal, fan_in linear / fan_out conv, ReLU gain)."""
    compare_both_baselines: bool = True
    """Also train the other baseline init and report depth d against it (not in the verdict)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds; each fixes the init, the data order and the augmentation (paired across depths)."""
    epochs: int = 20
    """Training epochs."""
    batch_size: int = 64
    """Mini-batch size."""
    lr: float = 0.05
    """Peak learning rate of SGD."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """L2 weight decay (on every parameter, factors included)."""
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    """Learning-rate schedule over the steps: cosine to 0, step (x0.1 at 50% and 75%), or constant."""
    warmup_epochs: float = 2.0
    """Linear warm-up from 0 over this many epochs (0: none)."""
    crop_padding: int | None = None
    """Random-crop augmentation: pad by this many pixels, crop back (0: off; None: 1 digits, 2 MNIST/Fashion, 4 CIFAR)."""
    hflip: bool | None = None
    """Random horizontal flips (None: on for CIFAR-10 and Fashion-MNIST, off for digits and MNIST)."""
    train_limit: int | None = None
    """Use a stratified random sample of N training images (None: all)."""
    test_limit: int | None = None
    """Use a stratified random sample of N test images (None: all)."""
    subset_seed: int = 0
    """Seed of the stratified train/test samples (the same for every run of the config)."""
    eval_batch_size: int = 512
    """Batch size for evaluation passes."""

    def validate(self) -> None:
        self._require(len(self.models) >= 1, "models", "a non-empty list of model names")
        validate_depths_seeds(self, ("model_width", "resnet_blocks", "epochs", "batch_size",
                                     "eval_batch_size"))
        self._require(self.train_limit is None or self.train_limit >= 2, "train_limit", "an int >= 2 or null")
        self._require(self.test_limit is None or self.test_limit >= 2, "test_limit", "an int >= 2 or null")


# ----------------------------------------------------------------------- data


def _load(cfg: OverparamClassificationConfig):
    from rankbias.data.images import load_image_dataset

    tr = load_image_dataset(cfg.dataset, train=True, root=cfg.data_root)
    te = load_image_dataset(cfg.dataset, train=False, root=cfg.data_root)
    tr = tr.subset(limit=cfg.train_limit, seed=cfg.subset_seed)
    te = te.subset(limit=cfg.test_limit, seed=cfg.subset_seed)
    mean = tr.images.mean(dim=(0, 2, 3), keepdim=True)
    std = tr.images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    norm = lambda x: ((x - mean) / std).to(cfg.device)  # noqa: E731
    return (norm(tr.images), tr.labels.to(cfg.device), norm(te.images), te.labels.to(cfg.device),
            len(tr.classes))


# ----------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int,
             embeddings: bool = False) -> dict:
    """Accuracy (and the kernel effective rank of the inputs of ``model.fc``)."""
    model.eval()
    correct, logits = 0, []
    with recording_embeddings(model, on=embeddings) as spec:
        for i in range(0, len(y), bs):
            out = model(x[i:i + bs])
            logits.append(out)
            correct += int((out.argmax(1) == y[i:i + bs]).sum())
    res = {"acc": correct / len(y), "logits": torch.cat(logits)}
    return res if spec is None else {**res, **embedding_measures(spec)}


def train_one(cfg: OverparamClassificationConfig, model_name: str, depth: int, seed: int, data,
              baseline_init: str = "default") -> dict:
    """Train one (model, depth, seed); depth 1 is the baseline with ``baseline_init``."""
    from rankbias.training import cross_entropy_loss, train

    xtr, ytr, xte, yte, n_classes = data
    model, n_base = _initial_model(cfg, model_name, depth, seed, xtr.shape[1], n_classes, baseline_init)
    n_params = sum(p.numel() for p in model.parameters())
    init_fc_norm = float(torch.linalg.matrix_norm(model.fc.weight.detach()))  # collapsed, Frobenius
    per_epoch = math.ceil(len(ytr) / cfg.batch_size)
    steps = per_epoch * cfg.epochs
    warm = round(cfg.warmup_epochs * per_epoch)
    model.train()
    t0 = time.perf_counter()
    res = train(
        cross_entropy_loss(model, _batches(cfg, xtr, ytr, seed, steps, per_epoch)), model, steps=steps,
        optimizer="momentum", lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, log_every=per_epoch,
        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, steps, warm, cfg.schedule)),
        progress=None, desc=f"{model_name} depth={depth} seed={seed}",
    )
    train_time = time.perf_counter() - t0
    if res.status[0] != "ok":
        raise FloatingPointError(f"training diverged at step {res.diverged_at[0]}")
    m = _measure_trained(cfg, model, depth, data)
    return {
        "status": "ok",
        "test_acc": m["test_acc"],
        "train_acc": m["train_acc"],
        "init_fc_norm": init_fc_norm,
        **{k: m[k] for k in ("embed_erank", "embed_srank", "embed_dim", "collapse_max_rel_diff")},
        "params_trained": n_params,
        "params_collapsed": m["params_collapsed"],
        "params_baseline": n_base,
        "train_time_s": train_time,
        "steps": steps,
        "final_loss": float(res.final_loss[0]),
        "history": [{"step": h["step"], "loss": h["loss"]} for h in res.history],
    }


def _initial_model(cfg: OverparamClassificationConfig, model_name: str, depth: int, seed: int, channels: int,
                   n_classes: int, baseline_init: str) -> tuple[nn.Module, int]:
    """(the model to train, the baseline's parameter count): the base model of ``seed``,
    expanded to ``depth``, or at depth 1 the baseline with ``baseline_init``; on ``cfg.device``."""
    from rankbias.models import build_model
    from rankbias.overparam import collapse, overparameterize

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = build_model(model_name, channels, n_classes, width=cfg.model_width, blocks=cfg.resnet_blocks)
    n_base = sum(p.numel() for p in base.parameters())
    gen_init = torch.Generator().manual_seed(10_000 + seed)
    if depth > 1:
        model = overparameterize(base, depth=depth, width=cfg.width, layers=cfg.expand_layers,
                                 mode=cfg.forward_mode, factor_bias=cfg.factor_bias,
                                 generator=gen_init)
    elif baseline_init == "same as factors":  # a depth-1 factor's init, trained as the plain model
        model = collapse(overparameterize(base, depth=1, layers=cfg.expand_layers,
                                          generator=gen_init))
    else:
        model = base
    return model.to(cfg.device), n_base


def _batches(cfg: OverparamClassificationConfig, xtr: torch.Tensor, ytr: torch.Tensor, seed: int, steps: int,
             per_epoch: int):
    """step -> (augmented inputs, labels) of that step's mini-batch."""
    N = len(ytr)
    pad = AUTO_CROP[cfg.dataset] if cfg.crop_padding is None else cfg.crop_padding
    flip = AUTO_FLIP[cfg.dataset] if cfg.hflip is None else cfg.hflip
    perms: dict[int, torch.Tensor] = {}

    def batch(step: int):
        epoch, i = divmod(step % steps if steps else 0, per_epoch)
        if epoch not in perms:  # data order: a function of (seed, epoch) only
            perms.clear()
            perms[epoch] = torch.randperm(N, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        idx = perms[epoch][i * cfg.batch_size:(i + 1) * cfg.batch_size].to(cfg.device)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # augmentation of this step
        return augment(xtr[idx], pad, flip, g), ytr[idx]

    return batch


def _measure_trained(cfg: OverparamClassificationConfig, model: nn.Module, depth: int, data) -> dict:
    """Accuracies and embedding ranks of the collapsed model, and how exactly it matches the expanded one."""
    from rankbias.overparam import collapse

    xtr, ytr, xte, yte, _ = data
    collapsed = collapse(model) if depth > 1 else model
    ev = evaluate(collapsed, xte, yte, cfg.eval_batch_size, embeddings=True)
    tr_ev = evaluate(collapsed, xtr, ytr, cfg.eval_batch_size)
    exact = 0.0
    if depth > 1:
        ex = evaluate(model, xte, yte, cfg.eval_batch_size)
        exact = float((ex["logits"] - ev["logits"]).abs().max() / ev["logits"].abs().max())
    return {
        "test_acc": ev["acc"],
        "train_acc": tr_ev["acc"],
        "embed_erank": ev["embed_erank"],
        "embed_srank": ev["embed_srank"],
        "embed_dim": ev["embed_dim"],
        "collapse_max_rel_diff": exact,
        "params_collapsed": sum(p.numel() for p in collapsed.parameters()),
    }


@register(
    "overparam-classification",
    description="Baseline vs linearly over-parameterised CNN/ResNet (depth 2-4), collapsed: accuracy and embedding rank (Huh et al. sec. 6)",
    config_cls=OverparamClassificationConfig,
    presets={
        "quick": {},
        "smoke": {"models": ["cnn", "resnet"], "model_width": 4, "depths": [1, 2], "seeds": [0, 1], "epochs": 1,
                  "warmup_epochs": 0.5, "train_limit": 128, "test_limit": 64},
        "paper": {
            "dataset": "cifar10", "models": ["cnn", "resnet18"], "model_width": 64,
            "depths": [1, 2, 3, 4], "seeds": [0, 1, 2], "epochs": 200, "batch_size": 128,
            "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1.0,
            "device": "cuda", "forward_mode": "auto",
        },
    },
    claim=CLAIM,
)
def run(cfg: OverparamClassificationConfig, run: RunDir) -> dict:
    data = _load(cfg)
    runs, metrics = _train_all(cfg, run, data)
    run.write_csv("metrics.csv", metrics)
    run.write_csv("runs.csv", [{k: v for k, v in r.items() if k != "traceback"} for r in runs])

    per_depth, diffs = aggregate(cfg, runs)
    verdict = make_verdict(cfg, per_depth, diffs)
    if verdict["status"] != "not testable":  # a gain over a baseline at chance is an accident
        from rankbias.verdicts import require_learned

        baseline = {f"{r['model']}/seed {r['seed']}": r["test_acc"] for r in runs
                    if r["status"] == "ok" and r["depth"] == 1
                    and (r.get("baseline_init") or "default") == cfg.baseline_init}
        verdict = require_learned(verdict, baseline, n_test=len(data[3]), n_classes=data[4])
    if any(r["n_ok"] for r in per_depth):
        plot(cfg, per_depth, run.figure_path("accuracy_rank_vs_depth"))
    failures = [{"model": r["model"], "depth": r["depth"], "seed": r["seed"], "error": r["error"]}
                for r in runs if r["status"] != "ok"]
    _write_report(cfg, run, per_depth, diffs, verdict, failures)
    return {"per_depth": per_depth, "verdict": verdict, "paired_test_acc_diffs_pp": diffs,
            "runs": runs, "failures": failures}


def _train_all(cfg: OverparamClassificationConfig, run: RunDir, data) -> tuple[list[dict], list[dict]]:
    """Every (model, seed, depth, baseline init), each saved as a part (reused on resume);
    returns the runs (without their history) and the history rows."""
    from tqdm.auto import tqdm

    runs, metrics = [], []
    jobs = [(m, d, s, b) for m in cfg.models for s in cfg.seeds for d in cfg.depths
            for b in (_baselines(cfg) if d == 1 else [None])]
    for model_name, depth, seed, b in tqdm(jobs, desc="overparam runs", disable=None, leave=False):
        key = f"{model_name}-{BASELINE_KEY[b] if b else f'd{depth}'}-s{seed}"
        rec = run.part(key)
        if rec is None:
            try:
                rec = train_one(cfg, model_name, depth, seed, data, baseline_init=b or "default")
            except Exception as e:  # one failed run must not lose the others
                rec = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(limit=5)}
            rec = {"model": model_name, "depth": depth, "seed": seed,
                   "baseline_init": b, **rec}
            run.save_part(key, rec)
        metrics += [{"model": model_name, "depth": depth, "baseline_init": b, "seed": seed, **h}
                    for h in rec.get("history", [])]
        runs.append({k: v for k, v in rec.items() if k != "history"})
    return runs, metrics


_REPORT_COLUMNS = ["model", "depth", "init", "n_ok", "test_acc_mean", "test_acc_std", "train_acc_mean",
                   "train_acc_std", "test_acc_diff_mean", "test_acc_diff_std", "train_acc_diff_mean",
                   "test_acc_diff_vs_other_baseline_mean", "train_acc_diff_vs_other_baseline_mean",
                   "embed_erank_mean", "embed_erank_std", "init_fc_norm_mean", "collapse_max_rel_diff",
                   "train_time_s_mean"]


def _write_report(cfg: OverparamClassificationConfig, run: RunDir, per_depth: list[dict], diffs: dict,
                  verdict: dict, failures: list[dict]) -> None:
    from rankbias.framework.tables import markdown_table
    from rankbias.run_reports import write_run_report

    comp_rows = [{"baseline init": b, "comparison": k, "n": iv["n"], "mean (pp)": iv["mean"],
                  "95% lo": iv["lo"], "95% hi": iv["hi"]}
                 for b, d in diffs.items() for k, iv in
                 ((k, t_interval(v)) for k, v in d.items())]
    write_run_report(
        run,
        title="overparam-classification: linear over-parameterisation, collapsed",
        claim=CLAIM,
        verdict={k: v for k, v in verdict.items() if k != "intervals"},
        sections=[
            ("Per model and depth (accuracy of the collapsed model; diff = paired over seeds, "
             f"depth d minus the {cfg.baseline_init!r}-init baseline, in pp; init_fc_norm = "
             "Frobenius norm of the collapsed classifier weight at init)",
             markdown_table([{k: r.get(k) for k in _REPORT_COLUMNS} for r in per_depth])),
            ("Expanded vs each baseline: paired test-accuracy difference, 95% t-interval",
             markdown_table(comp_rows)),
            *([("Failed runs", markdown_table(failures))] if failures else []),
        ],
        figures=["accuracy_rank_vs_depth"] if any(r["n_ok"] for r in per_depth) else [],
        config=cfg.to_dict(),
    )


__all__ = ["AUTO_CROP", "AUTO_FLIP", "BASELINE_KEY", "CLAIM", "PAPER", "OverparamClassificationConfig",
           "aggregate", "augment", "evaluate", "make_verdict", "plot", "run", "train_one"]
