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
decoded JPEG folders (and the extracted tar) are cached under ``$RANKBIAS_CACHE``
(default ``~/.cache/rankbias``), never in the data root, so the second load is fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from rankbias.errors import InvalidParameterError, LoadError
from rankbias.framework.paths import cache_dir, data_root

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "ImageData",
    "data_root",
    "extract_patches",
    "load_image_dataset",
    "background_pixel_noise",
    "noisy_canvas",
    "stratified_sample",
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

    def subset(
        self, classes: list[int] | None = None, limit: int | None = None, seed: int = 0
    ) -> ImageData:
        """Keep only ``classes`` (relabelled 0..k-1 in the given order), then a sample of ``limit``.

        The sample is random (``seed``) and stratified: every class gets ``limit // k`` or
        one more image (a class with fewer images gives all it has, the rest is spread over
        the others), in a shuffled order. Never the first ``limit``: dataset files are often
        sorted by class (the CIFAR-10 JPEG folders are), and those would be one class.
        """
        images, labels, names = self.images, self.labels, self.classes
        if classes is not None:
            bad = [c for c in classes if not 0 <= c < len(self.classes)]
            if bad:
                raise ValueError(f"classes {bad} not in {self.name} (0..{len(self.classes) - 1})")
            if len(set(classes)) != len(classes):
                raise ValueError(f"classes must be distinct, got {classes}")
            if not classes:
                raise ValueError(f"classes must be a non-empty list of class indices of {self.name}")
            wanted = torch.tensor(classes, dtype=torch.long)
            keep = torch.isin(labels, wanted)
            images, old = images[keep], labels[keep]
            remap = torch.full((len(self.classes),), -1, dtype=torch.long)
            remap[wanted] = torch.arange(len(classes))
            labels = remap[old]
            names = [self.classes[c] for c in classes]
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be an int >= 1 or None, got {limit}")
            idx = stratified_sample(labels, limit, seed)
            images, labels = images[idx], labels[idx]
        return ImageData(images, labels, names, self.name)


def stratified_sample(labels: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded random sample of ``min(limit, N)`` labels, as balanced over the
    classes present as their sizes allow (counts differ by at most one otherwise), shuffled."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be an int >= 0, got {limit!r}")
    g = torch.Generator().manual_seed(seed)
    present = torch.unique(labels)
    pools = [torch.nonzero(labels == c).flatten() for c in present.tolist()]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    want = min(limit, len(labels))
    take = [0] * len(pools)
    # water-filling: hand out one image per class in turn (random class order), skipping
    # the classes that have run out
    order = torch.randperm(len(pools), generator=g).tolist()
    left = want
    while left:
        for i in order:
            if left and take[i] < len(pools[i]):
                take[i] += 1
                left -= 1
    idx = torch.cat([p[:t] for p, t in zip(pools, take, strict=True)])
    return idx[torch.randperm(len(idx), generator=g)]




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
        raise InvalidParameterError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    root_p = data_root(root)
    if key == "digits":
        return _digits(train)
    from rankbias.data.packed import is_packed, load_packed

    if is_packed(root_p):  # a folder written by `rankbias prepare-data` (docs/gpu.md)
        return load_packed(root_p, key, train)
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

    batches = root / "cifar-10-batches-py"
    if batches.exists() or download:
        try:
            ds = datasets.CIFAR10(str(root), train=train, download=download)
        except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
            # torchvision's md5 check, or unpickling a batch that passed it, failed
            raise LoadError(
                f"dataset 'cifar10': {batches.resolve()} is incomplete or corrupt "
                f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); accepted: torchvision's "
                "CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta): replace "
                "the folder with a fresh copy, or load with download=True where there is internet"
            ) from e
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).to(torch.float32).div_(255)
        return ImageData(x.contiguous(), torch.tensor(ds.targets), list(ds.classes), "cifar10")
    split = "train" if train else "test"
    # keyed by the data root too: two roots must never share a decoded cache
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    cache = cache_dir() / f"cifar10-jpeg-{split}-{tag}.pt"
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
        # one extraction per tar (path, size, mtime), completed or not there at all
        st = tar.stat()
        ttag = hashlib.sha256(f"{tar.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        dest = cache_dir() / f"cifar10-jpeg-tar-{ttag}"
        folder = dest / "cifar10-jpeg" / split
        if not dest.exists():
            print(f"rankbias: extracting {tar} into {dest} (once; about 240 MB; "
                  "set $RANKBIAS_CACHE to choose where)", file=sys.stderr)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp_dir = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
            try:
                with tarfile.open(tar) as tf:
                    tf.extractall(tmp_dir, filter="data")
                os.replace(tmp_dir, dest)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
        if not folder.exists():
            raise _not_found("cifar10", root, f"cifar10-jpeg/{split}/ inside cifar10-jpeg.tar")
    ds = datasets.ImageFolder(str(folder))
    from torchvision.io import ImageReadMode, decode_image, read_file

    imgs = torch.stack([decode_image(read_file(p), mode=ImageReadMode.RGB) for p, _ in ds.samples])
    labels = torch.tensor(ds.targets, dtype=torch.long)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"images": imgs, "labels": labels, "classes": ds.classes}, tmp)
    os.replace(tmp, cache)
    return ImageData(imgs.float().div_(255), labels, list(ds.classes), "cifar10")


# ----------------------------------------------------------- noisy canvases, patches


def noisy_canvas(
    images: torch.Tensor,
    canvas: int | tuple[int, int],
    sigmas,
    *,
    position: str = "center",
    noise_region: str = "background",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place images (N, C, h, w) on a larger canvas whose background is Gaussian noise.

    Returns ``(noisy, clean)``: ``noisy`` (S, N, C, H, W) for the S noise standard
    deviations in ``sigmas`` and ``clean`` (N, C, H, W) with a zero background.
    ``position``: ``"center"`` or ``"random"`` (a uniform offset per image).
    ``noise_region``: ``"background"`` (noise outside the image only: paper 1's
    canvas noise model, docs/paper1.md) or ``"all"`` (also over the image). The noise
    directions are drawn once and scaled by each sigma (common random numbers across
    noise levels).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, h, w); got shape {tuple(images.shape)}")
    H, W = (canvas, canvas) if isinstance(canvas, int) else tuple(canvas)
    N, C, h, w = images.shape
    if H < h or W < w:
        raise ValueError(f"canvas {H}x{W} is smaller than the images ({h}x{w})")
    if position not in ("center", "random"):
        raise ValueError(f"position must be 'center' or 'random', got {position!r}")
    if noise_region not in ("background", "all"):
        raise ValueError(f"noise_region must be 'background' or 'all', got {noise_region!r}")
    sig = _check_sigmas(sigmas, images.dtype)
    if position == "center":
        top = torch.full((N,), (H - h) // 2)
        left = torch.full((N,), (W - w) // 2)
    else:
        top = torch.randint(0, H - h + 1, (N,), generator=generator)
        left = torch.randint(0, W - w + 1, (N,), generator=generator)
    rows = top[:, None] + torch.arange(h)  # (N, h)
    cols = left[:, None] + torch.arange(w)  # (N, w)
    clean = images.new_zeros(N, C, H, W)
    n_idx = torch.arange(N)[:, None, None]
    clean.permute(0, 2, 3, 1)[n_idx, rows[:, :, None], cols[:, None, :]] = images.permute(0, 2, 3, 1)
    xi = torch.randn(N, C, H, W, generator=generator, dtype=images.dtype)
    if noise_region == "background":
        inside = torch.zeros(N, H, W, dtype=torch.bool)
        inside[n_idx, rows[:, :, None], cols[:, None, :]] = True
        xi = xi.masked_fill(inside[:, None], 0.0)
    return clean + sig.to(images.device)[:, None, None, None, None] * xi.to(images.device), clean


def background_pixel_noise(
    images: torch.Tensor,
    sigmas,
    *,
    threshold: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper 1's second noise model: Gaussian noise on each image's own background pixels.

    No canvas: a pixel is background when every channel is ``<= threshold`` (MNIST's
    and Fashion-MNIST's zero pixels at the default 0); those pixels get
    ``sigma * xi``, xi ~ N(0, 1), the object's pixels stay as they are. Returns
    ``(noisy, clean)``, ``noisy`` (S, N, C, H, W) for the S values in ``sigmas`` and
    ``clean`` = ``images``. The noise is drawn once and scaled by each sigma (common
    random numbers across noise levels, as in :func:`noisy_canvas`).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    sig = _check_sigmas(sigmas, images.dtype)
    background = (images <= threshold).all(dim=1, keepdim=True)  # (N, 1, H, W)
    if not bool(background.any()):
        raise ValueError(
            f"no pixel of these images is background (every channel <= {threshold}); "
            "use noise_model='canvas' for images without a plain background (CIFAR-10)"
        )
    xi = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    xi = xi * background
    return images + sig.to(images.device)[:, None, None, None, None] * xi, images


def _check_sigmas(sigmas, dtype: torch.dtype) -> torch.Tensor:
    sig = torch.atleast_1d(torch.as_tensor(sigmas, dtype=dtype))
    if sig.numel() == 0 or not bool(torch.isfinite(sig).all()) or bool((sig < 0).any()):
        raise ValueError(f"sigmas must be finite values >= 0, got {sigmas!r}")
    return sig


def extract_patches(images: torch.Tensor, k: int, stride: int | None = None) -> torch.Tensor:
    """k x k patches of images (..., C, H, W) at ``stride`` (default k: non-overlapping),
    flattened channel-major as a conv weight reads them: (..., P, C k k)."""
    stride = k if stride is None else stride
    if k < 1 or stride < 1:
        raise ValueError(f"patch size and stride must be >= 1, got k={k}, stride={stride}")
    *lead, C, H, W = images.shape
    if k > H or k > W:
        raise ValueError(f"patch size {k} exceeds the image size {H}x{W}")
    x = images.reshape(-1, C, H, W)
    p = torch.nn.functional.unfold(x, kernel_size=k, stride=stride)  # (B, C k k, P)
    return p.transpose(1, 2).reshape(*lead, p.shape[-1], C * k * k)
