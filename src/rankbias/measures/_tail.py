"""The Gram route's small singular values recomputed on their own scale, with a residual bound.

The Gram route (:mod:`rankbias.measures.spectrum`) reads the singular values of
X (k x N, k <= N) off the eigenvalues lam^_i of its Gram G = X X^T, each off by
at most eps_G = k eps s_1^2; a singular value s_i is then known only to within
~eps_G / s_i, so the smallest ones (s_i <~ sqrt(eps_G)) can dominate a measure's
error bound. Instead of an SVD of X, :func:`refine_tail` recomputes only the
t smallest:

1. Y0 (k x q, q = t + oversampling): the bottom eigenvectors of G^ by
   shift-invert subspace iteration (one Cholesky of G^ + tau I, k^3 / 3 flops,
   then triangular solves with q columns), orthonormal.
2. Rayleigh-Ritz on X itself: the SVD of X^T Y0 (N x q) picks the t smallest
   directions Y (k x t); Z = X^T Y, computed with an absolute error
   beta ~ k eps s_1 (not ~eps_G / s_i: the small values are now resolved
   to ~k eps s_1 each).
3. Bounds (Y orthonormal up to omega = ||Y^T Y - I||, a relative slack):
   Cauchy interlacing gives lam_{h+j}(G) <= mu_j = sigma_j(Z)^2 (h = k - t);
   with the residual R = G Y - Y Z^T Z = X Z - Y Z^T Z, r = ||R||_2, and the
   gap eta = lam^_h - eps_G - r - mu_1 > 0 (then every eigenvalue of G's
   compression to Y's complement is >= mu_1 + eta: Weyl on the block matrix),
   the quadratic residual bound (Li & Li 2005; Mathias 1998) gives
   lam_{h+j}(G) >= mu_j - r^2 / eta.

The rounding model is the Gram route's own (a product of k-term sums errs by at
most k eps times the product of the factors' norms): ``beta`` and the slack on
r follow it. Where a step fails (no Cholesky, no gap) None is returned and the
caller takes the SVD.
"""

from __future__ import annotations

import math

import torch

_OVERSAMPLE = 8
_MAX_ITERATIONS = 40
_LAST_ITERATIONS = [0]  # iterations of the last refinement (read by the tests)


def gram_growth(k: int, n_sum: int) -> float:
    """c in the Gram route's error model c eps s_1^2: k for the eigensolver's backward
    error, and sqrt(N) for the rounding of the product's N-term sums (N, the longer side:
    the typical growth of a blocked BLAS sum, not the worst case N); the larger of the two,
    so that a very long side (N > k^2) widens the bound instead of escaping it."""
    return float(max(k, math.sqrt(max(n_sum, 1))))


def _bottom_eigvecs(
    G: torch.Tensor, lam: torch.Tensor, h: int, q: int, t: int, eps_g: float
) -> torch.Tensor | None:
    """Orthonormal k x q basis converged on G's bottom t eigenvectors (lam: G's eigenvalues,
    descending), or None if G + tau I has no Cholesky factor."""
    k = G.shape[-1]
    tau = max(0.25 * float(lam[h]), 10 * eps_g)  # tail eigenvalues -> 1/(lam + tau): spread <= 5x
    eye = torch.eye(k, dtype=G.dtype, device=G.device)
    for _ in range(3):
        L, info = torch.linalg.cholesky_ex(G + tau * eye)
        if int(info) == 0:
            break
        tau *= 10
    else:
        return None
    gen = torch.Generator(device=G.device).manual_seed(0)
    V = torch.linalg.qr(torch.randn(k, q, generator=gen, dtype=G.dtype, device=G.device)).Q
    # converged once the t smallest Ritz pairs' residuals r on G^ are at G^'s own error,
    # or small enough that r^2 / gap (the bound's quadratic term) is below 1 % of it
    enough = max(eps_g, 0.1 * math.sqrt(eps_g * max(float(lam[h - 1] - lam[h]), 0.0)))
    for it in range(1, _MAX_ITERATIONS + 1):  # noqa: B007 (read after the loop)
        V = torch.linalg.qr(torch.cholesky_solve(V, L)).Q
        GV = G @ V
        mu, U = torch.linalg.eigh(V.mT @ GV)
        V, GV = V @ U, GV @ U  # Ritz vectors, ascending: the next iterate
        if float((GV[:, :t] - V[:, :t] * mu[:t]).norm(dim=0).max()) <= enough:
            break
    _LAST_ITERATIONS[0] = it
    return V


def refine_tail(
    X: torch.Tensor, G: torch.Tensor, s: torch.Tensor, t: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The t smallest singular values of X (k x N, k <= N; G = X X^T as computed,
    s: the Gram route's singular values, descending) and a bound on each one's
    error, or None where no bound can be given (the caller then takes the SVD).

    Returns (sigma, delta), each (t,), descending: the true s_{k-t+j} lies in
    [sigma_j - delta_j, sigma_j + delta_j]."""
    k, N = X.shape
    h = k - t
    eps = torch.finfo(X.dtype).eps
    s1 = float(s[0])
    eps_g = gram_growth(k, N) * eps * s1 * s1  # the Gram route's bound (spectrum._gram_error)
    lam = s.square()
    V = _bottom_eigvecs(G, lam, h, min(2 * t + _OVERSAMPLE, k), t, eps_g)
    if V is None:
        return None
    _, _, Wt = torch.linalg.svd(X.mT @ V, full_matrices=False)  # (N x q) = P S Wt
    Y = V @ Wt[-t:].mT  # k x t: the t smallest Ritz directions
    Z = X.mT @ Y  # N x t
    sig = torch.linalg.svdvals(Z)  # descending
    R = X @ Z - Y @ (Z.mT @ Z)
    r_hat = float(torch.linalg.matrix_norm(R, ord=2))
    omega = (
        float(
            torch.linalg.matrix_norm(Y.mT @ Y - torch.eye(t, dtype=X.dtype, device=X.device), ord=2)
        )
        + k * eps
    )
    s1_up = math.sqrt(s1 * s1 + eps_g)
    z = float(sig[0])
    beta = k * eps * s1_up * (1 + omega) + max(N, t) * eps * z  # |sigma(Z^) - sigma(Z)|
    # r: the computed residual plus its rounding (Z's error times X, then the two products)
    r = r_hat + s1_up * beta + 2 * (N + t) * eps * (s1_up + z) * (z + beta)
    mu1 = ((z + beta) * (1 + omega)) ** 2
    eta = float(lam[h - 1]) - eps_g - r - mu1
    if not eta > 0:
        return None
    quad = 2 * r * r / (eta + math.sqrt(eta * eta + 4 * r * r))
    hi = (sig + beta) * (1 + omega)
    lo = ((sig - beta).clamp_min(0) * (1 - omega)).square().sub(quad).clamp_min(0).sqrt()
    return sig, torch.maximum(hi - sig, sig - lo)
