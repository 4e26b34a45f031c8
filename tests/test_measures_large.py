"""Issue 21: the exact route's accuracy parameter and route decision, the fast route's error bars."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from _helpers import count_svd_calls
from rankbias.errors import InvalidParameterError
from rankbias.measures import _tail, approx, measures_from_singular_values, rank_measures
from rankbias.measures.approx import FAST_MEASURES, Estimates, _rules, fast_rank_measures
from rankbias.measures.spectrum import _gram_error

F64 = torch.float64
SPECTRAL = ["stable_rank", "effective_rank", "entropy_rank", "numerical_rank", "rankme"]


def power_law(m, n, alpha=0.5, seed=0):
    """float32 (G1 diag(i^-alpha) G2^T): a power-law spectrum bent by Gaussian factors."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -alpha
    return (torch.randn(m, k, generator=g) * s) @ torch.randn(n, k, generator=g).mT / (m * n) ** 0.5


def with_spectrum(s, m, n, seed=0):
    g = np.random.default_rng(seed)
    U = np.linalg.qr(g.standard_normal((m, len(s))))[0]
    V = np.linalg.qr(g.standard_normal((n, len(s))))[0]
    return torch.from_numpy((U * np.asarray(s)) @ V.T)


def reference(A):
    """The measures from scipy's float64 SVD (an independent LAPACK driver)."""
    s = torch.from_numpy(scipy.linalg.svdvals(A.double().numpy()))
    eps = torch.finfo(A.dtype).eps if A.dtype in (torch.float32, F64) else None
    return measures_from_singular_values(s, shape=tuple(A.shape), measures=SPECTRAL, eps=eps)


def assert_within(got, ref, rel):
    for k in SPECTRAL:
        if k == "numerical_rank":
            assert int(got[k]) == int(ref[k]), k
        else:
            # + 1e-12: the entropy rank of a rank-one matrix is 0 up to the SVDs' own rounding
            assert abs(float(got[k]) - float(ref[k])) <= rel * abs(float(ref[k])) + 1e-12, (
                k,
                float(got[k]),
                float(ref[k]),
            )


# ----------------------------------------------------------------- route 1: exact


def test_default_keeps_the_gram_route_on_a_power_law_matrix(monkeypatch):
    # 520 x 1400: large enough for the default accuracy 1e-6 (the old fixed 1.5e-9
    # target sent it to a second, float64 SVD)
    calls = count_svd_calls(monkeypatch)
    A = power_law(520, 1400, seed=1)
    got = rank_measures(A, SPECTRAL)
    assert calls == []
    assert_within(got, reference(A), 1e-6)


def test_singular_values_below_the_gram_resolution_keep_the_gram_route(monkeypatch):
    # s = 1e-9, 1e-10 fall below the Gram route's resolution (returned as 0): the
    # entropies' bound still holds (a value below delta moves H by ~delta log(1/delta));
    # the old derivative bound was infinite there and took the SVD
    calls = count_svd_calls(monkeypatch)
    A = with_spectrum(np.r_[np.geomspace(1.0, 1e-2, 298), [1e-9, 1e-10]], 300, 500, seed=2)
    got = rank_measures(
        A, ["effective_rank", "entropy_rank", "rankme", "stable_rank"], accuracy=1e-6
    )
    assert calls == []
    ref = reference(A)
    for k in got:
        assert float(got[k]) == pytest.approx(float(ref[k]), rel=1e-6), k


@pytest.mark.parametrize("case", ["near_rank_deficient", "rank_one", "near_rank_one"])
def test_accuracy_is_met_where_the_gram_route_is_not_enough(monkeypatch, case):
    calls = count_svd_calls(monkeypatch)
    s = {
        "near_rank_deficient": np.r_[np.geomspace(1, 1e-3, 40), [1e-10, 1e-11]],
        "rank_one": [2.0],
        "near_rank_one": [1.0, 1e-7, 1e-8],
    }[case]
    A = with_spectrum(s, 300, 500, seed=3)
    got = rank_measures(A, SPECTRAL, accuracy=1e-6)
    assert calls, case  # the bound fails: refined by the SVD, not guessed
    assert_within(got, reference(A), 1e-6)


def test_numerical_rank_is_refined_when_a_singular_value_sits_at_the_threshold(monkeypatch):
    calls = count_svd_calls(monkeypatch)
    s = np.geomspace(1.0, 1e-3, 60)
    A = with_spectrum(s, 300, 500, seed=4)
    for atol in (1e-3 * (1 + 1e-12), 1e-3 * (1 - 1e-12)):
        calls.clear()
        got = rank_measures(A, ["numerical_rank"], atol=atol, accuracy=1e-3)
        assert calls == [(300, 500)]
        assert int(got["numerical_rank"]) == int(torch.linalg.matrix_rank(A, atol=atol, rtol=0))
    calls.clear()
    assert int(rank_measures(A, ["numerical_rank"], atol=0.5e-3)["numerical_rank"]) == 60
    assert calls == []  # far from every singular value: exact from the Gram route


def test_accuracy_is_the_target_of_the_route_decision(monkeypatch):
    calls = count_svd_calls(monkeypatch)
    A = power_law(256, 700, seed=5)
    rank_measures(A, ["effective_rank"], accuracy=1e-6)
    assert calls == []
    rank_measures(A, ["effective_rank"], accuracy=1e-14)  # beyond the Gram route's bound
    assert calls == [(256, 700)]


def test_small_singular_values_are_refined_on_their_own_scale_not_by_an_svd(monkeypatch):
    # 640 x 640 power law: its smallest singular values (~1e-4 s_1) hold the Gram
    # route's entropy bound above 1e-8; the tail refinement (no SVD of A) brings it
    # under, and the values agree with scipy's SVD to that accuracy
    calls = count_svd_calls(monkeypatch)
    A = power_law(640, 640, seed=6)
    _tail._LAST_ITERATIONS[0] = 0
    got = rank_measures(A, SPECTRAL, accuracy=1e-8)
    assert _tail._LAST_ITERATIONS[0] > 0  # the refinement ran
    assert [c for c in calls if c == (640, 640)] == []  # and no SVD of A
    assert_within(got, reference(A), 1e-8)


def test_refined_tail_brackets_the_true_singular_values_far_tighter_than_the_gram():
    A = power_law(700, 900, seed=7).double()
    X = A / 2.0 ** int(np.ceil(np.log2(float(A.abs().max()))))
    G = X @ X.mT
    s = torch.linalg.eigvalsh(G).flip(-1).clamp_min(0).sqrt()
    true = torch.from_numpy(scipy.linalg.svdvals(X.numpy()))
    sig, delta = _tail.refine_tail(X, G, s, 32)
    assert ((sig - true[-32:]).abs() <= delta).all()  # the bound holds
    gram_delta = _gram_error(s)[-32:]
    assert (delta * 100 <= gram_delta).all()  # and is 100x tighter than the Gram route's


def test_tail_refinement_gives_up_without_a_gap():
    # all singular values equal: no gap between the tail and the rest, no bound
    X = with_spectrum(np.ones(64), 64, 80, seed=8)
    G = X @ X.mT
    s = torch.linalg.eigvalsh(G).flip(-1).clamp_min(0).sqrt()
    assert _tail.refine_tail(X, G, s, 16) is None


@pytest.mark.parametrize("bad", [0, 0.0, 1.0, -1e-6, float("nan"), "1e-6", True, [1e-6]])
def test_bad_accuracy_is_refused(bad):
    with pytest.raises(
        InvalidParameterError, match=r"accuracy must be a relative error in \(0, 1\)"
    ):
        rank_measures(torch.eye(3), accuracy=bad)


# ----------------------------------------------------------------- route 2: fast


@pytest.mark.parametrize("seed", range(4))
def test_fast_route_holds_the_truth_in_its_error_bar(seed):
    A = power_law(256, 700, seed=10 + seed)
    ref = reference(A)
    est = rank_measures(A, method="fast", seed=seed)
    assert isinstance(est, Estimates) and tuple(est) == FAST_MEASURES
    for k in FAST_MEASURES:
        v, e = float(est[k]), float(est.errors[k])
        assert 0 < e <= 1e-2 * v, (k, e, v)  # the bar meets the default target
        assert abs(v - float(ref[k])) <= e, (k, v, e, float(ref[k]))


@pytest.mark.parametrize("seed", range(4))
def test_fast_stable_rank_alone_needs_no_tail(seed):
    # lambda_1 by subspace iteration on 8 columns: the bar meets the target, holds the truth
    # (known exactly: the spectrum is built), and the work is a few passes, not the ~500
    # columns of the range finder plus the tail that the four measures take
    s = np.arange(1, 301) ** -0.5
    A = with_spectrum(s, 300, 800, seed=seed).float()
    truth = float((s**2).sum() / s[0] ** 2)
    est = fast_rank_measures(A, ["stable_rank"], seed=seed)
    v, e = float(est["stable_rank"]), float(est.errors["stable_rank"])
    assert 0 < e <= 1e-2 * v and abs(v - truth) <= e, (v, e, truth)
    assert est.columns % approx._BLOCK == 0 and est.columns <= 6 * approx._BLOCK
    # 1e-4 is below float32's worst-case rounding here, (300 + 800) eps = 1.3e-4: float64
    tight = fast_rank_measures(A, ["stable_rank"], seed=seed, accuracy=1e-4, dtype=F64)
    assert (
        abs(float(tight["stable_rank"]) - truth)
        <= float(tight.errors["stable_rank"])
        <= 1e-4 * truth
    )
    assert tight.columns > est.columns
    # beyond float32: it stops where the residual reaches the products' rounding, and says so
    floor = fast_rank_measures(A, ["stable_rank"], seed=seed, accuracy=1e-9)
    assert abs(float(floor["stable_rank"]) - truth) <= float(floor.errors["stable_rank"])
    assert float(floor.errors["stable_rank"]) > 1e-9 * truth and floor.columns < 20 * approx._BLOCK


def test_fast_route_uses_the_input_uncopied_only_where_its_scale_is_safe():
    A = power_law(120, 300, seed=5)
    A = A / A.abs().max()  # largest |entry| 1: inside [1e-6, 1e6]
    before = A.clone()
    ref = fast_rank_measures(A, seed=1)
    assert torch.equal(A, before)  # read, never scaled in place
    for scale, uncopied in ((2e-6, True), (5e5, True), (5e-7, False), (2e6, False)):
        X = A * scale
        assert (approx._scaled(X, torch.float32, X).data_ptr() == X.data_ptr()) is uncopied
    for scale in (1e-7, 1e7, 1e-30, 1e30):  # squares under- or overflow float32 unless rescaled
        got = fast_rank_measures(A * scale, seed=1)
        for k in FAST_MEASURES:
            assert float(got[k]) == pytest.approx(float(ref[k]), rel=1e-5), (scale, k)


def test_fast_route_reads_bool_int_and_float64_beyond_float32():
    # the extremes in float64: bool has no negation, and int8's -(-128) is -128 again;
    # a float64 input above float32's range is divided before the cast, not made inf
    g = torch.Generator().manual_seed(3)
    B = torch.rand(30, 50, generator=g) > 0.5
    N8 = -torch.randint(0, 128, (30, 50), generator=g, dtype=torch.int8)
    N8[0, 0] = -128
    D = torch.randn(30, 50, generator=g, dtype=F64) * 1e39
    for A in (B, N8, D):
        got = fast_rank_measures(A, ["stable_rank"])
        truth = float(rank_measures(A.double() / A.double().abs().max(), ["stable_rank"])["stable_rank"])
        assert abs(float(got["stable_rank"]) - truth) <= float(got.errors["stable_rank"]), A.dtype
        assert bool(torch.isfinite(fast_rank_measures(A)["effective_rank"])), A.dtype


def test_fast_stable_rank_meets_its_target_where_the_top_is_clustered():
    # a Gaussian matrix: the top eigenvalues of W W^T crowd at the Marchenko-Pastur edge, so
    # the residual falls slowly; it must keep iterating to the target, not stop at ~1.2 %
    A = torch.randn(2048, 4096, generator=torch.Generator().manual_seed(0))
    est = fast_rank_measures(A, ["stable_rank"])
    truth = float(rank_measures(A, ["stable_rank"])["stable_rank"])
    v, e = float(est["stable_rank"]), float(est.errors["stable_rank"])
    assert e <= 1e-2 * v and abs(v - truth) <= e, (v, e, truth)


@pytest.mark.parametrize("cols", [3, 15, 16, 40])
def test_products_are_m_times_v_whichever_way_they_are_taken(cols):
    X = power_law(50, 130, seed=2)
    V = torch.randn(50, cols)
    ref = X.double() @ (X.double().mT @ V.double())
    got = approx._product(X)(V)
    assert got.shape == (50, cols)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


def test_gauss_and_radau_rules_bracket_the_sum_of_singular_values():
    # M = diag(lam), a power law down to ~0: per probe, the Gauss rule overestimates
    # z^T sqrt(M) z and the Radau rule (a node at 0) underestimates it; the estimate's
    # 2:1 mix lies between
    k, probes, steps = 400, 6, 10
    lam = torch.arange(1, k + 1, dtype=F64) ** -1.0 * torch.linspace(1, 1e-3, k, dtype=F64)
    Q = torch.zeros(k, 0, dtype=F64)
    T, dim = approx._lanczos(
        lambda V: lam[:, None] * V, Q, probes, steps, torch.Generator().manual_seed(1)
    )
    z = torch.randn(k, probes, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = dim * (z.square() / z.square().sum(0) * lam.sqrt()[:, None]).sum(0)
    (ng, wg), (nr, wr), (nm, wm) = _rules(T, dim)
    gauss, radau, mix = ((w * n.sqrt()).sum(-1) for n, w in ((ng, wg), (nr, wr), (nm, wm)))
    assert (gauss >= exact).all() and (radau <= exact).all()
    assert ((mix - exact).abs() < (gauss - radau) / 2).all()


def test_fast_route_is_deterministic_given_the_seed_and_batched():
    A = power_law(120, 300, seed=20)
    a, b = (
        fast_rank_measures(A, seed=3, rank=8, probes=6, max_rounds=1),
        fast_rank_measures(A, seed=3, rank=8, probes=6, max_rounds=1),
    )
    c = fast_rank_measures(A, seed=4, rank=8, probes=6, max_rounds=1)
    for k in FAST_MEASURES:
        assert torch.equal(a[k], b[k]) and torch.equal(a.errors[k], b.errors[k])
    assert any(not torch.equal(a[k], c[k]) for k in FAST_MEASURES)  # the seed is used
    B = torch.stack([A, 2 * A, torch.zeros_like(A)])
    est = rank_measures(B, ["effective_rank", "stable_rank"], method="fast")
    assert est["effective_rank"].shape == (3,)
    assert float(est["effective_rank"][0]) == pytest.approx(
        float(est["effective_rank"][1]), rel=1e-5
    )
    assert float(est["effective_rank"][2]) == 0 and float(est.errors["stable_rank"][2]) == 0


def test_fast_route_rounds_stop_at_a_quarter_of_the_exact_work(monkeypatch):
    # an unreachable target: rounds double until the budget; float32 products
    # (4 k N flops per column) count half against the exact route's float64 flops
    k, n = 512, 1400
    A = power_law(k, n, seed=21)
    unlimited = fast_rank_measures(A, accuracy=1e-6, max_rounds=2)  # a cheap matrix: no budget
    monkeypatch.setattr(approx, "_CHEAP_EXACT_FLOPS", 0.0)
    capped = fast_rank_measures(A, accuracy=1e-6)
    exact_flops = 2 * k * k * n + 2 * 4 / 3 * k**3
    first = (32 + 10) * 4 + 16 * 24  # range finder (3 products of 42 columns + RR), 16 x 24 Lanczos
    second = (64 + 10) * 4 + 32 * 24
    assert (first + second) * 4 * k * n / 2 > exact_flops / 4  # a second round would exceed it
    assert capped.columns == first
    assert unlimited.columns >= first + second
    for key in FAST_MEASURES:  # the wider bar is reported as it is, still around the truth
        assert float(capped.errors[key]) >= float(unlimited.errors[key])


def test_fast_route_refuses_what_it_cannot_estimate():
    A = power_law(40, 60)
    for name in ("numerical_rank", "participation_ratio"):
        with pytest.raises(
            InvalidParameterError, match=r"method='fast' does not estimate .*accepted"
        ):
            rank_measures(A, [name], method="fast")
    for kw, match in [
        ({"probes": 2}, "probes must be an integer >= 4"),
        ({"rank": 0}, "rank must be"),
        ({"steps": 1.5}, "steps must be"),
        ({"seed": "a"}, "seed must be an integer"),
        ({"max_rounds": 0}, "max_rounds must be"),
        ({"accuracy": 2.0}, "accuracy must be"),
    ]:
        with pytest.raises(InvalidParameterError, match=match):
            fast_rank_measures(A, **kw)
    with pytest.raises(
        InvalidParameterError, match=r"method must be 'auto', 'gram' or 'svd' \(or 'fast'"
    ):
        rank_measures(A, method="quick")
    with pytest.raises(InvalidParameterError, match="contains 40 NaN"):
        rank_measures(torch.where(torch.arange(60) == 3, torch.nan, A), method="fast")


def test_bench_large_quick_runs():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_large.py"
    spec = importlib.util.spec_from_file_location("bench_large", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick"]) == 0


def test_gram_error_model_covers_a_very_long_side():
    """A k x N matrix sums N-term products in its Gram: with N >> k^2 the rounding grows
    past k eps s_1^2 (the old model, exceeded here: a bound that was not one), and the model
    takes sqrt(N) instead; the eigenvalues' actual error stays inside it."""
    from rankbias.measures._tail import gram_growth
    from rankbias.measures.spectrum import _gram

    k, N = 8, 400_000
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(N, k, generator=g, dtype=torch.float64))
    s = torch.tensor([1.0] + [1e-4] * (k - 1), dtype=torch.float64)
    X = s[:, None] * Q.mT  # singular values s exactly, up to the QR's own rounding
    lam = torch.linalg.eigvalsh(_gram(X)).flip(0)
    err = float((lam - s.square()).abs().max())
    eps = torch.finfo(torch.float64).eps
    assert err > k * eps  # the old model's bound (s_1 = 1) is exceeded
    assert err <= gram_growth(k, N) * eps
