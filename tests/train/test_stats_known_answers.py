"""The experiment's statistics against known answers: t quantiles and power from scipy.stats, sign tests by hand."""

import math

import numpy as np
import pytest

from srf_upsample.train.experiment.stats import (
    mean_sd,
    minimal_detectable_effect,
    paired_bootstrap,
    pairs_to_find,
    sign_test,
    student_t_quantile,
    tile_resamples,
)

# scipy.stats.t.ppf(probability, df) (scipy 1.17), an independent implementation.
T_QUANTILES = [
    (0.975, 1, 12.706204736174694),
    (0.975, 10, 2.228138851986274),
    (0.8, 5, 0.9195437802408271),
    (0.95, 30, 1.697260886593957),
    (0.025, 4, -2.7764451051977943),
    (0.5, 3, 0.0),
    (0.8, 1, 1.3763819204711738),
    (0.999, 2, 22.327124770119866),
]


@pytest.mark.parametrize(("probability", "df", "expected"), T_QUANTILES)
def test_student_t_quantile_matches_scipy(probability, df, expected):
    # abs: near t = 0 the CDF is 1/2 - O(t) and its float value stays 1/2 for |t| below about 1e-8.
    assert student_t_quantile(probability, df) == pytest.approx(expected, rel=1e-9, abs=1e-7)


@pytest.mark.parametrize(("probability", "df"), [(0.0, 3), (1.0, 3), (0.5, 0), (-0.1, 2)])
def test_student_t_quantile_refuses_what_has_no_quantile(probability, df):
    with pytest.raises(ValueError) as info:
        student_t_quantile(probability, df)
    assert str(info.value) == f"Need 0 < probability < 1 and df >= 1, got {probability!r} and {df!r}."


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([1.0, 2.0, -1.0, 0.0, 3.0], {"n": 4, "above_zero": 3, "p": 0.625}),  # 2 * (1 + 4) / 16; the 0 left out
        ([1.0] * 10, {"n": 10, "above_zero": 10, "p": 2 / 1024}),
        ([-1.0, -2.0, 0.5], {"n": 3, "above_zero": 1, "p": 1.0}),  # 2 * (1 + 3) / 8 = 1
        ([1.0, -1.0], {"n": 2, "above_zero": 1, "p": 1.0}),  # 2 * 3/4, capped at 1
        ([0.0, 0.0], {"n": 0, "above_zero": 0, "p": None}),
    ],
)
def test_sign_test_by_hand(differences, expected):
    assert sign_test(differences) == expected


def test_minimal_detectable_effect_matches_scipy():
    # (t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * sd / sqrt(n) with scipy's quantiles.
    assert minimal_detectable_effect(1.0, 12) == pytest.approx(0.8881134215929111, rel=1e-9)
    assert minimal_detectable_effect(2.0, 3) == pytest.approx(6.19302029489225, rel=1e-9)
    assert minimal_detectable_effect(1.0, 10, power=0.9, alpha=0.1) == pytest.approx(1.017033295830709, rel=1e-9)
    assert minimal_detectable_effect(0.0, 5) == 0.0
    assert minimal_detectable_effect(1.0, 1) is None  # one pair has no sd


def test_pairs_to_find_is_the_first_n_that_reaches_the_effect():
    # The first n with scipy's detectable effect <= the effect, counted up from 2.
    assert pairs_to_find(0.3, 1.0) == 90
    assert pairs_to_find(0.25, 0.5, power=0.9, alpha=0.01) == 63
    # Exactly the effect 12 pairs detect: 12 reach it ("<="), 11 do not.
    assert pairs_to_find(minimal_detectable_effect(1.0, 12), 1.0) == 12
    assert pairs_to_find(1e-6, 1.0, limit=50) == 50  # not even the limit is enough
    assert pairs_to_find(0.5, 0.0) == 2  # no spread: the fewest pairs with an sd
    assert pairs_to_find(1e-6, 1.0) == 100_000  # the default limit
    # Below the limit with the asked power or alpha, though not with the defaults (scipy: 0.497 at 18 pairs and
    # 0.514 at 17 for power 0.5; 0.489 at 20 and 0.503 at 19 for alpha 0.2; 0.66 and 0.58 at the limits with both
    # defaults).
    assert pairs_to_find(0.5, 1.0, power=0.5, limit=20) == 18
    assert pairs_to_find(0.5, 1.0, alpha=0.2, limit=25) == 20


@pytest.mark.parametrize(("effect", "sd"), [(0.0, 1.0), (-1.0, 1.0), (0.3, -0.5)])
def test_pairs_to_find_refuses_impossible_questions(effect, sd):
    with pytest.raises(ValueError) as info:
        pairs_to_find(effect, sd)
    assert str(info.value) == f"Need effect > 0 and sd >= 0, got effect={effect!r}, sd={sd!r}."


def test_mean_sd_by_hand():
    assert mean_sd([2.0]) == (2.0, 0.0)
    mean, sd = mean_sd([1.0, 3.0, 5.0])
    assert mean == 3.0 and sd == pytest.approx(2.0)  # sample sd: sqrt((4 + 0 + 4) / 2)


def test_paired_bootstrap_weighs_each_pair_once_over_folds():
    # Where every pair of a fold has the same row, any resample of the pairs gives that row: per replicate, the mean
    # over the 3 pairs is (2 * [1, 2, 3] + [4, 4, 4]) / 3.
    differences = {"a": np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), "b": np.array([[4.0, 4.0, 4.0]])}
    np.testing.assert_allclose(paired_bootstrap(differences), [2.0, 8 / 3, 10 / 3], rtol=1e-12)
    with pytest.raises(ValueError) as info:
        paired_bootstrap({})
    assert str(info.value) == "paired_bootstrap needs at least one fold with pairs."


def test_paired_bootstrap_resamples_pairs_with_replacement():
    # Two pairs whose rows differ: each replicate is the mean of two draws, so 1, 2 or 3, and over 2000 replicates
    # all three occur about 1/4, 1/2, 1/4 of the time.
    values = paired_bootstrap({"a": np.array([[1.0] * 2000, [3.0] * 2000])}, seed=5)
    shares = [np.mean(values == v) for v in (1.0, 2.0, 3.0)]
    assert sum(shares) == 1.0
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.05)


def test_tile_resamples_draw_tiles_with_replacement_by_seed():
    draws = tile_resamples(5, 400, seed=3)
    assert draws.shape == (400, 5) and draws.min() == 0 and draws.max() == 4
    assert np.array_equal(draws, tile_resamples(5, 400, seed=3))
    assert not np.array_equal(draws, tile_resamples(5, 400, seed=4))
    assert any(len(set(row)) < 5 for row in draws)  # with replacement: some tile drawn twice
    assert math.isclose(float(np.mean(draws)), 2.0, abs_tol=0.15)
