"""Streamed spectra of embedding sets and of their kernels: :class:`KernelSpectrum`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rankbias.errors import InvalidParameterError, UnsupportedError
from rankbias.measures._checks import Tol, _check_finite, _check_tol, _to_tensor
from rankbias.measures.spec import (
    _EPS64,
    RANKME_EPS,
    Spectrum,
    _check_measure_names,
    evaluate,
    split_centered,
)
from rankbias.measures.spectrum import _eig_desc, _gram, _safe_sqrt


def _batch_stats(Z: torch.Tensor, device) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(n, mean, centred scatter (Z - 1 mu^T)^T (Z - 1 mu^T)) of rows Z (n x d), in
    float64 on ``device``; Z is not changed (the centring is done in one copy)."""
    Zc = Z.to(device=device, dtype=torch.float64, copy=True)
    mb = Zc.mean(0)
    Zc.sub_(mb)
    return Z.shape[0], mb, Zc.mT @ Zc




class KernelSpectrum:
    """Streamed spectrum of an embedding set Z (N x d) and of its kernel K = Z Z^T.

    The non-zero eigenvalues of K (N x N) are those of Z^T Z (d x d) (= s_i(Z)^2),
    so the spectrum comes from whichever side is smaller. While N <= ``max_rows``
    (default d) the embeddings themselves are kept (float64, 8 N d bytes) and the
    spectra come from the N x N side: a few samples of a wide layer cost
    milliseconds, not an eigendecomposition of a d x d matrix. Beyond that they
    are folded, once, into N, the mean embedding and the centred scatter matrix
    sum_i (z_i - mu)(z_i - mu)^T (d x d, float64; later batches are merged with
    Chan et al.'s update, which never subtracts two large numbers), so
    N = 10^6 embeddings need O(d^2) memory. Both sides give the same measures
    to float64 round-off. The uncentred Gram Z^T Z is the scatter plus N mu mu^T.

    - :meth:`measures` -- the measures of the kernel K (N x N) as a matrix:
      its singular values are lambda_i, so the "kernel effective rank" uses
      p_i = lambda_i / sum lambda_j. Equal to ``rank_measures(Z @ Z.T)``, its
      N - d zero eigenvalues included (they change only RankMe), and its
      participation ratio is that of K's centred rows.
    - :meth:`embedding_measures` -- the measures of Z itself (singular values
      sqrt(lambda_i)); equal to ``rank_measures(Z)``, the participation ratio
      being that of the embeddings' covariance. Singular values below
      ~sqrt(eps) s_1 are not resolved from a Gram matrix, so the default
      numerical-rank tolerance is rtol = sqrt(max(N, d) eps) (that of the kernel, on s^2).

    Parameters
    ----------
    dim : int, optional
        The embedding dimension d (default: that of the first batch).
    centered : bool, default False
        Remove the mean embedding first (Z - 1 mu^T).
    device : str or torch.device, optional
        Where the state is kept (default: the device of the first batch).
    max_rows : int, optional
        The most embeddings kept as rows (default d; 0: always the d x d side).

    Attributes
    ----------
    n_samples_ : int
        N, the embeddings seen so far.
    dim_ : int or None
        d, once known.
    mean_ : torch.Tensor
        The mean embedding (d).
    scatter_ : torch.Tensor
        The centred scatter matrix (d x d).
    gram_, sum_ : torch.Tensor
        Derived: Z^T Z and the sum of the embeddings (formed on request while
        the rows are kept).

    Raises
    ------
    InvalidParameterError
        ``dim`` is not a positive int or None, or ``max_rows`` not an int >= 0 or
        None. Later, from :meth:`update` and :meth:`merge`: a batch that is not a
        finite real array or whose dimension differs from ``dim_``.
    UnsupportedError
        Asking for measures before any embedding was added.

    Examples
    --------
    >>> import torch
    >>> from rankbias import KernelSpectrum, effective_rank
    >>> Z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    >>> ks = KernelSpectrum().update(Z[:20]).update(Z[20:])
    >>> ks.n_samples_, ks.dim_
    (50, 4)
    >>> int(ks.measures(["numerical_rank"])["numerical_rank"])
    4
    >>> torch.allclose(ks.embedding_measures(["effective_rank"])["effective_rank"],
    ...                effective_rank(Z))
    True
    """

    def __init__(self, dim: int | None = None, *, centered: bool = False,
                 device: str | torch.device | None = None, max_rows: int | None = None) -> None:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise InvalidParameterError(f"dim must be a positive int or None, got {dim!r}")
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int)
                                     or max_rows < 0):
            raise InvalidParameterError(f"max_rows must be an int >= 0 or None (= dim), got {max_rows!r}")
        self.centered = bool(centered)
        self.device = device
        self.max_rows = max_rows
        self.n_samples_ = 0
        self.dim_ = dim
        self._rows: list[torch.Tensor] = []  # (b, d) float64 batches, until folded
        self._mean: torch.Tensor | None = None  # (d,), once folded
        self._scatter: torch.Tensor | None = None  # (d, d), once folded

    # ------------------------------------------------------------------ state

    @property
    def _folded(self) -> bool:
        return self._scatter is not None

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulated state: 8 N d while the rows are kept
        (N <= max_rows), 8 (d^2 + d) once folded, whatever N."""
        if self._folded:
            return self._scatter.nbytes + self._mean.nbytes
        return sum(r.nbytes for r in self._rows)

    def _Z(self) -> torch.Tensor:
        """The kept embeddings (N x d), as one tensor."""
        if len(self._rows) > 1:
            self._rows = [torch.cat(self._rows)]
        return self._rows[0]

    def _centred_rows(self) -> torch.Tensor:
        Z = self._Z()
        # shift by the first row before taking the mean: exact for equal rows, no
        # cancellation for a large common offset
        Zc = Z - Z[:1]
        return Zc.sub_(Zc.mean(0))

    @property
    def mean_(self) -> torch.Tensor | None:
        if self._folded or self.n_samples_ == 0:
            return self._mean
        return self._Z().mean(0)

    @property
    def scatter_(self) -> torch.Tensor | None:
        if self._folded or self.n_samples_ == 0:
            return self._scatter
        Zc = self._centred_rows()
        return Zc.mT @ Zc

    @property
    def gram_(self) -> torch.Tensor:
        self._require()
        return self.scatter_ + self.n_samples_ * torch.outer(self.mean_, self.mean_)

    @property
    def sum_(self) -> torch.Tensor:
        self._require()
        return self.n_samples_ * self.mean_

    def _fold(self) -> None:
        """Replace the kept rows by their mean and centred scatter (d x d)."""
        dev = self._rows[0].device if self._rows else self.device
        Z = self._Z() if self._rows else None
        self._rows = []
        n, self.n_samples_ = self.n_samples_, 0
        self._mean = torch.zeros(self.dim_, dtype=torch.float64, device=dev)
        self._scatter = torch.zeros(self.dim_, self.dim_, dtype=torch.float64, device=dev)
        if n:
            self._merge(*_batch_stats(Z, dev))

    def _merge(self, nb: int, mb: torch.Tensor, Sb: torch.Tensor) -> None:
        na = self.n_samples_
        n = na + nb
        delta = mb - self._mean
        self._scatter += Sb + torch.outer(delta, delta) * (na * nb / n)
        self._mean += delta * (nb / n)
        self.n_samples_ = n

    def _fits(self, nb: int) -> bool:
        limit = self.dim_ if self.max_rows is None else self.max_rows
        return not self._folded and self.n_samples_ + nb <= limit

    @torch.no_grad()
    def update(self, Z) -> KernelSpectrum:
        """Add a batch of embeddings (..., d): every leading index is one sample."""
        if isinstance(Z, torch.Tensor | np.ndarray) and Z.ndim == 1:
            Z = Z[None]
        Z = _to_tensor(Z, "Z")
        d = Z.shape[-1]
        if self.dim_ is not None and d != self.dim_:
            raise InvalidParameterError(f"Z: embedding dimension {d} != {self.dim_} seen before")
        dev = self._device(Z.device)
        rows = Z.reshape(-1, d)
        limit = d if self.max_rows is None else self.max_rows
        if not self._folded and self.n_samples_ + rows.shape[0] <= limit:
            _check_finite(Z, "Z")
            self.dim_ = d
            # a copy: the caller may reuse its buffer
            self._rows.append(rows.to(device=dev, dtype=torch.float64, copy=True))
            self.n_samples_ += rows.shape[0]
            return self
        return self._add(_batch_stats(rows, dev), Z)

    def _add(self, stats: tuple[int, torch.Tensor, torch.Tensor], Z: torch.Tensor) -> KernelSpectrum:
        """Fold the (n, mean, scatter) of a checked-dimension batch Z into the state."""
        # a NaN or Inf in Z reaches its mean or its scatter's diagonal: this O(d) test
        # replaces a full pass over Z (as costly as the Gram), which then runs only
        # to name them; finite values whose squares overflow float64 would leave an
        # infinite scatter and silently wrong ranks, so they are refused too
        if not bool(torch.isfinite(stats[1].sum() + stats[2].trace())):
            _check_finite(Z, "Z")
            raise InvalidParameterError(
                f"Z: finite values whose squares overflow float64 (largest |value| "
                f"{float(Z.detach().abs().max()):.3g}); accepted: values below ~1e150 in magnitude "
                "(rescale the embeddings: every rank measure is scale-invariant)")
        self.dim_ = stats[1].shape[0]
        if not self._folded:
            self._fold()
        self._merge(*stats)
        return self

    @torch.no_grad()
    def _update_positions(self, X: torch.Tensor) -> KernelSpectrum:
        """``update(X.movedim(1, -1))`` for a channels-first batch X (n, d, *spatial):
        every position of every sample is an embedding.

        Where each sample has at least d positions (a conv layer's output), the
        channels-last copy is not made: the scatter is summed over the samples,
        sum_i (X_i - mu 1^T)(X_i - mu 1^T)^T with X_i (d x positions), the same sums
        in another order (equal to ~1e-13 relative), a third less time."""
        n, d = X.shape[:2]
        positions = X[0, 0].numel() if n else 0
        limit = d if self.max_rows is None else self.max_rows
        kept = not self._folded and self.n_samples_ + n * positions <= limit
        if (kept or positions < d or not X.is_contiguous() or not X.is_floating_point()
                or X.requires_grad or (self.dim_ is not None and d != self.dim_)):
            return self.update(X.movedim(1, -1))  # its checks and errors, or the rows kept
        Xc = X.reshape(n, d, positions).to(device=self._device(X.device), dtype=torch.float64, copy=True)
        mb = Xc.mean((0, 2))
        Xc.sub_(mb[:, None])
        return self._add((n * positions, mb, torch.matmul(Xc, Xc.mT).sum(0)), X)

    def _device(self, fallback) -> torch.device:
        if self._folded:
            return self._scatter.device
        if self._rows:
            return self._rows[0].device
        return torch.device(self.device) if self.device is not None else fallback

    def merge(self, other: KernelSpectrum) -> KernelSpectrum:
        """Add the samples accumulated by ``other`` (e.g. by another worker)."""
        if not isinstance(other, KernelSpectrum):
            raise InvalidParameterError(f"other: expected a KernelSpectrum, got {type(other).__name__}")
        if other.n_samples_ == 0:
            return self
        if self.dim_ is None:
            self.dim_ = other.dim_
        if other.dim_ != self.dim_:
            raise InvalidParameterError(f"other: embedding dimension {other.dim_} != {self.dim_}")
        dev = self._device(other._device(None))
        if not other._folded and self._fits(other.n_samples_):
            self._rows.append(other._Z().to(dev, copy=True))
            self.n_samples_ += other.n_samples_
            return self
        if not self._folded:
            self._fold()
        self._merge(other.n_samples_, other.mean_.to(dev), other.scatter_.to(dev))
        return self

    def _require(self) -> None:
        if self.n_samples_ == 0:
            raise UnsupportedError("KernelSpectrum is empty: call update(Z) with at least one sample first")

    # ---------------------------------------------------------------- spectra

    def _embeddings(self) -> torch.Tensor:
        """The measured embeddings (N x d): Z, or Z - 1 mu^T when centred (rows kept)."""
        return self._centred_rows() if self.centered else self._Z()

    def scatter(self) -> torch.Tensor:
        """The d x d side of the kernel: Z^T Z, or (Z - 1 mu^T)^T (Z - 1 mu^T) when centred."""
        self._require()
        return self.scatter_ if self.centered else self.gram_

    def _small_gram(self) -> torch.Tensor:
        """The smaller side: K (N x N) while the rows are kept (N <= d), else the d x d scatter()."""
        return self.scatter() if self._folded else _gram(self._embeddings())

    def eigenvalues(self) -> torch.Tensor:
        """Largest min(N, d) eigenvalues of the kernel, descending (the rest are 0)."""
        self._require()
        return _eig_desc(self._small_gram())[: min(self.n_samples_, self.dim_)]

    def _power_sums(self, kernel: bool, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tr C, tr C^2) of the centred rows' scatter C of K (``kernel``) or of Z;
        ``G``: the :meth:`scatter` matrix, when folded."""
        if self._folded:
            S = self._scatter
            if not kernel:
                return S.diagonal().sum(), S.square().sum()
            # K's centred rows have scatter Zt S_c Zt^T, whose eigenvalues are those of S_c G
            P = S @ G
            return (S * G).sum(), (P * P.mT).sum()
        # the same non-zero eigenvalues from the N x N side: Zc Zc^T, or M^T M, M = Zc Zt^T
        Zc = self._centred_rows()
        if kernel:
            M = Zc @ (Zc if self.centered else self._Z()).mT
            C = M.mT @ M
        else:
            C = Zc @ Zc.mT
        return C.diagonal().sum(), C.square().sum()

    def _measures(self, measures, atol, rtol, rankme_eps, *, kernel: bool) -> dict:
        names = _check_measure_names(measures)
        _check_tol(atol, "atol")
        _check_tol(rtol, "rtol")
        self._require()
        G = self._small_gram()
        N = self.n_samples_
        lam = _eig_desc(G)[: min(N, self.dim_)]
        _, centred = split_centered(names)
        if kernel:
            sp = Spectrum(lam, shape=(N, N), eps=_EPS64, atol=atol, rtol=rtol,
                          rankme_eps=rankme_eps, extra_zeros=N - lam.shape[-1],
                          centered_power_sums=self._power_sums(True, G) if centred else None)
        else:
            # eigenvalues at the eigensolver's resolution are rounding noise: exact zeros
            lam = torch.where(lam <= self.dim_ * _EPS64 * lam[:1], torch.zeros_like(lam), lam)
            sp = Spectrum(_safe_sqrt(lam), shape=(N, self.dim_), eps=_EPS64, atol=atol,
                          rtol=rtol, rankme_eps=rankme_eps, gram_resolution=True,
                          centered_power_sums=self._power_sums(False, G) if centred else None)
        return evaluate(names, sp)

    def measures(self, measures: Sequence[str] | None = None, *, atol: Tol = None,
                 rtol: Tol = None, rankme_eps: float = RANKME_EPS) -> dict[str, torch.Tensor]:
        """Measures of the kernel K = Z Z^T (N x N), from the smaller side."""
        return self._measures(measures, atol, rtol, rankme_eps, kernel=True)

    def embedding_measures(self, measures: Sequence[str] | None = None, *, atol: Tol = None,
                           rtol: Tol = None, rankme_eps: float = RANKME_EPS) -> dict[str, torch.Tensor]:
        """Measures of the embedding matrix Z (N x d) itself (Z - 1 mu^T when centred)."""
        return self._measures(measures, atol, rtol, rankme_eps, kernel=False)
