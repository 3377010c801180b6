"""Statistics of paired AP differences: mean and sd, pooling over folds, bootstrap interval, sign test, power."""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .arms import find_arm

__all__ = [
    "mean_sd",
    "minimal_detectable_effect",
    "paired_bootstrap",
    "paired_differences",
    "pairs_to_find",
    "pool_paired",
    "references",
    "sign_test",
    "student_t_quantile",
    "tile_resamples",
]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def references(arm: str) -> tuple[str, ...]:
    """The arms ``arm`` is paired against (its registry row's ``references``, with its own variant filled in)."""
    row, variant = find_arm(arm)
    return tuple(reference.format(variant=variant) for reference in row.references)


def paired_differences(ap: dict[str, dict[int, float]]) -> dict[str, dict[str, dict[int, float]]]:
    """Per arm and reference (A1, B; and C for A5 arms), the AP difference of each seed both finished."""
    differences: dict[str, dict[str, dict[int, float]]] = {}
    for arm, seeds in ap.items():
        for reference in references(arm):
            paired = {s: seeds[s] - ap[reference][s] for s in sorted(seeds) if s in ap.get(reference, {})}
            if paired:
                differences.setdefault(arm, {})[reference] = paired
    return differences


def sign_test(differences: Sequence[float]) -> dict[str, Any]:
    """Two-sided exact sign test of "the median difference is 0"; differences of exactly 0 are left out.

    Returns:
        ``{"n": pairs with a sign, "above_zero": k, "p": 2 * P(X <= min(k, n - k))}`` for X ~ Binomial(n, 1/2),
        at most 1; ``p`` is ``None`` without any signed pair.
    """
    above = sum(value > 0 for value in differences)
    n = above + sum(value < 0 for value in differences)
    if n == 0:
        return {"n": 0, "above_zero": 0, "p": None}
    tail = sum(math.comb(n, i) for i in range(min(above, n - above) + 1)) / 2**n
    return {"n": n, "above_zero": above, "p": min(1.0, 2 * tail)}


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz's method), for the Student t distribution."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mode: use the symmetry
        return 1.0 - _regularized_beta(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def student_t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (bisection on its CDF)."""
    if not 0.0 < probability < 1.0 or df < 1:
        raise ValueError(f"Need 0 < probability < 1 and df >= 1, got {probability!r} and {df!r}.")
    return _t_quantile(float(probability), int(df))


@functools.lru_cache(maxsize=1024)
def _t_quantile(probability: float, df: int) -> float:
    """:func:`student_t_quantile` without the checks, remembered: reports ask for the same few quantiles often."""

    def cdf(t: float) -> float:
        tail = 0.5 * _regularized_beta(df / (df + t * t), df / 2, 0.5)
        return 1.0 - tail if t > 0 else tail

    low, high = -1e6, 1e6
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):  # the bracket is one float wide: more steps change nothing
            break
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def minimal_detectable_effect(sd: float, n: int, *, power: float = 0.8, alpha: float = 0.05) -> float | None:
    """The smallest true mean difference a two-sided paired t-test at ``alpha`` finds with ``power``.

    For ``n`` pairs of standard deviation ``sd``: ``(t(1 - alpha / 2, n - 1) + t(power, n - 1)) * sd / sqrt(n)``;
    ``None`` for fewer than 2 pairs (no sd).
    """
    if n < 2:
        return None
    return (student_t_quantile(1 - alpha / 2, n - 1) + student_t_quantile(power, n - 1)) * sd / math.sqrt(n)


def pairs_to_find(effect: float, sd: float, *, power: float = 0.8, alpha: float = 0.05, limit: int = 100_000) -> int:
    """The fewest pairs of standard deviation ``sd`` with which a paired t-test finds ``effect`` with ``power``.

    The inverse of :func:`minimal_detectable_effect` in ``n``; ``limit`` if even that many are not enough.
    """
    if effect <= 0 or sd < 0:
        raise ValueError(f"Need effect > 0 and sd >= 0, got effect={effect!r}, sd={sd!r}.")
    low, high = 2, limit  # the detectable effect shrinks as n grows: bisect for the first n that reaches ``effect``
    if minimal_detectable_effect(sd, high, power=power, alpha=alpha) > effect:
        return limit
    while low < high:
        middle = (low + high) // 2
        if minimal_detectable_effect(sd, middle, power=power, alpha=alpha) <= effect:
            high = middle
        else:
            low = middle + 1
    return low


def tile_resamples(num_tiles: int, replicates: int, seed: int) -> np.ndarray:
    """``(replicates, num_tiles)`` tile indices drawn with replacement: the bootstrap's resamples of one fold."""
    return np.random.default_rng(seed).integers(0, num_tiles, size=(replicates, num_tiles))


def paired_bootstrap(differences: Mapping[str, np.ndarray], *, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of the mean paired difference over folds, resampling tiles and seeds.

    Args:
        differences: per fold, ``(pairs, replicates)``: each pair's (seed's) difference recomputed on each
            replicate's resample of that fold's tiles (the same resample for both runs of a pair, and for every
            pair of the fold).
        seed: seeds the resampling of pairs.

    Returns:
        ``(replicates,)``: per replicate, the mean over all pairs after drawing each fold's pairs with replacement
        (folds are strata: each keeps its number of pairs).
    """
    rng = np.random.default_rng(seed)
    total, count = None, 0
    for label in sorted(differences):
        values = np.asarray(differences[label], dtype=float)
        pairs, replicates = values.shape
        chosen = rng.integers(0, pairs, size=(replicates, pairs))
        sums = values[chosen, np.arange(replicates)[:, None]].sum(axis=1)
        total = sums if total is None else total + sums
        count += pairs
    if total is None:
        raise ValueError("paired_bootstrap needs at least one fold with pairs.")
    return total / count


def pool_paired(
    summaries: Mapping[str, dict[str, Any]],
    resampled_ap: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]] | None = None,
    *,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Paired AP differences pooled over several experiments (e.g. spatial folds), one pair per (experiment, seed).

    Args:
        summaries: :func:`~srf_upsample.train.experiment.summarize` answers (or their JSON round-trips), keyed by a
            label such as ``"fold 0"``.
        resampled_ap: per label, arm and seed, the run's AP (points) on each bootstrap resample of that label's
            tiles (:func:`tile_resamples`, the same resamples for every run of the label); where every pair of a
            difference has them, it gets a paired bootstrap interval over tiles and seeds.
        level: the interval's coverage.

    Returns:
        ``{arm: {"AP_minus_<ref>": {"pairs": {label: {seed: diff}}, "mean_sd": (mean, sd), "n": n,
        "above_zero": k, "sign_test_p": p, "mde_80": d, "interval": (low, high) or None}}}`` for each arm's
        references (A1, B, and e.g. C for A5 arms). A pair needs both runs of one seed of one experiment;
        differences are taken within an experiment, never across. ``mde_80`` is the effect a paired t-test at 5 %
        detects with 80 % power given these pairs' sd (:func:`minimal_detectable_effect`).
    """
    pooled: dict[str, dict[str, Any]] = {}
    for label, summary in summaries.items():
        per_seed = {arm: {int(s): m["AP"] for s, m in seeds.items()} for arm, seeds in summary["per_seed"].items()}
        for arm, by_reference in paired_differences(per_seed).items():
            for reference, pairs in by_reference.items():
                entry = pooled.setdefault(arm, {}).setdefault(f"AP_minus_{reference}", {"pairs": {}})
                entry["pairs"][label] = pairs
                entry.setdefault("reference", reference)
    for arm, rows in pooled.items():
        for entry in rows.values():
            reference = entry.pop("reference")
            values = [diff for pairs in entry["pairs"].values() for diff in pairs.values()]
            mean, sd = mean_sd(values)
            entry.update(mean_sd=(mean, sd), n=len(values), above_zero=sum(diff > 0 for diff in values))
            entry.update(sign_test_p=sign_test(values)["p"], mde_80=minimal_detectable_effect(sd, len(values)))
            entry["interval"] = _interval(entry["pairs"], arm, reference, resampled_ap or {}, level)
    return pooled


def _interval(
    pairs: Mapping[str, Mapping[int, float]],
    arm: str,
    reference: str,
    resampled_ap: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]],
    level: float,
) -> tuple[float, float] | None:
    """The percentile interval of :func:`paired_bootstrap`, or ``None`` if a pair has no resampled AP."""
    differences = {}
    for label, by_seed in pairs.items():
        runs = resampled_ap.get(label, {})
        rows = []
        for seed in by_seed:
            if seed not in runs.get(arm, {}) or seed not in runs.get(reference, {}):
                return None
            rows.append(np.asarray(runs[arm][seed]) - np.asarray(runs[reference][seed]))
        differences[label] = np.stack(rows)
    replicates = paired_bootstrap(differences)
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
