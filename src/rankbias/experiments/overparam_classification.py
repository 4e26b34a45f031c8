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
depth, so depth d and the baseline see the same batches; the per-seed
difference in accuracy is reported with its spread.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rankbias.experiments.registry import register
from rankbias.framework.config import Config
from rankbias.framework.runs import RunDir
from rankbias.measures import KernelSpectrum

CLAIM = (
    "Linearly over-parameterising a CNN (every Linear/Conv2d a product of depth linear maps, "
    "collapsed after training) improves the collapsed model's test accuracy over the baseline "
    "trained identically, and lowers the effective rank of its embeddings (Huh et al. 2023, sec. 6)."
)

AUTO_CROP = {"digits": 1, "mnist": 2, "fashion-mnist": 2, "cifar10": 4}
AUTO_FLIP = {"digits": False, "mnist": False, "fashion-mnist": True, "cifar10": True}


@dataclasses.dataclass(frozen=True)
class OverparamClassificationConfig(Config):
    dataset: Literal["digits", "mnist", "fashion-mnist", "cifar10"] = "digits"
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
    expand_layers: Literal["all", "conv", "linear"] = "all"
    """Which layers to expand."""
    forward_mode: Literal["kernel", "sequential", "auto"] = "auto"
    """Forward form of the expanded layers (same function and gradients; only the cost differs)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds; each fixes the init, the data order and the augmentation."""
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
    """Use only the first N training images (None: all)."""
    test_limit: int | None = None
    """Use only the first N test images (None: all)."""
    eval_batch_size: int = 512
    """Batch size for evaluation passes."""
    device: str = "cpu"
    """torch device, e.g. "cpu" or "cuda"."""
    num_threads: int | None = None
    """CPU threads for torch during the run (None: leave torch's setting). Small
    models train faster on 1 thread: their ops are too short to amortise the
    threads' synchronisation."""

    def validate(self) -> None:
        self._require(len(self.models) >= 1, "models", "a non-empty list of model names")
        self._require(all(d >= 1 for d in self.depths) and 1 in self.depths, "depths",
                      "a list of ints >= 1 that includes the baseline 1")
        self._require(len(set(self.depths)) == len(self.depths), "depths", "distinct depths")
        self._require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
                      "a non-empty list of distinct ints")
        self._require(self.width > 0 and math.isfinite(self.width), "width", "a finite number > 0")
        self._require(self.model_width >= 1, "model_width", "an int >= 1")
        self._require(self.resnet_blocks >= 1, "resnet_blocks", "an int >= 1")
        self._require(self.epochs >= 1, "epochs", "an int >= 1")
        self._require(self.batch_size >= 1, "batch_size", "an int >= 1")
        self._require(self.eval_batch_size >= 1, "eval_batch_size", "an int >= 1")
        self._require(self.lr > 0, "lr", "a number > 0")
        self._require(0 <= self.momentum < 1, "momentum", "a number in [0, 1)")
        self._require(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        self._require(self.warmup_epochs >= 0, "warmup_epochs", "a number >= 0")
        self._require(self.crop_padding is None or self.crop_padding >= 0, "crop_padding",
                      "an int >= 0 or null")
        self._require(self.num_threads is None or self.num_threads >= 1, "num_threads", "an int >= 1 or null")
        self._require(self.train_limit is None or self.train_limit >= 2, "train_limit", "an int >= 2 or null")
        self._require(self.test_limit is None or self.test_limit >= 2, "test_limit", "an int >= 2 or null")


# ----------------------------------------------------------------------- data


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip, per image."""
    N, C, H, W = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (N,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (N,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (N,1,H,1)
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (N,1,1,W)
        n = torch.arange(N, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        x = xp[n, c, rows, cols]
    if flip:
        m = (torch.rand(N, generator=gen) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x


def _load(cfg: OverparamClassificationConfig):
    from rankbias.data.images import load_image_dataset

    tr = load_image_dataset(cfg.dataset, train=True, root=cfg.data_root)
    te = load_image_dataset(cfg.dataset, train=False, root=cfg.data_root)
    tr, te = tr.subset(limit=cfg.train_limit), te.subset(limit=cfg.test_limit)
    mean = tr.images.mean(dim=(0, 2, 3), keepdim=True)
    std = tr.images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    norm = lambda x: ((x - mean) / std).to(cfg.device)  # noqa: E731
    return (norm(tr.images), tr.labels.to(cfg.device), norm(te.images), te.labels.to(cfg.device),
            len(tr.classes))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.01 if t >= 0.75 else (0.1 if t >= 0.5 else 1.0)
    return 1.0


# ----------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int,
             embeddings: bool = False) -> dict:
    """Accuracy (and the kernel effective rank of the inputs of ``model.fc``)."""
    model.eval()
    spec = KernelSpectrum() if embeddings else None
    hook = None
    if spec is not None:
        def record(_module, inputs):
            spec.update(inputs[0].flatten(1))  # returns None: the input is left unchanged

        hook = model.fc.register_forward_pre_hook(record)
    correct, logits = 0, []
    try:
        for i in range(0, len(y), bs):
            out = model(x[i:i + bs])
            logits.append(out)
            correct += int((out.argmax(1) == y[i:i + bs]).sum())
    finally:
        if hook is not None:
            hook.remove()
    res = {"acc": correct / len(y), "logits": torch.cat(logits)}
    if spec is not None:
        m = spec.measures(["effective_rank", "stable_rank"])
        res["embed_erank"] = float(m["effective_rank"])
        res["embed_srank"] = float(m["stable_rank"])
        res["embed_dim"] = spec.dim_
    return res


def train_one(cfg: OverparamClassificationConfig, model_name: str, depth: int, seed: int, data) -> dict:
    from rankbias.models import build_model
    from rankbias.overparam import collapse, overparameterize
    from rankbias.train import train

    xtr, ytr, xte, yte, n_classes = data
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = build_model(model_name, xtr.shape[1], n_classes, width=cfg.model_width,
                           blocks=cfg.resnet_blocks)
    n_base = sum(p.numel() for p in base.parameters())
    gen_init = torch.Generator().manual_seed(10_000 + seed)
    model = (overparameterize(base, depth=depth, width=cfg.width, layers=cfg.expand_layers,
                              mode=cfg.forward_mode, generator=gen_init)
             if depth > 1 else base).to(cfg.device)
    n_params = sum(p.numel() for p in model.parameters())

    N = len(ytr)
    per_epoch = math.ceil(N / cfg.batch_size)
    steps = per_epoch * cfg.epochs
    warm = round(cfg.warmup_epochs * per_epoch)
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

    def loss_fn(step: int) -> torch.Tensor:
        xb, yb = batch(step)
        if not torch.is_grad_enabled():
            # the trainer's loss measurements: eval mode, so BN statistics see only training steps
            model.eval()
            out = F.cross_entropy(model(xb), yb)
            model.train()
            return out
        return F.cross_entropy(model(xb), yb)

    model.train()
    t0 = time.perf_counter()
    res = train(
        loss_fn, model, steps=steps, optimizer="momentum", lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, log_every=per_epoch,
        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, steps, warm, cfg.schedule)),
        progress=None, desc=f"{model_name} depth={depth} seed={seed}",
    )
    train_time = time.perf_counter() - t0
    if res.status[0] != "ok":
        raise FloatingPointError(f"training diverged at step {res.diverged_at[0]}")

    collapsed = collapse(model) if depth > 1 else model
    ev = evaluate(collapsed, xte, yte, cfg.eval_batch_size, embeddings=True)
    tr_ev = evaluate(collapsed, xtr, ytr, cfg.eval_batch_size)
    exact = 0.0
    if depth > 1:
        ex = evaluate(model, xte, yte, cfg.eval_batch_size)
        exact = float((ex["logits"] - ev["logits"]).abs().max() / ev["logits"].abs().max())
    n_collapsed = sum(p.numel() for p in collapsed.parameters())
    return {
        "status": "ok",
        "test_acc": ev["acc"],
        "train_acc": tr_ev["acc"],
        "embed_erank": ev["embed_erank"],
        "embed_srank": ev["embed_srank"],
        "embed_dim": ev["embed_dim"],
        "collapse_max_rel_diff": exact,
        "params_trained": n_params,
        "params_collapsed": n_collapsed,
        "params_baseline": n_base,
        "train_time_s": train_time,
        "steps": steps,
        "final_loss": float(res.final_loss[0]),
        "history": [{"step": h["step"], "loss": h["loss"]} for h in res.history],
    }


# ----------------------------------------------------------------- aggregation


def _ms(vals) -> tuple[float | None, float | None]:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    a = np.asarray(vals, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def aggregate(cfg, runs: list[dict]) -> tuple[list[dict], dict]:
    per_depth, diffs = [], {}
    for model_name in cfg.models:
        base = {r["seed"]: r for r in runs if r["model"] == model_name and r["depth"] == 1 and r["status"] == "ok"}
        for d in cfg.depths:
            ok = [r for r in runs if r["model"] == model_name and r["depth"] == d and r["status"] == "ok"]
            failed = [r for r in runs if r["model"] == model_name and r["depth"] == d and r["status"] != "ok"]
            row = {"model": model_name, "depth": d, "n_ok": len(ok), "n_failed": len(failed)}
            for key in ("test_acc", "train_acc", "embed_erank"):
                row[f"{key}_mean"], row[f"{key}_std"] = _ms(r[key] for r in ok)
            paired = [r["test_acc"] - base[r["seed"]]["test_acc"] for r in ok if r["seed"] in base]
            row["test_acc_diff_mean"], row["test_acc_diff_std"] = _ms(paired) if d != 1 else (0.0, 0.0)
            row["collapse_max_rel_diff"] = max((r["collapse_max_rel_diff"] for r in ok), default=None)
            row["train_time_s_mean"], _ = _ms(r["train_time_s"] for r in ok)
            per_depth.append(row)
            if d != 1:
                diffs[f"{model_name}/depth={d}"] = row
    return per_depth, diffs


def make_verdict(per_depth: list[dict]) -> dict:
    expanded = [r for r in per_depth if r["depth"] != 1]
    base = {r["model"]: r for r in per_depth if r["depth"] == 1}
    comparisons = {}
    complete = True
    for r in expanded:
        b = base[r["model"]]
        if r["test_acc_mean"] is None or b["test_acc_mean"] is None:
            complete = False
            continue
        comparisons[f"{r['model']}/depth={r['depth']}"] = {
            "expanded_test_acc": r["test_acc_mean"],
            "baseline_test_acc": b["test_acc_mean"],
            "paired_diff_mean": r["test_acc_diff_mean"],
            "paired_diff_std": r["test_acc_diff_std"],
            "expanded_geq_baseline": r["test_acc_mean"] >= b["test_acc_mean"],
            "embed_erank_lower": (r["embed_erank_mean"] is not None and b["embed_erank_mean"] is not None
                                  and r["embed_erank_mean"] < b["embed_erank_mean"]),
        }
    n = len(comparisons)
    n_geq = sum(c["expanded_geq_baseline"] for c in comparisons.values())
    n_lower = sum(c["embed_erank_lower"] for c in comparisons.values())
    return {
        "holds": bool(complete and n > 0 and n_geq == n),
        "criterion": "mean collapsed test accuracy of every expanded depth >= the baseline's (same seeds)",
        "expanded_geq_baseline": f"{n_geq}/{n}",
        "embed_erank_lower_than_baseline": f"{n_lower}/{n}",
        "max_collapse_rel_diff": max((r["collapse_max_rel_diff"] or 0.0) for r in expanded) if expanded else 0.0,
        "comparisons": comparisons,
        "all_runs_complete": complete,
    }


def plot(cfg, per_depth: list[dict], path) -> None:
    import rankbias.plots as plots

    fig, (ax1, ax2) = plots.figure(ncols=2, width=4.4, height=3.3)
    for k, model_name in enumerate(cfg.models):
        rows = sorted((r for r in per_depth if r["model"] == model_name and r["n_ok"] > 0),
                      key=lambda r: r["depth"])
        if not rows:
            continue
        x = np.array([r["depth"] for r in rows], float) + (k - (len(cfg.models) - 1) / 2) * 0.06
        plots.line_with_band(ax1, x, [100 * r["test_acc_mean"] for r in rows],
                             [100 * r["test_acc_std"] for r in rows], label=f"{model_name} test",
                             color=f"C{k}")
        plots.line_with_band(ax1, x, [100 * r["train_acc_mean"] for r in rows],
                             [100 * r["train_acc_std"] for r in rows], label=f"{model_name} train",
                             ls="--", marker="s", alpha=0.6, color=f"C{k}")
        plots.line_with_band(ax2, x, [r["embed_erank_mean"] for r in rows],
                             [r["embed_erank_std"] for r in rows], label=model_name,
                             color=f"C{k}")
    for ax in (ax1, ax2):
        ax.set_xlabel("expansion depth (1 = baseline)")
        ax.set_xticks(sorted(cfg.depths))
        ax.legend()
    ax1.set_ylabel("accuracy of collapsed model (%)")
    ax1.set_title(f"{cfg.dataset}: accuracy (mean ± std, {len(cfg.seeds)} seeds)")
    ax2.set_ylabel("kernel effective rank")
    ax2.set_title("penultimate embeddings, test set")
    plots.save(fig, path)


@register(
    "overparam-classification",
    description="Baseline vs linearly over-parameterised CNN/ResNet (depth 2-4), collapsed: accuracy and embedding rank (Huh et al. sec. 6)",
    config_cls=OverparamClassificationConfig,
    presets={
        "quick": {"num_threads": 1},
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
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _run(cfg, run)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: OverparamClassificationConfig, run: RunDir) -> dict:
    from tqdm.auto import tqdm

    from rankbias.report import markdown_table, write_run_report

    data = _load(cfg)
    runs, metrics = [], []
    jobs = [(m, d, s) for m in cfg.models for s in cfg.seeds for d in cfg.depths]
    for model_name, depth, seed in tqdm(jobs, desc="overparam runs", disable=None, leave=False):
        key = f"{model_name}-d{depth}-s{seed}"
        rec = run.part(key)
        if rec is None:
            try:
                rec = train_one(cfg, model_name, depth, seed, data)
            except Exception as e:  # one failed run must not lose the others
                rec = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(limit=5)}
            rec = {"model": model_name, "depth": depth, "seed": seed, **rec}
            run.save_part(key, rec)
        metrics += [{"model": model_name, "depth": depth, "seed": seed, **h} for h in rec.get("history", [])]
        runs.append({k: v for k, v in rec.items() if k != "history"})
    run.write_csv("metrics.csv", metrics)
    run.write_csv("runs.csv", [{k: v for k, v in r.items() if k != "traceback"} for r in runs])

    per_depth, _ = aggregate(cfg, runs)
    verdict = make_verdict(per_depth)
    if any(r["n_ok"] for r in per_depth):
        plot(cfg, per_depth, run.figure_path("accuracy_rank_vs_depth"))
    failures = [{"model": r["model"], "depth": r["depth"], "seed": r["seed"], "error": r["error"]}
                for r in runs if r["status"] != "ok"]
    cols = ["model", "depth", "n_ok", "test_acc_mean", "test_acc_std", "test_acc_diff_mean",
            "test_acc_diff_std", "train_acc_mean", "embed_erank_mean", "embed_erank_std",
            "collapse_max_rel_diff", "train_time_s_mean"]
    comp_rows = [{"comparison": k, **{kk: vv for kk, vv in v.items()}}
                 for k, v in verdict["comparisons"].items()]
    write_run_report(
        run,
        title="overparam-classification: linear over-parameterisation, collapsed",
        claim=CLAIM,
        verdict={k: v for k, v in verdict.items() if k != "comparisons"},
        sections=[
            ("Per model and depth (accuracy of the collapsed model; diff = paired over seeds vs depth 1)",
             markdown_table(per_depth, cols)),
            ("Expanded vs baseline", markdown_table(comp_rows)),
            *([("Failed runs", markdown_table(failures))] if failures else []),
        ],
        figures=["accuracy_rank_vs_depth"] if any(r["n_ok"] for r in per_depth) else [],
        config=cfg.to_dict(),
    )
    return {"per_depth": per_depth, "verdict": verdict, "runs": runs, "failures": failures}
