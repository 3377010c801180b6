"""The interval of one paired AP difference over folds and seeds, from its image noise and its seed noise.

A pair is two runs of one fold and seed validated on the fold's images. Its difference moves with the validation
images (shared by every seed of the fold) and with training (each seed's own). Each part is estimated on its own:
the image part from a bootstrap over the fold's images (the same resample for both runs of a pair and for every
seed), the seed part from the spread of the seeds within each fold. Their sum is the variance of the mean over all
pairs, and the interval is that mean ± a Student t quantile times its square root, with Satterthwaite's degrees of
freedom. Where no fold has a second seed, the seed part cannot be told apart: the interval is a t-interval over the
fold means (which hold both parts). ``docs/experiment.md`` ("How the report computes intervals") gives the reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .stats import sign_test, student_t_quantile

__all__ = [
    "DEFAULT_LEVEL",
    "EXTRA_SEEDS",
    "METHODS",
    "POWER",
    "paired_interval",
    "satterthwaite_df",
]

# The interval's coverage unless a caller asks for another.
DEFAULT_LEVEL = 0.95
# The power of the smallest detectable effect (``mde``), and the seeds per fold a projection adds.
POWER = 0.8
EXTRA_SEEDS = 3
# How an interval was computed: its key in the answers, and the words a table shows for it.
METHODS = {
    "images+seeds": "t: image bootstrap + seed variance",
    "between folds": "t over fold means",
    "seeds only": "t over seeds (no image noise: no detections)",
    "none": "none",
}
# Degrees of freedom above this count as a normal quantile (the t quantiles then differ by under 0.1 %).
_DF_CAP = 1000


def satterthwaite_df(parts: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates, each ``(variance, its df)``.

    ``(sum v)^2 / sum(v^2 / df)``; an infinite ``df`` adds nothing to the denominator.

    Example:
        >>> round(satterthwaite_df([(1.0, 4), (1.0, 4)]), 6)
        8.0
    """
    total = sum(variance for variance, _ in parts)
    spread = sum(variance**2 / df for variance, df in parts if variance > 0 and math.isfinite(df))
    return math.inf if spread == 0 else total**2 / spread


def _quantile(probability: float, df: float) -> float:
    """Student t quantile at ``df`` rounded down (conservative; capped at :data:`_DF_CAP`)."""
    return student_t_quantile(probability, max(1, min(_DF_CAP, math.floor(df) if math.isfinite(df) else _DF_CAP)))


def _image_parts(
    replicates: Mapping[str, np.ndarray], weights: Mapping[str, float], images: Mapping[str, int]
) -> list[tuple[float, float]]:
    """Per fold, (its weighted share of the image variance of the mean, its df): ``w^2 * m / (m - 1) * var_b``.

    ``var_b`` is the bootstrap variance of the fold's mean difference over its seeds; ``m / (m - 1)`` undoes the
    bootstrap's shrinkage of a mean's variance over ``m`` images, whose df is ``m - 1`` (unknown ``m``: no
    correction, infinite df).
    """
    parts = []
    for label, values in replicates.items():
        spread = float(np.var(np.asarray(values, dtype=float).mean(axis=0), ddof=1))
        count = images.get(label)
        factor, df = (count / (count - 1), count - 1) if count and count > 1 else (1.0, math.inf)
        parts.append((weights[label] ** 2 * factor * spread, df))
    return parts


def _half_width(variance: float, df: float, level: float) -> float:
    return _quantile((1 + level) / 2, df) * math.sqrt(variance)


def paired_interval(
    points: Mapping[str, Sequence[float]],
    replicates: Mapping[str, np.ndarray | None] | None = None,
    *,
    images: Mapping[str, int] | None = None,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Mean, interval, sign test, detectable effect and variance split of one paired difference over folds.

    Args:
        points: per fold, each pair's (seed's) difference on all of the fold's validation images, in AP points.
        replicates: per fold, ``(pairs, B)``: the same differences on ``B`` bootstrap resamples of the fold's
            images (one resample for both runs of a pair and every pair of the fold); ``None`` (or a fold missing)
            where the runs kept no per-image detections.
        images: per fold, the number of validation images the resamples draw from (for the ``m / (m - 1)``
            correction and the image part's degrees of freedom).
        level: the interval's coverage.

    Returns:
        ``n`` pairs, ``mean`` and ``sd`` over all pairs, ``above_zero``, ``sign_test_p``, ``method`` (a key of
        :data:`METHODS`), ``interval`` ``(low, high)`` or ``None``, its ``df`` and ``se``, ``mde`` (the smallest true
        difference a two-sided test at ``1 - level`` finds with :data:`POWER`, from the interval's own spread:
        ``(t(1 - (1 - level) / 2, df) + t(POWER, df)) * se`` with ``se = (high - low) / (2 t((1 + level) / 2, df))``),
        ``variance`` ``{"images", "seeds"}`` (each part's variance of the mean, AP², ``None`` where unknown) and
        ``projection`` ``{"more_seeds", "twice_images"}``: the interval's half-width with :data:`EXTRA_SEEDS` more
        seeds per fold, or with twice the validation images per fold, from the estimated parts.

    Shape:
        ``points[f]``: ``(n_f,)``; ``replicates[f]``: ``(n_f, B)``.

    Example:
        >>> answer = paired_interval({"fold 0": [1.2], "fold 1": [1.9], "fold 2": [-0.7], "fold 3": [2.0]})
        >>> answer["method"], [round(end, 2) for end in answer["interval"]]
        ('between folds', [-0.89, 3.09])
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}.")
    folds = {label: np.asarray(values, dtype=float).reshape(-1) for label, values in points.items() if len(values)}
    if not folds:
        raise ValueError("paired_interval needs at least one fold with a pair; got none.")
    replicates, images = replicates or {}, images or {}
    for label, values in replicates.items():
        if label in folds and values is not None and np.shape(values)[:1] != (len(folds[label]),):
            raise ValueError(
                f"replicates[{label!r}]: need one row per pair, shape ({len(folds[label])}, B), got "
                f"{np.shape(values)}; row i is pair i of points[{label!r}] on each resample of the fold's images."
            )
        if label in folds and values is not None and (np.ndim(values) != 2 or np.shape(values)[1] < 2):
            raise ValueError(
                f"replicates[{label!r}]: need at least 2 resamples, shape (pairs, B), got {np.shape(values)}."
            )
    counts = {label: len(values) for label, values in folds.items()}
    total = sum(counts.values())
    weights = {label: count / total for label, count in counts.items()}
    pooled = np.concatenate(list(folds.values()))
    mean = float(pooled.mean())
    signs = sign_test(pooled.tolist())
    answer: dict[str, Any] = {
        "n": total,
        "mean": mean,
        "sd": float(pooled.std(ddof=1)) if total > 1 else 0.0,
        "above_zero": signs["above_zero"],
        "sign_test_p": signs["p"],
        "level": level,
    }
    within_df = sum(count - 1 for count in counts.values())
    within = sum(float(((values - values.mean()) ** 2).sum()) for values in folds.values())
    seed_variance = within / within_df / total if within_df else None  # s_w^2 / N: the seed part of the mean
    has_images = all(replicates.get(label) is not None for label in folds)
    image_parts = _image_parts({f: replicates[f] for f in folds}, weights, images) if has_images else []
    image_variance = sum(part for part, _ in image_parts) if has_images else None
    num_folds = len(folds)
    if has_images and within_df >= max(num_folds - 1, 1):
        method, variance = "images+seeds", image_variance + seed_variance
        df = satterthwaite_df([(image_variance, satterthwaite_df(image_parts)), (seed_variance, within_df)])
    elif num_folds >= 2:  # the spread of the fold means around the pooled mean (CR1, clusters = folds)
        method, df = "between folds", num_folds - 1
        spread = sum(weights[f] ** 2 * (values.mean() - mean) ** 2 for f, values in folds.items())
        variance = spread * num_folds / (num_folds - 1)
        if has_images:  # the bootstrap's image part, at most the whole (a few folds can spread less than it)
            image_variance = min(image_variance, variance)
            seed_variance = variance - image_variance
    elif within_df:
        method, variance, df = "seeds only", seed_variance, within_df
    else:
        method, variance, df = "none", None, None
    answer.update(method=method, df=df, variance={"images": image_variance, "seeds": seed_variance})
    if variance is None:
        answer.update(interval=None, se=None, mde=None, projection={"more_seeds": None, "twice_images": None})
        return answer
    half = _half_width(variance, df, level)
    low, high = mean - half, mean + half
    se = (high - low) / (2 * _quantile((1 + level) / 2, df))
    mde = (_quantile(1 - (1 - level) / 2, df) + _quantile(POWER, df)) * se
    answer.update(interval=(low, high), se=se, mde=mde)
    answer["projection"] = _projection(folds, replicates, images, answer, level) if has_images else {}
    answer["projection"] = {"more_seeds": None, "twice_images": None, **answer["projection"]}
    return answer


def _projection(
    folds: Mapping[str, np.ndarray],
    replicates: Mapping[str, np.ndarray],
    images: Mapping[str, int],
    answer: Mapping[str, Any],
    level: float,
) -> dict[str, float | None]:
    """Half-widths with :data:`EXTRA_SEEDS` more seeds per fold, and with twice the validation images per fold.

    More seeds: the seed part of the mean shrinks to ``s^2 / (N + k F)`` (``s^2`` the per-pair seed variance it
    was estimated from), the image part keeps each fold's variance under the new weights, and the seed part's df
    grows to ``sum(n_f + k - 1)`` (a design with one seed per fold then has the image bootstrap + seed variance
    interval, its image part scaled as the current one was capped). Twice the images: the image part halves and its
    df grows to ``sum(2 m_f - 1)``; a design with one seed per fold keeps its t over fold means. Each half-width
    takes the t quantile at the larger of the current and the projected Satterthwaite df: more data never lowers
    what is known about either part, but the formula's df can drop when the better-known part shrinks, which would
    widen the projection.
    """
    counts = {label: len(values) for label, values in folds.items()}
    total, extra = sum(counts.values()), EXTRA_SEEDS * len(folds)
    per_pair = answer["variance"]["seeds"] * total
    more = {label: (count + EXTRA_SEEDS) / (total + extra) for label, count in counts.items()}
    current = _image_parts({f: replicates[f] for f in folds}, {f: c / total for f, c in counts.items()}, images)
    scale = answer["variance"]["images"] / max(sum(part for part, _ in current), 1e-300)  # < 1 where it was capped
    parts = [(scale * part, df) for part, df in _image_parts({f: replicates[f] for f in folds}, more, images)]
    image_variance = sum(part for part, _ in parts)
    seeds_df = sum(count + EXTRA_SEEDS - 1 for count in counts.values())
    seed_variance = per_pair / (total + extra)
    df = satterthwaite_df([(image_variance, satterthwaite_df(parts)), (seed_variance, seeds_df)])
    more_seeds = _half_width(image_variance + seed_variance, max(df, answer["df"]), level)
    image_variance = answer["variance"]["images"] / 2
    if answer["method"] == "images+seeds":
        image_df = satterthwaite_df([(part / 2, 2 * df + 1) for part, df in current])  # m_f - 1 -> 2 m_f - 1
        seeds_df = sum(count - 1 for count in counts.values())
        df = satterthwaite_df([(image_variance, image_df), (answer["variance"]["seeds"], seeds_df)])
    else:
        df = answer["df"]
    twice_images = _half_width(image_variance + answer["variance"]["seeds"], max(df, answer["df"]), level)
    return {"more_seeds": more_seeds, "twice_images": twice_images}
