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
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rankbias.errors import LoadError, MissingDependency, optional_import

__all__ = [
    "MODEL_SPECS",
    "SUPPORTED_SUFFIXES",
    "StoredTensor",
    "build_arch",
    "is_safetensors_checkpoint",
    "load_inputs",
    "load_model",
    "load_tensors",
    "read_stored",
    "safetensors_index",
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
    file, by name (nested dicts and modules flattened with dots), or of a sharded
    safetensors checkpoint (see :func:`safetensors_index`).

    A file saved with ``torch.save(model)`` needs the full unpickler (and the
    model's class importable): it is refused unless ``trust_pickle=True``.
    """
    if Path(path).is_dir() or Path(path).name.lower().endswith(SAFETENSORS_INDEX):
        return read_stored(safetensors_index(path))
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise LoadError(
            f"{path}: unsupported file type {suffix!r}; accepted: {', '.join(SUPPORTED_SUFFIXES)}, "
            f"a *{SAFETENSORS_INDEX} file or a directory holding a safetensors checkpoint"
        )
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
            out.update(_safetensors("safetensors.torch").load_file(str(path)))
    except MissingDependency:  # pragma: no cover - depends on the environment
        raise
    except Exception as e:  # numpy and safetensors raise many types for a corrupt file
        raise LoadError(f"{path}: could not read as a {suffix} file: {type(e).__name__}: {e}") from e
    return out


# ------------------------------------------------------ safetensors, streamed

SAFETENSORS_INDEX = ".safetensors.index.json"


@dataclass(frozen=True)
class StoredTensor:
    """A tensor of a safetensors checkpoint as its file's header states it (no value read)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors' code: "BF16", "F32", ...
    file: Path


def is_safetensors_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a safetensors checkpoint: a ``.safetensors`` file, a
    ``*.safetensors.index.json`` index, or a directory (which must then hold one)."""
    p = Path(path)
    name = p.name.lower()
    return p.is_dir() or name.endswith(SAFETENSORS_INDEX) or name.endswith(".safetensors")


def _checkpoint_files(path: Path) -> tuple[list[Path], dict[Path, list[str]] | None]:
    """The files of a checkpoint, and the names the index assigns to each (None: no index)."""
    if path.is_dir():
        indexes = sorted(path.glob(f"*{SAFETENSORS_INDEX}"))
        files = sorted(path.glob("*.safetensors"))
        if len(indexes) == 1:
            return _read_index(indexes[0])
        if len(indexes) > 1:
            raise LoadError(f"{path}: holds {len(indexes)} indexes ({', '.join(p.name for p in indexes)}); "
                            "pass the one to read")
        if len(files) == 1:
            return files, None
        what = f"{len(files)} .safetensors files and no index" if files else "no .safetensors file"
        raise LoadError(f"{path}: is a directory holding {what}; accepted: one with a model.safetensors or "
                        f"a *{SAFETENSORS_INDEX} with its shards, or the path of one file")
    if path.name.lower().endswith(SAFETENSORS_INDEX):
        return _read_index(_existing_file(path))
    return [_existing_file(path)], None


def _read_index(index: Path) -> tuple[list[Path], dict[Path, list[str]]]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not a mapping name -> shard file")
    except (ValueError, KeyError, TypeError) as e:
        raise LoadError(f"{index}: not a safetensors index (JSON with a weight_map name -> shard "
                        f"file): {type(e).__name__}: {e}") from e
    by_file: dict[Path, list[str]] = {}
    for name, shard in weight_map.items():
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise LoadError(f"{index}: shard {shard!r} of {name!r} is not a file beside the index")
        by_file.setdefault(index.parent / shard, []).append(name)
    for file in by_file:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such file (a shard named by {index})")
    return sorted(by_file), by_file


def _safe_open(file: Path):
    safe_open = _safetensors("safetensors").safe_open
    try:
        return safe_open(str(file), framework="pt")
    except Exception as e:  # SafetensorError, OSError: a corrupt or truncated file
        raise LoadError(f"{file}: could not read as a .safetensors file: {type(e).__name__}: {e}") from e


def safetensors_index(path: str | os.PathLike) -> list[StoredTensor]:
    """Every tensor of a safetensors checkpoint, from the headers alone (no value is read).

    Parameters
    ----------
    path : str or PathLike
        A ``.safetensors`` file; a Hugging Face ``*.safetensors.index.json``
        (its ``weight_map`` names each tensor's shard, beside the index); or a
        directory holding one index, or a single ``.safetensors`` file.

    Returns
    -------
    list of StoredTensor
        Shard by shard (in file-name order), each in its header's name order
        (that of ``safetensors.torch.load_file``).

    Raises
    ------
    LoadError
        A corrupt file or index, a tensor the index names but its shard lacks, a
        name held by two shards, a directory without a checkpoint.
    FileNotFoundError
        A missing file or shard.
    """
    files, listed = _checkpoint_files(Path(path))
    entries: list[StoredTensor] = []
    where: dict[str, Path] = {}
    for file in files:
        with _safe_open(file) as f:
            names = list(f.keys())
            shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in names}
        missing = sorted(set(listed[file]) - set(names)) if listed else []
        if missing:
            raise LoadError(f"{file}: lacks {len(missing)} tensor(s) its index assigns to it, e.g. "
                            f"{missing[:3]}: the index and its shards disagree")
        for k in names:
            if k in where:
                raise LoadError(f"tensor {k!r} is stored twice: in {where[k]} and in {file}")
            where[k] = file
            entries.append(StoredTensor(k, *shapes[k], file))
    return entries


def read_stored(entries: Sequence[StoredTensor]) -> dict[str, torch.Tensor]:
    """The values of ``entries``, by name: memory-mapped from their files (each opened
    once per call), so they occupy memory only while the returned tensors live."""
    out: dict[str, torch.Tensor] = {}
    for file, group in itertools.groupby(entries, key=lambda e: e.file):
        with _safe_open(file) as f:
            for e in group:
                try:
                    out[e.name] = f.get_tensor(e.name)
                except Exception as err:  # an unsupported dtype, a truncated file
                    raise LoadError(f"{file}: could not read tensor {e.name!r} ({e.dtype}, "
                                    f"{list(e.shape)}): {type(err).__name__}: {err}") from err
    return out


# --------------------------------------------------------------------- models


def _did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


MODEL_SPECS = ("torchvision:NAME", "timm:NAME", "hf:NAME_OR_DIR")
_MODEL_ACCEPTED = (
    "torchvision:NAME, timm:NAME (random weights, or --weights FILE), hf:NAME_OR_DIR (a Hugging "
    "Face model directory with config.json and *.safetensors, or a hub name), a state_dict file "
    "with --arch NAME, or a file saved with torch.save(model) (with --trust-pickle)"
)


def build_arch(arch: str) -> nn.Module:
    """A model with random weights from an architecture name: a torchvision
    model (``resnet18`` or ``torchvision:resnet18``), a timm model
    (``timm:resnet18``, built with ``pretrained=False``: nothing is downloaded)
    or ``package.module:Class`` (constructed without arguments)."""
    if not isinstance(arch, str) or not arch:
        raise LoadError(f"arch: expected a name such as 'resnet18' or 'pkg.module:Class', got {arch!r}")
    if arch.startswith("torchvision:"):
        arch = arch.split(":", 1)[1]
    if arch.startswith("timm:"):
        return _build_timm(arch.split(":", 1)[1])
    if arch.startswith("hf:"):
        raise LoadError(f"arch {arch!r}: a Hugging Face model loads its own weights: pass it as the "
                        "model (MODEL hf:NAME_OR_DIR), not as --arch")
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
            f"torchvision.models.list_models() ({len(names)} names), timm:NAME, or 'package.module:Class'"
        )
    return torchvision.models.get_model(arch, weights=None)


def _safetensors(module: str):
    return optional_import(module, feature="reading .safetensors", extra="safetensors", package="safetensors")


def _import_optional(module: str, extra: str):
    return optional_import(module, feature=f"{extra}:NAME models", extra=extra)


def _build_timm(name: str) -> nn.Module:
    timm = _import_optional("timm", "timm")
    if not name or not timm.is_model(name):
        names = timm.list_models()
        raise LoadError(f"unknown timm model {name!r}{_did_you_mean(name, names)}; accepted: any of "
                        f"timm.list_models() ({len(names)} names)")
    return timm.create_model(name, pretrained=False)


def _hf_model_class(transformers, config):
    """The class the checkpoint was saved from (``config.architectures``: keeps a causal
    LM's ``lm_head``), else ``AutoModel`` (the base model)."""
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def _load_hf(ref: str) -> nn.Module:
    """A Hugging Face model from a local directory (config.json + *.safetensors) or a hub name."""
    path = Path(ref).expanduser()
    local = path.exists()
    if local:
        if not path.is_dir():
            raise LoadError(f"hf:{ref}: is a file; expected a Hugging Face model directory "
                            "(config.json and *.safetensors) or a hub name")
        if not (path / "config.json").is_file():
            raise LoadError(f"hf:{ref}: no config.json in the directory; a Hugging Face model "
                            "directory holds config.json and *.safetensors (save_pretrained)")
        if not any(path.glob("*.safetensors")) and not any(path.glob(f"*{SAFETENSORS_INDEX}")):
            raise LoadError(f"hf:{ref}: no *.safetensors weights in the directory (pickled "
                            "pytorch_model.bin files are not read); save with safe_serialization=True")
    elif not ref or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise FileNotFoundError(f"model hf:{ref}: no such directory (and not a hub name 'org/name')")
    transformers = _import_optional("transformers", "hf")
    src = str(path) if local else ref
    try:
        config = transformers.AutoConfig.from_pretrained(src, local_files_only=local)
        cls = _hf_model_class(transformers, config)
        model = cls.from_pretrained(src, config=config, use_safetensors=True, local_files_only=local)
    except (OSError, ValueError, KeyError, ImportError) as e:
        where = "directory" if local else "hub name (needs the internet, or the model in the local cache)"
        raise LoadError(f"hf:{ref}: could not load the Hugging Face {where}: {type(e).__name__}: "
                        f"{' '.join(str(e).split())[:300]}") from e
    return model.eval()


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

    Parameters
    ----------
    spec : str or PathLike
        ``torchvision:NAME`` or ``timm:NAME`` (random weights, or the state_dict
        file ``weights``; nothing is downloaded); ``hf:NAME_OR_DIR`` (a Hugging
        Face directory with config.json and *.safetensors, loaded with
        ``from_pretrained`` as the class in ``config.architectures``, else
        ``AutoModel``; a hub name downloads where there is internet); a
        state_dict / checkpoint file together with ``arch`` (see
        :func:`build_arch`); or a file saved with ``torch.save(model)``, which
        needs ``trust_pickle=True`` (it is unpickled in full: only for files you trust).
    arch, weights, trust_pickle
        As above.

    Raises
    ------
    LoadError
        An unknown prefix or name (with what is accepted), a file that does not
        fit, ``arch``/``weights`` given where they do not apply.
    FileNotFoundError
        A missing file or directory.
    """
    spec = str(spec)
    prefix, sep, ref = spec.partition(":")
    if sep and prefix in ("torchvision", "timm", "hf") and not Path(spec).exists():
        if arch is not None:
            raise LoadError(f"--arch goes with a state_dict file; {prefix}:NAME names its architecture")
        if prefix == "hf":
            if weights is not None:
                raise LoadError("--weights goes with torchvision:NAME or timm:NAME; an hf: model "
                                "directory holds its own weights")
            return _load_hf(ref)
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
        if sep and len(prefix) > 1 and re.fullmatch(r"[A-Za-z][\w.-]*", prefix):
            raise LoadError(f"model {spec!r}: unknown prefix {prefix + ':'!r} and no such file; "
                            f"accepted: {_MODEL_ACCEPTED}")
        raise FileNotFoundError(f"model {spec!r}: no such file; MODEL is {_MODEL_ACCEPTED}")
    if weights is not None:
        raise LoadError("--weights goes with a torchvision:NAME or timm:NAME model; for a file, "
                        "pass the file itself")
    if arch is not None:
        build_arch(arch)  # a wrong --arch is reported before the file is read
    obj = _unwrap_checkpoint(torch_load(path, trust_pickle=trust_pickle), str(path))
    if isinstance(obj, nn.Module):
        return obj
    if arch is None:
        raise LoadError(
            f"{path} holds a state_dict ({len(obj)} tensors), not a model: name its architecture "
            "with --arch (a torchvision name such as resnet18, timm:NAME, or package.module:Class)"
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
