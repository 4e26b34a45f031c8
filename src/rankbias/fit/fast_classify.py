"""A fast image-classification trainer for several seeds of one architecture.

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
- bf16 autocast (a setting; the experiments turn it on for CUDA only) and channels_last on the one-after-another path,
  SGD with momentum, weight decay except on biases and norm parameters, warm-up
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

from rankbias.train import lr_factor

__all__ = ["DeviceImages", "FastTrainSettings", "GroupResult", "apply_augmentation", "augment_uint8",
           "channels_last_is_safe", "collapsed_sq_norm", "draw_augmentation", "train_group"]


@dataclasses.dataclass(frozen=True)
class FastTrainSettings:
    """The optimisation settings of :func:`train_group` (the experiment's config fills them)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    crop_padding: int = 4
    hflip: bool = True
    bf16: bool = False
    channels_last: bool = False
    """channels_last for the one-after-another form, on CUDA only (:func:`channels_last_is_safe`)."""
    eval_batch_size: int = 1000
    weight_decay_on: Literal["factors", "collapsed"] = "factors"
    """Where weight decay acts on an expanded layer (:mod:`rankbias.overparam`): on each factor
    (SGD's decay; for a product this is a low-rank penalty the baseline lacks), or on the
    collapsed weight, as ``weight_decay / 2 * ||W_collapsed||^2`` added to each model's loss
    (the baseline's penalty on the function's own weight). Plain layers decay either way."""


class DeviceImages:
    """uint8 images (N, C, H, W) and int64 labels on ``device``, with the per-channel
    mean and std (of the training images, in [0, 1] units) that normalise them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device, mean=None, std=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match {images.shape[0]} images")
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
    return torch.optim.SGD([g for g in groups if g["params"]], lr=s.lr, momentum=s.momentum,
                           nesterov=s.nesterov and s.momentum > 0)


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


@torch.no_grad()
def _evaluate(form, data: DeviceImages, M: int, s: FastTrainSettings, autocast,
              dtype) -> tuple[list, list]:
    form.train(False)
    loss = torch.zeros(M, device=data.labels.device)
    correct = torch.zeros(M, device=data.labels.device)
    for i in range(0, len(data), s.eval_batch_size):
        x = data.normalise(data.images[i:i + s.eval_batch_size], dtype)
        y = data.labels[i:i + s.eval_batch_size]
        with autocast():
            out = form(x, shared=True).float()  # (M, B, K)
        loss += F.cross_entropy(out.flatten(0, 1), y.repeat(M), reduction="none").view(M, -1).sum(1)
        correct += (out.argmax(-1) == y).sum(1)
    n = len(data)
    return (loss / n).tolist(), (correct / n).tolist()


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

    ``models`` share one architecture and sit on the device of ``train``. With
    ``batch_seeds`` they train as one vmapped model, else one after another.
    After each epoch the models are evaluated on ``test`` and
    ``on_epoch(info)`` is called (info: epoch, epoch_time_s, elapsed_s, rows);
    after an epoch that ends within the warm-up it may return a new (smaller, not
    below the epochs done) number of epochs: the schedule after the warm-up depends
    on it, the warm-up does not. ``deadline`` (a ``time.perf_counter()`` value): no epoch starts that
    the last epoch's duration predicts would end after it.
    """
    s = settings
    if len(models) != len(seeds) or not models:
        raise ValueError(f"need one model per seed; got {len(models)} models, {len(seeds)} seeds")
    device = train.images.device
    dtype = next(models[0].parameters()).dtype  # float64 models get float64 inputs (exact tests)
    if batch_seeds:
        forms = [(_Stacked(models), list(seeds))]
    else:
        forms = [(_Single(m, s.channels_last), [sd]) for m, sd in zip(models, seeds)]
    # autocast does not reach convs under vmap (their batching rule runs below the autocast
    # dispatch: float32 inputs meet the bf16 kernels the autocast matmuls of the expanded layers
    # built), so the batched form stays float32 (TF32 convs on CUDA) and bf16 is for the
    # one-after-another form
    use_bf16 = s.bf16 and not batch_seeds

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    N = len(train)
    B = min(s.batch_size, N)
    per_epoch = N // B  # the last partial batch is dropped: every step has the same shape
    warm = round(s.warmup_epochs * per_epoch)
    planned = s.epochs
    history: list[dict[str, Any]] = []
    times: list[float] = []
    gens = {sd: torch.Generator().manual_seed(int(sd)) for sd in seeds}
    state = [(form, sds, _optimizer(form, s, models[0])) for form, sds in forms]
    penalise = s.weight_decay_on == "collapsed" and s.weight_decay > 0
    t_start = time.perf_counter()
    epoch, stopped = 0, False

    from tqdm.auto import tqdm

    bar = tqdm(total=planned, desc=desc, unit="epoch", disable=None if progress is None else not progress,
               leave=False)
    while epoch < planned:
        if deadline is not None and times and time.perf_counter() + times[-1] > deadline:
            stopped = True
            break
        t0 = time.perf_counter()
        rows = []
        for form, sds, opt in state:
            M = len(sds)
            form.train(True)
            idx, offsets, flips = _epoch_draws(sds, gens, N, per_epoch, B, s, device)
            loss_sum = torch.zeros(M, device=device)
            correct = torch.zeros(M, device=device)
            total = planned * per_epoch
            for i in range(per_epoch):
                step = epoch * per_epoch + i
                for g in opt.param_groups:
                    g["lr"] = s.lr * lr_factor(step, total, warm, s.schedule)
                rows_i = idx[:, i * B:(i + 1) * B]  # (M, B) on the device
                xb = apply_augmentation(train.images[rows_i.flatten()], s.crop_padding,
                                        None if offsets is None else offsets[i],
                                        None if flips is None else flips[i])  # (M B, C, H, W)
                yb = train.labels[rows_i]  # (M, B)
                x = train.normalise(xb.unflatten(0, (M, B)), dtype)  # (M, B, C, H, W)
                with autocast():
                    out = form(x).float()  # (M, B, K)
                losses = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none",
                                         label_smoothing=s.label_smoothing).view(M, B).mean(1)
                opt.zero_grad(set_to_none=True)
                objective = losses.sum()
                if penalise:
                    objective = objective + 0.5 * s.weight_decay * form.collapsed_sq_norm().sum()
                objective.backward()
                opt.step()
                loss_sum += losses.detach()
                correct += (out.detach().argmax(-1) == yb).float().mean(1)
            te_loss, te_acc = _evaluate(form, test, M, s, autocast, dtype)
            tr_loss, tr_acc = (loss_sum / per_epoch).tolist(), (correct / per_epoch).tolist()
            for k, sd in enumerate(sds):
                if not math.isfinite(tr_loss[k]):
                    raise FloatingPointError(f"seed {sd}: training loss is not finite at epoch {epoch + 1}")
                rows.append({"seed": sd, "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                             "train_loss": tr_loss[k], "train_acc_augmented": tr_acc[k],
                             "test_loss": te_loss[k], "test_acc": te_acc[k]})
        _sync(device)
        times.append(time.perf_counter() - t0)
        epoch += 1
        for r in rows:
            r["epoch_time_s"], r["elapsed_s"] = times[-1], time.perf_counter() - t_start
        history += rows
        bar.update(1)
        if on_epoch is not None:
            new = on_epoch({"epoch": epoch, "epoch_time_s": times[-1], "rows": rows,
                            "elapsed_s": time.perf_counter() - t_start, "planned": planned})
            if new is not None and new != planned:
                # the learning rate so far must not depend on the total: only within the warm-up
                if epoch * per_epoch > warm or not epoch <= new <= planned:
                    raise ValueError(f"the epochs may only be lowered (to >= the epochs done) after an "
                                     f"epoch within the warm-up; got {new} at epoch {epoch}")
                planned = new
                bar.total = planned
    bar.close()
    trained = [m for form, _, _ in state for m in form.modules()]
    for m in trained:
        m.eval()
    return GroupResult(trained, history, epoch, planned, stopped, times)
