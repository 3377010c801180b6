"""Where an experiment's runs train: processes on this machine, or one submitit job each (Slurm, or submitit's local).

A launcher starts one ``srf-upsample train`` command and gives back a handle whose ``poll()`` is ``None`` while the run
trains and its exit code once it ended, so :func:`~srf_upsample.train.experiment.run.run_jobs` schedules both the
same way: dependencies first, finished runs skipped, stopped runs resumed from their own run folder.

With submitit every run is one job (the convention of ``run_with_submitit`` scripts): the job runs the trainer's
command, and on preemption or timeout submitit calls :meth:`TrainingRun.checkpoint`, which requeues the same command;
the trainer resumes from the last checkpoint of its run folder, so requeueing is safe. A run given several GPUs
trains under ``torchrun`` inside its job (one node, one process per GPU).
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LAUNCHERS", "LocalLauncher", "SubmititLauncher", "TrainingRun", "distributed_command"]

LAUNCHERS = ("local", "submitit")


def distributed_command(command: list[str], gpus: int) -> list[str]:
    """``command`` (``python -m srf_upsample.cli train ...``) under ``torchrun`` with one process per GPU.

    Example:
        >>> distributed_command(["python", "-m", "srf_upsample.cli", "train", "baseline"], 2)[1:6]
        ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
        >>> distributed_command(["python", "-m", "srf_upsample.cli"], 1)
        ['python', '-m', 'srf_upsample.cli']
    """
    if gpus <= 1:
        return list(command)
    return [command[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), *command[1:]]


@dataclass
class TrainingRun:
    """One trainer command as a submitit job: runs it with its output appended to ``log_file``; requeues itself.

    Args:
        command: the ``srf-upsample train`` command line.
        log_file: the run's ``train.log``.
    """

    command: list[str]
    log_file: str

    def __call__(self) -> int:
        """Run the command; returns 0, or raises ``RuntimeError`` naming the log when it fails."""
        with open(self.log_file, "a", encoding="utf-8") as log:
            code = subprocess.run(self.command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        if code:
            raise RuntimeError(f"training exited with {code}; see {self.log_file}")
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On preemption or timeout: requeue the same command (the trainer resumes from its run folder)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainingRun(self.command, self.log_file))


class _Process:
    """A handle on a local process: ``poll()`` and the log file to close with it."""

    def __init__(self, command: list[str], log_file: Path) -> None:
        self._log = open(log_file, "a", encoding="utf-8")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def poll(self) -> int | None:
        code = self._process.poll()
        if code is not None and not self._log.closed:
            self._log.close()
        return code


@dataclass
class LocalLauncher:
    """Each run a process on this machine (``--jobs`` of them at a time); ``gpus`` > 1 starts it under torchrun."""

    gpus: int = 0

    def start(self, command: list[str], log_file: Path) -> _Process:
        """Start ``command`` with its output appended to ``log_file``."""
        return _Process(distributed_command(command, self.gpus), log_file)


class _SubmititJob:
    """A handle on a submitted job: ``poll()`` is ``None`` until it ended, then 0 (done) or 1 (failed)."""

    def __init__(self, job: Any) -> None:
        self.job = job

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        return 1 if self.job.exception() is not None else 0


@dataclass
class SubmititLauncher:
    """Each run one submitit job; needs ``pip install 'srf_upsample[cluster]'``.

    Args:
        folder: where submitit keeps each job's pickles and logs (``%j`` is the job id).
        cluster: ``"slurm"``, ``"local"`` (submitit's local executor: jobs are processes here) or ``None`` (Slurm
            when ``sbatch`` is found, else local).
        partition: the Slurm partition.
        gpus: GPUs per run (one node); more than 1 trains under torchrun in the job.
        cpus: CPU cores per run.
        timeout_min: each job's time limit in minutes; a run that needs longer is requeued and resumes.
        mem_gb: memory per job.
        slurm: further Slurm settings, e.g. ``{"account": "proj", "qos": "normal"}`` (``slurm_additional_parameters``).
    """

    folder: Path
    cluster: str | None = None
    partition: str | None = None
    gpus: int = 0
    cpus: int = 2
    timeout_min: int = 240
    mem_gb: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cluster not in (None, "slurm", "local"):
            raise ValueError(f"cluster={self.cluster!r}; use 'slurm', 'local' or None (Slurm when it is there).")
        try:
            import submitit
        except ImportError:
            raise ImportError(
                "The submitit launcher needs submitit: pip install 'srf_upsample[cluster]' (or use --launcher local)."
            ) from None
        self._executor = submitit.AutoExecutor(folder=str(Path(self.folder) / "%j"), cluster=self.cluster)
        settings: dict[str, Any] = {"timeout_min": self.timeout_min, "nodes": 1, "tasks_per_node": 1}
        settings["cpus_per_task"] = self.cpus
        if self.gpus:
            settings["gpus_per_node"] = self.gpus
        if self.mem_gb is not None:
            settings["mem_gb"] = self.mem_gb
        if self.partition:
            settings["slurm_partition"] = self.partition
        if self.slurm:
            settings["slurm_additional_parameters"] = dict(self.slurm)
        if self._executor.cluster != "slurm":
            settings = {key: value for key, value in settings.items() if not key.startswith("slurm_")}
        self._executor.update_parameters(**settings)
        self._lock = threading.Lock()

    def start(self, command: list[str], log_file: Path) -> _SubmititJob:
        """Submit ``command`` as one job (its output appended to ``log_file``)."""
        run = TrainingRun(distributed_command(command, self.gpus), str(log_file))
        with self._lock:  # folds submit from threads: the job name and the submission go together
            self._executor.update_parameters(name=f"srf-{Path(log_file).parent.name}")
            return _SubmititJob(self._executor.submit(run))
