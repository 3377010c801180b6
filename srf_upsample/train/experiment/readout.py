"""The report step: read the finished runs of one or more folds and write their paired differences, pooled and per fold.

It trains nothing. Each source is one fold (one train / validation split) of an experiment: a work folder as
``srf-upsample experiment --work-dir`` leaves it (``experiment.json`` and the run folders, or their ``runs.tar.gz``),
or a committed fold (``experiment_config.json``, ``results.json`` and ``runs.tar.gz``). Every paired difference the
arm registry defines (an arm against each of its ``references``) is taken within a fold and seed, then summarised per
fold and pooled over folds by :func:`~srf_upsample.train.experiment.intervals.paired_interval`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..run_folder import is_finished, write_json
from .archive import open_runs
from .arms import ARM_QUESTIONS, arm_order, find_arm
from .config import ExperimentConfig, load_experiment
from .detections import DETECTIONS_NAME, read_detections
from .forest import plot_forest
from .intervals import DEFAULT_LEVEL, paired_interval
from .plan import Job, plan_jobs
from .readout_text import readout_markdown
from .stats import references
from .summary import resampled_ap_of_runs, summarize

__all__ = [
    "FOLD_CONFIG_NAME",
    "FOREST_NAME",
    "MARKDOWN_NAME",
    "RESULTS_NAME",
    "WORK_CONFIG_NAME",
    "paired_folds",
    "read_fold",
    "report_experiment",
]

# What ``srf-upsample experiment --work-dir`` writes: ``{"config": ..., "seeds": [...]}``.
WORK_CONFIG_NAME = "experiment.json"
# A committed fold's experiment config (its seeds are in ``results.json``).
FOLD_CONFIG_NAME = "experiment_config.json"
RESULTS_NAME = "results.json"
MARKDOWN_NAME = "results.md"
FOREST_NAME = "forest.png"


def _fold_config(folder: Path) -> tuple[ExperimentConfig, list[int] | None]:
    """A source's experiment config and its recorded seeds (``None``: take them from the run folders)."""
    if (folder / WORK_CONFIG_NAME).is_file():
        values = json.loads((folder / WORK_CONFIG_NAME).read_text(encoding="utf-8"))
        return load_experiment(values["config"]), values.get("seeds")
    if (folder / FOLD_CONFIG_NAME).is_file():
        results = folder / RESULTS_NAME
        seeds = json.loads(results.read_text(encoding="utf-8")).get("seeds") if results.is_file() else None
        return load_experiment(json.loads((folder / FOLD_CONFIG_NAME).read_text(encoding="utf-8"))), seeds
    raise ValueError(
        f"sources: {str(folder)!r} holds neither {WORK_CONFIG_NAME} (a `srf-upsample experiment --work-dir` folder) "
        f"nor {FOLD_CONFIG_NAME} (a committed fold); point it at the folder that holds one of them."
    )


def _num_images(jobs: Sequence[Job]) -> int | None:
    """How many validation images the target runs' kept detections list (``None`` without any)."""
    for job in jobs:
        file = job.output_dir / DETECTIONS_NAME
        if job.arm is not None and is_finished(job.output_dir) and file.is_file():
            return len(read_detections(file)["images"])
    return None


def read_fold(folder: str | os.PathLike, *, replicates: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One source's finished target runs: per arm and seed the AP, and the AP on resamples of its images.

    Args:
        folder: a work folder or a committed fold (module docstring).
        replicates: bootstrap resamples of the fold's validation images.
        seed: seeds the resamples (the same resamples for every run of the fold).

    Returns:
        ``{"path", "seeds", "ap": {arm: {seed: AP}}, "resampled": {arm: {seed: (replicates,)}}, "images",
        "not_run", "diverged", "lineage_excluded", "schedule_iters", "stage2_iters"}``; AP in points.

    Raises:
        ValueError: the folder is missing, has no experiment config, or has no finished target run.

    Example:
        >>> read_fold("no/such/fold")
        Traceback (most recent call last):
        ...
        ValueError: sources: 'no/such/fold' is not a folder; give the experiment's work folder or fold.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"sources: {str(folder)!r} is not a folder; give the experiment's work folder or fold.")
    config, seeds = _fold_config(folder)
    with open_runs(folder) as runs:  # the run folders, or runs.tar.gz unpacked
        if not seeds:
            seeds = sorted(int(path.name[4:]) for path in runs.glob("seed*") if path.name[4:].isdigit())
        jobs = plan_jobs(config, seeds, runs)
        summary = summarize(jobs, config)
        annotations = runs / "annotations"
        resampled = resampled_ap_of_runs(
            jobs, annotations_dir=annotations if annotations.is_dir() else None, replicates=replicates, seed=seed
        )
        images = _num_images(jobs)
    ap = {arm: {int(s): m["AP"] for s, m in by_seed.items()} for arm, by_seed in summary["per_seed"].items()}
    if not ap:
        raise ValueError(
            f"sources: {str(folder)!r} has no finished target run (seeds {list(seeds)}; planned but not finished: "
            f"{sorted(summary['not_run'])}); train the experiment first or leave this folder out."
        )
    return {
        "path": str(folder),
        "seeds": [int(s) for s in seeds],
        "ap": ap,
        "resampled": resampled,
        "images": images,
        "not_run": summary["not_run"],
        "diverged": sorted(summary["diverged"]),
        "lineage_excluded": summary.get("lineage_excluded", {}),
        "schedule_iters": config.schedule.max_iters,
        "stage2_iters": config.stage2.get("max_iters"),
    }


def _difference_inputs(
    folds: Mapping[str, Mapping[str, Any]], arm: str, reference: str
) -> tuple[dict[str, dict[int, float]], dict[str, np.ndarray]]:
    """Per fold, ``arm - reference`` per seed both finished, and its ``(pairs, B)`` resampled values where kept."""
    pairs, replicated = {}, {}
    for label, fold in folds.items():
        mine, theirs = fold["ap"].get(arm, {}), fold["ap"].get(reference, {})
        seeds = sorted(set(mine) & set(theirs))
        if not seeds:
            continue
        pairs[label] = {s: mine[s] - theirs[s] for s in seeds}
        kept_mine, kept_theirs = fold["resampled"].get(arm, {}), fold["resampled"].get(reference, {})
        if all(s in kept_mine and s in kept_theirs for s in seeds):
            replicated[label] = np.stack([np.asarray(kept_mine[s]) - np.asarray(kept_theirs[s]) for s in seeds])
    return pairs, replicated


def paired_folds(folds: Mapping[str, Mapping[str, Any]], *, level: float = DEFAULT_LEVEL) -> list[dict[str, Any]]:
    """Every registry difference of the folds' arms, pooled over folds and per fold (:func:`paired_interval`).

    Args:
        folds: :func:`read_fold` answers keyed by fold label.
        level: the intervals' coverage.

    Returns:
        One entry per (arm, reference) with a pair, in the registry's reading order: ``{"arm", "reference",
        "question", "contrast", "pairs": {label: {seed: diff}}, "pooled": {...}, "folds": {label: {...}}}``.

    Example:
        >>> folds = {
        ...     f"block {k}": {"ap": {"A1": {0: 20.0, 1: 21.0}, "B": {0: 20.5 + k, 1: 21.0 + k}}, "resampled": {}}
        ...     for k in range(2)
        ... }
        >>> (entry,) = paired_folds(folds)
        >>> entry["arm"], entry["reference"], entry["pooled"]["mean"], entry["pooled"]["method"]
        ('B', 'A1', 0.75, 'between folds')
    """
    images = {label: fold["images"] for label, fold in folds.items() if fold.get("images")}
    arms = sorted({arm for fold in folds.values() for arm in fold["ap"]}, key=arm_order)
    entries = []
    for arm in arms:
        row, variant = find_arm(arm)
        for reference in references(arm):
            pairs, replicated = _difference_inputs(folds, arm, reference)
            if not pairs:
                continue
            points = {label: list(values.values()) for label, values in pairs.items()}
            template = next((key for key in row.contrast if key.format(variant=variant) == reference), None)
            entries.append(
                {
                    "arm": arm,
                    "reference": reference,
                    "question": ARM_QUESTIONS[row.name],
                    "contrast": row.contrast[template] if template else None,
                    "pairs": pairs,
                    "pooled": paired_interval(points, replicated, images=images, level=level),
                    "folds": {
                        label: paired_interval({label: values}, replicated, images=images, level=level)
                        for label, values in points.items()
                    },
                }
            )
    return entries


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, numpy scalars as floats, int keys as strings and non-finite floats as None."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_experiment(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    replicates: int = 1000,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``results.md``, ``results.json`` and ``forest.png`` for the paired differences of finished folds.

    Args:
        sources: one folder or several, each one fold of the experiment (module docstring).
        out_dir: where the three files go (created if needed).
        labels: a name per source for the tables (default: each folder's name).
        replicates: bootstrap resamples of each fold's validation images.
        level: the intervals' coverage.
        seed: fold ``k`` (0-based, in the order given) resamples its images with seed ``seed + k``.

    Returns:
        What ``results.json`` holds: ``{"level", "replicates", "seed", "folds": [{"label", "path", "seeds",
        "images", "detections", "not_run", "diverged", "lineage_excluded"}], "differences": paired_folds(...),
        "reading": [...]}``.

    Raises:
        ValueError: no source, labels that do not match the sources, a source that is no experiment folder or has
            no finished target run, ``replicates`` below 2 or ``level`` outside (0, 1).

    Example:
        >>> report_experiment([], "report")
        Traceback (most recent call last):
        ...
        ValueError: sources: need at least one folder (a work folder or a committed fold), got none.
    """
    sources = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    if not sources:
        raise ValueError("sources: need at least one folder (a work folder or a committed fold), got none.")
    labels = [Path(source).name for source in sources] if labels is None else list(labels)
    if len(labels) != len(sources) or len(set(labels)) != len(labels):
        raise ValueError(f"labels: need one distinct label per source ({len(sources)}), got {labels!r}.")
    if not isinstance(replicates, int) or replicates < 2:
        raise ValueError(f"replicates: need an int of at least 2 (e.g. 1000), got {replicates!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: need a coverage between 0 and 1 (e.g. 0.95), got {level!r}.")
    folds = {
        label: read_fold(source, replicates=replicates, seed=seed + index)
        for index, (label, source) in enumerate(zip(labels, sources, strict=True))
    }
    report: dict[str, Any] = {
        "level": level,
        "replicates": replicates,
        "seed": seed,
        "folds": [
            {
                "label": label,
                **{key: fold[key] for key in ("path", "seeds", "images", "not_run", "diverged", "lineage_excluded")},
                "detections": sorted(fold["resampled"], key=arm_order),
                "schedule_iters": fold["schedule_iters"],
                "stage2_iters": fold["stage2_iters"],
            }
            for label, fold in folds.items()
        ],
        "differences": paired_folds(folds, level=level),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _jsonable(report)  # what results.json holds: the text and the picture are read off it
    text, report["reading"] = readout_markdown(report, forest=FOREST_NAME)
    write_json(out_dir / RESULTS_NAME, report)
    (out_dir / MARKDOWN_NAME).write_text(text + "\n", encoding="utf-8")
    plot_forest(report, out_dir / FOREST_NAME)
    return report
