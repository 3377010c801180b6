"""Known answers for ``paired_interval``: every part of one answer computed by hand, for each method and the errors.

The hand computations follow the formulas of ``docs/experiment.md`` ("How the report computes intervals") step by
step in plain arithmetic; only the Student t quantiles come from ``stats.student_t_quantile`` (checked against
scipy in test_stats_known_answers.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from srf_upsample.train.experiment.intervals import (
    DEFAULT_LEVEL,
    EXTRA_SEEDS,
    METHODS,
    POWER,
    paired_interval,
    satterthwaite_df,
)
from srf_upsample.train.experiment.stats import student_t_quantile as t


def _sat(*parts):
    """Welch-Satterthwaite by hand: (sum v)^2 / sum(v^2 / df)."""
    return sum(v for v, _ in parts) ** 2 / sum(v * v / df for v, df in parts)


# Two folds of 3 seeds. Fold a's pairs 1, 2, 3; fold b's 2, 4, 6. Each pair's differences on 4 image resamples:
# fold a's rows all [1, 3, 1, 3] (bootstrap variance of the fold mean 4/3), fold b's all [0, 4, 0, 4] (16/3).
POINTS = {"a": [1.0, 2.0, 3.0], "b": [2.0, 4.0, 6.0]}
REPLICATES = {"a": np.tile([1.0, 3.0, 1.0, 3.0], (3, 1)), "b": np.tile([0.0, 4.0, 0.0, 4.0], (3, 1))}
IMAGES = {"a": 5, "b": 9}
# Image part per fold: w^2 * m / (m - 1) * var_b with w = 1/2: a 1/4 * 5/4 * 4/3 = 5/12 (df 4), b 1/4 * 9/8 * 16/3
# = 3/2 (df 8). Seed part: within-fold sums of squares 2 + 8 over 4 df, divided by 6 pairs = 5/12.
IMAGE_PARTS = [(5 / 12, 4), (3 / 2, 8)]
IMAGE_VARIANCE, SEED_VARIANCE = 5 / 12 + 3 / 2, 10 / 4 / 6


def test_images_plus_seeds_answer_by_hand():
    answer = paired_interval(POINTS, REPLICATES, images=IMAGES)
    assert answer["method"] == "images+seeds" and answer["level"] == DEFAULT_LEVEL == 0.95
    assert (answer["n"], answer["mean"], answer["above_zero"]) == (6, 3.0, 6)
    assert answer["sd"] == pytest.approx(math.sqrt(16 / 5))  # deviations -2 -1 0 -1 1 3
    assert answer["sign_test_p"] == pytest.approx(2 / 2**6)
    assert answer["variance"]["images"] == pytest.approx(IMAGE_VARIANCE)
    assert answer["variance"]["seeds"] == pytest.approx(SEED_VARIANCE)
    df = _sat((IMAGE_VARIANCE, _sat(*IMAGE_PARTS)), (SEED_VARIANCE, 4))
    assert answer["df"] == pytest.approx(df) and 14 < df < 15
    se = math.sqrt(IMAGE_VARIANCE + SEED_VARIANCE)
    half = t(0.975, 14) * se  # the quantile at df rounded down
    assert answer["interval"] == pytest.approx((3.0 - half, 3.0 + half))
    assert answer["se"] == pytest.approx(se)
    assert POWER == 0.8 and answer["mde"] == pytest.approx((t(0.975, 14) + t(0.8, 14)) * se)


def test_projection_by_hand():
    answer = paired_interval(POINTS, REPLICATES, images=IMAGES)
    # 3 more seeds per fold: weights stay 1/2, so the image part is unchanged; the seed part is 2.5 / 12 at
    # sum(3 + 3 - 1) = 10 df. The Satterthwaite df falls below the current one, which is kept.
    assert EXTRA_SEEDS == 3
    more = _sat((IMAGE_VARIANCE, _sat(*IMAGE_PARTS)), (2.5 / 12, 10))
    assert more < answer["df"]
    expected = t(0.975, math.floor(answer["df"])) * math.sqrt(IMAGE_VARIANCE + 2.5 / 12)
    assert answer["projection"]["more_seeds"] == pytest.approx(expected)
    # Twice the images: each image part halves at 2 m - 1 df; the seed part stays at 4 df.
    image_df = _sat((5 / 24, 9), (3 / 4, 17))
    df = _sat((IMAGE_VARIANCE / 2, image_df), (SEED_VARIANCE, 4))
    assert df > answer["df"]
    expected = t(0.975, math.floor(df)) * math.sqrt(IMAGE_VARIANCE / 2 + SEED_VARIANCE)
    assert answer["projection"]["twice_images"] == pytest.approx(expected)


def test_uneven_folds_weigh_their_image_parts_by_their_share_of_pairs():
    points = {"a": [1.0, 2.0, 3.0], "b": [2.0, 6.0]}
    replicates = {"a": np.tile([1.0, 3.0, 1.0, 3.0], (3, 1)), "b": np.tile([0.0, 4.0, 0.0, 4.0], (2, 1))}
    answer = paired_interval(points, replicates, images={"a": 5, "b": 9})
    # Weights 3/5 and 2/5: a 9/25 * 5/4 * 4/3 = 3/5 (df 4), b 4/25 * 9/8 * 16/3 = 24/25 (df 8).
    image_variance = 3 / 5 + 24 / 25
    seed_variance = (2 + 8) / 3 / 5  # sums of squares over (2 + 1) df, over 5 pairs
    assert answer["variance"]["images"] == pytest.approx(image_variance)
    assert answer["variance"]["seeds"] == pytest.approx(seed_variance)
    assert answer["mean"] == pytest.approx(14 / 5)
    df = _sat((image_variance, _sat((3 / 5, 4), (24 / 25, 8))), (seed_variance, 3))
    half = t(0.975, math.floor(df)) * math.sqrt(image_variance + seed_variance)
    assert answer["df"] == pytest.approx(df)
    assert answer["interval"] == pytest.approx((14 / 5 - half, 14 / 5 + half))
    # More seeds: weights (3 + 3) / 11 and (2 + 3) / 11; seed part s^2 = 10 / 3 over 11 pairs at 5 + 4 = 9 df.
    more_parts = [((6 / 11) ** 2 * 5 / 4 * 4 / 3, 4), ((5 / 11) ** 2 * 9 / 8 * 16 / 3, 8)]
    more_images = sum(v for v, _ in more_parts)
    more_df = _sat((more_images, _sat(*more_parts)), (10 / 3 / 11, 9))
    expected = t(0.975, math.floor(max(more_df, df))) * math.sqrt(more_images + 10 / 3 / 11)
    assert answer["projection"]["more_seeds"] == pytest.approx(expected)


def test_a_bootstrap_without_image_counts_takes_no_correction_and_infinite_df():
    answer = paired_interval(POINTS, REPLICATES)
    # w^2 * var_b without m / (m - 1): 1/4 * 4/3 + 1/4 * 16/3 = 5/3; df: the seed part's 4 alone.
    assert answer["variance"]["images"] == pytest.approx(5 / 3)
    assert answer["df"] == pytest.approx(4 * (5 / 3 + SEED_VARIANCE) ** 2 / SEED_VARIANCE**2)


def test_between_fold_means_for_one_seed_per_fold_by_hand():
    answer = paired_interval({"f0": [1.2], "f1": [1.9], "f2": [-0.7], "f3": [2.0]})
    # Mean 1.1; the fold means' variance 4.7 / 3 over 4 folds; df 3.
    assert answer["method"] == "between folds" and answer["df"] == 3
    half = t(0.975, 3) * math.sqrt(4.7 / 3 / 4)
    assert answer["interval"] == pytest.approx((1.1 - half, 1.1 + half))
    assert answer["variance"] == {"images": None, "seeds": None}
    assert answer["projection"] == {"more_seeds": None, "twice_images": None}
    assert answer["mde"] == pytest.approx((t(0.975, 3) + t(0.8, 3)) * math.sqrt(4.7 / 3 / 4))
    assert METHODS["between folds"] == "t over fold means"


def test_between_folds_splits_its_variance_with_the_image_part_capped():
    points = {"f0": [1.0], "f1": [3.0]}
    small = {"f0": np.array([[0.9, 1.1]]), "f1": np.array([[2.9, 3.1]])}  # image part 2 * 1/4 * 0.02 = 0.01
    answer = paired_interval(points, small)
    total = 2 * (1 / 4) * 1.0 * 2 / 1  # sum w^2 (mean_f - mean)^2 * F / (F - 1) = 1
    assert answer["method"] == "between folds"
    assert answer["variance"]["images"] == pytest.approx(0.01)
    assert answer["variance"]["seeds"] == pytest.approx(total - 0.01)
    large = {"f0": np.array([[-9.0, 11.0]]), "f1": np.array([[-7.0, 13.0]])}  # image part 100: above the whole
    answer = paired_interval(points, large)
    assert answer["variance"] == {"images": pytest.approx(total), "seeds": pytest.approx(0.0)}
    half = t(0.975, 1) * math.sqrt(total)
    assert answer["interval"] == pytest.approx((2.0 - half, 2.0 + half))
    # Twice the images keeps t over fold means (df 1); the projection halves the image part.
    assert answer["projection"]["twice_images"] == pytest.approx(t(0.975, 1) * math.sqrt(total / 2))


def test_fewer_seed_df_than_folds_minus_one_falls_back_to_fold_means():
    # Three folds, one of them with two seeds: 1 within-fold df < 3 - 1, so the seed part is too poorly known.
    points = {"f0": [1.0, 2.0], "f1": [3.0], "f2": [5.0]}
    replicates = {key: np.tile(np.asarray(values)[:, None], (1, 3)) for key, values in points.items()}
    answer = paired_interval(points, replicates)
    assert answer["method"] == "between folds" and answer["df"] == 2
    two = {"f0": [1.0, 2.0], "f1": [3.0, 5.0], "f2": [5.0]}
    replicates = {key: np.tile(np.asarray(values)[:, None], (1, 3)) for key, values in two.items()}
    assert paired_interval(two, replicates)["method"] == "images+seeds"  # 2 within-fold df = 3 - 1


def test_seeds_only_and_none():
    answer = paired_interval({"only": [1.0, 2.0, 6.0]})
    # One fold without detections: s^2 = 14 / 2 over 3 pairs, df 2.
    assert answer["method"] == "seeds only" and answer["df"] == 2 and METHODS["seeds only"].startswith("t over seeds")
    half = t(0.975, 2) * math.sqrt(14 / 2 / 3)
    assert answer["interval"] == pytest.approx((3.0 - half, 3.0 + half))
    assert answer["variance"] == {"images": None, "seeds": pytest.approx(14 / 6)}
    answer = paired_interval({"only": [2.5]})
    assert (answer["method"], answer["interval"], answer["df"], answer["se"], answer["mde"]) == (
        "none",
        None,
        None,
        None,
        None,
    )
    assert (answer["n"], answer["mean"], answer["sd"]) == (1, 2.5, 0.0)
    assert answer["projection"] == {"more_seeds": None, "twice_images": None}


def test_a_fold_without_detections_leaves_the_image_part_unknown():
    points = {"a": [1.0, 2.0], "b": [3.0, 5.0]}
    answer = paired_interval(points, {"a": np.tile([[1.0, 2.0]], (2, 1)), "b": None})
    assert answer["method"] == "between folds" and answer["variance"]["images"] is None


def test_an_empty_fold_is_left_out():
    answer = paired_interval({"a": [1.0, 3.0], "empty": []})
    assert answer["n"] == 2 and answer["method"] == "seeds only" and answer["mean"] == 2.0


def test_the_level_changes_the_quantile():
    answer = paired_interval(POINTS, REPLICATES, images=IMAGES, level=0.8)
    se = math.sqrt(IMAGE_VARIANCE + SEED_VARIANCE)
    assert answer["interval"][1] - 3.0 == pytest.approx(t(0.9, 14) * se) and answer["level"] == 0.8
    assert answer["mde"] == pytest.approx((t(0.9, 14) + t(0.8, 14)) * se)


def test_large_df_use_the_capped_quantile():
    rng = np.random.default_rng(1)
    points = {f"f{k}": rng.normal(size=400) for k in range(4)}
    answer = paired_interval(points)
    assert answer["method"] == "between folds"
    points = {"f0": rng.normal(size=1500)}
    answer = paired_interval(points)
    assert answer["df"] == 1499
    expected = t(0.975, 1000) * answer["variance"]["seeds"] ** 0.5
    assert answer["interval"][1] - answer["mean"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": {"a": [1.0]}, "level": 0.0}, r"level must be between 0 and 1 \(e.g. 0.95\), got 0.0"),
        ({"points": {"a": [1.0]}, "level": 1.0}, "level must be between 0 and 1"),
        ({"points": {"a": []}}, "paired_interval needs at least one fold with a pair; got none"),
        ({"points": {}}, "at least one fold with a pair"),
        (
            {"points": {"a": [1.0, 2.0]}, "replicates": {"a": np.zeros((3, 5))}},
            r"replicates\['a'\]: need one row per pair, shape \(2, B\), got \(3, 5\); row i is pair i",
        ),
        (
            {"points": {"a": [1.0, 2.0]}, "replicates": {"a": np.zeros((2, 1))}},
            r"replicates\['a'\]: need at least 2 resamples, shape \(pairs, B\), got \(2, 1\)",
        ),
        (
            {"points": {"a": [1.0, 2.0]}, "replicates": {"a": np.zeros((2, 3, 4))}},
            r"need at least 2 resamples, shape \(pairs, B\), got \(2, 3, 4\)",
        ),
    ],
)
def test_bad_arguments_are_value_errors_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_interval(**kwargs)


def test_replicates_of_a_fold_that_has_no_pairs_are_ignored():
    answer = paired_interval({"a": [1.0, 3.0]}, {"a": None, "gone": np.zeros((7, 1))})
    assert answer["method"] == "seeds only"


def test_satterthwaite_df_by_hand():
    assert satterthwaite_df([(1.0, 4), (3.0, 8)]) == pytest.approx(16 / (1 / 4 + 9 / 8))
    assert satterthwaite_df([(1.0, math.inf), (2.0, 5)]) == pytest.approx(9 / (4 / 5))
    assert satterthwaite_df([(0.0, 3), (2.0, 5)]) == pytest.approx(5.0)
    assert satterthwaite_df([(1.0, math.inf)]) == math.inf
    assert satterthwaite_df([(0.0, 3)]) == math.inf


def test_image_counts_of_one_and_two():
    points = {"a": [1.0, 3.0]}
    replicates = {"a": np.array([[0.0, 2.0], [2.0, 4.0]])}  # fold means [1, 3]: bootstrap variance 2
    # m = 2: factor 2 at 1 df; the image part 4 and the seed part 2 / 1 / 2 = 1, each at 1 df.
    answer = paired_interval(points, replicates, images={"a": 2})
    assert answer["method"] == "images+seeds"  # one fold: 1 within-fold df is enough
    assert answer["variance"] == {"images": pytest.approx(4.0), "seeds": pytest.approx(1.0)}
    assert answer["df"] == pytest.approx(25 / 17)
    # Twice the images: 2 at 2 m - 1 = 3 df, with the seed part's 1 at 1 df: 9 / (4 / 3 + 1) = 3.86, t at 3 df.
    assert answer["projection"]["twice_images"] == pytest.approx(t(0.975, 3) * math.sqrt(3.0))
    # m = 1: no correction and no df from the images.
    answer = paired_interval(points, replicates, images={"a": 1})
    assert answer["variance"]["images"] == pytest.approx(2.0) and answer["df"] == pytest.approx(9.0)


def test_two_pairs_have_an_sd():
    answer = paired_interval({"f0": [1.0], "f1": [3.0]})
    assert answer["sd"] == pytest.approx(math.sqrt(2.0))


def test_more_seeds_keeps_a_small_image_part_as_estimated():
    # Fold means [1.5, 2.5, ...] and [3, 5, ...]: image parts 1/4 * 5/4 * 1/3 = 5/48 and 1/4 * 9/8 * 4/3 = 3/8,
    # 23/48 in all (below 1).
    replicates = {"a": np.tile([1.5, 2.5, 1.5, 2.5], (3, 1)), "b": np.tile([3.0, 5.0, 3.0, 5.0], (3, 1))}
    answer = paired_interval(POINTS, replicates, images=IMAGES)
    image_variance = 5 / 48 + 3 / 8
    assert answer["variance"]["images"] == pytest.approx(image_variance)
    image_df = _sat((5 / 48, 4), (3 / 8, 8))
    df = _sat((image_variance, image_df), (SEED_VARIANCE, 4))
    more = _sat((image_variance, image_df), (2.5 / 12, 10))
    expected = t(0.975, math.floor(max(more, df))) * math.sqrt(image_variance + 2.5 / 12)
    assert answer["projection"]["more_seeds"] == pytest.approx(expected)


def test_the_empty_error_is_the_whole_message():
    with pytest.raises(ValueError, match=r"^paired_interval needs at least one fold with a pair; got none\.$"):
        paired_interval({"a": []})
