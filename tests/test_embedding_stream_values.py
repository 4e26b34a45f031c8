"""The embedding stream's fast paths (issue 21, part 5) give the values of the
plain computation: a channels-first batch read per position without its
channels-last copy, and the finiteness test made on the batch's mean and
scatter instead of on every value."""

import pytest
import torch
from torch import nn

from rankbias import KernelSpectrum, rank_report
from rankbias.errors import InvalidParameterError
from rankbias.measures import MEASURES


def _close(a: dict, b: dict, rel: float) -> None:
    for k in a:
        assert float(a[k]) == pytest.approx(float(b[k]), rel=rel, abs=1e-300), k


@pytest.mark.parametrize("centered", [False, True])
def test_positions_update_equals_rows_update(centered):
    g = torch.Generator().manual_seed(0)
    X = (
        torch.relu(torch.randn(7, 5, 4, 3, generator=g)) + 3.0
    )  # (n, C, H, W): 12 positions >= 5 channels
    fast, plain = KernelSpectrum(centered=centered), KernelSpectrum(centered=centered)
    for chunk in X.split(3):
        fast._update_positions(chunk)
        plain.update(chunk.movedim(1, -1))
    assert fast.n_samples_ == plain.n_samples_ == 7 * 12
    assert torch.allclose(fast.mean_, plain.mean_, rtol=1e-13, atol=0)
    assert torch.allclose(
        fast.scatter_, plain.scatter_, rtol=1e-12, atol=1e-12 * float(plain.scatter_.abs().max())
    )
    _close(fast.measures(), plain.measures(), 1e-10)
    _close(fast.embedding_measures(), plain.embedding_measures(), 1e-10)


def test_positions_update_falls_back_where_it_cannot_skip_the_copy():
    g = torch.Generator().manual_seed(1)
    # fewer positions (2) than channels (6): the (n, d, d) products would outgrow the batch
    few = torch.randn(9, 6, 2, generator=g)
    # a channels-last conv output: the rows are already contiguous
    cl = torch.randn(4, 3, 5, 5, generator=g).to(memory_format=torch.channels_last)
    for X in (few, cl):
        fast = KernelSpectrum(max_rows=0)._update_positions(X)
        plain = KernelSpectrum(max_rows=0).update(X.movedim(1, -1))
        assert torch.equal(fast.scatter_, plain.scatter_)
    # while the rows are kept (N <= d) the positions become rows, as update() keeps them
    kept = KernelSpectrum(max_rows=200)._update_positions(cl)
    assert not kept._folded and kept.n_samples_ == 4 * 25
    with pytest.raises(ValueError, match="embedding dimension 4 != 3"):
        KernelSpectrum(max_rows=0).update(torch.ones(2, 3))._update_positions(torch.ones(1, 4, 9))


@pytest.mark.parametrize(
    "bad, counts", [(float("nan"), "1 NaN and 0 Inf"), (float("inf"), "0 NaN and 1 Inf")]
)
@pytest.mark.parametrize("positions", [False, True])
def test_folded_update_refuses_nan_and_inf_and_keeps_its_state(bad, counts, positions):
    ks = KernelSpectrum(max_rows=0).update(
        torch.randn(50, 3, generator=torch.Generator().manual_seed(2))
    )
    before = (ks.n_samples_, ks.mean_.clone(), ks.scatter_.clone())
    X = torch.ones(2, 3, 4)  # (n, C, positions)
    X[1, 2, 3] = bad
    with pytest.raises(ValueError, match=counts):
        ks._update_positions(X) if positions else ks.update(X.movedim(1, -1))
    assert ks.n_samples_ == before[0]
    assert torch.equal(ks.mean_, before[1]) and torch.equal(ks.scatter_, before[2])


def test_opposite_infinities_in_one_column_are_refused():
    ks = KernelSpectrum(max_rows=0)
    with pytest.raises(ValueError, match="0 NaN and 2 Inf"):
        ks.update(torch.tensor([[1.0, float("inf")], [2.0, float("-inf")], [3.0, 0.0]]))


def test_finite_values_whose_squares_overflow_are_refused_not_called_nan():
    """The O(d) test sees an infinite scatter and the full test finds every value finite:
    merged, they would give ranks of 0 and a NaN participation ratio without an error
    (what the code did before). They are refused, naming the value, and the state kept."""
    ks = KernelSpectrum(max_rows=0).update(torch.randn(10, 2, dtype=torch.float64))
    before = ks.scatter_.clone()
    Z = torch.tensor([[1e200, 0.0], [-1e200, 1.0], [0.0, 2.0]], dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=r"overflow float64 \(largest \|value\| 1e\+200\)"):
        ks.update(Z)
    assert ks.n_samples_ == 10 and torch.equal(ks.scatter_, before)


def test_report_of_a_cnn_equals_one_shot_spectra_of_its_embeddings():
    """The report's streamed conv and linear rows equal a KernelSpectrum fed each
    layer's whole embedding matrix at once (read per position) to 1e-10."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),
    )
    x = torch.rand(40, 1, 8, 8)
    df = rank_report(model, x, batch_size=16, progress=False).set_index("name")
    outs = {}
    hooks = [
        model[i].register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, o.detach()))
        for i in (0, 2, 5)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for i, out in outs.items():
        Z = out.movedim(1, -1).reshape(-1, out.shape[1]) if out.ndim == 4 else out
        want = KernelSpectrum().update(Z).measures()
        assert df.loc[str(i), "emb_matrix_shape"] == tuple(Z.shape)
        for k in MEASURES:
            assert float(df.loc[str(i), f"emb_{k}"]) == pytest.approx(float(want[k]), rel=1e-10), (
                i,
                k,
            )
