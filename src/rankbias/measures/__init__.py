"""Rank measures of matrices and of embedding kernels (docs/measures.md).

Every measure is a function of the singular values s_1 >= ... >= s_k >= 0 of a
matrix A (m x n), k = min(m, n), and is one entry of the table
:data:`~rankbias.measures.spec.SPECS`:

================== ==============================================================
stable rank        sum(s_i^2) / s_1^2
effective rank     exp(H(p)), p_i = s_i / sum_j s_j, H = -sum p_i log p_i
                   (Roy & Vetterli 2007), with 0 log 0 = 0
entropy rank       H(p) in nats, the log of the effective rank (Huh et al. 2023)
numerical rank     #{s_i > max(atol, rtol * s_1)}, rtol = max(m, n) * eps by
                   default, exactly as ``torch.linalg.matrix_rank``
participation      (sum lambda_i)^2 / sum lambda_i^2, lambda the eigenvalues of
ratio              the covariance of the centred rows of A (a real number)
RankMe             exp(H(p)), p_i = s_i / sum_j s_j + eps, eps = 1e-7, uncentred
                   (Garrido et al. 2023)
================== ==============================================================

Conventions. The zero matrix (all singular values 0) has stable, effective,
numerical and entropy rank and RankMe 0 (p is undefined there; 0 keeps "the rank
of nothing" at zero and JSON finite; note the entropy rank is then *not* the log
of the effective rank). The participation ratio is 0 when all rows are equal
(zero covariance). ``numerical_rank`` follows ``torch.linalg.matrix_rank``:
``atol``/``rtol`` are floats or tensors broadcast over the batch; without
``rtol``, rtol = max(m, n) * eps, except where ``atol > 0`` is given, where
rtol = 0; eps is that of the input's dtype for float32/float64 inputs and of the
computing dtype otherwise (integer, bool, half, bfloat16 inputs behave as
``matrix_rank(A.double())``).

All functions take a torch tensor or a numpy array (or nested lists) of shape
(..., m, n), are batched over the leading dimensions and return a tensor of the
batch shape (0-d for one matrix): float64 by default (the computing dtype,
``dtype=torch.float32`` to change it), int64 for ``numerical_rank``. The
spectrum is never computed in half precision. Gradients flow where the maths
allows: distinct non-zero singular values; the zero terms of the entropy
(0 log 0) and the zero matrix give a zero gradient instead of NaN. How the
spectrum is computed (the Gram route and its error-bounded switch to the SVD):
:mod:`rankbias.measures.spectrum`.

Modules: ``spec`` (the table), ``spectrum`` (the Gram/SVD engine and
``rank_measures``), ``functions`` (many matrices, one function per measure),
``kernel`` (``KernelSpectrum``), ``_checks`` (input validation). This package
imports nothing else of rankbias.
"""

from rankbias.measures._checks import Method, Tol, as_matrix
from rankbias.measures.functions import (
    effective_rank,
    entropy_rank,
    numerical_rank,
    participation_ratio,
    rank_measures_many,
    rankme,
    stable_rank,
)
from rankbias.measures.kernel import KernelSpectrum
from rankbias.measures.spec import (
    MEASURES,
    RANKME_EPS,
    SPECS,
    MeasureSpec,
    Spectrum,
    _check_measure_names,  # noqa: F401  (rankbias.analysis validates names with it)
    max_measure,
    measures_from_singular_values,
    register_measure,
    unregister_measure,
)
from rankbias.measures.spectrum import SlowComputationWarning, rank_measures, singular_values

__all__ = [
    "MEASURES",
    "RANKME_EPS",
    "SPECS",
    "KernelSpectrum",
    "MeasureSpec",
    "Method",
    "SlowComputationWarning",
    "Spectrum",
    "Tol",
    "as_matrix",
    "effective_rank",
    "entropy_rank",
    "max_measure",
    "measures_from_singular_values",
    "numerical_rank",
    "participation_ratio",
    "rank_measures",
    "rank_measures_many",
    "rankme",
    "register_measure",
    "singular_values",
    "stable_rank",
    "unregister_measure",
]
