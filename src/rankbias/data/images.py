"""Real image datasets by name, from a data root, as in-memory tensors.

=============== ================================================================
``digits``      scikit-learn's bundled 8x8 handwritten digits (1,797 images),
                always present; a fixed stratified split, 1/3 held out.
``mnist``       torchvision ``MNIST`` under ROOT/MNIST (28x28 grey).
``fashion-mnist`` torchvision ``FashionMNIST`` under ROOT/FashionMNIST.
``cifar10``     torchvision ``CIFAR10`` pickles under ROOT/cifar-10-batches-py;
                otherwise the JPEG ImageFolder copy ROOT/cifar10-jpeg/{train,test}
                or the tar ROOT/cifar10-jpeg.tar (unpacked once into the cache).
=============== ================================================================

The data root is the ``root`` argument, else ``$RANKBIAS_DATA``, else
``./data``. With ``download=True`` torchvision fetches what is missing (for
users with internet); otherwise a missing dataset is a
:class:`DatasetNotFoundError` that says where it was looked for and how to get it.

Images come back as float32 tensors (N, C, H, W) in [0, 1] and int64 labels;
decoded JPEG folders are cached as a .pt file next to the data (or under
``$RANKBIAS_CACHE``) so the second load is fast.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "ImageData",
    "data_root",
    "load_image_dataset",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not under the data root (and was not downloaded)."""


@dataclasses.dataclass
class ImageData:
    images: torch.Tensor
    """(N, C, H, W) float32 in [0, 1]."""
    labels: torch.Tensor
    """(N,) int64."""
    classes: list[str]
    """Class names, indexed by label."""
    name: str
    """Dataset name."""

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, classes: list[int] | None = None, limit: int | None = None) -> ImageData:
        """Keep only ``classes`` (relabelled 0..k-1 in the given order), then the first ``limit``."""
        images, labels, names = self.images, self.labels, self.classes
        if classes is not None:
            bad = [c for c in classes if not 0 <= c < len(self.classes)]
            if bad:
                raise ValueError(f"classes {bad} not in {self.name} (0..{len(self.classes) - 1})")
            keep = torch.isin(labels, torch.tensor(classes))
            images, old = images[keep], labels[keep]
            remap = torch.full((len(self.classes),), -1, dtype=torch.long)
            remap[torch.tensor(classes)] = torch.arange(len(classes))
            labels = remap[old]
            names = [self.classes[c] for c in classes]
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return ImageData(images, labels, names, self.name)


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root if root is not None else os.environ.get("RANKBIAS_DATA", "data"))


def _cache_dir(root: Path) -> Path:
    env = os.environ.get("RANKBIAS_CACHE")
    if env:
        return Path(env)
    return root if os.access(root, os.W_OK) else Path.home() / ".cache" / "rankbias"


def _not_found(name: str, root: Path, expected: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"dataset {name!r} not found: looked for {expected} under data root {root.resolve()} "
        f"(set by the data_root/--data-root setting or $RANKBIAS_DATA). Get it with "
        f"download=True (--download) where there is internet, or copy torchvision's layout there."
    )


def load_image_dataset(
    name: str,
    train: bool = True,
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> ImageData:
    """The train or test split of dataset ``name`` (see the module docstring)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    root_p = data_root(root)
    if key == "digits":
        return _digits(train)
    if key in ("mnist", "fashion-mnist"):
        return _torchvision_grey(key, train, root_p, download)
    return _cifar10(train, root_p, download)


def _digits(train: bool) -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=1 / 3, random_state=0, stratify=d.target)
    sel = tr if train else te
    x = torch.from_numpy(d.images[sel].astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target[sel].astype(np.int64))
    return ImageData(x, y, [str(i) for i in range(10)], "digits")


def _torchvision_grey(key: str, train: bool, root: Path, download: bool) -> ImageData:
    from torchvision import datasets

    cls = datasets.MNIST if key == "mnist" else datasets.FashionMNIST
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as e:
        raise _not_found(key, root, f"{cls.__name__}/raw/*-ubyte") from e
    x = ds.data.to(torch.float32).div_(255).unsqueeze(1)
    return ImageData(x, ds.targets.to(torch.long), list(ds.classes), key)


def _cifar10(train: bool, root: Path, download: bool) -> ImageData:
    from torchvision import datasets

    if (root / "cifar-10-batches-py").exists() or download:
        ds = datasets.CIFAR10(str(root), train=train, download=download)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).to(torch.float32).div_(255)
        return ImageData(x.contiguous(), torch.tensor(ds.targets), list(ds.classes), "cifar10")
    split = "train" if train else "test"
    cache = _cache_dir(root) / f"cifar10-jpeg-{split}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return ImageData(blob["images"].float().div_(255), blob["labels"], blob["classes"], "cifar10")
    folder = root / "cifar10-jpeg" / split
    if not folder.exists():
        tar = root / "cifar10-jpeg.tar"
        if not tar.exists():
            raise _not_found(
                "cifar10", root, "cifar-10-batches-py/, cifar10-jpeg/{train,test}/ or cifar10-jpeg.tar"
            )
        folder = _cache_dir(root) / "cifar10-jpeg" / split
        if not folder.exists():
            with tarfile.open(tar) as tf:
                tf.extractall(_cache_dir(root), filter="data")
    ds = datasets.ImageFolder(str(folder))
    from torchvision.io import ImageReadMode, decode_image, read_file

    imgs = torch.stack([decode_image(read_file(p), mode=ImageReadMode.RGB) for p, _ in ds.samples])
    labels = torch.tensor(ds.targets, dtype=torch.long)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"images": imgs, "labels": labels, "classes": ds.classes}, tmp)
    os.replace(tmp, cache)
    return ImageData(imgs.float().div_(255), labels, list(ds.classes), "cifar10")
