"""Read an experiment's finished runs into its summary: final metrics, curves, compute, and the checks of fairness."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import DIVERGED_NAME, EVAL_LOG_NAME, LOG_NAME, MANIFEST_NAME, is_finished, read_jsonl
from .config import ExperimentConfig
from .detections import DETECTIONS_NAME, match_run, read_detections, read_ground_truth, resampled_ap
from .plan import Job
from .stats import mean_sd, paired_differences, tile_resamples

__all__ = ["DETECTOR_KEYS", "METRICS", "resampled_ap_of_runs", "summarize"]

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


def summarize(jobs: Sequence[Job], config: ExperimentConfig) -> dict[str, Any]:
    """The results table: per arm, mean +- sd over seeds of each metric, paired differences and validation curves.

    Metrics are in AP points (x100); the paired differences are to A1 and to B, per seed. Checks that every target
    run trained on the one schedule and the same detector (image sizes, anchors, FPN width; a ValueError
    otherwise); arms planned but not finished are listed, and every finished run's logged minutes (training steps,
    validation) are kept per seed (``compute_minutes``).
    """
    schedule = config.schedule.values()
    per_seed: dict[str, dict[int, dict[str, float]]] = {}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    missing: dict[str, list[int]] = {}
    diverged: dict[str, dict[str, Any]] = {}
    compute: dict[int, dict[str, dict[str, float | None]]] = {}
    saved_configs: dict[str, dict[str, Any]] = {}
    for job in jobs:
        finished = is_finished(job.output_dir)
        if finished and (job.output_dir / LOG_NAME).is_file():
            compute.setdefault(job.seed, {})[job.name.split("/", 1)[1]] = _compute_minutes(job.output_dir)
        if not finished and (job.output_dir / DIVERGED_NAME).is_file():
            diverged[job.name] = json.loads((job.output_dir / DIVERGED_NAME).read_text(encoding="utf-8"))
            continue
        if job.arm is None:
            continue
        if not finished:
            missing.setdefault(job.arm, []).append(job.seed)
            continue
        saved = json.loads((job.output_dir / MANIFEST_NAME).read_text(encoding="utf-8"))["config"]
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
    return {
        "schedule": schedule,
        "per_seed": per_seed,
        "table": table,
        "curves": curves,
        "not_run": missing,
        "diverged": diverged,
        "compute_minutes": compute,
    }


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
