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
``./data`` (under the repository for ``make demo``; git ignores it). With
``download=True`` torchvision fetches what is missing (for users with internet);
for MNIST and Fashion-MNIST the mirrors are first probed with a
:data:`PROBE_TIMEOUT_S` timeout and every read has a :data:`READ_TIMEOUT_S` one, so
that without internet the attempt fails in seconds, never hangs. A missing dataset
is a :class:`DatasetNotFoundError` that says where it was looked for, why it could
not be downloaded, and how to get it. :func:`choose_mnist_or_digits` is paper 1's
``dataset="auto"``: MNIST where it is (or can be downloaded), else the digits, with
the command that gets MNIST.

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
import socket
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from rankbias.data.image_data import ImageData, stratified_sample
from rankbias.errors import InvalidParameterError, LoadError
from rankbias.framework.paths import cache_dir, data_root
from rankbias.framework.process import temporarily

__all__ = [
    "DATASETS",
    "CanvasPosition",
    "DatasetName",
    "NoiseRegion",
    "DatasetChoice",
    "DatasetNotFoundError",
    "ImageData",
    "choose_mnist_or_digits",
    "data_root",
    "extract_patches",
    "load_image_dataset",
    "background_pixel_noise",
    "noisy_canvas",
    "stratified_sample",
]

DatasetName = Literal["digits", "mnist", "fashion-mnist", "cifar10"]
DATASETS: tuple[DatasetName, ...] = get_args(DatasetName)
CanvasPosition = Literal["center", "random"]
NoiseRegion = Literal["background", "all"]
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}

PROBE_TIMEOUT_S = 5.0
"""Seconds a download mirror has to answer before it counts as unreachable."""
READ_TIMEOUT_S = 30.0
"""Seconds a download may stall (connect or read) before it is abandoned."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not under the data root (and was not downloaded)."""


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
    """The train or test split of dataset ``name`` (see the module docstring).

    Parameters
    ----------
    name : str
        One of :data:`DATASETS` (``digits``, ``mnist``, ``fashion-mnist``,
        ``cifar10``; case-insensitive, with aliases).
    train : bool, default True
        The training split (else the test split).
    root : str or os.PathLike, optional
        The data root (None: ``$RANKBIAS_DATA``, else ``./data``); a folder
        written by ``rankbias prepare-data`` is read as such.
    download : bool, default False
        Let torchvision download a dataset that is missing.

    Returns
    -------
    ImageData
        ``images`` (N, C, H, W) float32 in [0, 1], ``labels`` (N,), ``classes``
        and ``name``.

    Raises
    ------
    InvalidParameterError
        An unknown dataset name.
    DatasetNotFoundError
        The dataset is not under the data root and was not downloaded (a
        ``FileNotFoundError``; the message says how to get it).
    LoadError
        The files under the data root cannot be read.

    Examples
    --------
    >>> from rankbias.papers import load_image_dataset
    >>> digits = load_image_dataset("digits", train=False)  # bundled with scikit-learn
    >>> tuple(digits.images.shape), len(digits.classes)
    ((599, 1, 8, 8), 10)
    """
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


MNIST_DOWNLOAD = "11 MB"
"""What torchvision downloads for MNIST (its four .gz files)."""


@dataclasses.dataclass(frozen=True)
class DatasetChoice:
    """What paper 1's ``dataset="auto"`` resolved to (:func:`choose_mnist_or_digits`)."""

    name: str
    """``"mnist"`` or ``"digits"``."""
    reason: str
    """Why, with the data root."""
    fix: str = ""
    """Empty when MNIST was found; otherwise the command that gets MNIST."""

    @property
    def fallback(self) -> bool:
        """Whether the digits stand in for MNIST."""
        return bool(self.fix)


def choose_mnist_or_digits(root: str | os.PathLike | None = None, download: bool = False) -> DatasetChoice:
    """MNIST if it is under the data root (or, with ``download``, once torchvision has
    downloaded it there), else scikit-learn's digits, with the reason and the fix.

    Parameters
    ----------
    root : data root (None: ``$RANKBIAS_DATA``, else ``./data``).
    download : try torchvision's download where MNIST is missing (fails within
        seconds without internet: :data:`PROBE_TIMEOUT_S`).

    Returns
    -------
    DatasetChoice
        ``fallback`` is True when the digits stand in for MNIST; ``fix`` then names
        the command that puts MNIST at the data root.
    """
    from torchvision import datasets

    from rankbias.data.packed import is_packed

    root_p = data_root(root).resolve()
    if is_packed(root_p) or _grey_present(datasets.MNIST, root_p):
        return DatasetChoice("mnist", f"dataset=auto: MNIST found under {root_p}")
    if download:
        why = _download_grey(datasets.MNIST, root_p)
        if why is None:
            return DatasetChoice("mnist", f"dataset=auto: MNIST downloaded into {root_p}")
        how = f"rerun where there is internet (MNIST, {MNIST_DOWNLOAD}, is downloaded into {root_p})"
    else:
        why = "download is off"
        how = f"add `--set download=true` where there is internet ({MNIST_DOWNLOAD} into {root_p})"
    return DatasetChoice(
        "digits", f"dataset=auto: MNIST not under {root_p} and not downloaded ({why}), so scikit-learn's digits",
        fix=f"`RANKBIAS_DATA=/path/to/datasets make demo` (a folder holding MNIST/raw/*-ubyte, "
            f"torchvision's layout), or {how}",
    )


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
    if download and not _grey_present(cls, root):
        why = _download_grey(cls, root)
        if why is not None:
            raise DatasetNotFoundError(
                f"dataset {key!r} not under data root {root.resolve()} and not downloaded: {why}; "
                f"accepted: torchvision's layout {cls.__name__}/raw/*-ubyte under the data root "
                "(data_root/--data-root or $RANKBIAS_DATA), or download=True with internet")
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError as e:
        raise _not_found(key, root, f"{cls.__name__}/raw/*-ubyte") from e
    x = ds.data.to(torch.float32).div_(255).unsqueeze(1)
    return ImageData(x, ds.targets.to(torch.long), list(ds.classes), key)


def _grey_present(cls, root: Path) -> bool:
    # torchvision's own test (MNIST._check_exists): the four extracted idx files
    raw = root / cls.__name__ / "raw"
    return all((raw / Path(name).stem).is_file() for name, _ in cls.resources)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def _probe(urls: list[str], timeout: float) -> str | None:
    """None when one of ``urls`` answers within ``timeout`` s (any HTTP status), else why none did."""
    import urllib.error
    import urllib.request

    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                return None
        except urllib.error.HTTPError:
            return None  # the server answered; the download itself checks the file
        except (OSError, ValueError) as e:
            errors.append(f"{url}: {_short(e)}")
    return "; ".join(errors) or "no mirror configured"


def _download_grey(cls, root: Path) -> str | None:
    """torchvision's download of ``cls`` into ``root``: None when done, else why not (in
    seconds without internet: the mirrors are probed first, every read has a timeout)."""
    why = _probe([m + cls.resources[0][0] for m in cls.mirrors], PROBE_TIMEOUT_S)
    if why is not None:
        return f"no download mirror reachable within {PROBE_TIMEOUT_S:g} s ({why})"
    try:
        # torchvision opens its URLs without a timeout: a dropped connection would block forever
        with temporarily(socket.getdefaulttimeout, socket.setdefaulttimeout, READ_TIMEOUT_S):
            cls(str(root), train=True, download=True)
    except (RuntimeError, OSError) as e:  # md5 mismatch, HTTP error, timeout, read-only root
        return f"download failed ({_short(e)})"
    return None


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
    sigmas: float | Sequence[float] | torch.Tensor,
    *,
    position: CanvasPosition = "center",
    noise_region: NoiseRegion = "background",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place images (N, C, h, w) on a larger canvas whose background is Gaussian noise.

    The noise directions are drawn once and scaled by each sigma (common random
    numbers across noise levels).

    Parameters
    ----------
    images : torch.Tensor
        (N, C, h, w).
    canvas : int or (int, int)
        The canvas size H x W (a square for an int), at least the images' size.
    sigmas : float, sequence of float or torch.Tensor
        The S noise standard deviations (finite, >= 0).
    position : {"center", "random"}, default "center"
        Where an image sits: centred, or a uniform offset per image.
    noise_region : {"background", "all"}, default "background"
        Noise outside the image only (paper 1's canvas noise model,
        docs/paper1.md) or also over the image.
    generator : torch.Generator, optional
        The source of the noise and of the random positions.

    Returns
    -------
    noisy : torch.Tensor
        (S, N, C, H, W), one slice per sigma.
    clean : torch.Tensor
        (N, C, H, W) with a zero background.

    Raises
    ------
    InvalidParameterError
        ``images`` not 4-D; a canvas smaller than the images; an unknown
        ``position`` or ``noise_region``; a negative or non-finite sigma.

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import noisy_canvas
    >>> noisy, clean = noisy_canvas(torch.ones(2, 1, 4, 4), 8, [0.0, 1.0],
    ...                             generator=torch.Generator().manual_seed(0))
    >>> tuple(noisy.shape), tuple(clean.shape)
    ((2, 2, 1, 8, 8), (2, 1, 8, 8))
    >>> torch.equal(noisy[0], clean), float(clean.sum())  # sigma 0: the clean canvas
    (True, 32.0)
    >>> torch.equal(noisy[1, :, :, 2:6, 2:6], clean[:, :, 2:6, 2:6])  # the image is left alone
    True
    """
    if images.dim() != 4:
        raise InvalidParameterError(f"images must be (N, C, h, w); got shape {tuple(images.shape)}")
    H, W = (canvas, canvas) if isinstance(canvas, int) else tuple(canvas)
    N, C, h, w = images.shape
    if H < h or W < w:
        raise InvalidParameterError(f"canvas {H}x{W} is smaller than the images ({h}x{w})")
    if position not in get_args(CanvasPosition):
        raise InvalidParameterError(f"position must be 'center' or 'random', got {position!r}")
    if noise_region not in get_args(NoiseRegion):
        raise InvalidParameterError(f"noise_region must be 'background' or 'all', got {noise_region!r}")
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
    sigmas: float | Sequence[float] | torch.Tensor,
    *,
    threshold: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper 1's second noise model: Gaussian noise on each image's own background pixels.

    No canvas: a pixel is background when every channel is ``<= threshold`` (MNIST's
    and Fashion-MNIST's zero pixels at the default 0); those pixels get
    ``sigma * xi``, xi ~ N(0, 1), the object's pixels stay as they are. The noise is
    drawn once and scaled by each sigma (common random numbers across noise levels, as
    in :func:`noisy_canvas`).

    Parameters
    ----------
    images : torch.Tensor
        (N, C, H, W).
    sigmas : float, sequence of float or torch.Tensor
        The S noise standard deviations (finite, >= 0).
    threshold : float, default 0.0
        A pixel is background when every channel is ``<= threshold``.
    generator : torch.Generator, optional
        The source of the noise.

    Returns
    -------
    noisy : torch.Tensor
        (S, N, C, H, W), one slice per sigma.
    clean : torch.Tensor
        ``images`` itself.

    Raises
    ------
    InvalidParameterError
        ``images`` not 4-D; a negative or non-finite sigma; no background pixel at
        all (use the canvas noise model for such images, e.g. CIFAR-10).

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import background_pixel_noise
    >>> images = torch.zeros(1, 1, 2, 2)
    >>> images[0, 0, 0, 0] = 1.0  # one object pixel, three background pixels
    >>> noisy, clean = background_pixel_noise(images, [0.0, 0.5],
    ...                                       generator=torch.Generator().manual_seed(0))
    >>> tuple(noisy.shape), torch.equal(noisy[0], clean)
    ((2, 1, 1, 2, 2), True)
    >>> float(noisy[1, 0, 0, 0, 0]), int((noisy[1] != 0).sum())  # the object is left alone
    (1.0, 4)
    """
    if images.dim() != 4:
        raise InvalidParameterError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    sig = _check_sigmas(sigmas, images.dtype)
    background = (images <= threshold).all(dim=1, keepdim=True)  # (N, 1, H, W)
    if not bool(background.any()):
        raise InvalidParameterError(
            f"no pixel of these images is background (every channel <= {threshold}); "
            "use noise_model='canvas' for images without a plain background (CIFAR-10)"
        )
    xi = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    xi = xi * background
    return images + sig.to(images.device)[:, None, None, None, None] * xi, images


def _check_sigmas(sigmas, dtype: torch.dtype) -> torch.Tensor:
    sig = torch.atleast_1d(torch.as_tensor(sigmas, dtype=dtype))
    if sig.numel() == 0 or not bool(torch.isfinite(sig).all()) or bool((sig < 0).any()):
        raise InvalidParameterError(f"sigmas must be finite values >= 0, got {sigmas!r}")
    return sig


def extract_patches(images: torch.Tensor, k: int, stride: int | None = None) -> torch.Tensor:
    """k x k patches of images (..., C, H, W) at ``stride`` (default k: non-overlapping),
    flattened channel-major as a conv weight reads them: (..., P, C k k).

    Parameters
    ----------
    images : torch.Tensor
        (..., C, H, W).
    k : int
        The patch size (>= 1, <= H and W).
    stride : int, optional
        The step between patches (default k).

    Returns
    -------
    torch.Tensor
        (..., P, C k k): P patches per image, row-major over positions.

    Raises
    ------
    InvalidParameterError
        ``k`` or ``stride`` < 1, or ``k`` larger than the image.

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import extract_patches
    >>> images = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> patches = extract_patches(images, 2)
    >>> tuple(patches.shape)
    (1, 4, 4)
    >>> patches[0, 0].tolist()  # the top-left 2 x 2 block
    [0.0, 1.0, 4.0, 5.0]
    """
    stride = k if stride is None else stride
    if k < 1 or stride < 1:
        raise InvalidParameterError(f"patch size and stride must be >= 1, got k={k}, stride={stride}")
    *lead, C, H, W = images.shape
    if k > H or k > W:
        raise InvalidParameterError(f"patch size {k} exceeds the image size {H}x{W}")
    x = images.reshape(-1, C, H, W)
    p = torch.nn.functional.unfold(x, kernel_size=k, stride=stride)  # (B, C k k, P)
    return p.transpose(1, 2).reshape(*lead, p.shape[-1], C * k * k)
