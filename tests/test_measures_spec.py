"""The spec table: one entry per measure, read by every function; a measure
without an error bound is computed from the SVD; the slow-computation warning;
the in-place Gram route leaves the input alone."""

import dataclasses
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

import rankbias.measures.spectrum as spectrum
from _helpers import count_svd_calls
from rankbias.measures import (
    MEASURES,
    SPECS,
    KernelSpectrum,
    MeasureSpec,
    SlowComputationWarning,
    max_measure,
    measures_from_singular_values,
    rank_measures,
    rank_measures_many,
)
from test_measures import randn, reference, with_spectrum


def test_every_list_of_measures_is_the_table():
    assert MEASURES == tuple(SPECS)
    A = randn(7, 5, seed=100)
    assert tuple(rank_measures(A)) == MEASURES
    assert tuple(rank_measures_many([A])[0]) == MEASURES
    assert tuple(KernelSpectrum().update(A).measures()) == MEASURES
    for name, spec in SPECS.items():
        assert spec.error_bound is not None, name  # every built-in measure may use the Gram route
        assert max_measure(name, (7, 5)) == spec.max_value(7, 5, 1e-7)
    assert [k for k, s in SPECS.items() if s.integer] == ["numerical_rank"]
    assert [k for k, s in SPECS.items() if s.centered] == ["participation_ratio"]


def _smallest_sv(sp):
    # s are those of A / scale (exact powers of two): a measure that is not scale-invariant undoes it
    return sp.s[..., -1] * (1.0 if sp.scale is None else sp.scale)


SMALLEST = MeasureSpec("smallest_sv", _smallest_sv, None, lambda m, n, e: math.inf,
                       definition="s_k, the smallest singular value (test only)")


def test_a_measure_without_an_error_bound_is_computed_from_the_svd(monkeypatch):
    monkeypatch.setitem(SPECS, SMALLEST.name, SMALLEST)  # registered for this test only
    calls = count_svd_calls(monkeypatch)
    s = np.geomspace(1.0, 1e-6, 30)  # s_k = 1e-6 s_1: far below the Gram route's resolution
    A = with_spectrum(s, 40, 30, seed=101)
    got = rank_measures(A, ["stable_rank", "smallest_sv"])
    assert calls == [(40, 30)]
    assert float(got["smallest_sv"]) == pytest.approx(1e-6, rel=1e-8)
    assert float(got["stable_rank"]) == pytest.approx(reference(A.numpy())["stable_rank"], rel=1e-12)
    calls.clear()
    rank_measures(A, ["stable_rank"])  # the built-in measure alone trusts the Gram route
    assert calls == []
    # where the Gram route is forced, s_k is off by far more: why "auto" does not trust it
    gram = float(rank_measures(A, ["smallest_sv"], method="gram")["smallest_sv"])
    assert abs(gram / 1e-6 - 1) > 1e-7
    # the same entry with a bound (the relative error of s_k) keeps the Gram route where it holds
    bounded = dataclasses.replace(SMALLEST, error_bound=lambda sp: sp.delta[..., -1] / sp.s[..., -1])
    monkeypatch.setitem(SPECS, SMALLEST.name, bounded)
    calls.clear()
    B = with_spectrum(np.geomspace(1.0, 1e-2, 30), 40, 30, seed=102)
    assert float(rank_measures(B, ["smallest_sv"])["smallest_sv"]) == pytest.approx(1e-2, rel=1e-9)
    assert calls == []
    rank_measures(A, ["smallest_sv"])
    assert calls == [(40, 30)]


def test_a_registered_measure_reaches_every_function(monkeypatch):
    monkeypatch.setitem(SPECS, SMALLEST.name, SMALLEST)
    A = randn(9, 6, seed=103)
    s_min = float(scipy.linalg.svdvals(A.numpy())[-1])
    assert float(rank_measures(A)["smallest_sv"]) == pytest.approx(s_min, rel=1e-12)
    assert float(rank_measures_many({"a": A})["a"]["smallest_sv"]) == pytest.approx(s_min, rel=1e-12)
    s = torch.linalg.svdvals(A)
    assert float(measures_from_singular_values(s)["smallest_sv"]) == float(s[-1])
    emb = KernelSpectrum().update(A).embedding_measures(["smallest_sv"])
    assert float(emb["smallest_sv"]) == pytest.approx(s_min, rel=1e-9)
    assert max_measure("smallest_sv", (9, 6)) == math.inf
    assert "smallest_sv" not in MEASURES  # the built-in names do not change


def test_measure_spec_is_validated():
    with pytest.raises(ValueError, match="must be an identifier"):
        MeasureSpec("my rank", _smallest_sv, None, lambda m, n, e: 1.0)
    with pytest.raises(TypeError, match="formula must be callable"):
        MeasureSpec("r", 3.0, None, lambda m, n, e: 1.0)
    with pytest.raises(TypeError, match="error_bound must be callable or None"):
        MeasureSpec("r", _smallest_sv, 1e-9, lambda m, n, e: 1.0)


def test_slow_computations_are_announced_with_shape_and_estimate(monkeypatch):
    A = randn(60, 90, seed=104)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # small matrices: no warning
        rank_measures(A)
    # as if this CPU were 10^7 times slower: the estimate crosses the ~10 s threshold
    for name in ("_GEMM_FLOPS", "_EIG_FLOPS", "_SVD_FLOPS"):
        monkeypatch.setattr(spectrum, name, getattr(spectrum, name) * 1e-7)
    slow = r"60 x 90 input \(computed in torch.float64\): .*estimated ~\d+ s"
    with pytest.warns(SlowComputationWarning, match=slow):
        rank_measures(A, ["stable_rank"])
    B = randn(40, 3, seed=21) @ randn(3, 50, seed=22)  # rank-deficient: the SVD fallback
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rank_measures(B)
    msgs = [str(w.message) for w in rec if w.category is SlowComputationWarning]
    assert len(msgs) == 2  # before the Gram route, then before the SVD
    assert "centred Gram matrix and eigvalsh" in msgs[0] and "SVD fallback" in msgs[1]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rank_measures(torch.stack([B, randn(40, 50, seed=1), B, randn(40, 50, seed=2)]))
    msgs = [str(w.message) for w in rec if w.category is SlowComputationWarning]
    assert "a 4 x 40 x 50 input (computed in torch.float64): centred Gram" in msgs[0]
    assert "a 2 x 40 x 50 input (computed in torch.float64): SVD fallback for 2 of" in msgs[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_is_left_alone_and_measures_do_not_depend_on_what_else_is_asked(dtype):
    A = (randn(30, 20, seed=105) + 5.0).to(dtype)
    B = (randn(3, 8, 4, seed=106) @ randn(3, 4, 12, seed=107)).to(dtype)  # rank 4: SVD fallback
    for X in (A, A.T, B):
        before = X.clone()
        full = rank_measures(X)
        assert torch.equal(X, before)
        spectral = rank_measures(X, [k for k in MEASURES if k != "participation_ratio"])
        for k, v in spectral.items():
            torch.testing.assert_close(full[k], v, rtol=1e-13, atol=0)
        pr = rank_measures(X, ["participation_ratio"])["participation_ratio"]
        torch.testing.assert_close(full["participation_ratio"], pr, rtol=1e-13, atol=0)


def test_large_inputs_get_their_gram_from_blocks_without_a_whole_copy(monkeypatch):
    names = [k for k in MEASURES if not SPECS[k].centered]
    cases = [randn(7, 50, seed=108).float(), randn(60, 9, seed=109), randn(3, 8, 30, seed=110),
             (randn(40, 3, seed=21) @ randn(3, 50, seed=22)).float(),  # rank 3: SVD fallback
             torch.stack([randn(40, 3, seed=21) @ randn(3, 50, seed=22), randn(40, 50, seed=111)])]
    whole = [rank_measures(A, names) for A in cases]
    monkeypatch.setattr(spectrum, "_BLOCK_ELEMENTS", 64)  # every case is "large" now
    monkeypatch.setattr(spectrum, "_BLOCK_SIZE", 100)  # several blocks each
    copies = []
    real = spectrum._scaled
    monkeypatch.setattr(spectrum, "_scaled", lambda A, *a, **k: (copies.append(tuple(A.shape)),
                                                               real(A, *a, **k))[1])
    # a converted copy only of the matrices that need the SVD: none, ..., the rank-3 one
    expected = [[], [], [], [(1, 40, 50)], [(1, 40, 50)]]
    for A, ref, exp in zip(cases, whole, expected):
        copies.clear()
        got = rank_measures(A, names)
        for k in names:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=0)
        assert copies == exp
    with pytest.raises(ValueError, match=r"A: contains 40 NaN and 0 Inf value\(s\) \(shape \(1, 80\)\)"):
        rank_measures(torch.tensor([[1.0, float("nan")] * 40]), names)
