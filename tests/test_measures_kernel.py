"""KernelSpectrum: streamed spectra of embeddings and kernels equal the dense
computation, from either side (N x N while N <= d, d x d beyond), in bounded memory."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from rankbias import MEASURES, KernelSpectrum, rank_measures
from test_measures import PROP, gen, randn


def stream(Z, sizes, **kw):
    ks = KernelSpectrum(**kw)
    start = 0
    for b in sizes:
        ks.update(Z[start:start + b])
        start += b
    assert start == Z.shape[0]
    return ks


@pytest.mark.parametrize("N, d, sizes", [(60, 12, [1, 20, 39]), (7, 12, [3, 4]), (40, 12, [40])])
@pytest.mark.parametrize("centered", [False, True])
def test_kernel_spectrum_equals_dense(N, d, sizes, centered):
    Z = randn(N, d, seed=90) + 0.5
    Z[:, -3:] = Z[:, :3] @ randn(3, 3, seed=91)  # a rank-deficient embedding (rank <= d-3)
    ks = stream(Z, sizes, centered=centered)
    Zt = Z - Z.mean(0) if centered else Z
    K = Zt @ Zt.T
    kern, emb = ks.measures(), ks.embedding_measures()
    ref_k, ref_e = rank_measures(K), rank_measures(Zt)
    for k in MEASURES:
        assert float(kern[k]) == pytest.approx(float(ref_k[k]), rel=1e-9), ("kernel", k)
        assert float(emb[k]) == pytest.approx(float(ref_e[k]), rel=1e-9), ("embedding", k)
    # the kernel's spectrum is that of the embedding squared
    s = scipy.linalg.svdvals(Zt.numpy())
    assert np.allclose(ks.eigenvalues().numpy(), s**2, rtol=1e-9, atol=1e-9 * s[0] ** 2)
    assert ks.n_samples_ == N and ks.dim_ == d
    assert torch.allclose(ks.gram_, Z.T @ Z, rtol=1e-12) and torch.allclose(ks.sum_, Z.sum(0))


def test_kernel_spectrum_centering_is_exact_for_large_means():
    Z = randn(500, 6, seed=92) * 1e-3 + 1e5  # naive Z^T Z - N mu mu^T cancels ~16 digits
    ks = stream(Z, [100] * 5, centered=True)
    ref = rank_measures(Z - Z.mean(0))
    for k in ("stable_rank", "effective_rank", "participation_ratio"):
        assert float(ks.embedding_measures()[k]) == pytest.approx(float(ref[k]), rel=1e-8), k


def test_kernel_spectrum_merge_equals_one_stream():
    Z = randn(90, 5, seed=93)
    a, b = stream(Z[:30], [30]), stream(Z[30:], [25, 35])
    merged = a.merge(b)
    whole = stream(Z, [90])
    assert torch.allclose(merged.scatter_, whole.scatter_, rtol=1e-12)
    assert torch.allclose(merged.mean_, whole.mean_, rtol=1e-12)
    assert KernelSpectrum().merge(whole).n_samples_ == 90


def test_kernel_spectrum_streams_a_million_embeddings_in_constant_memory():
    N, d, chunk = 1_000_000, 16, 100_000
    spectrum = torch.linspace(3.0, 0.1, d)
    ks = KernelSpectrum()
    g = gen(94)
    full = []
    for _ in range(N // chunk):
        z = torch.randn(chunk, d, generator=g) * spectrum + 0.3  # float32 chunks
        ks.update(z)
        if ks.n_samples_ == chunk:
            first_nbytes = ks.nbytes
        full.append(z)
    assert ks.n_samples_ == N
    # the state is the d x d scatter and the d-vector mean, whatever N
    assert ks.nbytes == first_nbytes == 8 * (d * d + d)
    assert ks.scatter_.shape == (d, d) and ks.mean_.shape == (d,)
    Z = torch.cat(full).double()
    s = scipy.linalg.svdvals(Z.numpy())
    p = s / s.sum()
    assert float(ks.embedding_measures()["effective_rank"]) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-9)
    lam = s**2
    assert float(ks.measures()["stable_rank"]) == pytest.approx(np.sum(lam**2) / lam[0] ** 2, rel=1e-9)
    assert int(ks.measures()["numerical_rank"]) == d


def test_kernel_spectrum_bad_input():
    ks = KernelSpectrum()
    with pytest.raises(ValueError, match="KernelSpectrum is empty"):
        ks.measures()
    ks.update(torch.ones(3, 4))
    with pytest.raises(ValueError, match="embedding dimension 5 != 4"):
        ks.update(torch.ones(2, 5))
    with pytest.raises(ValueError, match="NaN"):
        ks.update(torch.tensor([[0.0, 1.0, float("nan"), 2.0]]))
    with pytest.raises(ValueError, match="dim must be a positive int"):
        KernelSpectrum(dim=0)
    ks.update(torch.ones(4))  # one embedding as a vector
    assert ks.n_samples_ == 4
    # every leading index is a sample
    assert KernelSpectrum().update(torch.ones(2, 3, 4)).n_samples_ == 6



@PROP
@given(st.integers(1, 30), st.integers(1, 8), st.lists(st.integers(1, 10), min_size=1, max_size=5),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_property_kernel_spectrum_independent_of_batching(N, d, cuts, centered, seed):
    Z = randn(N, d, seed=seed) * 3 + 1
    sizes, left = [], N
    for c in cuts:
        if left == 0:
            break
        sizes.append(min(c, left))
        left -= sizes[-1]
    if left:
        sizes.append(left)
    a, b = stream(Z, sizes, centered=centered), stream(Z, [N], centered=centered)
    assert torch.allclose(a.scatter(), b.scatter(), rtol=1e-10, atol=1e-10)
    ea, eb = a.embedding_measures(), b.embedding_measures()
    ref = rank_measures(Z - Z.mean(0) if centered else Z, ["stable_rank", "participation_ratio"])
    for k in ("stable_rank", "participation_ratio"):
        assert float(ea[k]) == pytest.approx(float(eb[k]), rel=1e-9, abs=1e-12)
        assert float(ea[k]) == pytest.approx(float(ref[k]), rel=1e-8, abs=1e-10)


# ------------------------------------------------ the N x N side (N <= d) and the d x d side


def _assert_same(a, b, rtol=1e-9):
    for k in MEASURES:
        if k == "numerical_rank":
            assert int(a[k]) == int(b[k]), k
        else:
            assert float(a[k]) == pytest.approx(float(b[k]), rel=rtol, abs=1e-300), k


@pytest.mark.parametrize("N, d, sizes", [(8, 40, [3, 3, 2]), (12, 12, [5, 7]), (9, 30, [9]),
                                         (20, 12, [5, 5, 10])])
@pytest.mark.parametrize("centered", [False, True])
def test_samples_side_equals_features_side(N, d, sizes, centered):
    Z = randn(N, d, seed=95) * torch.linspace(3.0, 0.2, d, dtype=torch.float64) + 0.7
    rows = stream(Z, sizes, centered=centered)  # N x N side while N <= d
    feats = stream(Z, sizes, centered=centered, max_rows=0)  # always d x d
    lam_r, lam_f = rows.eigenvalues(), feats.eigenvalues()
    assert lam_r.shape == lam_f.shape == (min(N, d),)
    torch.testing.assert_close(lam_r, lam_f, rtol=1e-10, atol=1e-12 * float(lam_f[0]))
    _assert_same(rows.measures(), feats.measures())
    _assert_same(rows.embedding_measures(), feats.embedding_measures())
    Zt = Z - Z.mean(0) if centered else Z
    _assert_same(rows.measures(), rank_measures(Zt @ Zt.T))
    _assert_same(rows.embedding_measures(), rank_measures(Zt))
    for attr in ("mean_", "scatter_", "gram_", "sum_"):
        torch.testing.assert_close(getattr(rows, attr), getattr(feats, attr), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(rows.scatter(), feats.scatter(), rtol=1e-11, atol=1e-11)
    # the state: the rows (8 N d bytes) while N <= d, the d x d scatter beyond; never more
    assert feats.nbytes == 8 * (d * d + d)
    assert rows.nbytes == (8 * N * d if N <= d else 8 * (d * d + d))
    assert rows.nbytes <= 8 * (d * d + d)


def test_rows_fold_into_the_scatter_once_n_exceeds_d():
    d = 6
    Z = randn(40, d, seed=96) + 3.0
    ks = KernelSpectrum(d)
    seen = []
    for b in Z.split(4):  # 4, 8: rows; 12 > d: folded
        ks.update(b)
        seen.append(ks.nbytes)
    assert seen[0] == 8 * 4 * d and seen[1:] == [8 * (d * d + d)] * (len(seen) - 1)
    assert ks.scatter_.shape == (d, d)
    whole = stream(Z, [40])
    torch.testing.assert_close(ks.scatter_, whole.scatter_, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ks.mean_, whole.mean_, rtol=1e-14, atol=0)


def test_merge_across_sides_equals_one_stream():
    d = 10
    Z = randn(30, d, seed=97) * 2 - 1
    whole = stream(Z, [30], max_rows=0)
    for cut_a, cut_b in [(3, 4), (3, 20), (20, 4), (15, 12)]:  # rows+rows, rows+folded, ...
        a = stream(Z[:cut_a], [cut_a])
        b = stream(Z[cut_a:cut_a + cut_b], [cut_b])
        c = stream(Z[cut_a + cut_b:], [30 - cut_a - cut_b])
        merged = a.merge(b).merge(c)
        assert merged.n_samples_ == 30
        torch.testing.assert_close(merged.scatter_, whole.scatter_, rtol=1e-12, atol=1e-12)
        _assert_same(merged.measures(), whole.measures())
    small = stream(Z[:4], [4]).merge(stream(Z[4:7], [3]))
    assert small.nbytes == 8 * 7 * d  # two row sets that fit stay rows
    _assert_same(small.embedding_measures(), rank_measures(Z[:7]))


def test_kept_rows_are_a_copy_of_the_callers_buffer():
    buf = randn(5, 16, seed=98)
    ref = rank_measures(buf.clone())
    ks = KernelSpectrum().update(buf)
    buf.zero_()  # a hook reusing its output buffer
    _assert_same(ks.embedding_measures(), ref)


def test_wide_layer_few_samples_takes_the_small_side(monkeypatch):
    # Linear(64, 4096) on 8 inputs: the 8 x 8 kernel, never a 4096 x 4096 eigenproblem
    sizes = []
    real = torch.linalg.eigvalsh

    def spy(G, *a, **k):
        sizes.append(G.shape[-1])
        return real(G, *a, **k)

    monkeypatch.setattr(torch.linalg, "eigvalsh", spy)
    torch.manual_seed(0)
    Z = torch.nn.Linear(64, 4096)(torch.randn(8, 64)).detach()
    ks = KernelSpectrum(4096).update(Z[:5]).update(Z[5:])
    kern, emb = ks.measures(), ks.embedding_measures()
    assert sizes and set(sizes) == {8}
    assert int(kern["numerical_rank"]) == int(emb["numerical_rank"]) == 8
    s = scipy.linalg.svdvals(Z.double().numpy())
    assert float(emb["stable_rank"]) == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-10)


def test_max_rows_is_validated():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_rows must be an int >= 0 or None"):
            KernelSpectrum(max_rows=bad)
