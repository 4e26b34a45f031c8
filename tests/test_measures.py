"""Rank measures (docs/measures.md): closed forms, invariances, bounds, batching,
agreement with an independent scipy/numpy computation and with
torch.linalg.matrix_rank, gradients, input errors. KernelSpectrum, the spec
table and the CLI have their own test_measures_*.py files, which share the
helpers defined here."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rankbias
from _helpers import count_svd_calls
from rankbias.measures import (
    MEASURES,
    SPECS,
    as_matrix,
    effective_rank,
    entropy_rank,
    max_measure,
    measures_from_singular_values,
    numerical_rank,
    participation_ratio,
    rank_measures,
    rank_measures_many,
    rankme,
    singular_values,
    stable_rank,
)

F64 = torch.float64
FLOATS = [k for k in MEASURES if not SPECS[k].integer]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def orthogonal(n, seed=0):
    q, r = torch.linalg.qr(randn(n, n, seed=seed))
    return q * torch.sign(torch.diagonal(r))


def with_spectrum(s, m, n, seed=0):
    """An m x n matrix with singular values s (len <= min(m, n)), random singular vectors."""
    s = torch.as_tensor(s, dtype=F64)
    U = orthogonal(m, seed)[:, : len(s)]
    V = orthogonal(n, seed + 1)[:, : len(s)]
    return U @ torch.diag(s) @ V.T


# ----------------------------------------------------------- independent reference


def reference(A: np.ndarray, rtol=None, atol=None, eps=np.finfo(np.float64).eps, rankme_eps=1e-7):
    """Every measure with scipy's SVD and plain numpy formulas (no rankbias code)."""
    A = np.asarray(A, dtype=np.float64)
    m, n = A.shape
    amax = np.abs(A).max()
    s = scipy.linalg.svdvals(A / amax) * amax if amax > 0 else np.zeros(min(m, n))  # no over/underflow
    out = {}
    if s[0] == 0:
        out.update(stable_rank=0.0, effective_rank=0.0, entropy_rank=0.0, rankme=0.0)
    else:
        out["stable_rank"] = float(np.sum((s / s[0]) ** 2))
        p = s / s.sum()
        nz = p[p > 0]
        h = float(-np.sum(nz * np.log(nz)))
        out["entropy_rank"] = h
        out["effective_rank"] = math.exp(h)
        q = p + rankme_eps
        out["rankme"] = math.exp(float(-np.sum(q * np.log(q))))
    if rtol is None:
        rtol = max(m, n) * eps if not (atol is not None and atol > 0) else 0.0
    tol = max(atol or 0.0, rtol * s[0])
    out["numerical_rank"] = int(np.sum(s > tol))
    if m >= 2 and not np.all(A == A[:1]):
        cov = np.cov(A / amax, rowvar=False)  # rows are samples
        lam = np.clip(np.linalg.eigvalsh(np.atleast_2d(cov)), 0, None)
        out["participation_ratio"] = float(lam.sum() ** 2 / np.sum(lam**2)) if np.sum(lam**2) > 0 else 0.0
    else:
        out["participation_ratio"] = 0.0
    return out


def assert_measures_close(got, ref, rtol=1e-9, atol=1e-12):
    for k in MEASURES:
        g = got[k]
        if k == "numerical_rank":
            assert int(g) == ref[k], (k, int(g), ref[k])
        else:
            assert float(g) == pytest.approx(ref[k], rel=rtol, abs=atol), k


# ------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_identity(n):
    r = rank_measures(torch.eye(n))
    assert float(r["stable_rank"]) == pytest.approx(n)
    assert float(r["effective_rank"]) == pytest.approx(n)
    assert float(r["entropy_rank"]) == pytest.approx(math.log(n), abs=1e-15)
    assert int(r["numerical_rank"]) == n
    # the centred rows of I have covariance (I - J/n)/(n-1): n-1 equal eigenvalues and a 0
    assert float(r["participation_ratio"]) == pytest.approx(n - 1)
    assert float(r["rankme"]) == pytest.approx(max_measure("rankme", (n, n)), rel=1e-14)
    # +eps raises the entropy of a flat spectrum for k >= 3 (d/deps = k log k - k > 0)
    assert (float(r["rankme"]) > n) == (n >= 3)


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (1, 6), (6, 1)])
def test_rank_one(shape):
    u = randn(shape[0], 1, seed=1) + 2.0  # not constant
    v = randn(1, shape[1], seed=2)
    r = rank_measures(3.7 * u @ v)
    assert float(r["stable_rank"]) == pytest.approx(1.0, rel=1e-14)
    assert float(r["effective_rank"]) == pytest.approx(1.0, rel=1e-14)
    assert float(r["entropy_rank"]) == pytest.approx(0.0, abs=1e-14)
    assert int(r["numerical_rank"]) == 1
    # the centred rows (u_i - mean u) v span one direction
    assert float(r["participation_ratio"]) == pytest.approx(1.0 if shape[0] > 1 else 0.0, rel=1e-12)
    k = min(shape)
    q = np.array([1.0] + [0.0] * (k - 1)) + 1e-7
    assert float(r["rankme"]) == pytest.approx(math.exp(-np.sum(q * np.log(q))), rel=1e-14)


def test_zero_matrix_convention():
    for shape in [(3, 4), (2, 3, 3), (1, 1)]:
        r = rank_measures(torch.zeros(shape))
        for k in MEASURES:
            assert torch.all(r[k] == 0), k
    Z = torch.zeros(3, 3, dtype=F64)
    for kw in ({"atol": -1.0}, {"rtol": 0.0}, {"atol": 0.0, "rtol": 0.0}):
        assert int(numerical_rank(Z, **kw)) == int(torch.linalg.matrix_rank(Z, **kw)) == 0


@pytest.mark.parametrize("s", [[3.0, 2.0, 1.0], [1.0, 1e-3, 1e-9, 0.0], [5.0, 5.0, 0.5, 0.25, 0.0, 0.0]])
def test_diagonal_spectra(s):
    s_np = np.array(s)
    A = torch.zeros(len(s) + 2, len(s), dtype=F64)
    perm = np.random.default_rng(0).permutation(len(s))  # order must not matter
    A[perm, np.arange(len(s))] = torch.tensor(s_np)
    r = rank_measures(A)
    p = s_np / s_np.sum()
    h = -sum(x * math.log(x) for x in p if x > 0)
    assert float(r["stable_rank"]) == pytest.approx(np.sum(s_np**2) / s_np.max() ** 2, rel=1e-13)
    assert float(r["entropy_rank"]) == pytest.approx(h, rel=1e-12, abs=1e-15)
    assert float(r["effective_rank"]) == pytest.approx(math.exp(h), rel=1e-12)
    tol = max(A.shape) * torch.finfo(F64).eps * s_np.max()
    assert int(r["numerical_rank"]) == int(np.sum(s_np > tol))
    assert torch.allclose(singular_values(A), torch.tensor(np.sort(s_np)[::-1].copy()), atol=1e-15)


def test_block_diagonal():
    A = randn(6, 4, seed=3)
    B = with_spectrum([2.0, 0.5], 3, 5, seed=4)
    # blockdiag(A, A): every singular value doubled in multiplicity
    AA = torch.block_diag(A, A)
    ra, raa = rank_measures(A), rank_measures(AA)
    assert float(raa["stable_rank"]) == pytest.approx(2 * float(ra["stable_rank"]), rel=1e-12)
    assert float(raa["effective_rank"]) == pytest.approx(2 * float(ra["effective_rank"]), rel=1e-12)
    assert float(raa["entropy_rank"]) == pytest.approx(float(ra["entropy_rank"]) + math.log(2), rel=1e-12)
    assert int(raa["numerical_rank"]) == 2 * int(ra["numerical_rank"])
    # blockdiag(A, B): the union of the spectra
    AB = torch.block_diag(A, B)
    s = np.concatenate([scipy.linalg.svdvals(A.numpy()), [2.0, 0.5]])
    r = rank_measures(AB)
    assert int(r["numerical_rank"]) == 4 + 2
    assert float(r["stable_rank"]) == pytest.approx(np.sum(s**2) / s.max() ** 2, rel=1e-12)
    p = s / s.sum()
    assert float(r["entropy_rank"]) == pytest.approx(-np.sum(p * np.log(p)), rel=1e-12)


def test_max_measure_is_attained_and_bounds():
    for m, n in [(4, 4), (3, 7), (8, 2)]:
        k = min(m, n)
        E = torch.eye(m, n, dtype=F64)
        r = rank_measures(E)
        for name in ("stable_rank", "effective_rank", "numerical_rank", "entropy_rank", "rankme"):
            assert float(r[name]) == pytest.approx(max_measure(name, (m, n)), rel=1e-13)
        assert max_measure("participation_ratio", (m, n)) == max(min(m - 1, n), 1)
        assert max_measure("entropy_rank", (m, n)) == pytest.approx(math.log(k))
    with pytest.raises(ValueError, match="unknown measure"):
        max_measure("rank", (2, 2))


# -------------------------------------------------------- independent computation


def _matrices():
    yield "tall", randn(40, 7, seed=10)
    yield "wide", randn(7, 40, seed=11)
    yield "square", randn(30, 30, seed=12)
    yield "rank3", randn(25, 3, seed=13) @ randn(3, 18, seed=14)
    yield "geometric", with_spectrum(np.logspace(0, -12, 20), 30, 20, seed=15)
    yield "large_mean", randn(50, 6, seed=16) + 1e4  # participation ratio: centring must be exact
    yield "ints", torch.randint(-3, 4, (9, 12), generator=gen(17))
    yield "one_row", randn(1, 8, seed=18)


@pytest.mark.parametrize("name, A", list(_matrices()), ids=[n for n, _ in _matrices()])
@pytest.mark.parametrize("method", ["auto", "svd"])
def test_agrees_with_scipy(name, A, method):
    ref = reference(A.numpy())
    assert_measures_close(rank_measures(A, method=method), ref, rtol=1e-9)
    assert_measures_close(rank_measures(A.numpy(), method=method), ref, rtol=1e-9)  # numpy in


def test_agrees_with_scipy_user_tolerances():
    A = with_spectrum([1.0, 0.5, 0.1, 1e-4, 1e-8], 9, 6, seed=19)
    for atol, rtol in [(None, 1e-3), (0.05, None), (0.05, 0.2), (0.0, None), (-1.0, None), (None, 0.0)]:
        ref = reference(A.numpy(), rtol=rtol, atol=atol)
        assert int(numerical_rank(A, atol=atol, rtol=rtol)) == ref["numerical_rank"], (atol, rtol)


def test_auto_keeps_the_gram_route_only_where_it_is_accurate(monkeypatch):
    calls = count_svd_calls(monkeypatch)
    # a spread spectrum (1 .. 1e-3): the Gram route, within 1e-9 of the SVD's values
    s = np.geomspace(1.0, 1e-3, 60)
    A = with_spectrum(s, 60, 90, seed=20)
    got = rank_measures(A)
    assert calls == []
    ref = reference(A.numpy())
    for k in MEASURES:
        assert float(got[k]) == pytest.approx(ref[k], rel=1e-9), k
    # rank-deficient, nearly rank-one and near-threshold matrices go through the SVD
    for B, kw in [
        (randn(40, 3, seed=21) @ randn(3, 50, seed=22), {}),
        (with_spectrum([1.0, 1e-5, 1e-6], 20, 30, seed=23), {}),  # entropy rank ~1e-4: relative
        (with_spectrum(s, 60, 90, seed=20), {"atol": 1e-3 * (1 + 1e-12)}),  # s_60 at the threshold
    ]:
        calls.clear()
        got = rank_measures(B, **kw)
        assert calls, kw
        ref = reference(B.numpy(), **kw)
        assert_measures_close(got, ref, rtol=1e-9, atol=0)
    calls.clear()
    stable_rank(randn(40, 3, seed=21) @ randn(3, 50, seed=22))  # needs no small singular value
    assert calls == []
    # inputs that require grad take the SVD, unless gradients are off
    Ag = A.clone().requires_grad_()
    rank_measures(Ag)
    assert calls == [(60, 90)]
    with torch.no_grad():
        rank_measures(Ag)
    assert calls == [(60, 90)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numerical_rank_equals_matrix_rank(dtype):
    g = gen(21)
    for _ in range(40):
        m, n = torch.randint(2, 40, (2,), generator=g).tolist()
        r = int(torch.randint(0, min(m, n) + 1, (1,), generator=g))
        scale = 10.0 ** float(torch.empty(1).uniform_(-4, 4, generator=g))
        A = (torch.randn(3, m, r, generator=g, dtype=dtype) @ torch.randn(3, r, n, generator=g, dtype=dtype)) * scale
        assert torch.equal(numerical_rank(A), torch.linalg.matrix_rank(A)), (m, n, r)
        for kw in ({"atol": 1e-3 * scale}, {"rtol": 0.3}, {"atol": 0.0}, {"atol": 2 * scale, "rtol": 0.01}):
            assert torch.equal(numerical_rank(A, **kw), torch.linalg.matrix_rank(A, **kw)), kw
        # tensor tolerances broadcast over the batch, as in torch (zeros keep the default rtol)
        atol = torch.tensor([0.0, 1e-2, 5.0], dtype=F64) * scale
        assert torch.equal(numerical_rank(A, atol=atol), torch.linalg.matrix_rank(A, atol=atol))
        rtol = torch.tensor([0.5, 1e-2, 0.0], dtype=F64)
        assert torch.equal(numerical_rank(A, rtol=rtol), torch.linalg.matrix_rank(A, rtol=rtol))


def test_default_rtol_uses_input_eps():
    A = with_spectrum([1.0, 1e-10], 5, 5, seed=22)
    assert int(numerical_rank(A)) == 2  # 1e-10 > 5 * eps64
    assert int(numerical_rank(A.float())) == int(torch.linalg.matrix_rank(A.float())) == 1
    # float64 input computed in float32: float32's eps, as matrix_rank(A.float())
    assert int(numerical_rank(A, dtype=torch.float32)) == 1


# ------------------------------------------------------------------- invariances


@pytest.mark.parametrize("c", [3.0, -0.5, 1e-200, 1e200, 2.0**-1000])
def test_scale_invariance_even_at_extreme_scales(c):
    A = randn(12, 9, seed=30)
    r0, r1 = rank_measures(A), rank_measures(A * c)
    for k in MEASURES:
        assert float(r1[k]) == pytest.approx(float(r0[k]), rel=1e-12), k
    assert torch.allclose(singular_values(A * c), abs(c) * singular_values(A), rtol=1e-12, atol=0)


def test_orthogonal_and_transpose_invariance():
    A = randn(10, 7, seed=31)
    A[:, -1] = A[:, 0]  # rank 6
    Q, R = orthogonal(10, seed=32), orthogonal(7, seed=33)
    r0 = rank_measures(A)
    spectral = [k for k in MEASURES if k != "participation_ratio"]
    for B in (Q @ A @ R, A.T, Q @ A, A @ R):
        r = rank_measures(B)
        for k in spectral:
            assert float(r[k]) == pytest.approx(float(r0[k]), rel=1e-12), k
    # the participation ratio is a statistic of the rows: invariant to rotating the
    # features (right) and to permuting the samples, not to mixing samples
    P = torch.eye(10, dtype=F64)[torch.randperm(10, generator=gen(34))]
    for B in (A @ R, P @ A):
        assert float(participation_ratio(B)) == pytest.approx(float(r0["participation_ratio"]), rel=1e-12)
    assert float(participation_ratio(Q @ A)) != pytest.approx(float(r0["participation_ratio"]), rel=1e-3)


def test_bounds_over_many_matrices():
    g = gen(35)
    for _ in range(30):
        m, n = torch.randint(2, 25, (2,), generator=g).tolist()
        r = int(torch.randint(1, min(m, n) + 1, (1,), generator=g))
        A = torch.randn(m, r, generator=g, dtype=F64) @ torch.randn(r, n, generator=g, dtype=F64)
        A = A * torch.rand(1, n, generator=g, dtype=F64) ** 3  # uneven spectra
        res = rank_measures(A)
        nr = float(res["numerical_rank"])
        assert nr == r
        assert 1 - 1e-12 <= float(res["stable_rank"]) <= nr + 1e-12
        assert 1 - 1e-12 <= float(res["effective_rank"]) <= nr + 1e-9
        assert float(res["entropy_rank"]) == pytest.approx(math.log(float(res["effective_rank"])), abs=1e-12)
        pr = float(res["participation_ratio"])
        assert 1 - 1e-12 <= pr <= int(torch.linalg.matrix_rank(A - A.mean(0))) + 1e-9
        k = min(m, n)
        assert abs(float(res["rankme"]) / float(res["effective_rank"]) - 1) < 20 * k * 1e-7


# -------------------------------------------------------------------- batching


def test_batched_equals_looped():
    A = randn(2, 3, 8, 5, seed=40)
    A[0, 1] = 0.0  # zero matrix inside the batch
    A[1, 2, :, 3:] = 0.0  # rank-deficient one (forces the SVD path for that one only)
    r = rank_measures(A)
    for k in MEASURES:
        assert r[k].shape == (2, 3)
        for i in range(2):
            for j in range(3):
                single = rank_measures(A[i, j])[k]
                assert single.shape == ()
                assert float(r[k][i, j]) == pytest.approx(float(single), rel=1e-12, abs=1e-300), k
    assert r["numerical_rank"].dtype == torch.int64 and r["stable_rank"].dtype == F64


def test_rank_measures_many_equals_single_calls():
    mats = {"a": randn(6, 4, seed=41), "b": randn(6, 4, seed=42), "c": randn(3, 9, seed=43),
            "conv": as_matrix(randn(8, 2, 3, 3, seed=44)), "big": randn(260, 256, seed=45)}
    out = rank_measures_many(mats)
    assert list(out) == list(mats)
    for name, A in mats.items():
        ref = rank_measures(A)
        for k in MEASURES:
            assert float(out[name][k]) == pytest.approx(float(ref[k]), rel=1e-12), (name, k)
    as_list = rank_measures_many(list(mats.values()), ["stable_rank"])
    assert [float(d["stable_rank"]) for d in as_list] == pytest.approx([float(out[n]["stable_rank"]) for n in mats])
    with pytest.raises(ValueError, match=r"matrices\['b'\]: contains 1 NaN"):
        rank_measures_many({"a": randn(3, 3), "b": torch.tensor([[1.0, float("nan")], [0, 1]])})
    with pytest.raises(TypeError, match="mapping name -> matrix or a sequence"):
        rank_measures_many(torch.eye(3).numpy().tobytes())


def test_rank_measures_many_keeps_each_entrys_batch_shape():
    # entries with batch dims (conv taps, models of a sweep) stack with plain matrices
    taps = as_matrix(randn(5, 4, 3, 3, seed=46), "taps")  # (9, 5, 4)
    mats = {"taps": taps, "plain": randn(5, 4, seed=47), "models": randn(2, 3, 5, 4, seed=48)}
    done = []
    out = rank_measures_many(mats, ["effective_rank", "numerical_rank"], progress=done.append)
    assert sum(done) == len(mats) and len(done) == 1  # one stacked call for the (5, 4) group
    for name, A in mats.items():
        ref = rank_measures(A, ["effective_rank", "numerical_rank"])
        for k, v in out[name].items():
            assert v.shape == A.shape[:-2], (name, k)
            torch.testing.assert_close(v, ref[k], rtol=1e-12, atol=0)


# ------------------------------------------------------------ methods and dtypes


def test_gram_and_svd_methods_agree():
    for A in (randn(20, 12, seed=50), randn(12, 20, seed=51), randn(15, 4, seed=52) @ randn(4, 9, seed=53)):
        g, s, a = (rank_measures(A, method=m) for m in ("gram", "svd", "auto"))
        for k in MEASURES:
            assert float(g[k]) == pytest.approx(float(s[k]), rel=1e-7), k
            assert float(a[k]) == pytest.approx(float(s[k]), rel=1e-12), k
    # singular values from the Gram: exact above sqrt(eps) s_1, noise below
    A = with_spectrum([1.0, 1e-2, 1e-5], 8, 6, seed=54)
    assert torch.allclose(singular_values(A, method="gram"), torch.tensor([1.0, 1e-2, 1e-5, 0, 0, 0], dtype=F64),
                          atol=1e-7, rtol=0)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.float16, torch.bfloat16, torch.uint8])
def test_low_precision_and_integer_inputs_computed_in_float64(dtype):
    A = torch.randint(0, 3, (7, 5), generator=gen(60)).to(dtype)
    got = rank_measures(A)
    ref = rank_measures(A.double())
    for k in MEASURES:
        assert got[k].dtype == (torch.int64 if k == "numerical_rank" else F64)
        assert float(got[k]) == float(ref[k]), k
    assert int(got["numerical_rank"]) == int(torch.linalg.matrix_rank(A.double()))


def test_float32_input_and_compute_dtype():
    A = randn(30, 20, seed=61, dtype=torch.float32)
    r64 = rank_measures(A)
    assert r64["stable_rank"].dtype == F64
    r32 = rank_measures(A, dtype=torch.float32)
    assert r32["stable_rank"].dtype == torch.float32
    for k in MEASURES:
        assert float(r32[k]) == pytest.approx(float(r64[k]), rel=1e-5), k
    assert float(rank_measures(A, dtype="float32")["stable_rank"]) == float(r32["stable_rank"])


def test_numpy_inputs_of_any_byte_order_and_lists():
    A = np.random.default_rng(62).standard_normal((6, 4))
    ref = float(stable_rank(A))
    assert float(stable_rank(A.astype(">f8"))) == ref
    assert float(stable_rank(A.tolist())) == ref
    assert float(stable_rank(A.astype(np.float32))) == pytest.approx(ref, rel=1e-6)
    assert float(stable_rank(A.astype(np.longdouble))) == ref
    assert float(stable_rank(torch.from_numpy(A).T.contiguous().T)) == pytest.approx(ref)  # non-contiguous


def test_top_level_functions_match_rank_measures():
    A = randn(9, 6, seed=63)
    r = rank_measures(A)
    for f in (stable_rank, effective_rank, entropy_rank, numerical_rank, participation_ratio, rankme):
        assert float(f(A)) == pytest.approx(float(r[f.__name__]), rel=1e-13)
    assert float(rankme(A, eps=0.0)) == pytest.approx(float(r["effective_rank"]), rel=1e-14)
    assert rank_measures(A, ["rankme", "stable_rank"]).keys() == {"rankme", "stable_rank"}
    assert list(rank_measures(A, ["rankme", "stable_rank"])) == ["rankme", "stable_rank"]


def test_measures_from_singular_values():
    s = torch.tensor([[4.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    r = measures_from_singular_values(s, shape=(3, 5), centered_sq=s.square())
    assert r["stable_rank"].tolist() == [1.25, 0.0]
    assert r["numerical_rank"].tolist() == [2, 0]
    assert float(r["participation_ratio"][0]) == pytest.approx(400 / 272)
    assert "participation_ratio" not in measures_from_singular_values(s)
    with pytest.raises(ValueError, match="shape"):
        measures_from_singular_values(torch.tensor(1.0))


# -------------------------------------------------------------------- gradients


@pytest.mark.parametrize("method", ["auto", "gram", "svd"])
def test_gradcheck(method):
    A = randn(6, 4, seed=70).requires_grad_()

    def f(X):
        r = rank_measures(X, FLOATS, method=method)
        return torch.stack([r[k] for k in FLOATS])

    assert torch.autograd.gradcheck(f, (A,), eps=1e-6, atol=1e-5)


def test_gradient_finite_at_rank_deficient_and_zero_matrices():
    A = (randn(6, 2, seed=71) @ randn(2, 5, seed=72)).requires_grad_()
    r = rank_measures(A, FLOATS)
    sum(r.values()).backward()
    assert torch.isfinite(A.grad).all() and A.grad.abs().sum() > 0
    Z = torch.zeros(3, 4, dtype=F64, requires_grad=True)
    sum(rank_measures(Z, FLOATS).values()).backward()
    assert torch.equal(Z.grad, torch.zeros(3, 4, dtype=F64))
    # half-precision leaves get their gradient through the float64 computation
    H = randn(5, 4, seed=73).half().requires_grad_()
    stable_rank(H).backward()
    assert H.grad.dtype == torch.float16 and torch.isfinite(H.grad).all()


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "A, match",
    [
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), r"contains 1 NaN and 0 Inf"),
        (np.array([[1.0, np.inf], [-np.inf, 1.0]]), r"contains 0 NaN and 2 Inf"),
        (torch.zeros(0, 3), r"empty input of shape \(0, 3\)"),
        (torch.zeros(0, 3, 3), r"empty input"),
        (torch.ones(4), r"at least 2 dimensions .* got shape \(4,\)"),
        (torch.tensor(1.0), r"at least 2 dimensions"),
        (torch.ones(2, 2, dtype=torch.complex64), r"complex input is not supported"),
        (np.ones((2, 2), dtype=complex), r"complex input is not supported"),
        (np.array([["a", "b"], ["c", "d"]]), r"dtype <U1 .* accepted: bool, integer or floating"),
        ([[1.0, 2.0], [3.0]], r"ragged"),
    ],
)
def test_bad_input_is_a_clear_value_error(A, match):
    with pytest.raises(ValueError, match=match):
        rank_measures(A)


def test_bad_arguments():
    A = randn(3, 3)
    with pytest.raises(TypeError, match="expected a torch.Tensor or numpy array"):
        rank_measures("matrix")
    with pytest.raises(ValueError, match="method must be 'auto', 'gram' or 'svd'"):
        rank_measures(A, method="eig")
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        rank_measures(A, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"unknown measure\(s\) \['rnk'\]; accepted"):
        rank_measures(A, ["rnk"])
    with pytest.raises(ValueError, match="atol must not be NaN"):
        numerical_rank(A, atol=float("nan"))
    with pytest.raises(TypeError, match="rtol must be a float"):
        numerical_rank(A, rtol="small")
    with pytest.raises(ValueError, match="reading must be 'flatten' or 'taps'"):
        as_matrix(randn(4, 3, 2, 2), "rows")


def test_as_matrix_readings():
    W = randn(8, 3, 5, 5, seed=80)
    assert as_matrix(W).shape == (8, 75)
    assert torch.equal(as_matrix(W)[2], W[2].reshape(-1))
    taps = as_matrix(W, "taps")
    assert taps.shape == (25, 8, 3)
    assert torch.equal(taps[1 * 5 + 3], W[:, :, 1, 3])
    assert as_matrix(randn(4, 3), "taps").shape == (4, 3)


# ------------------------------------------------------------- property tests


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
matrices = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9), elements=finite)
PROP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(matrices)
def test_property_agrees_with_reference_and_bounds(A):
    got = rank_measures(A)
    ref = reference(A)
    assert int(got["numerical_rank"]) == ref["numerical_rank"]
    for k in FLOATS:
        assert float(got[k]) == pytest.approx(ref[k], rel=1e-8, abs=1e-10), k
    nr = int(got["numerical_rank"])
    if nr >= 1:
        assert 1 - 1e-9 <= float(got["stable_rank"]) <= nr + 1e-9
        assert 1 - 1e-9 <= float(got["effective_rank"]) <= nr + 1e-9
    assert 0 <= float(got["participation_ratio"]) <= max(min(A.shape[0] - 1, A.shape[1]), 1) + 1e-9


@PROP
@given(matrices, st.floats(1e-6, 1e6), st.booleans())
def test_property_scale_and_transpose_invariance(A, c, transpose):
    # the property is about the measures, not float underflow: c * A must stay exact, so
    # no nonzero entry may fall to the subnormal range (5e-324 * 0.5 == 0 changes the rank)
    assume(bool(np.all((A == 0) | (np.abs(A) * min(c, 1.0) > 1e-290))))
    B = (A.T if transpose else A) * c
    r0, r1 = rank_measures(A), rank_measures(B)
    assert abs(int(r1["numerical_rank"]) - int(r0["numerical_rank"])) <= 0 or _near_threshold(A)
    for k in ("stable_rank", "effective_rank", "entropy_rank", "rankme"):
        assert float(r1[k]) == pytest.approx(float(r0[k]), rel=1e-8, abs=1e-10), k


def _near_threshold(A):
    s = scipy.linalg.svdvals(A)
    tol = max(A.shape) * np.finfo(float).eps * s[0]
    return bool(np.any(np.abs(s - tol) < 1e3 * tol))


@PROP
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_property_batched_equals_looped(m, n, b, seed):
    A = randn(b, m, n, seed=seed)
    r = rank_measures(A)
    for i in range(b):
        single = rank_measures(A[i])
        for k in MEASURES:
            assert float(r[k][i]) == pytest.approx(float(single[k]), rel=1e-12, abs=1e-300)


def test_public_api_exports():
    for name in ("rank_measures", "rank_measures_many", "KernelSpectrum", "numerical_rank", "MEASURES"):
        assert hasattr(rankbias, name) and name in rankbias.__all__
