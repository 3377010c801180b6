"""Run planned jobs as ``srf-upsample train`` processes: dependencies first, a few at a time, resumably."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..checkpoint import is_finished, write_json
from .plan import Job

__all__ = ["run_jobs"]

logger = logging.getLogger(__name__)


def _command(job: Job) -> list[str]:
    values = {key: value for key, value in job.values.items() if value is not None}
    config_file = job.output_dir / "run_config.json"
    job.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_file, {"stage": job.stage, **values})
    return [sys.executable, "-m", "srf_upsample.cli", "train", job.stage, "--config", str(config_file)]


def run_jobs(jobs: Sequence[Job], *, max_parallel: int = 1, poll_seconds: float = 2.0) -> dict[str, str]:
    """Run ``jobs`` as ``srf-upsample train`` processes, at most ``max_parallel`` at once, dependencies first.

    Finished runs are skipped and stopped runs resume from their checkpoint, so calling it again continues the
    experiment. Each run's output goes to ``<output_dir>/train.log``. Returns each job's state: ``done``,
    ``failed`` or ``skipped`` (a run it needs failed).
    """
    state = {job.name: "done" if is_finished(job.output_dir) else "pending" for job in jobs}
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    by_name = {job.name: job for job in jobs}
    while any(value in ("pending", "running") for value in state.values()):
        for name, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[name]
                ok = process.returncode == 0 and is_finished(by_name[name].output_dir)
                state[name] = "done" if ok else "failed"
                logger.info("%s %s", name, state[name])
                if not ok:
                    logger.error(
                        "%s failed (exit %s); see %s", name, process.returncode, by_name[name].output_dir / "train.log"
                    )
        for job in jobs:
            if state[job.name] != "pending":
                continue
            if any(state.get(need) in ("failed", "skipped") for need in job.needs):
                state[job.name] = "skipped"
                continue
            if len(running) >= max_parallel or any(state.get(need) != "done" for need in job.needs):
                continue
            command = _command(job)
            log = open(job.output_dir / "train.log", "a", encoding="utf-8")
            logger.info("start %s: %s", job.name, " ".join(command))
            running[job.name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
            state[job.name] = "running"
        if running:
            time.sleep(poll_seconds)
    return state
