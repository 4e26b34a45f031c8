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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rankbias.experiments.registry import register
from rankbias.framework.config import Config
from rankbias.framework.runs import RunDir
from rankbias.measures import KernelSpectrum
from rankbias.train import lr_factor
from rankbias.verdicts import mean_std, paired_gain_verdict, t_interval, verdict

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
    device: str = "cpu"
    """torch device, e.g. "cpu" or "cuda"."""

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


BASELINE_KEY = {"default": "d1", "same as factors": "d1f"}


def train_one(cfg: OverparamClassificationConfig, model_name: str, depth: int, seed: int, data,
              baseline_init: str = "default") -> dict:
    """Train one (model, depth, seed); depth 1 is the baseline with ``baseline_init``."""
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
    if depth > 1:
        model = overparameterize(base, depth=depth, width=cfg.width, layers=cfg.expand_layers,
                                 mode=cfg.forward_mode, factor_bias=cfg.factor_bias,
                                 generator=gen_init)
    elif baseline_init == "same as factors":  # a depth-1 factor's init, trained as the plain model
        model = collapse(overparameterize(base, depth=1, layers=cfg.expand_layers,
                                          generator=gen_init))
    else:
        model = base
    model = model.to(cfg.device)
    n_params = sum(p.numel() for p in model.parameters())
    init_fc_norm = float(torch.linalg.matrix_norm(model.fc.weight.detach()))  # collapsed, Frobenius

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
        "init_fc_norm": init_fc_norm,
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
    """:func:`rankbias.verdicts.mean_std`, with None (not NaN) for no value, for the JSON summary."""
    m, sd = mean_std(list(vals))
    return (None, None) if math.isnan(m) else (m, sd)


def _baselines(cfg) -> list[str]:
    """The baseline inits trained: the verdict's first, then the other if asked."""
    other = [b for b in BASELINE_KEY if b != cfg.baseline_init]
    return [cfg.baseline_init, *(other if cfg.compare_both_baselines else [])]


def aggregate(cfg, runs: list[dict]) -> tuple[list[dict], dict[str, dict[str, list[float]]]]:
    """Per (model, depth, baseline init) rows, and per baseline init the paired per-seed
    differences of test accuracy in pp, {"model/depth=d": [diff per seed]}."""
    per_depth: list[dict] = []
    diffs: dict[str, dict[str, list[float]]] = {b: {} for b in _baselines(cfg)}
    ok_runs = [r for r in runs if r["status"] == "ok"]
    for model_name in cfg.models:
        base = {b: {r["seed"]: r for r in ok_runs if r["model"] == model_name and r["depth"] == 1
                    and r.get("baseline_init", "default") == b} for b in diffs}
        rows = [(1, b) for b in diffs] + [(d, None) for d in cfg.depths if d != 1]
        for d, b in rows:
            sel = [r for r in runs if r["model"] == model_name and r["depth"] == d
                   and (b is None or r.get("baseline_init", "default") == b)]
            ok = [r for r in sel if r["status"] == "ok"]
            row = {"model": model_name, "depth": d, "init": b or "factors", "n_ok": len(ok),
                   "n_failed": len(sel) - len(ok)}
            for key in ("test_acc", "train_acc", "embed_erank", "init_fc_norm"):
                row[f"{key}_mean"], row[f"{key}_std"] = _ms(r[key] for r in ok)
            for bi in diffs:  # depth d minus each baseline, same seed, in pp
                tag = "" if bi == cfg.baseline_init else "_vs_other_baseline"
                for key in ("test_acc", "train_acc"):
                    paired = [100 * (r[key] - base[bi][r["seed"]][key]) for r in ok
                              if r["seed"] in base[bi]]
                    if d != 1:
                        row[f"{key}_diff{tag}_mean"], row[f"{key}_diff{tag}_std"] = _ms(paired)
                        if key == "test_acc":
                            diffs[bi][f"{model_name}/depth={d}"] = paired
            row["collapse_max_rel_diff"] = max((r["collapse_max_rel_diff"] for r in ok), default=None)
            row["train_time_s_mean"], _ = _ms(r["train_time_s"] for r in ok)
            per_depth.append(row)
    return per_depth, diffs


PAPER = ("collapsed expanded models reach higher test accuracy than the baseline trained "
         "identically, with lower train accuracy and lower-rank embeddings (Huh et al. 2023, sec. 6)")


def make_verdict(cfg, per_depth: list[dict], diffs: dict[str, dict[str, list[float]]]) -> dict:
    """:func:`paired_gain_verdict` on the test-accuracy differences against the
    ``baseline_init`` baseline; the other baseline's verdict beside it."""
    by_baseline = {b: paired_gain_verdict(d, unit=" pp") for b, d in diffs.items() if d}
    if cfg.baseline_init not in by_baseline:
        v = verdict("not testable", "paired test-accuracy difference per depth",
                    "no expanded depth in the config")
    else:
        v = dict(by_baseline[cfg.baseline_init])
    rows = {(r["model"], r["depth"], r["init"]): r for r in per_depth}
    measured = []
    for key, iv in v.get("intervals", {}).items():
        model_name, d = key.split("/depth=")
        r = rows.get((model_name, int(d), "factors"), {})
        tr = r.get("train_acc_diff_mean")
        measured.append(f"{key}: test {iv['mean']:+.2f} pp [{iv['lo']:+.2f}, {iv['hi']:+.2f}]"
                        + (f", train {tr:+.2f} pp" if tr is not None else ""))
    expanded = [r for r in per_depth if r["depth"] != 1]
    return {
        **v,
        "paper": PAPER,
        "measured": f"vs the {cfg.baseline_init!r}-init baseline: " + ("; ".join(measured) or "none"),
        "baseline_init": cfg.baseline_init,
        "other_baseline": {b: {k: x[k] for k in ("status", "reason")}
                           for b, x in by_baseline.items() if b != cfg.baseline_init},
        "max_collapse_rel_diff": max((r["collapse_max_rel_diff"] or 0.0) for r in expanded)
        if expanded else 0.0,
    }


def plot(cfg, per_depth: list[dict], path) -> None:
    import rankbias.plots as plots

    fig, (ax1, ax2) = plots.figure(ncols=2, width=4.4, height=3.3)
    for k, model_name in enumerate(cfg.models):
        rows = sorted((r for r in per_depth if r["model"] == model_name and r["n_ok"] > 0
                       and r["init"] in ("factors", cfg.baseline_init)), key=lambda r: r["depth"])
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
        "quick": {},
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
    from tqdm.auto import tqdm

    from rankbias.report import markdown_table, write_run_report

    data = _load(cfg)
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
    run.write_csv("metrics.csv", metrics)
    run.write_csv("runs.csv", [{k: v for k, v in r.items() if k != "traceback"} for r in runs])

    per_depth, diffs = aggregate(cfg, runs)
    verdict = make_verdict(cfg, per_depth, diffs)
    if any(r["n_ok"] for r in per_depth):
        plot(cfg, per_depth, run.figure_path("accuracy_rank_vs_depth"))
    failures = [{"model": r["model"], "depth": r["depth"], "seed": r["seed"], "error": r["error"]}
                for r in runs if r["status"] != "ok"]
    cols = ["model", "depth", "init", "n_ok", "test_acc_mean", "test_acc_std", "train_acc_mean",
            "train_acc_std", "test_acc_diff_mean", "test_acc_diff_std", "train_acc_diff_mean",
            "test_acc_diff_vs_other_baseline_mean", "train_acc_diff_vs_other_baseline_mean",
            "embed_erank_mean", "embed_erank_std", "init_fc_norm_mean", "collapse_max_rel_diff",
            "train_time_s_mean"]
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
             markdown_table([{k: r.get(k) for k in cols} for r in per_depth])),
            ("Expanded vs each baseline: paired test-accuracy difference, 95% t-interval",
             markdown_table(comp_rows)),
            *([("Failed runs", markdown_table(failures))] if failures else []),
        ],
        figures=["accuracy_rank_vs_depth"] if any(r["n_ok"] for r in per_depth) else [],
        config=cfg.to_dict(),
    )
    return {"per_depth": per_depth, "verdict": verdict, "paired_test_acc_diffs_pp": diffs,
            "runs": runs, "failures": failures}
