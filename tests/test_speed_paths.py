"""Speed changes of issue 21 (part 6) that keep every value: the weights'
one-pass finiteness test and depth-rank-init's in-place scaling of its draws."""

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


def test_sample_factor_in_place_scaling_gives_the_out_of_place_values():
    for init, n in (("normal", 7), ("uniform", 5)):
        got = sample_factor((3, n, n), init, n, torch.Generator().manual_seed(4), "cpu")
        g = torch.Generator().manual_seed(4)
        if init == "normal":
            want = torch.randn((3, n, n), generator=g, dtype=torch.float64) / n**0.5
        else:
            want = (torch.rand((3, n, n), generator=g, dtype=torch.float64) * 2 - 1) * (
                3 / n
            ) ** 0.5
        assert torch.equal(got, want), init
