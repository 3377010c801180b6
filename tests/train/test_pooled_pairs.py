"""Pairs of the pooled experiment table by hand: a seed missing in the middle, pairs never across experiments."""

import json
import math
import statistics

import numpy as np
import pytest

from srf_upsample.train.experiment import pool_paired


def _summary(per_seed: dict[str, dict[int, float]]) -> dict:
    summary = {"per_seed": {arm: {seed: {"AP": ap} for seed, ap in seeds.items()} for arm, seeds in per_seed.items()}}
    return json.loads(json.dumps(summary))  # as read back from summary.json: seeds become strings


def test_a_seed_missing_in_the_middle_pairs_the_others_by_seed():
    # A1 lacks seed 1: B's seed 1 has no pair; seeds 0 and 2 pair with their own A1 run, not by position.
    fold0 = _summary({"A1": {0: 30.0, 2: 32.0}, "B": {0: 31.0, 1: 50.0, 2: 35.5}})
    # In fold 1 the two arms finished different seeds: no pair, and nothing is paired across folds.
    fold1 = _summary({"A1": {1: 10.0}, "B": {0: 12.0}})
    entry = pool_paired({"fold 0": fold0, "fold 1": fold1})["B"]["AP_minus_A1"]
    assert entry["pairs"] == {"fold 0": {0: 1.0, 2: 3.5}}
    assert entry["n"] == 2 and entry["above_zero"] == 2
    mean, sd = entry["mean_sd"]
    assert mean == pytest.approx(2.25) and sd == pytest.approx(statistics.stdev([1.0, 3.5]))
    assert sd == pytest.approx(2.5 / math.sqrt(2))
    assert entry["sign_test_p"] == pytest.approx(0.5)  # 2 of 2 above 0: 2 * P(X <= 0) = 2 / 4
    assert entry["interval"] is None  # no resampled detections given


def test_a_tie_is_not_above_zero_and_a_missing_resample_leaves_no_interval():
    summary = _summary({"A1": {0: 30.0, 1: 31.0, 2: 32.0}, "B": {0: 30.0, 1: 33.0, 2: 31.0}})  # 0, +2, -1
    rows = np.ones(50)
    complete = {"B": {0: rows, 1: rows, 2: rows}, "A1": {0: rows, 1: rows, 2: rows}}
    entry = pool_paired({"fold 0": summary}, {"fold 0": complete})["B"]["AP_minus_A1"]
    assert entry["above_zero"] == 1 and entry["sign_test_p"] == pytest.approx(1.0)  # the tie is left out: 1 of 2
    assert entry["interval"] == (0.0, 0.0)  # identical resampled AP: every replicate's difference is 0
    without_seed_2 = {"B": complete["B"], "A1": {0: rows, 1: rows}}
    for resampled in (without_seed_2, {"B": complete["B"]}, {"A1": complete["A1"]}):
        assert pool_paired({"fold 0": summary}, {"fold 0": resampled})["B"]["AP_minus_A1"]["interval"] is None
