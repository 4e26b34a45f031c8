"""Speed changes of issue 21 (part 6): the weights' one-pass finiteness test (every
value kept) and depth-rank-init's float32 draws (the same whatever the batch)."""

import torch

from rankbias.analysis.weights import weight_matrices
from rankbias.experiments.depth_rank_init import sample_factor


def test_weight_finiteness_test_counts_bad_values_and_passes_overflowing_sums():
    nan = torch.ones(3, 4)
    nan[0, 1], nan[2, 2] = float("nan"), float("-inf")
    big = torch.full((3, 4), 3e38)  # finite, but its float32 sum overflows to inf
    out = weight_matrices([("nan", nan), ("big", big)], "flatten")
    assert out["nan"] == "weight contains 2 NaN/Inf value(s) of 12"
    assert torch.equal(out["big"], big)


def test_sample_factor_blocks_are_float32_draws_and_do_not_depend_on_the_batch():
    """Issue 21: depth-rank-init draws its factors in float32 (cast, then scaled), and a
    layer's stream cut into draws of any batch size gives the same blocks, also where a
    block's size (n * n = 25) is no multiple of torch's 16-number normal transform."""
    for init, n in (("normal", 5), ("normal", 4), ("uniform", 5)):
        got = sample_factor(6, (n, n), init, n, torch.Generator().manual_seed(4), "cpu")
        g = torch.Generator().manual_seed(4)
        if init == "normal":
            k = -(-n * n // 16) * 16  # each block padded to a multiple of 16 numbers
            raw = torch.randn((6, k), generator=g)[:, : n * n].double() / n**0.5
        else:
            raw = (torch.rand((6, n * n), generator=g) * 2 - 1).double() * (3 / n) ** 0.5
        assert got.dtype == torch.float64 and torch.allclose(got, raw.reshape(6, n, n), rtol=1e-15, atol=0)
        g = torch.Generator().manual_seed(4)
        one_by_one = torch.cat([sample_factor(b, (n, n), init, n, g, "cpu") for b in (1, 2, 1, 2)])
        assert torch.equal(got, one_by_one), (init, n)
