"""Input validation and reading for the rank measures: tensors, dtypes, tolerances, methods.

Every check raises :class:`~rankbias.errors.InvalidParameterError` (a ``ValueError``;
``TypeError`` for a non-array object) saying what was wrong and what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from rankbias.errors import InvalidParameterError

Method = Literal["auto", "gram", "svd", "fast"]
Tol = float | torch.Tensor | None
# What the measures read as a matrix (see ``_to_tensor``): a tensor, a numpy array or
# nested lists of bool, int or float, of shape (..., m, n).
MatrixLike = torch.Tensor | np.ndarray | Sequence[Any]


def _to_tensor(A, name: str = "A") -> torch.Tensor:
    """A torch tensor of shape (..., m, n), m, n >= 1, real; clear errors otherwise."""
    if not isinstance(A, torch.Tensor):
        if isinstance(A, np.ndarray | np.generic | list | tuple | int | float | bool):
            try:
                arr = np.asarray(A)
            except ValueError as e:  # ragged nested lists
                raise InvalidParameterError(f"{name}: cannot read a ragged nested sequence as a matrix") from e
            if np.iscomplexobj(arr):
                raise InvalidParameterError(f"{name}: complex input is not supported; pass a real matrix")
            if arr.dtype.kind not in "biuf":
                raise InvalidParameterError(
                    f"{name}: cannot read a numpy array of dtype {arr.dtype} as a matrix; "
                    "accepted: bool, integer or floating arrays"
                )
            if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:  # long double
                arr = arr.astype(np.float64)
            elif arr.dtype.kind == "u" and arr.dtype.itemsize > 1:  # torch lacks most uint ops
                arr = arr.astype(np.float64)
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            A = torch.from_numpy(np.ascontiguousarray(arr))
        else:
            raise InvalidParameterError(
                f"{name}: expected a torch.Tensor or numpy array of shape (..., m, n), "
                f"got {type(A).__name__}"
            )
    reason = _unreadable(A)
    if reason:
        raise InvalidParameterError(f"{name}: {reason}")
    if A.is_complex():
        raise InvalidParameterError(f"{name}: complex input is not supported; pass a real matrix")
    if A.ndim < 2:
        raise InvalidParameterError(
            f"{name}: expected at least 2 dimensions (..., m, n), got shape {tuple(A.shape)}"
        )
    if A.numel() == 0:
        raise InvalidParameterError(
            f"{name}: empty input of shape {tuple(A.shape)}; m, n and every batch size must be >= 1"
        )
    return A


def _unreadable(A: torch.Tensor) -> str | None:
    """Why the values of ``A`` cannot be read as a matrix (None when they can).

    The measures read dense values. A sparse layout is refused rather than densified
    (its dense form can need memory out of all proportion to the file); a quantized
    tensor's integers are not its values; a meta tensor has no values at all.
    """
    if A.layout != torch.strided:
        return (f"a {str(A.layout).removeprefix('torch.')} tensor is not read; accepted: "
                "dense (strided) tensors; convert it with .to_dense()")
    if A.is_quantized:
        return (f"a quantized tensor ({str(A.dtype).removeprefix('torch.')}) is not read; "
                "accepted: floating, integer or bool tensors; convert it with .dequantize()")
    if A.is_meta:
        return ("a tensor on the meta device has no values; accepted: a tensor with values "
                "(load or materialize the weights first, e.g. module.to_empty(device='cpu') "
                "and load_state_dict)")
    return None


def _compute_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float64
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64, "double": torch.float64,
                 "float": torch.float32}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise InvalidParameterError(
            f"dtype must be torch.float32 or torch.float64 (or None = float64), got {dtype!r}"
        )
    return dtype


def _default_eps(in_dtype: torch.dtype, compute_dtype: torch.dtype) -> float:
    """eps behind the default rtol: that of the dtype ``matrix_rank`` would run in.

    float32/float64 inputs keep their own eps (as ``matrix_rank(A)``), or the
    computing dtype's if that is coarser; integer, bool and half/bfloat16 inputs,
    which ``matrix_rank`` rejects, get the computing dtype's (as ``matrix_rank(A.double())``).
    """
    ce = torch.finfo(compute_dtype).eps
    if in_dtype in (torch.float32, torch.float64):
        return max(torch.finfo(in_dtype).eps, ce)
    return ce


def _check_finite(A: torch.Tensor, name: str) -> None:
    if A.dtype.is_floating_point:
        bad = ~torch.isfinite(A.detach())
        if bool(bad.any()):
            n_nan = int(torch.isnan(A.detach()).sum())
            raise InvalidParameterError(
                f"{name}: contains {n_nan} NaN and {int(bad.sum()) - n_nan} Inf value(s) "
                f"(shape {tuple(A.shape)}); rank measures need finite input"
            )


def _check_tol(t, name: str) -> None:
    if t is None:
        return
    if isinstance(t, torch.Tensor):
        if t.is_complex():
            raise InvalidParameterError(f"{name} must be real, got a complex tensor")
        if bool(torch.isnan(t).any()):
            raise InvalidParameterError(f"{name} must not be NaN")
    elif isinstance(t, int | float | np.floating | np.integer) and not isinstance(t, bool):
        if math.isnan(float(t)):
            raise InvalidParameterError(f"{name} must not be NaN")
    else:
        raise InvalidParameterError(f"{name} must be a float, a tensor or None, got {type(t).__name__}")


def _check_method(method, fast: bool = False) -> None:
    """``fast``: whether the caller also takes ``method="fast"`` (``rank_measures`` does)."""
    if method not in ("auto", "gram", "svd") + (("fast",) if fast else ()):
        also = " (or 'fast', the estimated route)" if fast else ""
        raise InvalidParameterError(f"method must be 'auto', 'gram' or 'svd'{also}, got {method!r}")


def _check_accuracy(accuracy) -> None:
    """A relative error target: a real number in (0, 1), or None for the method's default."""
    if accuracy is None:
        return
    if (not isinstance(accuracy, int | float | np.floating | np.integer) or isinstance(accuracy, bool)
            or not 0 < float(accuracy) < 1):
        raise InvalidParameterError(
            f"accuracy must be a relative error in (0, 1), e.g. 1e-6, or None for the default; "
            f"got {accuracy!r}")


def as_matrix(weight, reading: Literal["flatten", "taps"] = "flatten") -> torch.Tensor:
    """Read a weight tensor as a matrix (or a batch of matrices).

    ``flatten`` (default): (out, in, *kernel) -> (out, in * prod(kernel)), the
    map from a receptive field to an output channel. ``taps``: one (out, in)
    matrix per kernel position, returned as a batch (prod(kernel), out, in): the
    slices WeightWatcher takes before pooling their spectra (``rank_report``'s
    ``conv_reading="pooled"``). 2-D weights are returned unchanged.
    """
    W = _to_tensor(weight, "weight")
    if reading not in ("flatten", "taps"):
        raise InvalidParameterError(f"reading must be 'flatten' or 'taps', got {reading!r}")
    if W.ndim == 2:
        return W
    if reading == "flatten":
        return W.reshape(W.shape[0], -1)
    out, inp = W.shape[:2]
    return W.reshape(out, inp, -1).permute(2, 0, 1)
