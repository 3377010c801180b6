"""Pairs of the pooled experiment table by hand: a seed missing in the middle, pairs never across experiments."""

import json
import math
import statistics

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
