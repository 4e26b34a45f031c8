"""Read named tensors from .npy / .npz / .pt / .pth / .safetensors files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["load_tensors", "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _flatten(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        out[prefix or "tensor"] = obj
    elif isinstance(obj, np.ndarray) and obj.dtype != object:
        out[prefix or "array"] = torch.from_numpy(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor in the file, by name (nested dicts and modules flattened with dots).

    A file saved with ``torch.save(model)`` needs the model's class importable;
    it is loaded with ``weights_only=False``, so load only files you trust.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; accepted: {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        return _load(path, suffix)
    except (ImportError, FileNotFoundError):
        raise
    except Exception as e:  # corrupt or foreign file: say which and why
        raise ValueError(f"{path}: could not read as a {suffix} file: {type(e).__name__}: {e}") from e


def _load(path: Path, suffix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if suffix == ".npy":
        _flatten(np.load(path, allow_pickle=False), path.stem, out)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                _flatten(z[k], k, out)
    elif suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "reading .safetensors needs the safetensors package: pip install 'rankbias[safetensors]'"
            ) from e
        out.update(load_file(str(path)))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            # a whole pickled model (torch.save(model)) needs full unpickling
            warnings.warn(
                f"{path}: not a plain tensor file; unpickling it in full (weights_only=False), "
                "which runs code stored in the file: load only files you trust",
                stacklevel=2,
            )
            obj = torch.load(path, map_location="cpu", weights_only=False)
        _flatten(obj, "", out)
    return out
