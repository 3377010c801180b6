"""Statistics of the results table: mean and sd over seeds, paired differences per seed, pooled over folds."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .arms import find_arm

__all__ = ["mean_sd", "paired_differences", "pool_paired", "references"]


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


def pool_paired(summaries: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paired AP differences pooled over several experiments (e.g. spatial folds), one pair per (experiment, seed).

    Args:
        summaries: :func:`~srf_upsample.train.experiment.summarize` answers (or their JSON round-trips), keyed by a
            label such as ``"fold 0"``.

    Returns:
        ``{arm: {"AP_minus_<ref>": {"pairs": {label: {seed: diff}}, "mean_sd": (mean, sd), "n": n,
        "above_zero": k}}}`` for the references A1, B and (for A5 arms) C. A pair needs both runs of one seed
        of one experiment; differences are taken within an experiment, never across.
    """
    pooled: dict[str, dict[str, Any]] = {}
    for label, summary in summaries.items():
        per_seed = {arm: {int(s): m["AP"] for s, m in seeds.items()} for arm, seeds in summary["per_seed"].items()}
        for arm, by_reference in paired_differences(per_seed).items():
            for reference, pairs in by_reference.items():
                entry = pooled.setdefault(arm, {}).setdefault(f"AP_minus_{reference}", {"pairs": {}})
                entry["pairs"][label] = pairs
    for rows in pooled.values():
        for entry in rows.values():
            values = [diff for pairs in entry["pairs"].values() for diff in pairs.values()]
            entry.update(mean_sd=mean_sd(values), n=len(values), above_zero=sum(diff > 0 for diff in values))
    return pooled
