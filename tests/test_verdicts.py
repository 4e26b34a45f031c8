import math

import numpy as np
import pytest
from scipy import stats

from rankbias.verdicts import (
    STATUSES,
    binomial_lower_bound,
    detectable_effect,
    mean_std,
    noninferiority,
    paired_gain_verdict,
    status_of,
    t_interval,
    verdict,
)
from rankbias.verdicts import relative_rank_verdict as _relative


def relative_rank_verdict(*args, n_test=10_000, n_classes=2, **kw):
    """The verdict on a large test set by default (so that the band is decided by the
    accuracies given, not by the test images' binomial spread)."""
    return _relative(*args, n_test=n_test, n_classes=n_classes, **kw)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99, 0.9999])
def test_t_interval_on_two_and_three_seeds_has_the_closed_form_width(confidence):
    # the t quantile in closed form: df = 1 is the Cauchy, tan(pi (q - 1/2)); df = 2 is
    # (2q - 1) / sqrt(2 q (1 - q)); [0, 2] has mean 1, std sqrt(2); [0, 1, 2] mean 1, std 1
    q = 0.5 + confidence / 2
    iv = t_interval([0.0, 2.0], confidence)
    assert iv["hi"] - 1 == pytest.approx(math.tan(math.pi * (q - 0.5)) * math.sqrt(2) / math.sqrt(2), rel=1e-12)
    iv = t_interval([0.0, 1.0, 2.0], confidence)
    assert iv["hi"] - 1 == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)) / math.sqrt(3), rel=1e-12)


def test_t_interval_matches_scipy():
    x = [0.3, -0.1, 0.5, 0.2, 0.9]
    iv = t_interval(x, 0.95)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (iv["lo"], iv["hi"]) == pytest.approx((lo, hi), rel=1e-9)
    assert iv["n"] == 5


def test_one_seed_gives_an_unbounded_interval_and_no_claim():
    iv = t_interval([0.5])
    assert iv["lo"] == -math.inf and iv["hi"] == math.inf
    v = paired_gain_verdict({"2": [0.5], "4": [0.3]}, effect=1.0)
    assert v["status"] == "not testable" and v["holds"] is None


def test_mean_std_skips_nan_and_none():
    assert mean_std([1.0, None, float("nan"), 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(x) for x in mean_std([]))


def test_paired_gain_clear_gain_holds():
    v = paired_gain_verdict({"2": [0.010, 0.012, 0.011, 0.013], "4": [0.02, 0.021, 0.019, 0.022]}, effect=0.01)
    assert v["status"] == "holds" and v["holds"] is True
    assert set(v["above"]) == {"2", "4"} and v["below"] == []
    assert "smaller than the claimed" not in v["reason"]


def test_paired_gain_clear_loss_does_not_hold_even_with_a_gain_elsewhere():
    v = paired_gain_verdict({"2": [0.010, 0.012, 0.011], "4": [-0.02, -0.021, -0.019]}, effect=0.01)
    assert v["status"] == "does not hold" and v["below"] == ["4"]


def test_paired_gain_noise_excludes_a_large_claim_and_not_a_small_one():
    rng = np.random.default_rng(0)
    diffs = {"2": list(rng.normal(0, 0.01, 3)), "4": list(rng.normal(0, 0.01, 3))}
    his = [t_interval(v)["hi"] for v in diffs.values()]
    assert all(t_interval(v)["lo"] < 0 < t_interval(v)["hi"] for v in diffs.values())
    # every interval ends below a claimed gain of 1: the claim is excluded
    v = paired_gain_verdict(diffs, effect=1.0)
    assert v["status"] == "does not hold" and v["holds"] is False and v["above"] == [] == v["below"]
    # a claimed gain inside the intervals: these seeds cannot tell it from no gain
    v = paired_gain_verdict(diffs, effect=min(his) / 2)
    assert v["status"] == "inconclusive" and v["holds"] is None


def test_paired_gain_the_issues_example_is_inconclusive():
    # mean +0.23, 95% interval [-1.26, +1.73]: holds 0 and the claimed 0.5
    v = paired_gain_verdict({4: [0.8, -0.4, 0.3]}, effect=0.5)
    assert v["status"] == "inconclusive" and v["holds"] is None
    iv = v["intervals"]["4"]
    assert iv["lo"] < 0 < 0.5 < iv["hi"]
    # the smallest gain these seeds would find: (t_.975 + t_.8) * s / sqrt(3), 2 dof
    want = (stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * np.std([0.8, -0.4, 0.3], ddof=1) / math.sqrt(3)
    assert v["smallest_detectable_effect"] == pytest.approx(want, rel=1e-9)
    assert f"{want:.3g}" in v["reason"]


def test_paired_gain_above_zero_but_below_the_claim_holds_and_says_so():
    v = paired_gain_verdict({"4": [0.2, 0.25, 0.22]}, effect=1.0, unit=" pp")
    iv = v["intervals"]["4"]
    assert 0 < iv["lo"] and iv["hi"] < 1.0
    assert v["status"] == "holds" and "smaller than the claimed 1 pp" in v["reason"]


def test_paired_gain_intervals_around_zero_that_end_below_the_claim_do_not_hold():
    v = paired_gain_verdict({"2": [0.1, -0.1, 0.05], "4": [0.0, 0.1, -0.05]}, effect=1.0)
    assert all(iv["lo"] < 0 < iv["hi"] < 1.0 for iv in v["intervals"].values())
    assert v["status"] == "does not hold" and "ends below the claimed gain 1" in v["reason"]


def test_paired_gain_an_interval_below_zero_does_not_hold():
    v = paired_gain_verdict({"4": [-0.5, -0.6, -0.55]}, effect=1.0)
    assert v["intervals"]["4"]["hi"] < 0
    assert v["status"] == "does not hold" and v["below"] == ["4"]


def test_paired_gain_a_setting_with_one_seed_excludes_nothing():
    # "2" alone would exclude the claim, but "4" (one seed) may still hold it
    v = paired_gain_verdict({"2": [0.1, -0.1, 0.05], "4": [3.0]}, effect=1.0)
    assert v["status"] == "inconclusive"


@pytest.mark.parametrize("effect", [0, -1.0, float("nan"), float("inf")])
def test_paired_gain_refuses_an_effect_that_means_nothing(effect):
    with pytest.raises(ValueError, match="effect must be a finite number > 0"):
        paired_gain_verdict({"4": [0.1, 0.2]}, effect=effect)
    with pytest.raises(TypeError, match="effect"):
        paired_gain_verdict({"4": [0.1, 0.2]})


def test_detectable_effect_shrinks_with_seeds_and_is_infinite_for_one():
    assert detectable_effect(1.0, 1) == math.inf
    d3, d10 = detectable_effect(1.0, 3), detectable_effect(1.0, 10)
    assert d3 == pytest.approx((stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) / math.sqrt(3), rel=1e-9)
    assert d10 < d3


def test_four_outcomes_and_the_status_of_any_verdict():
    assert STATUSES == ("holds", "does not hold", "inconclusive", "not testable")
    assert [verdict(s, "c", "r")["holds"] for s in STATUSES] == [True, False, None, None]
    assert [status_of(verdict(s, "c", "r")) for s in STATUSES] == list(STATUSES)
    assert status_of({"holds": True}) == "holds" and status_of({"holds": False}) == "does not hold"
    assert status_of({"holds": None}) == "no verdict" == status_of(None)
    with pytest.raises(ValueError, match="status must be one of"):
        verdict("maybe", "c", "r")


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


def test_detectable_effect_has_the_closed_form_on_two_seeds():
    # df = 1: (t_0.975 + t_0.8) std / sqrt(2) with the Cauchy quantiles tan(pi (q - 1/2))
    want = (math.tan(math.pi * 0.475) + math.tan(math.pi * 0.3)) * 0.5 / math.sqrt(2)
    assert detectable_effect(0.5, 2) == pytest.approx(want, rel=1e-12)


def test_relative_rank_refuses_a_zero_clean_rank():
    # a clean rank of 0 would make every growth infinite and the ratio 0 ("holds")
    v = relative_rank_verdict([0, 1], [[0.9, 0.9]] * 2, [[0.0, 5.0]] * 2, [[1.0, 2.0]] * 2)
    assert v["status"] == "not testable"
    v = relative_rank_verdict([0, 1], [[0.9, 0.9]] * 2, [[1.0, 20.0]] * 2, [[0.0, 2.0]] * 2)
    assert v["status"] == "not testable"


def test_relative_rank_says_how_many_seeds_it_used():
    v = relative_rank_verdict([0, 1, 2], [[1.0] * 3] * 2, [[1, 20, 20], [1, 1, 20]], [[3, 3.1, 3.1]] * 2)
    assert v["status"] == "holds" and v["n_seeds_used"] == 2


def test_relative_rank_does_not_let_a_nan_level_hide_the_others():
    nan = float("nan")
    v = relative_rank_verdict([0, 1, 2], [[1.0] * 3] * 2, [[1, nan, 20]] * 2, [[3, 3, 3.1]] * 2)
    assert v["status"] == "holds" and v["sigma"] == 2.0


# ------------------------------------------------- paper 1: a model that learned, the band
def test_binomial_lower_bound_is_clopper_pearson():
    for k, n in [(1, 10), (55, 100), (598, 1000), (1000, 1000)]:
        assert binomial_lower_bound(k, n) == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1), abs=1e-10)
    assert binomial_lower_bound(0, 10) == 0.0
    with pytest.raises(ValueError, match="successes"):
        binomial_lower_bound(11, 10)


def test_relative_rank_at_chance_everywhere_is_not_testable():
    # every accuracy 0.5 on two classes, data rank x10 and more, model rank flat: the old
    # test compared each level with the clean accuracy only and said "holds"
    a, d, m = _grid([0.5, 0.5, 0.5], [4.0, 30.0, 60.0], [3.0, 3.0, 3.1])
    v = relative_rank_verdict([0, 1, 2], a, d, m, n_test=1000)
    assert v["status"] == "not testable" and v["holds"] is None
    assert v["n_learned"] == 0 and "did not learn" in v["reason"]
    # ten classes at 1/10 too
    a, d, m = _grid([0.1, 0.1, 0.1], [4.0, 30.0, 60.0], [3.0, 3.0, 3.1])
    assert relative_rank_verdict([0, 1, 2], a, d, m, n_test=1000, n_classes=10)["status"] == "not testable"


def test_relative_rank_needs_accuracy_clearly_above_chance_plus_the_margin():
    d, m = [[4.0, 60.0]] * 3, [[3.0, 3.1]] * 3
    # 0.58 on 1000 images is significantly above 1/2 but not above 1/2 + 0.1
    assert relative_rank_verdict([0, 1], [[0.58, 0.58]] * 3, d, m, n_test=1000)["status"] == "not testable"
    # 0.75 is: the claim is tested (and holds, given enough test images for the band)
    v = relative_rank_verdict([0, 1], [[0.75, 0.75]] * 3, d, m, n_test=1000)
    assert v["n_learned"] == 3 and "accuracy_band" in v and "did not learn" not in v["reason"]
    assert relative_rank_verdict([0, 1], [[0.75, 0.75]] * 3, d, m, n_test=100_000)["status"] == "holds"
    assert v["clean_acc_lower_bound"][0] == pytest.approx(stats.beta.ppf(0.025, 750, 251), abs=1e-9)


def test_relative_rank_leaves_out_a_seed_at_chance():
    a = [[1.0, 1.0], [1.0, 1.0], [0.5, 0.5]]
    v = relative_rank_verdict([0, 1], a, [[4.0, 60.0]] * 3, [[3.0, 3.1]] * 3)
    assert v["status"] == "holds" and v["n_learned"] == 2 and v["n_seeds_used"] == 2


def test_noninferiority_band_a_case_on_each_side():
    clean = [1.0, 1.0, 1.0]
    inside = noninferiority([0.998, 0.997, 0.999], clean, n_test=10_000, margin=0.01)
    assert inside["noninferior"] and inside["lower"] > -0.01
    outside = noninferiority([0.985, 0.99, 0.98], clean, n_test=10_000, margin=0.01)
    assert not outside["noninferior"] and outside["lower"] < -0.01


def test_noninferiority_is_not_a_raw_difference_of_means():
    # the means differ by 0.9 pp (inside 1 pp), but three seeds this spread cannot show it
    v = noninferiority([0.996, 0.985, 0.992], [1.0, 1.0, 1.0], n_test=10_000, margin=0.01)
    assert v["mean"] == pytest.approx(-0.009) and not v["noninferior"]
    sd = np.std([-0.004, -0.015, -0.008], ddof=1)
    assert v["lower"] == pytest.approx(-0.009 - stats.t.ppf(0.975, 2) * sd / math.sqrt(3))


def test_noninferiority_counts_the_test_images_when_seeds_agree():
    # three seeds at exactly -0.8 pp: zero spread, but 500 test images per seed still vary
    v = noninferiority([0.992] * 3, [1.0] * 3, n_test=500, margin=0.01)
    floor = math.sqrt(0.992 * 0.008 / 500)
    assert v["binomial_floor"] == pytest.approx(floor) and v["spread"] == pytest.approx(floor)
    assert not v["noninferior"]
    assert noninferiority([0.992] * 3, [1.0] * 3, n_test=1_000_000, margin=0.01)["noninferior"]
    assert not noninferiority([1.0], [1.0], n_test=1000, margin=0.01)["noninferior"]  # one seed


def test_relative_rank_band_uses_the_noninferiority_test():
    # sigma=1 is within 1 pp on the means (0.991 vs 1.0) but not shown to be on 1000 images
    a, d, m = _grid([1.0, 0.991, 1.0], [4.0, 60.0, 8.0], [3.0, 3.1, 3.0])
    v = relative_rank_verdict([0, 1, 2], a, d, m, n_test=1000)
    assert v["generalising_sigmas"] == [2.0] and v["status"] == "not testable"
    assert v["accuracy_band"]["1.0"]["noninferior"] is False


def test_relative_rank_interval_straddling_the_bound_is_inconclusive():
    # per-seed log ratios spread around 0.25: the interval holds both sides of the bound
    g = [10 ** 0.05, 10 ** 0.25, 10 ** 0.45]
    v = relative_rank_verdict([0, 1], [[1.0, 1.0]] * 3, [[1.0, 10.0]] * 3, [[1.0, x] for x in g])
    assert v["ratio_lo"] < 0.25 < v["ratio_hi"] and v["status"] == "inconclusive"


def test_relative_rank_needs_two_seeds():
    v = relative_rank_verdict([0, 1], [[1.0, 1.0]], [[1.0, 20.0]], [[3.0, 3.1]])
    assert v["status"] == "not testable"


def test_a_paired_gain_over_a_baseline_at_chance_is_not_testable():
    """A constant-predicting baseline makes any trained treatment look like a gain: the
    paired verdict must not hold by accident (SCIENCE.md D)."""
    from rankbias.verdicts import paired_gain_verdict, require_learned

    v = paired_gain_verdict({4: [20.0, 22.0, 21.0]}, unit=" pp", effect=1.0)
    assert v["status"] == "holds"
    at_chance = require_learned(v, {0: 0.10, 1: 0.11, 2: 0.35}, n_test=1000, n_classes=10)
    assert at_chance["status"] == "not testable" and at_chance["untested_verdict"]["status"] == "holds"
    assert "seed 0" in at_chance["reason"] and "seed 2" not in at_chance["reason"]
    # 21 % on 1000 images of 10 classes: above 10 % but not above 10 % + 10 pp by the exact test
    assert require_learned(v, {0: 0.21, 1: 0.35}, 1000, 10)["status"] == "not testable"
    learned = require_learned(v, {0: 0.35, 1: 0.36, 2: 0.34}, 1000, 10)
    assert learned["status"] == "holds" and all(c["learned"] for c in learned["learned_check"].values())
