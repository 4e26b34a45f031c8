"""The patch data model of Zhang, Gao, Zou & Cao (2025), "Gradient Descent
Robustly Learns the Intrinsic Dimension of Data in Training Convolutional
Neural Networks" (docs/paper1.md, "The model"; a reconstruction from the paper's
abstract and the usual patch models of Cao et al. 2022, not from its full text).

An image x = (x^(1), ..., x^(P)) has P patches in R^d. A dictionary of 2K
orthogonal signal vectors of norm ``signal_norm`` (u_1..u_K for y = +1,
v_1..v_K for y = -1) spans the clean data, which therefore has rank 2K. A
sample draws y uniformly from {+1, -1} and k uniformly from 1..K; one patch
(at a random or a fixed position) holds u_k or v_k, every other patch is
background noise xi ~ N(0, sigma_p^2 I_d) (optionally projected onto the
orthogonal complement of the signal span). sigma_p = 0 gives the clean images.

The generator is batched over noise levels with common random numbers: labels,
signals, positions and the standard-normal noise directions are drawn once per
seed and the noisy images of every sigma_p are ``clean + sigma_p * xi``. Curves
against sigma_p are then smooth in sigma_p, and sigma_p is the only difference
between two columns of a sweep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from rankbias.errors import InvalidParameterError
from rankbias.measures import rank_measures

__all__ = ["PatchData", "SignalPosition", "make_patch_data", "signal_dictionary", "data_rank_measures"]

SignalPosition = Literal["random", "fixed"]


@dataclasses.dataclass
class PatchData:
    """Train and test sets of the patch model, for S noise levels.

    Made by :func:`make_patch_data`; the fields below are its parameters too.

    Parameters
    ----------
    X, X_clean, y, X_test, X_test_clean, y_test, signals, sigmas, signal_index, signal_patch : torch.Tensor
        The fields, documented under each one below.

    Attributes
    ----------
    K : int
        Signals per class.
    clean_rank : int
        The intrinsic rank of the data, 2K.

    Raises
    ------
    Nothing
        A plain container: :func:`make_patch_data` checks the values.

    Examples
    --------
    >>> from rankbias.papers import make_patch_data
    >>> data = make_patch_data(n_train=10, n_test=20, patches=4, dim=16, K=2)
    >>> data.K, data.clean_rank, tuple(data.signals.shape)
    (2, 4, (4, 16))
    """

    X: torch.Tensor
    """(S, n_train, P, d) noisy training images, one slice per sigma_p."""
    X_clean: torch.Tensor
    """(n_train, P, d) the same images with zero background."""
    y: torch.Tensor
    """(n_train,) labels in {+1, -1} (float)."""
    X_test: torch.Tensor
    """(S, n_test, P, d) noisy test images (same dictionary, fresh samples)."""
    X_test_clean: torch.Tensor
    """(n_test, P, d) clean test images."""
    y_test: torch.Tensor
    """(n_test,) test labels in {+1, -1}."""
    signals: torch.Tensor
    """(2K, d) the dictionary: rows 0..K-1 are u_k (y = +1), rows K..2K-1 are v_k (y = -1)."""
    sigmas: torch.Tensor
    """(S,) the noise levels sigma_p."""
    signal_index: torch.Tensor
    """(n_train,) which dictionary row each training image holds."""
    signal_patch: torch.Tensor
    """(n_train,) which patch holds the signal."""

    @property
    def K(self) -> int:
        return self.signals.shape[0] // 2

    @property
    def clean_rank(self) -> int:
        """The intrinsic rank of the data, 2K."""
        return self.signals.shape[0]


def signal_dictionary(
    K: int, dim: int, signal_norm: float, generator: torch.Generator, dtype=torch.float32
) -> torch.Tensor:
    """2K random orthogonal vectors of norm ``signal_norm`` in R^dim, shape (2K, dim).

    Random directions (not coordinate vectors) so that nothing in the model or
    the measures can exploit axis alignment.
    """
    if 2 * K > dim:
        raise InvalidParameterError(f"2K orthogonal signals need dim >= 2K; got K={K}, dim={dim}")
    G = torch.randn(dim, 2 * K, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(R))  # unique Q: Haar-distributed columns
    return (Q.T * signal_norm).to(dtype)


def _sample(
    n: int,
    sigmas: torch.Tensor,
    signals: torch.Tensor,
    patches: int,
    signal_position: str | int,
    orthogonal_noise: bool,
    gen: torch.Generator,
):
    twoK, d = signals.shape
    K = twoK // 2
    y = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, -1.0)
    k = torch.randint(0, K, (n,), generator=gen)
    idx = torch.where(y > 0, k, k + K)  # row of the dictionary
    if signal_position == "random":
        pos = torch.randint(0, patches, (n,), generator=gen)
    else:
        pos = torch.full((n,), int(0 if signal_position == "fixed" else signal_position), dtype=torch.long)
    xi = torch.randn(n, patches, d, generator=gen, dtype=torch.float64)
    if orthogonal_noise:
        U = signals.to(torch.float64) / signals.to(torch.float64).norm(dim=1, keepdim=True)  # (2K, d)
        xi = xi - (xi @ U.T) @ U
    signal_mask = torch.zeros(n, patches, dtype=torch.bool)
    signal_mask[torch.arange(n), pos] = True
    xi = xi.masked_fill(signal_mask[..., None], 0.0)  # the signal patch carries no noise
    clean = torch.zeros(n, patches, d, dtype=torch.float64)
    clean[torch.arange(n), pos] = signals[idx].to(torch.float64)
    noisy = clean + sigmas.to(torch.float64)[:, None, None, None] * xi  # (S, n, P, d)
    return noisy.to(signals.dtype), clean.to(signals.dtype), y.to(signals.dtype), idx, pos


def make_patch_data(
    n_train: int = 200,
    n_test: int = 1000,
    patches: int = 8,
    dim: int = 100,
    K: int = 2,
    signal_norm: float = 1.0,
    sigmas: Sequence[float] | float = (0.0,),
    signal_position: SignalPosition | int = "random",
    orthogonal_noise: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> PatchData:
    """Draw the train and test sets of the patch model for every noise level in ``sigmas``.

    Parameters
    ----------
    n_train, n_test : int, default 200 and 1000
        Training and test images (>= 1).
    patches : int, default 8
        P, the patches per image (>= 1).
    dim : int, default 100
        d, the dimension of a patch (>= 2K, + 1 with ``orthogonal_noise``).
    K : int, default 2
        Signals per class (>= 1); the clean data has rank 2K.
    signal_norm : float, default 1.0
        The norm of every signal vector (> 0).
    sigmas : float or sequence of float, default (0.0,)
        The S background noise levels sigma_p (finite, >= 0).
    signal_position : {"random", "fixed"} or int, default "random"
        ``"random"`` (uniform over the P patches), ``"fixed"`` (patch 0) or an int
        patch index.
    orthogonal_noise : bool, default False
        Project the background noise onto the orthogonal complement of the signal
        span (then the noise cannot correlate with any signal).
    seed : int, default 0
        Fixes everything (dictionary, labels, positions, noise); the test set uses
        the same dictionary.
    dtype : torch.dtype, default torch.float32
        The images' dtype.
    device : str or torch.device, default "cpu"
        Where the tensors are put.

    Returns
    -------
    PatchData
        ``X`` (S, n_train, P, d), ``X_clean`` (n_train, P, d), labels ``y`` in
        {+1, -1}, the same for the test set, the dictionary and the noise levels.

    Raises
    ------
    InvalidParameterError
        Every argument out of range, all named in one message.

    Examples
    --------
    >>> import torch
    >>> from rankbias.papers import make_patch_data
    >>> data = make_patch_data(n_train=10, n_test=20, patches=4, dim=16, sigmas=[0.0, 0.1])
    >>> tuple(data.X.shape), tuple(data.X_test.shape), sorted(data.y.unique().tolist())
    ((2, 10, 4, 16), (2, 20, 4, 16), [-1.0, 1.0])
    >>> torch.equal(data.X[0], data.X_clean)  # sigma_p = 0: the clean images
    True
    """
    sig = torch.atleast_1d(torch.as_tensor(sigmas, dtype=torch.float64))
    errors = []
    if n_train < 1 or n_test < 1:
        errors.append(f"n_train and n_test must be >= 1 (got {n_train}, {n_test})")
    if patches < 1:
        errors.append(f"patches must be >= 1 (got {patches})")
    if K < 1:
        errors.append(f"K must be >= 1 (got {K})")
    if dim < 2 * K + (1 if orthogonal_noise else 0):
        errors.append(
            f"dim must be >= 2K{' + 1 with orthogonal_noise' if orthogonal_noise else ''} "
            f"(got dim={dim}, K={K})"
        )
    if not signal_norm > 0:
        errors.append(f"signal_norm must be > 0 (got {signal_norm})")
    if sig.numel() == 0 or not bool(torch.isfinite(sig).all()) or bool((sig < 0).any()):
        errors.append(f"sigmas must be a non-empty list of finite values >= 0 (got {sigmas!r})")
    if isinstance(signal_position, str):
        if signal_position not in get_args(SignalPosition):
            errors.append(f"signal_position must be 'random', 'fixed' or a patch index (got {signal_position!r})")
    elif not 0 <= int(signal_position) < patches:
        errors.append(f"signal_position index must be in 0..{patches - 1} (got {signal_position})")
    if errors:
        raise InvalidParameterError("; ".join(errors))
    gen = torch.Generator().manual_seed(int(seed))
    signals = signal_dictionary(K, dim, signal_norm, gen, dtype=dtype)
    X, Xc, y, idx, pos = _sample(n_train, sig, signals, patches, signal_position, orthogonal_noise, gen)
    Xt, Xtc, yt, _, _ = _sample(n_test, sig, signals, patches, signal_position, orthogonal_noise, gen)
    dev = torch.device(device)
    return PatchData(
        X.to(dev), Xc.to(dev), y.to(dev), Xt.to(dev), Xtc.to(dev), yt.to(dev),
        signals.to(dev), sig.to(dtype).to(dev), idx.to(dev), pos.to(dev),
    )


def data_rank_measures(
    X: torch.Tensor, measures: Sequence[str] = ("stable_rank", "effective_rank", "numerical_rank")
) -> dict[str, dict[str, torch.Tensor]]:
    """Rank measures of images X (..., n, P, d): of the patch matrix (n P x d) and
    of the image matrix (n x P d), for every entry of the leading dimensions.

    One entry at a time: the measures work in float64, and a batch of real-image
    patch matrices (e.g. 7 noise levels x 32,000 x 768) would double in memory."""
    lead = X.shape[:-3]
    n, P, d = X.shape[-3:]
    flat = X.reshape(-1, n, P, d)
    per = [{"patch": rank_measures(x.reshape(n * P, d), list(measures)),
            "image": rank_measures(x.reshape(n, P * d), list(measures))} for x in flat]
    return {kind: {k: torch.stack([r[kind][k] for r in per]).reshape(lead) for k in measures}
            for kind in ("patch", "image")}
