import math

import numpy as np
import pytest
from scipy import stats

from rankbias.verdicts import (
    mean_std,
    paired_gain_verdict,
    relative_rank_verdict,
    student_t_ppf,
    t_interval,
)


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 29, 100])
@pytest.mark.parametrize("q", [0.9, 0.975, 0.995])
def test_t_quantile_matches_scipy(df, q):
    assert student_t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9)


def test_t_interval_matches_scipy():
    x = [0.3, -0.1, 0.5, 0.2, 0.9]
    iv = t_interval(x, 0.95)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (iv["lo"], iv["hi"]) == pytest.approx((lo, hi), rel=1e-9)
    assert iv["n"] == 5


def test_one_seed_gives_an_unbounded_interval_and_no_claim():
    iv = t_interval([0.5])
    assert iv["lo"] == -math.inf and iv["hi"] == math.inf
    v = paired_gain_verdict({"2": [0.5], "4": [0.3]})
    assert v["status"] == "not testable" and v["holds"] is None


def test_mean_std_skips_nan_and_none():
    assert mean_std([1.0, None, float("nan"), 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(x) for x in mean_std([]))


def test_paired_gain_clear_gain_holds():
    v = paired_gain_verdict({"2": [0.010, 0.012, 0.011, 0.013], "4": [0.02, 0.021, 0.019, 0.022]})
    assert v["status"] == "holds" and v["holds"] is True
    assert set(v["above"]) == {"2", "4"} and v["below"] == []


def test_paired_gain_clear_loss_does_not_hold_even_with_a_gain_elsewhere():
    v = paired_gain_verdict({"2": [0.010, 0.012, 0.011], "4": [-0.02, -0.021, -0.019]})
    assert v["status"] == "does not hold" and v["below"] == ["4"]


def test_paired_gain_noise_does_not_hold():
    rng = np.random.default_rng(0)
    v = paired_gain_verdict({"2": list(rng.normal(0, 0.01, 3)), "4": list(rng.normal(0, 0.01, 3))})
    assert v["status"] == "does not hold" and v["above"] == [] and v["below"] == []


def _grid(acc, data, model, seeds=3):
    return [acc] * seeds, [data] * seeds, [model] * seeds


def test_relative_rank_holds_when_model_rank_barely_moves():
    a, d, m = _grid([0.99, 0.99, 0.985], [4.0, 30.0, 60.0], [3.0, 3.1, 3.3])
    v = relative_rank_verdict([0, 1, 2], a, d, m)
    assert v["status"] == "holds" and v["sigma"] == 2.0
    assert v["ratio_mean"] == pytest.approx(math.log(1.1) / math.log(15))


def test_relative_rank_fails_when_model_rank_follows_the_data():
    a, d, m = _grid([0.99, 0.99, 0.99], [4.0, 30.0, 60.0], [3.0, 12.0, 20.0])
    assert relative_rank_verdict([0, 1, 2], a, d, m)["status"] == "does not hold"


def test_relative_rank_not_testable_without_tenfold_data_growth():
    a, d, m = _grid([0.99, 0.99, 0.99], [4.0, 8.0, 12.0], [3.0, 3.0, 3.0])
    v = relative_rank_verdict([0, 1, 2], a, d, m)
    assert v["status"] == "not testable" and v["holds"] is None


def test_relative_rank_ignores_levels_where_accuracy_drops():
    # the 10x growth happens only where accuracy fell by 5 pp: not a generalising level
    a, d, m = _grid([0.99, 0.99, 0.94], [4.0, 8.0, 80.0], [3.0, 3.0, 3.0])
    v = relative_rank_verdict([0, 1, 2], a, d, m)
    assert v["generalising_sigmas"] == [1.0] and v["status"] == "not testable"


def test_relative_rank_rejects_bad_shapes():
    with pytest.raises(ValueError, match="seeds, len"):
        relative_rank_verdict([0, 1], [[1, 1, 1]], [[1, 1, 1]], [[1, 1, 1]])


def test_relative_rank_skips_a_level_whose_networks_all_diverged(recwarn):
    nan = float("nan")
    a, d, m = _grid([0.99, nan, 0.99], [4.0, nan, 60.0], [3.0, nan, 3.1])
    v = relative_rank_verdict([0, 1, 2], a, d, m)
    assert v["generalising_sigmas"] == [2.0] and v["status"] == "holds"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_t_quantile_far_in_the_tail():
    assert student_t_ppf(0.99995, 1) == pytest.approx(stats.t.ppf(0.99995, 1), rel=1e-9)


def test_relative_rank_refuses_a_zero_clean_rank():
    # a clean rank of 0 would make every growth infinite and the ratio 0 ("holds")
    v = relative_rank_verdict([0, 1], [[0.9, 0.9]] * 2, [[0.0, 5.0]] * 2, [[1.0, 2.0]] * 2)
    assert v["status"] == "not testable"
    v = relative_rank_verdict([0, 1], [[0.9, 0.9]] * 2, [[1.0, 20.0]] * 2, [[0.0, 2.0]] * 2)
    assert v["status"] == "not testable"


def test_relative_rank_says_how_many_seeds_it_used():
    v = relative_rank_verdict([0, 1, 2], [[0.99] * 3] * 2, [[1, 20, 20], [1, 1, 20]], [[3, 3.1, 3.1]] * 2)
    assert v["status"] == "holds" and v["n_seeds_used"] == 2


def test_relative_rank_does_not_let_a_nan_level_hide_the_others():
    nan = float("nan")
    v = relative_rank_verdict([0, 1, 2], [[0.99] * 3] * 2, [[1, nan, 20]] * 2, [[3, 3, 3.1]] * 2)
    assert v["status"] == "holds" and v["sigma"] == 2.0
