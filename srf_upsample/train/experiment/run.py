"""Run planned jobs as ``srf-upsample train`` processes: dependencies first, a few at a time, resumably."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..run_folder import (
    CHECKPOINT_NAME,
    DISCRIMINATOR_DIR,
    GENERATOR_DIR,
    MANIFEST_NAME,
    RESTORED_NAME,
    RUN_CONFIG_NAME,
    file_sha256,
    is_finished,
    read_json,
    update_manifest,
    write_json,
)
from .arms import BASELINE
from .plan import Job

__all__ = [
    "INPUT_KEYS",
    "LINEAGE_KEY",
    "RESTORED_NAME",  # defined with the run folder's other names (run_folder.py)
    "lineage_of",
    "missing_inputs",
    "record_a1_lineage",
    "run_jobs",
]

# The manifest key of a run's lineage: ``{"a1": <A1 job>, "a1_sha256": <its final weights>}`` for the A1 its detector
# or F descends from, and ``generator_a1`` / ``generator_a1_sha256`` for the A1 its generator learned against.
LINEAGE_KEY = "lineage"
# The trainer settings that name what a run starts from; each must exist before the run starts.
INPUT_KEYS = ("init", "generator", "detector_weights", "extractor_weights")


def _lineage(job: Job) -> dict[str, Any]:
    path = job.output_dir / MANIFEST_NAME
    return dict(read_json(path).get(LINEAGE_KEY) or {}) if path.is_file() else {}


def is_a1(job: Job) -> bool:
    """Whether ``job`` is an A1 run (the root of its seed's lineage)."""
    return job.name.rsplit("/", 1)[-1] == BASELINE


def record_a1_lineage(job: Job) -> None:
    """Record, once, a finished A1 run's own lineage: the SHA-256 of its final ``checkpoint.safetensors``.

    The trainer keeps that file (it prunes only older step folders), so descendants can be checked against it.
    """
    if (
        is_a1(job)
        and is_finished(job.output_dir)
        and not _lineage(job)
        and (job.output_dir / CHECKPOINT_NAME).is_file()
    ):
        sha = file_sha256(job.output_dir / CHECKPOINT_NAME)
        update_manifest(job.output_dir, {LINEAGE_KEY: {"a1": job.name, "a1_sha256": sha}})


def lineage_of(job: Job, by_name: dict[str, Job]) -> dict[str, Any]:
    """The lineage ``job`` starts with, from the recorded lineage of the runs it starts from (empty if unknown)."""
    record: dict[str, Any] = {}
    if job.a1_from in by_name:
        source = _lineage(by_name[job.a1_from])
        record.update({key: value for key, value in source.items() if key.startswith(("a1", "generator_a1"))})
    if job.generator_from in by_name:
        source = _lineage(by_name[job.generator_from])
        if "a1" in source:
            record.update(generator_a1=source["a1"], generator_a1_sha256=source["a1_sha256"])
    return record


def _restored_init_suffices(init: Path) -> bool:
    """Whether a restored ``--init`` folder holds what the next stage reads from it.

    That is a stage-1 run's generator and discriminator (stage 2), or any other run's detector weights (which no
    restored run has).
    """
    stage = read_json(init / MANIFEST_NAME).get("stage") if (init / MANIFEST_NAME).is_file() else None
    needed = (GENERATOR_DIR, DISCRIMINATOR_DIR) if stage == "stage1" else (CHECKPOINT_NAME,)
    return all((init / name).exists() for name in needed)


def missing_inputs(job: Job, by_name: dict[str, Job]) -> list[str]:
    """Why ``job`` cannot start although the runs it needs are finished: each input it names that is not there.

    An input is missing when its path does not exist, or when it is a run folder rebuilt from committed records
    (:data:`RESTORED_NAME`, no weights) that lacks what the next stage reads (a stage-1 run: its generator and
    discriminator folders; any other run: its detector weights). Each reason names the run that should have written it.
    """
    reasons = []
    for key in INPUT_KEYS:
        value = job.values.get(key)
        if not value:
            continue
        path = Path(value)
        owner = next((n for n in job.needs if n in by_name and path.is_relative_to(by_name[n].output_dir)), None)
        restored = owner is not None and (by_name[owner].output_dir / RESTORED_NAME).is_file()
        if path.exists() and not (key == "init" and restored and not _restored_init_suffices(path)):
            continue
        why = (
            f"{owner} was rebuilt from committed records, which keep no weights"
            if restored
            else f"{owner or 'nothing in the plan'} did not write it"
        )
        reasons.append(f"{key} {str(path)!r} is missing ({why})")
    return reasons


logger = logging.getLogger(__name__)


def _command(job: Job) -> list[str]:
    values = {key: value for key, value in job.values.items() if value is not None}
    config_file = job.output_dir / RUN_CONFIG_NAME
    job.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_file, {"stage": job.stage, **values})
    return [sys.executable, "-m", "srf_upsample.cli", "train", job.stage, "--config", str(config_file)]


def run_jobs(
    jobs: Sequence[Job], *, max_parallel: int = 1, poll_seconds: float = 2.0, launcher: Any = None
) -> dict[str, str]:
    """Run ``jobs`` as ``srf-upsample train`` processes, at most ``max_parallel`` at once, dependencies first.

    ``launcher`` starts each run (:mod:`~srf_upsample.train.experiment.launch`: ``LocalLauncher``, the default, or
    ``SubmititLauncher``, one cluster job per run).

    Finished runs are skipped and stopped runs resume from their checkpoint, so calling it again continues the
    experiment. Each run's output goes to ``<output_dir>/train.log``. Returns each job's state: ``done``,
    ``failed`` (also: an input it names is missing, :func:`missing_inputs`; nothing is started for it) or
    ``skipped`` (a run it needs failed). Each finished run's manifest records its lineage
    (:data:`LINEAGE_KEY`): an A1 run the SHA-256 of its final weights, every other run the A1 (and the generator's
    A1) it started from, as recorded when it was launched.
    """
    state = {job.name: "done" if is_finished(job.output_dir) else "pending" for job in jobs}
    if launcher is None:
        from .launch import LocalLauncher

        launcher = LocalLauncher()
    running: dict[str, Any] = {}
    by_name = {job.name: job for job in jobs}
    lineages: dict[str, dict[str, Any]] = {}
    for job in jobs:
        record_a1_lineage(job)
    while any(value in ("pending", "running") for value in state.values()):
        for name, process in list(running.items()):
            returncode = process.poll()
            if returncode is not None:
                del running[name]
                ok = returncode == 0 and is_finished(by_name[name].output_dir)
                state[name] = "done" if ok else "failed"
                if ok:
                    record_a1_lineage(by_name[name])
                    if lineages.get(name):
                        update_manifest(by_name[name].output_dir, {LINEAGE_KEY: lineages[name]})
                logger.info("%s %s", name, state[name])
                if not ok:
                    logger.error(
                        "%s failed (exit %s); see %s", name, returncode, by_name[name].output_dir / "train.log"
                    )
        for job in jobs:
            if state[job.name] != "pending":
                continue
            if any(state.get(need) in ("failed", "skipped") for need in job.needs):
                state[job.name] = "skipped"
                continue
            if len(running) >= max_parallel or any(state.get(need) != "done" for need in job.needs):
                continue
            reasons = missing_inputs(job, by_name)
            if reasons:
                state[job.name] = "failed"
                logger.error(
                    "%s cannot start: %s. Train the run it starts from again on this machine (delete its folder and "
                    "rerun: everything that descends from it then descends from the new run), or continue where "
                    "the weights are.",
                    job.name,
                    "; ".join(reasons),
                )
                continue
            lineages[job.name] = lineage_of(job, by_name)
            command = _command(job)
            logger.info("start %s: %s", job.name, " ".join(command))
            running[job.name] = launcher.start(command, job.output_dir / "train.log")
            state[job.name] = "running"
        if running:
            time.sleep(poll_seconds)
    return state
