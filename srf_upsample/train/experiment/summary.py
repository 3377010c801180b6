"""Read an experiment's finished runs into its summary: final metrics, curves, compute, and the checks of fairness."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..run_folder import DIVERGED_NAME, EVAL_LOG_NAME, LOG_NAME, MANIFEST_NAME, is_finished, read_json, read_jsonl
from .config import ExperimentConfig
from .detections import DETECTIONS_NAME, match_run, read_detections, read_ground_truth, resampled_ap
from .plan import Job
from .run import LINEAGE_KEY, is_a1
from .stats import mean_sd, paired_differences, tile_resamples

__all__ = ["DETECTOR_KEYS", "METRICS", "lineage_conflict", "resampled_ap_of_runs", "summarize"]

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm")
# What makes two target detectors the same detector apart from their upsampling: every arm must agree on these.
DETECTOR_KEYS = (
    "detector",
    "backbone",
    "min_size",
    "max_size",
    "anchor_sizes",
    "anchor_scale",
    "fpn_channels",
    "levels",
)


def _final_metrics(output_dir: Path, max_iters: int) -> dict[str, float] | None:
    records = [r for r in read_jsonl(output_dir / EVAL_LOG_NAME) if r["step"] == max_iters]
    return records[-1]["bbox"] if records else None


def _compute_minutes(output_dir: Path) -> dict[str, float | None]:
    """Logged time of a finished run, in minutes: training steps (data loading included) and validation.

    Steps lost to an interruption are not counted (a resumed run's logs are cut back to its checkpoint). Validation
    is ``None`` where ``eval.jsonl`` predates its ``seconds`` field; a run without validation has 0.
    """
    steps = sum(record["time"] for record in read_jsonl(output_dir / LOG_NAME)) / 60
    evals = read_jsonl(output_dir / EVAL_LOG_NAME)
    if any("seconds" not in record for record in evals):
        return {"steps": steps, "validation": None}
    return {"steps": steps, "validation": sum(record["seconds"] for record in evals) / 60}


def _check_same_detector(saved: dict[str, dict[str, Any]], config: ExperimentConfig) -> None:
    """Every target run has the experiment's detector settings and the same image sizes, anchors and FPN width."""
    first_name = next(iter(saved), None)
    for name, values in saved.items():
        differs = {
            key: (values.get(key), config.detector[key])
            for key in DETECTOR_KEYS
            if key in config.detector and values.get(key) != config.detector[key]
        }
        if differs:
            raise ValueError(f"{name} was trained with other detector settings than the experiment's: {differs}.")
        differs = {
            key: (values.get(key), saved[first_name].get(key))
            for key in DETECTOR_KEYS
            if values.get(key) != saved[first_name].get(key)
        }
        if differs:
            raise ValueError(
                f"{name} and {first_name} are not the same detector ({name}'s value, {first_name}'s): {differs}; "
                "the arms of one table must differ only in their upsampling."
            )


def lineage_conflict(lineage: dict[str, Any], a1_sha256: dict[str, str]) -> str:
    """Why a run's recorded lineage is not the table's; ``""`` when it is, or is unknown.

    It is not when its A1 (or its generator's A1) is not the weights of the A1 run of that name (``a1_sha256``: A1
    job -> SHA-256 of its final weights).
    """
    for key, what in (("a1", "detector"), ("generator_a1", "generator")):
        name, sha = lineage.get(key), lineage.get(f"{key}_sha256")
        if name in a1_sha256 and sha != a1_sha256[name]:
            return (
                f"its {what} descends from {name} weights with SHA-256 {str(sha)[:12]}..., not from the table's "
                f"{name} ({a1_sha256[name][:12]}...)"
            )
    return ""


def summarize(jobs: Sequence[Job], config: ExperimentConfig) -> dict[str, Any]:
    """The results table: per arm, mean +- sd over seeds of each metric, paired differences and validation curves.

    Metrics are in AP points (x100); the paired differences are to A1 and to B, per seed. Checks that every target
    run trained on the one schedule and the same detector (image sizes, anchors, FPN width; a ValueError
    otherwise); arms planned but not finished are listed, and every finished run's logged minutes (training steps,
    validation) are kept per seed (``compute_minutes``). A run whose manifest records another A1 than the A1 run of
    the table (its lineage, see ``run.LINEAGE_KEY``) is left out of the table with a warning and listed in
    ``lineage_excluded``: a pair is never taken across lineages.
    """
    schedule = config.schedule.values()
    per_seed: dict[str, dict[int, dict[str, float]]] = {}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    missing: dict[str, list[int]] = {}
    diverged: dict[str, dict[str, Any]] = {}
    compute: dict[int, dict[str, dict[str, float | None]]] = {}
    saved_configs: dict[str, dict[str, Any]] = {}
    excluded: dict[str, str] = {}
    a1_sha256 = {}
    for job in jobs:
        if is_a1(job) and is_finished(job.output_dir):
            lineage = read_json(job.output_dir / MANIFEST_NAME).get(LINEAGE_KEY) or {}
            if "a1_sha256" in lineage:
                a1_sha256[job.name] = lineage["a1_sha256"]
    for job in jobs:
        finished = is_finished(job.output_dir)
        if finished and (job.output_dir / LOG_NAME).is_file():
            compute.setdefault(job.seed, {})[job.name.split("/", 1)[1]] = _compute_minutes(job.output_dir)
        if not finished and (job.output_dir / DIVERGED_NAME).is_file():
            diverged[job.name] = read_json(job.output_dir / DIVERGED_NAME)
            continue
        if job.arm is None:
            continue
        if not finished:
            missing.setdefault(job.arm, []).append(job.seed)
            continue
        manifest = read_json(job.output_dir / MANIFEST_NAME)
        saved = manifest["config"]
        conflict = lineage_conflict(manifest.get(LINEAGE_KEY) or {}, a1_sha256)
        if conflict:
            logger.warning("%s is left out of the table: %s", job.name, conflict)
            excluded[job.name] = conflict
            continue
        differs = {key: (saved.get(key), value) for key, value in schedule.items() if saved.get(key) != value}
        if differs:
            raise ValueError(f"{job.name} was trained on another schedule than the experiment's: {differs}.")
        saved_configs[job.name] = saved
        metrics = _final_metrics(job.output_dir, config.schedule.max_iters)
        if metrics is None:
            continue
        per_seed.setdefault(job.arm, {})[job.seed] = {name: 100 * metrics[name] for name in METRICS}
        curves.setdefault(job.arm, {})[job.seed] = [
            (r["step"], 100 * r["bbox"]["AP"]) for r in read_jsonl(job.output_dir / EVAL_LOG_NAME)
        ]
    _check_same_detector(saved_configs, config)
    differences = paired_differences({arm: {s: m["AP"] for s, m in seeds.items()} for arm, seeds in per_seed.items()})
    table: dict[str, Any] = {}
    for arm, seeds in per_seed.items():
        row: dict[str, Any] = {"seeds": sorted(seeds)}
        for name in METRICS:
            row[name] = mean_sd([seeds[s][name] for s in sorted(seeds)])
        for reference, paired in differences.get(arm, {}).items():
            row[f"AP_minus_{reference}"] = {"per_seed": paired, "mean_sd": mean_sd(list(paired.values()))}
        table[arm] = row
    summary = {
        "schedule": schedule,
        "per_seed": per_seed,
        "table": table,
        "curves": curves,
        "not_run": missing,
        "diverged": diverged,
        "compute_minutes": compute,
    }
    if excluded:
        summary["lineage_excluded"] = excluded
    if config.shared_stage1:
        summary["shared_stage1"] = sorted(job.name for job in jobs if job.name.startswith("shared/"))
    return summary


def resampled_ap_of_runs(
    jobs: Sequence[Job], *, annotations_dir: Path | None = None, replicates: int = 1000, seed: int = 0
) -> dict[str, dict[int, np.ndarray]]:
    """Per arm and seed, the AP (points) of each finished target run on ``replicates`` resamples of its tiles.

    Reads each run's ``detections.json.gz``; runs without one are left out. Every run of ``jobs`` gets the same
    resamples (``seed``), so two runs of one seed form a pair on each. The ground truth is the file the detections
    name, or its copy of the same name in ``annotations_dir`` (the one archived with the results) where there is one.
    """
    matches: dict[tuple[str, int], list] = {}
    truths: dict[Path, dict[str, Any]] = {}
    for job in jobs:
        file = job.output_dir / DETECTIONS_NAME
        if job.arm is None or not is_finished(job.output_dir) or not file.is_file():
            continue
        detections = read_detections(file)
        ann_file = Path(detections["ann_file"])
        if annotations_dir is not None and (annotations_dir / ann_file.name).is_file():
            ann_file = annotations_dir / ann_file.name
        if ann_file not in truths:
            truths[ann_file] = read_ground_truth(ann_file)
        matches[(job.arm, job.seed)] = match_run(detections, truths[ann_file])
    if not matches:
        return {}
    num_images = len(next(iter(matches.values())))
    replicated = resampled_ap(matches, tile_resamples(num_images, replicates, seed))
    result: dict[str, dict[int, np.ndarray]] = {}
    for (arm, run_seed), values in replicated.items():
        result.setdefault(arm, {})[run_seed] = values
    return result
