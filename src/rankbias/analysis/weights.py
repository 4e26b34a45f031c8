"""Weights as matrices, and their measures, as a report row or a tracker record reads them.

A conv weight W (out, in, *k) is read (``conv_reading``) as

- ``"flatten"``: the out x (in * prod(k)) matrix, the map from a receptive
  field to an output channel;
- ``"taps"``: one out x in matrix W_t per kernel position t; each measure is
  computed per tap and the row holds the **mean over the taps** (normalised by
  the maximum for out x in). This is not WeightWatcher's reading;
- ``"pooled"``: WeightWatcher's reading. It takes the same per-tap slices, but
  pools their squared singular values into one spectrum (one "ESD" per layer)
  and computes each measure on that: exactly the measures of the block-diagonal
  matrix diag(W_1, ..., W_T) ((T out) x (T in)). So the pooled stable rank is
  sum_t ||W_t||_F^2 / max_t ||W_t||_2^2 = ||W||_F^2 / max_t ||W_t||_2^2, about
  T times the per-tap one (resnet18 ``layer1.0.conv1``, random init: ~145 pooled
  against ~17 per tap). Normalised by the maximum for (T out) x (T in).

Linear layers (2-D weights) read the same in all three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from rankbias.analysis.layers import CONV_READINGS, ConvReading
from rankbias.errors import InvalidParameterError
from rankbias.framework.config import ConfigError
from rankbias.measures import (
    as_matrix,
    max_measure,
    measures_from_singular_values,
    rank_measures_many,
    singular_values,
)
from rankbias.measures._checks import _unreadable
from rankbias.measures.spec import Spectrum, evaluate, split_centered


def check_conv_reading(reading) -> ConvReading:
    if reading not in CONV_READINGS:
        raise ConfigError(f"conv_reading must be one of {', '.join(map(repr, CONV_READINGS))}, got {reading!r}")
    return reading


def weight_matrices(
    items: Sequence[tuple[str, torch.Tensor | str]], reading: ConvReading, batched: bool = False
) -> dict[str, torch.Tensor | str]:
    """name -> matrix (m, n), or taps (T, m, n) (``taps``/``pooled``), with a
    leading model dimension when ``batched``; or an error message.

    ``items``: weights already out x in (a conv kernel (out, in/groups, *k): see
    :mod:`rankbias.analysis.readings`), or the message of a weight not read."""
    out: dict[str, torch.Tensor | str] = {}
    as_read = "flatten" if reading == "flatten" else "taps"
    for name, w in items:
        if isinstance(w, str):  # a row whose weight is not read, and why
            out[name] = w
            continue
        w = w.detach()
        reason = _unreadable(w)  # before any op on the values: those raise on these tensors
        if reason:
            out[name] = reason
            continue
        # a NaN or Inf makes the sum non-finite: one cheap pass, the full test (its own
        # four passes) only then (and after finite values whose sum overflowed)
        if w.dtype.is_floating_point and not bool(torch.isfinite(w.sum())):
            n_bad = int((~torch.isfinite(w)).sum())
            if n_bad:
                out[name] = f"weight contains {n_bad} NaN/Inf value(s) of {w.numel()}"
                continue
        if w.is_complex():
            out[name] = "complex weight: not measured"
            continue
        if batched:
            if w.ndim < 3:
                out[name] = f"batched: expected (models, m, n, ...) weights, got shape {tuple(w.shape)}"
                continue
            out[name] = torch.stack([as_matrix(wi, as_read) for wi in w.unbind(0)])
        else:
            out[name] = as_matrix(w, as_read)
    return out


def read_shape(M: torch.Tensor, reading: ConvReading, batched: bool = False) -> tuple[int, ...]:
    """The matrix as read: (m, n); (T, m, n) per tap; (T m, T n) pooled."""
    shape = tuple(M.shape[1:] if batched else M.shape)
    if reading == "pooled" and len(shape) == 3:
        t, m, n = shape
        return (t * m, t * n)
    return shape


def _eps_of(dtype: torch.dtype) -> float:
    # as rank_measures: the input's eps for float32/float64, float64's otherwise
    return torch.finfo(dtype).eps if dtype in (torch.float32, torch.float64) else torch.finfo(torch.float64).eps


def pooled_measures(taps: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The measures of diag(W_1, ..., W_T) from taps (..., T, m, n), batched over ``...``.

    The block-diagonal matrix's singular values are the union of the taps';
    its centred measures (the participation ratio; any ``SPECS[k].centered``)
    read the power sums of its centred covariance, which have a closed form from
    the taps' Gram matrices: with G_t = W_t^T W_t and u the concatenated per-tap mean rows, the centred
    column Gram is C = diag(G_t) - (m / T) u u^T, so tr C and ||C||_F^2 need
    only tr G_t, ||G_t||_F^2 and u_t^T G_t u_t.
    """
    if taps.ndim < 3:
        raise InvalidParameterError(f"taps: expected (..., T, m, n), got shape {tuple(taps.shape)}")
    T, m, n = taps.shape[-3:]
    eps = _eps_of(taps.dtype)
    spectral, centred = split_centered(names)
    out: dict[str, torch.Tensor] = {}
    if spectral:
        s = singular_values(taps)  # (..., T, min(m, n))
        s = s.reshape(*s.shape[:-2], -1).sort(dim=-1, descending=True).values  # (..., T min(m, n))
        out.update(measures_from_singular_values(s, shape=(T * m, T * n), measures=spectral, eps=eps))
    if centred:
        sums = _pooled_centered_power_sums(taps)
        out.update(evaluate(centred, Spectrum(None, shape=(T * m, T * n), eps=eps, centered_power_sums=sums)))
    return {k: out[k] for k in names}


def _pooled_centered_power_sums(taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tr C, ||C||_F^2) of the centred column Gram C of diag(W_1, ..., W_T), batch shape."""
    T, m = taps.shape[-3:-1]
    X = taps.double()
    G = X.mT @ X  # (..., T, n, n)
    u = X.mean(-2)  # (..., T, n): each tap's mean row
    c = m / T
    uu = u.square().sum((-2, -1))
    uGu = (u.unsqueeze(-2) @ G @ u.unsqueeze(-1)).squeeze(-1).squeeze(-1).sum(-1)
    tr = G.diagonal(dim1=-2, dim2=-1).sum((-2, -1)) - c * uu
    fro2 = G.square().sum((-3, -2, -1)) - 2 * c * uGu + c * c * uu.square()
    return tr, fro2


def measure_weights(
    items: Sequence[tuple[str, torch.Tensor | str]],
    names: Sequence[str],
    reading: ConvReading,
    *,
    batched: bool = False,
    progress: Callable[[int], object] | None = None,
    method: str = "auto",
) -> dict[str, tuple[dict[str, torch.Tensor], torch.Tensor] | str]:
    """name -> ({measure: value, 0-d or (M,) when batched}, matrix as read), or an error message.

    Matrices of the same shape are measured in one batched call; a conv read
    per tap holds the mean over its taps. ``method``: that of ``rank_measures``
    (the pooled reading has its own).
    """
    mats = weight_matrices(items, reading, batched=batched)
    good = {k: v for k, v in mats.items() if isinstance(v, torch.Tensor)}
    if reading == "pooled":
        results = {}
        for k, v in good.items():
            one_tap = v.ndim - int(batched) == 2  # a 2-D weight: one block
            results[k] = pooled_measures(v.unsqueeze(-3) if one_tap else v, names)
            if progress is not None:
                progress(1)
    else:
        results = rank_measures_many(good, names, progress=progress, method=method)
    out: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor] | str] = {}
    for name, M in mats.items():
        if isinstance(M, str):
            out[name] = M
            continue
        vals = {}
        for key in names:
            v = results[name][key].double()
            vals[key] = v.reshape(M.shape[0], -1).mean(-1) if batched else v.mean()  # mean over taps
        out[name] = (vals, M)
    return out


def normalized(name: str, value: float, shape: tuple[int, int]) -> float:
    """``value`` / the measure's maximum for a matrix of ``shape`` (NaN where that is 0)."""
    top = max_measure(name, shape)
    return value / top if top > 0 and math.isfinite(value) else float("nan")
