"""Datasets that travel: CIFAR-10 and (part of) MNIST in one folder under 60 MiB.

A GPU machine lent for a few minutes has no data root. :func:`pack` writes,
from the data root, a folder of ``.npz`` parts (each < 16 MiB) and a manifest
``rankbias-packed.json`` (the sha256 of every part), which :func:`load_packed`
reads back exactly.

Sizes decide the format (docs/gpu.md). CIFAR-10 as raw uint8 is 60,000 x 3,072
bytes = 176 MiB, and deflate barely shrinks natural-image pixels, so the
images travel as the JPEG files of the data root's ``cifar10-jpeg`` copy, byte
for byte (52.7 MiB for all 60,000): decoding them gives exactly the pixels
:func:`rankbias.data.images.load_image_dataset` gives. MNIST compresses well
(deflate: ~ 1/6) but all of it (~ 10 MiB) does not fit beside CIFAR-10's 52.7 MiB;
by default the two classes paper 1 uses (0 and 1: 14,780 images, ~ 2 MiB) travel,
as uint8 in compressed parts, with their original labels.

:func:`materialize` writes a packed folder back out in the data root's layout
(``MNIST/raw`` idx files, ``cifar10-jpeg/{train,test}/<class>/*.jpg``), so any
loader that reads a data root works unchanged on the GPU machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rankbias.errors import InvalidParameterError, LoadError, UnsupportedError
from rankbias.framework.gpu_declarations import PLAN_DATASETS
from rankbias.framework.paths import data_root

__all__ = ["MANIFEST", "PART_LIMIT", "TOTAL_LIMIT", "is_packed", "load_packed", "load_packed_uint8",
           "materialize", "pack"]

MANIFEST = "rankbias-packed.json"
PART_LIMIT = 16 * 2**20
"""Every part is smaller than this."""
TOTAL_LIMIT = 60 * 2**20
"""All parts together are smaller than this."""
_FORMAT = 1
_SPLITS = ("train", "test")


def is_packed(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a packed dataset (its manifest)."""
    return (Path(folder) / MANIFEST).is_file()


# ------------------------------------------------------------------ reading sources


def _cifar_jpegs(root: Path, split: str) -> tuple[list[bytes], list[str], list[int], list[str]]:
    """JPEG bytes, file names, labels and class names of ``split``, in ImageFolder's order
    (classes sorted, files sorted within a class), from the folder or the tar."""
    folder = root / "cifar10-jpeg" / split
    items: dict[str, list[tuple[str, bytes]]] = {}
    if folder.is_dir():
        for cdir in sorted(p for p in folder.iterdir() if p.is_dir()):
            items[cdir.name] = [(f.name, f.read_bytes()) for f in sorted(cdir.iterdir())
                                if f.suffix.lower() in (".jpg", ".jpeg")]
    elif (root / "cifar10-jpeg.tar").is_file():
        with tarfile.open(root / "cifar10-jpeg.tar") as tf:
            for m in tf:
                parts = m.name.split("/")
                if m.isfile() and len(parts) == 4 and parts[:2] == ["cifar10-jpeg", split]:
                    items.setdefault(parts[2], []).append((parts[3], tf.extractfile(m).read()))
    elif (root / "cifar-10-batches-py").is_dir():
        raise UnsupportedError(
            f"{root}: only the CIFAR-10 pickles are there; the packed format ships the JPEG copy "
            "(cifar10-jpeg/ or cifar10-jpeg.tar) byte for byte, because the raw pixels (176 MiB, "
            "~160 MiB deflated) do not fit in 60 MiB and re-encoding would change them")
    else:
        raise LoadError(f"CIFAR-10 not found under {root.resolve()}: expected cifar10-jpeg/{split}/ "
                        "or cifar10-jpeg.tar (set --data-root or $RANKBIAS_DATA)")
    classes = sorted(items)
    blobs, names, labels = [], [], []
    for c, cname in enumerate(classes):
        for fname, data in sorted(items[cname]):
            blobs.append(data)
            names.append(fname)
            labels.append(c)
    return blobs, names, labels, classes


def _mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision import datasets

    try:
        ds = datasets.MNIST(str(root), train=split == "train", download=False)
    except RuntimeError as e:
        raise LoadError(f"MNIST not found under {root.resolve()}/MNIST/raw (idx files)") from e
    return ds.data.numpy(), ds.targets.numpy().astype(np.uint8), list(ds.classes)


# ------------------------------------------------------------------------ writing


def _save(out: Path, name: str, compressed: bool, **arrays) -> dict:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    data = buf.getvalue()
    if len(data) >= PART_LIMIT:
        raise UnsupportedError(f"part {name} is {len(data) / 2**20:.1f} MiB (limit {PART_LIMIT / 2**20:.0f})")
    from rankbias.framework.runs import atomic_write_bytes

    atomic_write_bytes(out / name, data)
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _chunks(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive items whose sizes sum to <= limit."""
    out, start, acc = [], 0, 0
    for i, n in enumerate(sizes):
        if acc + n > limit and i > start:
            out.append((start, i))
            start, acc = i, 0
        acc += n
    out.append((start, len(sizes)))
    return out


def pack(
    out: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    datasets: Sequence[str] = PLAN_DATASETS,
    mnist_classes: Sequence[int] | None = (0, 1),
    part_mib: float = 15.0,
) -> dict:
    """Write ``datasets`` from the data ``root`` into ``out`` as parts + manifest.

    ``mnist_classes``: the MNIST classes to include (None: all ten, ~ 10 MiB, which does
    not fit beside CIFAR-10). Refuses (UnsupportedError) when the parts would exceed
    60 MiB in all. Returns the manifest.
    """
    unknown = [d for d in datasets if d not in PLAN_DATASETS]
    if unknown or not datasets:
        raise UnsupportedError(
            f"datasets: {unknown or 'none'} not packable; accepted: {', '.join(PLAN_DATASETS)}"
        )
    if not 0 < part_mib < PART_LIMIT / 2**20:
        raise UnsupportedError(f"part_mib must be in (0, {PART_LIMIT / 2**20:.0f}); got {part_mib}")
    root_p, out_p = data_root(root), Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    limit = int(part_mib * 2**20) - 4096  # room for the npz headers
    manifest: dict = {"format": _FORMAT, "source": str(root_p.resolve()), "datasets": {}}
    for ds in datasets:
        entry: dict = {}
        for split in _SPLITS:
            if ds == "cifar10":
                blobs, names, labels, classes = _cifar_jpegs(root_p, split)
                parts = []
                for k, (a, b) in enumerate(_chunks([len(x) for x in blobs], limit)):
                    sizes = np.array([len(x) for x in blobs[a:b]], np.int64)
                    parts.append(_save(out_p, f"cifar10-{split}-{k:02d}.npz", False,
                                       jpeg=np.frombuffer(b"".join(blobs[a:b]), np.uint8),
                                       offsets=np.concatenate([[0], np.cumsum(sizes)]),
                                       labels=np.array(labels[a:b], np.uint8),
                                       names=np.array(names[a:b], dtype="S")))
                entry[split] = {"n": len(blobs), "parts": parts}
                entry.update(classes=classes, encoding="jpeg", shape=[3, 32, 32])
            elif ds == "mnist":
                images, labels, classes = _mnist(root_p, split)
                keep = (np.ones(len(labels), bool) if mnist_classes is None
                        else np.isin(labels, np.asarray(list(mnist_classes))))
                images, labels = images[keep], labels[keep]
                per = max(1, limit // (images[0].size // 3))  # deflate keeps MNIST under 1/3
                parts = [_save(out_p, f"mnist-{split}-{k:02d}.npz", True, images=images[a:a + per],
                               labels=labels[a:a + per])
                         for k, a in enumerate(range(0, len(labels), per))]
                entry[split] = {"n": int(len(labels)), "parts": parts}
                entry.update(classes=classes, encoding="uint8", shape=[1, 28, 28],
                             classes_included=sorted(int(c) for c in np.unique(labels)))
            else:  # a dataset added to PLAN_DATASETS without a packer here: never pack it as MNIST
                raise UnsupportedError(f"datasets: no packer for {ds!r}; accepted: cifar10, mnist")
        manifest["datasets"][ds] = entry
    total = sum(p["bytes"] for e in manifest["datasets"].values() for s in _SPLITS for p in e[s]["parts"])
    manifest["total_bytes"] = total
    if total >= TOTAL_LIMIT:
        raise UnsupportedError(
            f"the packed parts are {total / 2**20:.1f} MiB, over the {TOTAL_LIMIT / 2**20:.0f} MiB limit; "
            "pack fewer MNIST classes (mnist_classes) or leave a dataset out")
    from rankbias.framework.runs import atomic_write_text

    atomic_write_text(out_p / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


# ------------------------------------------------------------------------ reading


def _manifest(folder: Path) -> dict:
    if not is_packed(folder):
        raise LoadError(f"{folder}: no {MANIFEST} (make one with `rankbias prepare-data --out {folder}`)")
    m = json.loads((folder / MANIFEST).read_text())
    if m.get("format") != _FORMAT:
        raise LoadError(f"{folder}: packed format {m.get('format')!r}; this rankbias reads {_FORMAT}")
    return m


def _parts(folder: Path, name: str, split: str):
    m = _manifest(folder)
    if name not in m["datasets"]:
        raise LoadError(f"{folder}: dataset {name!r} is not packed there (has: {', '.join(m['datasets'])})")
    if split not in _SPLITS:
        raise InvalidParameterError(f"split must be 'train' or 'test'; got {split!r}")
    entry = m["datasets"][name]
    for p in entry[split]["parts"]:
        path = folder / p["file"]
        if not path.is_file():
            raise LoadError(f"{path}: missing part of the packed {name} {split} split")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != p["sha256"]:
            raise LoadError(f"{path}: sha256 differs from the manifest's (corrupt or partial copy)")
        with np.load(io.BytesIO(data)) as z:
            yield entry, {k: z[k] for k in z.files}


def load_packed_uint8(folder: str | os.PathLike, name: str, train: bool = True):
    """``(images uint8 (N, C, H, W), labels int64 (N,), class names)`` of a packed split."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images, labels, entry = [], [], None
    for entry, z in _parts(Path(folder), name, "train" if train else "test"):
        labels.append(torch.from_numpy(z["labels"].astype(np.int64)))
        if entry["encoding"] == "jpeg":
            buf, off = torch.from_numpy(z["jpeg"]), z["offsets"]
            blobs = [buf[off[i]:off[i + 1]] for i in range(len(off) - 1)]
            images.append(torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB)))
        else:
            images.append(torch.from_numpy(z["images"]).unsqueeze(1))
    included = entry.get("classes_included")
    if included is not None and len(included) < len(entry["classes"]):
        # the default pack keeps MNIST 0 and 1 only: never pass that off as the whole dataset
        warnings.warn(f"{folder}: packed {name} holds only classes {included} of "
                      f"{len(entry['classes'])} (rankbias prepare-data --mnist-classes all for all)",
                      stacklevel=2)
    return torch.cat(images), torch.cat(labels), list(entry["classes"])


def load_packed(folder: str | os.PathLike, name: str, train: bool = True):
    """A packed split as :class:`rankbias.data.images.ImageData` (float32 in [0, 1]),
    the pixels :func:`~rankbias.data.images.load_image_dataset` gives for the source."""
    from rankbias.data.image_data import ImageData

    x, y, classes = load_packed_uint8(folder, name, train)
    return ImageData(x.float().div_(255), y, classes, name)


def materialize(folder: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Write a packed folder out in the data-root layout under ``root`` (skipping files
    already there): ``MNIST/raw/*-ubyte`` and ``cifar10-jpeg/{train,test}/<class>/*.jpg``."""
    from rankbias.framework.runs import atomic_write_bytes

    folder, root = Path(folder), Path(root)
    m = _manifest(folder)
    if "mnist" in m["datasets"]:
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for split, stem in (("train", "train"), ("test", "t10k")):
            if (raw / f"{stem}-labels-idx1-ubyte").exists():
                continue
            z = list(_parts(folder, "mnist", split))
            x = np.concatenate([p["images"] for _, p in z])
            y = np.concatenate([p["labels"] for _, p in z])
            # idx format: magic (0x0803 images / 0x0801 labels), then big-endian int32 sizes
            hdr = np.array([0x0803, len(x), 28, 28], ">i4").tobytes()
            # atomic, labels last: the labels file is what marks a split as written
            atomic_write_bytes(raw / f"{stem}-images-idx3-ubyte", hdr + x.astype(np.uint8).tobytes())
            atomic_write_bytes(raw / f"{stem}-labels-idx1-ubyte",
                               np.array([0x0801, len(y)], ">i4").tobytes() + y.astype(np.uint8).tobytes())
    if "cifar10" in m["datasets"]:
        for split in _SPLITS:
            base = root / "cifar10-jpeg" / split
            if base.is_dir():
                continue
            tmp = base.with_name(f".{split}.tmp")
            for entry, z in _parts(folder, "cifar10", split):
                off = z["offsets"]
                for i in range(len(off) - 1):
                    cls, fname = entry["classes"][int(z["labels"][i])], z["names"][i].decode()
                    for part in (cls, fname):  # names come from the folder: no path may escape root
                        if not part or part in (".", "..") or "/" in part or "\\" in part:
                            raise LoadError(f"{folder}: unsafe file or class name {part!r} in the packed data")
                    d = tmp / cls
                    d.mkdir(parents=True, exist_ok=True)
                    (d / fname).write_bytes(z["jpeg"][off[i]:off[i + 1]].tobytes())
            os.replace(tmp, base)
    return root
