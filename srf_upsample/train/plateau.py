"""The plateau rule: when G's held-out L1 in ``eval.jsonl`` has stopped improving, the run stops early."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["evaluations_without_gain", "plateau_step"]


def evaluations_without_gain(records: Sequence[Mapping[str, Any]], min_delta: float) -> list[tuple[int, int]]:
    """Per record holding ``generator_l1_mean``: ``(step, evaluations in a row without a min_delta gain)``.

    The best so far is the first value; a later value is a gain when it is below ``best * (1 - min_delta)`` (then it
    becomes the best and the count restarts at 0).

    Example:
        >>> rows = [{"step": s, "generator_l1_mean": v} for s, v in [(1, 1.0), (2, 0.9), (3, 0.895), (4, 0.899)]]
        >>> evaluations_without_gain(rows, min_delta=0.01)
        [(1, 0), (2, 0), (3, 1), (4, 2)]
    """
    counts, best, waited = [], None, 0
    for record in records:
        value = record.get("generator_l1_mean")
        if value is None:
            continue
        best, waited = (value, 0) if best is None or value < best * (1 - min_delta) else (best, waited + 1)
        counts.append((int(record["step"]), waited))
    return counts


def plateau_step(records: Sequence[Mapping[str, Any]], patience: int, min_delta: float) -> int | None:
    """The step at which G's held-out L1 plateaued, or ``None``.

    The run has plateaued at the ``patience``-th evaluation in a row without a gain (:func:`evaluations_without_gain`).

    Example:
        >>> rows = [{"step": s, "generator_l1_mean": v} for s, v in [(1, 1.0), (2, 0.9), (3, 0.895), (4, 0.899)]]
        >>> plateau_step(rows, patience=2, min_delta=0.01)
        4
    """
    return next((step for step, waited in evaluations_without_gain(records, min_delta) if waited >= patience), None)
