"""Loading by name, for the CLI and the API: tensors from files, models from an
architecture name or a file, and model inputs from a dataset name or a file.

Pickles are never unpickled in full unless asked: ``torch.load`` runs with
``weights_only=True``, which reads tensors, state_dicts and checkpoints of plain
containers but refuses any other Python object. A file that needs the full
unpickler (a whole module saved with ``torch.save(model)``, or a hostile file
whose pickle would call ``os.system``) is a :class:`~rankbias.errors.LoadError`
unless the caller passes ``trust_pickle=True`` (``--trust-pickle`` on the CLI):
unpickling runs whatever code the file names. Every bad file, model or input
is a ``LoadError`` (``FileNotFoundError`` for a missing path) saying what was
wrong and what is accepted.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rankbias.errors import LoadError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "build_arch",
    "load_inputs",
    "load_model",
    "load_tensors",
    "torch_load",
]

SUPPORTED_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_TRUST_HINT = (
    "pass --trust-pickle (CLI) or trust_pickle=True (API) only if you trust the file: "
    "unpickling runs code stored in it"
)


def _existing_file(path: str | os.PathLike, what: str = "") -> Path:
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.exists():
        raise FileNotFoundError(f"{label}: no such file")
    if path.is_dir():
        raise LoadError(f"{label}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise LoadError(f"{label}: the file is empty")
    return path


def torch_load(path: str | os.PathLike, *, trust_pickle: bool = False):
    """``torch.load(path)`` on the CPU, safely: ``weights_only=True`` unless
    ``trust_pickle``. A file the safe loader refuses is a LoadError naming the
    Python object it holds and what to pass; a corrupt one says so."""
    path = _existing_file(path)
    if trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (ImportError, AttributeError) as e:
            raise LoadError(f"{path}: could not unpickle: a class it names cannot be imported "
                            f"here: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
        except Exception as e:  # zip, pickle and EOF errors of a corrupt file
            raise LoadError(f"{path}: could not read as a torch file (corrupt or not a torch.save "
                            f"file): {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the safe unpickler raises several types; each is a bad file
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise LoadError(
                f"{path}: holds a pickled Python object ({found.group(1)}), not only tensors, "
                f"and is not unpickled in full by default; {_TRUST_HINT}"
            ) from e
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = reason.group(1).strip() if reason else f"{type(e).__name__}: {text.strip()[:200]}"
        raise LoadError(f"{path}: could not read as a torch file (corrupt or not a torch.save "
                        f"file): {detail or type(e).__name__}") from e


# -------------------------------------------------------------------- tensors


def _flatten(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        out[prefix or "tensor"] = obj
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
        # text, dates and objects are not tensors (skipped like any other non-tensor
        # entry); a numeric array torch cannot wrap as is is converted, never the file lost
        if not obj.dtype.isnative:
            obj = obj.astype(obj.dtype.newbyteorder("="))
        if obj.dtype.kind == "f" and obj.dtype.itemsize > 8:  # long double
            obj = obj.astype(np.float64)
        out[prefix or "array"] = torch.from_numpy(np.ascontiguousarray(obj))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out)


def load_tensors(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor in a .npy / .npz / .pt / .pth / .bin / .ckpt / .safetensors
    file, by name (nested dicts and modules flattened with dots).

    A file saved with ``torch.save(model)`` needs the full unpickler (and the
    model's class importable): it is refused unless ``trust_pickle=True``.
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise LoadError(f"{path}: unsupported file type {suffix!r}; accepted: {', '.join(SUPPORTED_SUFFIXES)}")
    out: dict[str, torch.Tensor] = {}
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        _flatten(torch_load(path, trust_pickle=trust_pickle), "", out)
        return out
    try:
        if suffix == ".npy":
            _flatten(np.load(path, allow_pickle=False), path.stem, out)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    _flatten(z[k], k, out)
        else:
            from safetensors.torch import load_file

            out.update(load_file(str(path)))
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading .safetensors needs the safetensors package: pip install 'rankbias[safetensors]'"
        ) from e
    except Exception as e:  # numpy and safetensors raise many types for a corrupt file
        raise LoadError(f"{path}: could not read as a {suffix} file: {type(e).__name__}: {e}") from e
    return out


# --------------------------------------------------------------------- models


def _did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def build_arch(arch: str) -> nn.Module:
    """A model with random weights from an architecture name: a torchvision
    model (``resnet18`` or ``torchvision:resnet18``) or ``package.module:Class``
    (constructed without arguments)."""
    if not isinstance(arch, str) or not arch:
        raise LoadError(f"arch: expected a name such as 'resnet18' or 'pkg.module:Class', got {arch!r}")
    if arch.startswith("torchvision:"):
        arch = arch.split(":", 1)[1]
    if ":" in arch:
        import importlib

        mod_name, cls_name = arch.split(":", 1)
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise LoadError(f"arch {arch!r}: cannot import {cls_name} from {mod_name}: {e}") from e
        try:
            model = cls()
        except TypeError as e:
            raise LoadError(f"arch {arch!r}: {cls_name}() cannot be built without arguments: {e}") from e
        if not isinstance(model, nn.Module):
            raise LoadError(f"arch {arch!r}: {cls_name}() is a {type(model).__name__}, not an nn.Module")
        return model
    import torchvision

    names = torchvision.models.list_models()
    if arch not in names:
        raise LoadError(
            f"unknown torchvision model {arch!r}{_did_you_mean(arch, names)}; accepted: any of "
            f"torchvision.models.list_models() ({len(names)} names), or 'package.module:Class'"
        )
    return torchvision.models.get_model(arch, weights=None)


_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "ema")


def _unwrap_checkpoint(obj, source: str):
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in _CHECKPOINT_KEYS:
            if key in obj and isinstance(obj[key], nn.Module | Mapping):
                return _unwrap_checkpoint(obj[key], source)
    raise LoadError(
        f"{source}: cannot read a model from a {type(obj).__name__}: expected a module saved with "
        "torch.save(model), a state_dict (name -> tensor), or a checkpoint dict holding one "
        f"under one of the keys {list(_CHECKPOINT_KEYS)}"
    )


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shape = [k for k in own if k in state and own[k].shape != state[k].shape]
        raise LoadError(
            f"{source} does not fit the architecture {type(model).__name__}: "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(shape)} shape mismatch(es) {shape[:5]}"
        ) from e
    return model


def load_model(
    spec: str | os.PathLike,
    *,
    arch: str | None = None,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
) -> nn.Module:
    """A model from a spec, as the CLI's ``analyze MODEL`` reads it.

    ``spec``: ``torchvision:NAME`` (random weights, or the state_dict file
    ``weights``); a state_dict / checkpoint file together with ``arch`` (see
    :func:`build_arch`); or a file saved with ``torch.save(model)``, which needs
    ``trust_pickle=True`` (it is unpickled in full: only for files you trust).
    """
    spec = str(spec)
    if spec.startswith("torchvision:"):
        model = build_arch(spec)
        if weights is not None:
            wpath = _existing_file(weights, "--weights")
            state = _unwrap_checkpoint(torch_load(wpath, trust_pickle=trust_pickle), str(wpath))
            if isinstance(state, nn.Module):
                state = state.state_dict()
            _load_state(model, state, str(wpath))
        return model
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"model {spec!r}: no such file; MODEL is 'torchvision:NAME', a state_dict file with "
            "--arch NAME, or a file saved with torch.save(model) (with --trust-pickle)"
        )
    if weights is not None:
        raise LoadError("--weights goes with a torchvision:NAME model; for a file, pass the file itself")
    if arch is not None:
        build_arch(arch)  # a wrong --arch is reported before the file is read
    obj = _unwrap_checkpoint(torch_load(path, trust_pickle=trust_pickle), str(path))
    if isinstance(obj, nn.Module):
        return obj
    if arch is None:
        raise LoadError(
            f"{path} holds a state_dict ({len(obj)} tensors), not a model: name its architecture "
            "with --arch (a torchvision name such as resnet18, or package.module:Class)"
        )
    return _load_state(build_arch(arch), obj, str(path))


# --------------------------------------------------------------------- inputs


def load_inputs(
    spec: str,
    *,
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    train: bool = False,
    seed: int = 0,
    trust_pickle: bool = False,
) -> torch.Tensor:
    """Input tensors (N, ...) from a name: a dataset of
    :func:`rankbias.data.images.load_image_dataset` (digits, mnist,
    fashion-mnist, cifar10; the test split unless ``train``), ``random:CxHxW``
    (standard normal inputs of that shape, ``limit`` of them, 64 by default,
    seeded), or a .pt/.npy file holding a tensor. ``limit`` of a dataset is a seeded,
    stratified random sample (dataset files are often sorted by class); of a file, its
    first ``limit`` rows."""
    from rankbias.data.images import _ALIASES, DATASETS, load_image_dataset

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise LoadError(f"limit must be a positive int, got {limit!r}")
    if spec.startswith("random:"):
        try:
            shape = tuple(int(v) for v in spec.split(":", 1)[1].lower().split("x"))
            if not shape or min(shape) < 1:
                raise ValueError
        except ValueError as e:
            raise LoadError(f"data {spec!r}: expected random:DIMS such as random:3x32x32") from e
        g = torch.Generator().manual_seed(seed)
        return torch.randn((limit or 64, *shape), generator=g)
    key = _ALIASES.get(spec.lower(), spec.lower())
    if key in DATASETS:
        data = load_image_dataset(key, train=train, root=root)
        return data.subset(limit=limit, seed=seed).images if limit is not None else data.images
    path = Path(spec)
    if path.suffix.lower() in (".pt", ".pth", ".npy") and path.exists():
        _existing_file(path, "data")
        if path.suffix.lower() == ".npy":
            try:
                x = torch.from_numpy(np.load(path, allow_pickle=False))
            except ValueError as e:
                raise LoadError(f"data {path}: could not read as a .npy array: {e}") from e
        else:
            x = torch_load(path, trust_pickle=trust_pickle)
        if not isinstance(x, torch.Tensor):
            raise LoadError(f"data {path}: expected a tensor (N, ...), got {type(x).__name__}")
        return x[:limit] if limit is not None else x
    raise LoadError(
        f"unknown data {spec!r}{_did_you_mean(key, DATASETS)}; accepted: a dataset "
        f"({', '.join(DATASETS)}), random:CxHxW, or a .pt/.npy file holding an input tensor"
    )
