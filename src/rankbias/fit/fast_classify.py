"""The epoch trainer of image classifiers on device-resident data, several seeds of one
architecture at once: the second of rankbias's two trainers (:mod:`rankbias.training`
says why there are two; this one shares its schedule :func:`~rankbias.training.lr_factor`,
optimiser :func:`~rankbias.training.make_optimizer` and update step
:func:`~rankbias.training.optimizer_step`).

Built for paper 2's over-parameterisation at CIFAR scale on one GPU (docs/gpu.md):

- the training set lives on the device as uint8 (50,000 CIFAR images are 150 MiB);
  each step gathers its batch there, augments it there (random crop after zero
  padding, horizontal flip) and normalises on the fly, so no host-device copy of
  images happens after the start;
- the random draws (data order, crop offsets, flips) come from one CPU generator
  per seed, in a fixed order, so a seed determines its batches whatever the device
  and whether it trains alone or batched with other seeds; a whole epoch's draws
  are made at its start and copied to the device once, so no training step waits
  on the host (no per-step copy, ``.item()`` or ``.tolist()``);
- ``batch_seeds``: the seeds of a group train as one batched model
  (``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``: a conv over
  stacked weights becomes one grouped conv), or one after another. The models are
  independent, so the gradient of the sum of their losses is each model's own
  gradient and both forms give the same models up to float rounding. (Under vmap,
  autocast does not reach the convs, so the batched form trains in float32);
- bf16 autocast (a setting; on CUDA only by default) and channels_last on the one-after-another
  path, SGD with (Nesterov) momentum, weight decay except on biases and norm parameters, warm-up
  then cosine / step / constant schedule, optional label smoothing;
- ``deadline``: training stops after the epoch whose successor would pass it,
  returning what finished.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rankbias.errors import InvalidParameterError
from rankbias.framework.config import Config
from rankbias.training import lr_factor, make_optimizer, optimizer_step

__all__ = ["DeviceImages", "FastTrainSettings", "GroupResult", "apply_augmentation", "augment_uint8",
           "channels_last_is_safe", "check_sgd_fields", "collapsed_sq_norm", "draw_augmentation",
           "train_group"]


@dataclasses.dataclass(frozen=True)
class FastTrainSettings(Config):
    """The optimisation settings of :func:`train_group`, held whole by ``overparam-cifar``'s
    config (its ``train`` field: ``--set train.lr=0.1``). The defaults are that experiment's."""

    epochs: int = 30
    """Training epochs (overparam-cifar: an upper bound when fit_epochs_to_budget)."""
    batch_size: int = 512
    """Mini-batch size (the last partial batch of an epoch is dropped)."""
    lr: float = 0.2
    """Peak learning rate of SGD."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = True
    """Nesterov momentum (the experiment's default; with momentum 0 plain SGD)."""
    weight_decay: float = 5e-4
    """Weight decay on the weights (factors included); none on biases and norm parameters."""
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    """Learning-rate schedule after the warm-up (:func:`rankbias.training.lr_factor`)."""
    warmup_epochs: float = 2.0
    """Linear warm-up over this many epochs (the experiment's default; its presets but gpu set 1)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy (0: none)."""
    crop_padding: int | None = None
    """Random crop after zero padding by this many pixels (0: off; null: the caller picks by
    dataset, overparam-cifar 4 CIFAR-10, 2 MNIST, 1 digits; :func:`train_group` refuses null)."""
    hflip: bool | None = None
    """Random horizontal flips (null: the caller picks by dataset, overparam-cifar on for CIFAR-10
    and Fashion-MNIST; :func:`train_group` refuses null)."""
    bf16: bool | None = None
    """bf16 autocast for training and per-epoch evaluation of the one-after-another form (null: on
    CUDA only; the batched form trains in float32: autocast does not reach convs under vmap)."""
    channels_last: bool = True
    """channels_last memory format for the one-after-another form, on CUDA only (vmap picks its own
    layout, and the CPU keeps the default one: :func:`channels_last_is_safe`)."""
    eval_batch_size: int = 1000
    """Batch size of evaluation passes."""
    weight_decay_on: Literal["factors", "collapsed"] = "factors"
    """Where weight decay acts on an expanded layer (:mod:`rankbias.overparam`): on each factor
    (SGD's decay, the paper's protocol; for a product this is a low-rank penalty the baseline
    lacks), or on the collapsed weight, as ``weight_decay / 2 * ||W_collapsed||^2`` added to each
    model's loss (the baseline's penalty on the function's own weight). Plain layers decay either way."""

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            self._require(getattr(self, name) >= 1, name, "an int >= 1")
        check_sgd_fields(self)
        self._require(0 <= self.label_smoothing < 1, "label_smoothing", "a number in [0, 1)")


def check_sgd_fields(cfg: Config) -> None:
    """The checks of the SGD fields that :class:`FastTrainSettings` shares with
    ``overparam-classification``'s config: lr, momentum, weight_decay, warmup_epochs and
    crop_padding (a :class:`~rankbias.framework.config.ConfigError` naming the field)."""
    cfg._require(cfg.lr > 0, "lr", "a number > 0")
    cfg._require(0 <= cfg.momentum < 1, "momentum", "a number in [0, 1)")
    cfg._require(cfg.weight_decay >= 0, "weight_decay", "a number >= 0")
    cfg._require(cfg.warmup_epochs >= 0, "warmup_epochs", "a number >= 0")
    cfg._require(cfg.crop_padding is None or cfg.crop_padding >= 0, "crop_padding",
                 "an int >= 0 or null")


class DeviceImages:
    """uint8 images (N, C, H, W) and int64 labels on ``device``, with the per-channel
    mean and std (of the training images, in [0, 1] units) that normalise them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device, mean=None, std=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise InvalidParameterError(f"images must be uint8 (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise InvalidParameterError(f"labels {tuple(labels.shape)} do not match {images.shape[0]} images")
        self.images = images.to(device)
        self.labels = labels.to(device=device, dtype=torch.long)
        x = images.float().div_(255)
        self.mean = (x.mean((0, 2, 3)) if mean is None else torch.as_tensor(mean)).float()
        self.std = (x.std((0, 2, 3)) if std is None else torch.as_tensor(std)).float().clamp_min(1e-6)
        self.mean, self.std = self.mean.to(device), self.std.to(device)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def normalise(self, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """uint8 (..., C, H, W) -> float ((x / 255 - mean) / std)."""
        c = (-1, 1, 1)
        return ((x.to(dtype) / 255 - self.mean.to(dtype).view(c)) / self.std.to(dtype).view(c))


def draw_augmentation(steps: int, batch: int, pad: int, flip: bool, gen: torch.Generator,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The crop offsets and flips of ``steps`` batches of ``batch`` images, drawn at once.

    Returns (offsets (steps, 2, batch) int64 or None without padding, flips (steps, batch)
    bool or None without flips) on ``device``. The draws come from the CPU generator ``gen``
    in the order of one :func:`augment_uint8` call per step (B offsets per axis, then B
    flips), so a seed gives the same batches whatever the device, and the device gets them
    in one copy per tensor instead of one per step (which would make it wait on the host).
    """
    offs, flips = [], []
    for _ in range(steps):
        if pad > 0:
            offs.append(torch.randint(0, 2 * pad + 1, (2, batch), generator=gen))
        if flip:
            flips.append(torch.rand(batch, generator=gen) < 0.5)
    return (torch.stack(offs).to(device) if offs else None,
            torch.stack(flips).to(device) if flips else None)


def apply_augmentation(x: torch.Tensor, pad: int, offsets: torch.Tensor | None,
                       flips: torch.Tensor | None) -> torch.Tensor:
    """Crop ``x`` (uint8 (B, C, H, W)) after zero padding by ``pad`` pixels at ``offsets``
    ((2, B): rows, columns, in [0, 2 pad]) and mirror the images where ``flips`` ((B,) bool)
    is set; None skips that part. Everything stays on ``x``'s device (no host round trip)."""
    B, C, H, W = x.shape
    dev = x.device
    if offsets is not None and pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zeros = black pixels
        rows = (offsets[0, :, None] + torch.arange(H, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (offsets[1, :, None] + torch.arange(W, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        n = torch.arange(B, device=dev)[:, None, None, None]
        c = torch.arange(C, device=dev)[None, :, None, None]
        x = xp[n, c, rows, cols]
    if flips is not None:
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return x


def augment_uint8(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` pixels and random horizontal flip.

    x: uint8 (B, C, H, W) on any device; the draws (B offsets per axis, then B flips)
    come from the CPU generator ``gen``, so they do not depend on the device. One batch:
    :func:`train_group` draws a whole epoch at once (:func:`draw_augmentation`), to the
    same batches.
    """
    offsets, flips = draw_augmentation(1, x.shape[0], pad, flip, gen, x.device)
    return apply_augmentation(x, pad, None if offsets is None else offsets[0],
                              None if flips is None else flips[0])


# ------------------------------------------------------------ the two model forms


def channels_last_is_safe(device: torch.device | str) -> bool:
    """Whether :func:`train_group` may run convs in channels_last on ``device`` (CUDA only).

    On the CPU, torch 2.14.1's oneDNN kernel for the backward of a strided 1x1 conv in
    channels_last with few input channels (< 8, e.g. ResNet's projection shortcut at width
    4) writes outside its buffers: glibc aborts the process ("corrupted size vs. prev_size")
    with one thread, and with two the weight gradient comes back wrong by ~100 %
    (tests/test_gpu.py::test_cpu_float32_training_is_exact_and_does_not_crash). channels_last
    only pays off on CUDA's tensor cores, so the CPU keeps torch's default layout.
    """
    return torch.device(device).type == "cuda"



def _expanded_factor_weights(model: nn.Module) -> tuple[list[nn.Module], set[str]]:
    """The expanded layers of ``model`` and the names of their factors' weights."""
    from rankbias.overparam.layers import _Expanded

    layers, names = [], set()
    for name, m in model.named_modules():
        if isinstance(m, _Expanded):
            layers.append(m)
            prefix = f"{name}." if name else ""
            names |= {f"{prefix}factors.{k}" for k, p in m.factors.named_parameters() if p.dim() > 1}
    return layers, names


def collapsed_sq_norm(model: nn.Module) -> torch.Tensor:
    """Sum over the expanded layers of ``||W_collapsed||^2``, differentiable in the factors
    (0 for a model without expanded layers)."""
    layers, _ = _expanded_factor_weights(model)
    total = torch.zeros((), dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)
    for m in layers:
        total = total + m.weight.square().sum()
    return total


class _CollapsedNorm(nn.Module):
    """:func:`collapsed_sq_norm` as a module's forward, so functional_call and vmap reach it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self) -> torch.Tensor:
        return collapsed_sq_norm(self.net)


class _Stacked:
    """M models of one architecture as stacked parameters, run with vmap."""

    def __init__(self, models: Sequence[nn.Module]):
        from torch.func import stack_module_state

        self.templates = list(models)
        self.params, self.buffers = stack_module_state(self.templates)  # name -> (M, ...)
        self.base = copy.deepcopy(self.templates[0]).to("meta")
        self.per_model_ndim = {k: v.dim() - 1 for k, v in self.params.items()}

    def named_parameters(self):
        return self.params.items()

    def train(self, mode: bool) -> None:
        self.base.train(mode)

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """x: (M, B, C, H, W), or (B, C, H, W) given to every model when ``shared``."""
        from torch.func import functional_call, vmap

        def f(p, b, xi):
            return functional_call(self.base, (p, b), (xi,))

        return vmap(f, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)

    def collapsed_sq_norm(self) -> torch.Tensor:
        """(M,): each model's :func:`collapsed_sq_norm`."""
        from torch.func import functional_call, vmap

        wrapper = _CollapsedNorm(self.base)

        def f(p, b):
            state = {f"net.{k}": v for k, v in {**p, **b}.items()}
            return functional_call(wrapper, state, ())

        return vmap(f)(self.params, self.buffers)

    def modules(self) -> list[nn.Module]:
        """The trained models, one per seed (copies of the templates with the stacked state)."""
        out = []
        for i, t in enumerate(self.templates):
            m = copy.deepcopy(t)
            state = {k: v[i].detach() for k, v in {**self.params, **self.buffers}.items()}
            m.load_state_dict(state)
            out.append(m)
        return out


class _Single:
    """One model behind the same interface (M = 1)."""

    def __init__(self, model: nn.Module, channels_last: bool):
        self.model = model
        self.channels_last = channels_last and channels_last_is_safe(next(model.parameters()).device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.per_model_ndim = {k: p.dim() for k, p in model.named_parameters()}

    def named_parameters(self):
        return self.model.named_parameters()

    def train(self, mode: bool) -> None:
        self.model.train(mode)

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        x = x if shared else x[0]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)[None]  # (1, B, K)

    def collapsed_sq_norm(self) -> torch.Tensor:
        return collapsed_sq_norm(self.model)[None]

    def modules(self) -> list[nn.Module]:
        return [self.model.to(memory_format=torch.contiguous_format)]


def _optimizer(form, s: FastTrainSettings, template: nn.Module) -> torch.optim.SGD:
    # no decay on biases and norm scales/shifts (per-model 1-D parameters), nor on the factors
    # when the decay acts on the collapsed weight instead (a loss term: train_group)
    factors = _expanded_factor_weights(template)[1] if s.weight_decay_on == "collapsed" else set()
    decay, no_decay = [], []
    for name, p in form.named_parameters():
        (decay if form.per_model_ndim[name] > 1 and name not in factors else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    name = "nesterov" if s.nesterov and s.momentum > 0 else "momentum"  # torch refuses nesterov at 0
    return make_optimizer(name, [g for g in groups if g["params"]], s.lr, momentum=s.momentum)


# ------------------------------------------------------------------ training


@dataclasses.dataclass
class GroupResult:
    """What :func:`train_group` returns for its M seeds."""

    models: list[nn.Module]
    """The trained models, one per seed, on the device, in eval mode."""
    history: list[dict[str, Any]]
    """One row per finished epoch and seed: seed, epoch, lr, train_loss, train_acc, test_loss, test_acc, ..."""
    epochs_done: int
    """Epochs finished (== the planned epochs unless the deadline stopped training)."""
    epochs_planned: int
    """The planned epochs (possibly lowered by ``on_epoch`` after the first epoch)."""
    stopped: bool
    """True when the deadline stopped training before the planned epochs."""
    epoch_times: list[float]
    """Wall seconds of each finished epoch (evaluation included)."""


def _epoch_draws(seeds: Sequence[int], gens: dict, N: int, steps: int, B: int, s: FastTrainSettings,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One epoch's random draws of ``seeds``, on the device in one copy per tensor: the data
    order (M, N), the crop offsets (steps, 2, M B) and flips (steps, M B) (None when off).

    Per seed, from its own CPU generator: the permutation, then each step's offsets and flips
    (:func:`draw_augmentation`): the order of one :func:`augment_uint8` call per step, so a
    seed's batches do not depend on the device, on the other seeds or on how the draws travel.
    """
    perms, offs, flips = [], [], []
    for sd in seeds:
        perms.append(torch.randperm(N, generator=gens[sd]))
        o, f = draw_augmentation(steps, B, s.crop_padding, s.hflip, gens[sd])
        offs.append(o)
        flips.append(f)
    # seed k's images are rows k B .. (k + 1) B - 1 of a step's (M B) batch
    off = None if offs[0] is None else torch.cat(offs, dim=2).to(device)  # (steps, 2, M B)
    flip = None if flips[0] is None else torch.cat(flips, dim=1).to(device)  # (steps, M B)
    return torch.stack(perms).to(device), off, flip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, on: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)


@torch.no_grad()
def _evaluate(form, data: DeviceImages, M: int, run: _Run) -> tuple[list, list]:
    form.train(False)
    loss = torch.zeros(M, device=data.labels.device)
    correct = torch.zeros(M, device=data.labels.device)
    bs = run.s.eval_batch_size
    for i in range(0, len(data), bs):
        x = data.normalise(data.images[i:i + bs], run.dtype)
        y = data.labels[i:i + bs]
        with _autocast(run.device, run.bf16):
            out = form(x, shared=True).float()  # (M, B, K)
        loss += F.cross_entropy(out.flatten(0, 1), y.repeat(M), reduction="none").view(M, -1).sum(1)
        correct += (out.argmax(-1) == y).sum(1)
    n = len(data)
    return (loss / n).tolist(), (correct / n).tolist()


@dataclasses.dataclass
class _Run:
    """What every epoch of one :func:`train_group` call shares."""

    s: FastTrainSettings
    train: DeviceImages
    test: DeviceImages
    device: torch.device
    dtype: torch.dtype
    """The models' dtype: float64 models get float64 inputs (exact tests)."""
    bf16: bool
    gens: dict[int, torch.Generator]
    """One CPU generator per seed: its data order and augmentation."""
    B: int
    per_epoch: int
    warm: int
    """Warm-up steps."""
    planned: int
    """Epochs planned (lowered by ``on_epoch`` within the warm-up)."""


def _start(models: Sequence[nn.Module], seeds: Sequence[int], train: DeviceImages, test: DeviceImages,
           s: FastTrainSettings, batch_seeds: bool) -> _Run:
    if len(models) != len(seeds) or not models:
        raise InvalidParameterError(f"need one model per seed; got {len(models)} models, {len(seeds)} seeds")
    for name in ("crop_padding", "hflip"):
        if getattr(s, name) is None:
            raise InvalidParameterError(f"settings.{name}: got None, which the caller resolves per dataset; "
                                        f"accepted here: {'an int >= 0' if name == 'crop_padding' else 'a bool'}")
    device = train.images.device
    bf16 = device.type == "cuda" if s.bf16 is None else s.bf16
    # autocast does not reach convs under vmap (their batching rule runs below the autocast
    # dispatch: float32 inputs meet the bf16 kernels the autocast matmuls of the expanded layers
    # built), so the batched form stays float32 (TF32 convs on CUDA) and bf16 is for the
    # one-after-another form
    B = min(s.batch_size, len(train))
    per_epoch = len(train) // B  # the last partial batch is dropped: every step has the same shape
    return _Run(s, train, test, device, next(models[0].parameters()).dtype, bf16 and not batch_seeds,
                {sd: torch.Generator().manual_seed(int(sd)) for sd in seeds}, B, per_epoch,
                round(s.warmup_epochs * per_epoch), s.epochs)


def _train_epoch(form, sds: Sequence[int], opt: torch.optim.Optimizer, run: _Run, epoch: int,
                 penalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of the models of ``form``: their summed per-step losses and accuracies, (M,)."""
    s, M, B, data = run.s, len(sds), run.B, run.train
    form.train(True)
    idx, offsets, flips = _epoch_draws(sds, run.gens, len(data), run.per_epoch, B, s, run.device)
    loss_sum = torch.zeros(M, device=run.device)
    correct = torch.zeros(M, device=run.device)
    for i in range(run.per_epoch):
        step = epoch * run.per_epoch + i
        for g in opt.param_groups:
            g["lr"] = s.lr * lr_factor(step, run.planned * run.per_epoch, run.warm, s.schedule)
        rows_i = idx[:, i * B:(i + 1) * B]  # (M, B) on the device
        xb = apply_augmentation(data.images[rows_i.flatten()], s.crop_padding,
                                None if offsets is None else offsets[i],
                                None if flips is None else flips[i])  # (M B, C, H, W)
        yb = data.labels[rows_i]  # (M, B)
        x = data.normalise(xb.unflatten(0, (M, B)), run.dtype)  # (M, B, C, H, W)
        outs: list[torch.Tensor] = []

        def objective(x=x, yb=yb, outs=outs) -> tuple[torch.Tensor, torch.Tensor]:
            with _autocast(run.device, run.bf16):
                out = form(x).float()  # (M, B, K)
            outs.append(out)
            losses = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none",
                                     label_smoothing=s.label_smoothing).view(M, B).mean(1)
            total = losses.sum()
            if penalise:
                total = total + 0.5 * s.weight_decay * form.collapsed_sq_norm().sum()
            return losses, total

        # no sanitising: a non-finite loss stops training at the epoch's end (FloatingPointError)
        loss_sum += optimizer_step(opt, objective)
        correct += (outs[0].detach().argmax(-1) == yb).float().mean(1)
    return loss_sum, correct


def _epoch_rows(form, sds: Sequence[int], opt, run: _Run, epoch: int, penalise: bool) -> list[dict]:
    """Train ``form`` one epoch, evaluate it on the test set: one row per seed."""
    loss_sum, correct = _train_epoch(form, sds, opt, run, epoch, penalise)
    te_loss, te_acc = _evaluate(form, run.test, len(sds), run)
    tr_loss, tr_acc = (loss_sum / run.per_epoch).tolist(), (correct / run.per_epoch).tolist()
    rows = []
    for k, sd in enumerate(sds):
        if not math.isfinite(tr_loss[k]):
            raise FloatingPointError(f"seed {sd}: training loss is not finite at epoch {epoch + 1}")
        rows.append({"seed": sd, "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                     "train_loss": tr_loss[k], "train_acc_augmented": tr_acc[k],
                     "test_loss": te_loss[k], "test_acc": te_acc[k]})
    return rows


def _replan(run: _Run, epoch: int, new: int | None) -> bool:
    """Apply ``on_epoch``'s new number of epochs; True when it changed. The learning rate so
    far must not depend on the total: only after an epoch within the warm-up, never below the
    epochs done nor above the plan."""
    if new is None or new == run.planned:
        return False
    if epoch * run.per_epoch > run.warm or not epoch <= new <= run.planned:
        raise InvalidParameterError(f"the epochs may only be lowered (to >= the epochs done) after an "
                                    f"epoch within the warm-up; got {new} at epoch {epoch}")
    run.planned = new
    return True


def train_group(
    models: Sequence[nn.Module],
    seeds: Sequence[int],
    train: DeviceImages,
    test: DeviceImages,
    settings: FastTrainSettings,
    *,
    batch_seeds: bool = True,
    deadline: float | None = None,
    on_epoch: Callable[[dict[str, Any]], int | None] | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> GroupResult:
    """Train ``models[i]`` with the random stream of ``seeds[i]``, for ``settings.epochs``.

    Parameters
    ----------
    models : sequence of nn.Module
        One architecture, on the device of ``train``, one model per seed.
    seeds : sequence of int
        Each fixes its model's data order and augmentation.
    train, test : DeviceImages
        The training set and the set evaluated after every epoch.
    settings : FastTrainSettings
        With ``crop_padding`` and ``hflip`` set (not null).
    batch_seeds : bool
        Train the models as one vmapped model, else one after another.
    deadline : float, optional
        A ``time.perf_counter()`` value: no epoch starts that the last epoch's duration
        predicts would end after it.
    on_epoch : callable, optional
        Called after each epoch with ``info`` (epoch, epoch_time_s, elapsed_s, rows,
        planned); after an epoch that ends within the warm-up it may return a new
        (smaller, not below the epochs done) number of epochs: the schedule after the
        warm-up depends on it, the warm-up does not.
    progress : bool or None
        A tqdm bar of epochs (None: only on a terminal).
    desc : str
        The bar's label.

    Returns
    -------
    GroupResult

    Raises
    ------
    InvalidParameterError
        Models and seeds that do not pair up, unresolved settings, or a bad new plan.
    FloatingPointError
        A seed's training loss is not finite over an epoch.
    """
    run = _start(models, seeds, train, test, settings, batch_seeds)
    if batch_seeds:
        forms = [(_Stacked(models), list(seeds))]
    else:
        forms = [(_Single(m, settings.channels_last), [sd]) for m, sd in zip(models, seeds)]
    state = [(form, sds, _optimizer(form, settings, models[0])) for form, sds in forms]
    penalise = settings.weight_decay_on == "collapsed" and settings.weight_decay > 0
    history: list[dict[str, Any]] = []
    times: list[float] = []
    t_start = time.perf_counter()
    epoch, stopped = 0, False

    from tqdm.auto import tqdm

    bar = tqdm(total=run.planned, desc=desc, unit="epoch", disable=None if progress is None else not progress,
               leave=False)
    while epoch < run.planned:
        if deadline is not None and times and time.perf_counter() + times[-1] > deadline:
            stopped = True
            break
        t0 = time.perf_counter()
        rows = [r for form, sds, opt in state for r in _epoch_rows(form, sds, opt, run, epoch, penalise)]
        _sync(run.device)
        times.append(time.perf_counter() - t0)
        epoch += 1
        for r in rows:
            r["epoch_time_s"], r["elapsed_s"] = times[-1], time.perf_counter() - t_start
        history += rows
        bar.update(1)
        if on_epoch is not None and _replan(run, epoch, on_epoch(
                {"epoch": epoch, "epoch_time_s": times[-1], "rows": rows,
                 "elapsed_s": time.perf_counter() - t_start, "planned": run.planned})):
            bar.total = run.planned
    bar.close()
    trained = [m for form, _, _ in state for m in form.modules()]
    for m in trained:
        m.eval()
    return GroupResult(trained, history, epoch, run.planned, stopped, times)
