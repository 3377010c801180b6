"""A run's records as they happen: one line per training step in ``log.jsonl``, one per evaluation in ``eval.jsonl``.

Every record the trainer writes goes through :class:`RunLog`, so a further sink is added here and nowhere else. The
one there is: TensorBoard event files under ``<output_dir>/tensorboard/<stage>`` (``tensorboard=True``, the
``srf_upsample[tensorboard]`` extra).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .run_folder import EVAL_LOG_NAME, LOG_NAME, TENSORBOARD_DIR

__all__ = ["RunLog", "scalar_tags"]


def scalar_tags(prefix: str, record: Mapping[str, Any]) -> dict[str, float]:
    """Every number of ``record`` by TensorBoard tag: nested keys joined by ``/`` under ``prefix``.

    ``step`` is the x axis, not a tag; a training record's ``losses`` sit directly under ``prefix``
    (``train/loss_g_l1``, not ``train/losses/loss_g_l1``). Booleans, strings, lists and ``None`` are left out.

    Example:
        >>> scalar_tags("eval", {"step": 20, "bbox": {"AP": 0.31}, "generator_l1": {"P2": 0.5}, "note": "x"})
        {'eval/bbox/AP': 0.31, 'eval/generator_l1/P2': 0.5}
        >>> scalar_tags("train", {"step": 3, "losses": {"loss": 1.5}, "lr": 0.01})
        {'train/loss': 1.5, 'train/lr': 0.01}
    """
    items = [(key, value) for key, value in record.items() if key != "step"]
    if prefix == "train" and isinstance(record.get("losses"), Mapping):
        items = list(record["losses"].items()) + [(key, value) for key, value in items if key != "losses"]
    tags: dict[str, float] = {}
    for key, value in items:
        tag = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            tags.update(scalar_tags(tag, {name: item for name, item in value.items() if name != "step"}))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[tag] = float(value)
    return tags


def _summary_writer_class() -> type:
    """The SummaryWriter of torch.utils.tensorboard, imported when asked for (it needs the tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            f"tensorboard=True (--tensorboard) writes TensorBoard event files, which needs the tensorboard package "
            f"({error}). Install it with pip install 'srf_upsample[tensorboard]' (or pip install tensorboard), or "
            "train without --tensorboard."
        ) from error
    return SummaryWriter


def _last_step(path: Path) -> int:
    """The ``step`` of the last record of a JSON-lines file (0 if it has none)."""
    last = ""
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    last = line
    return int(json.loads(last).get("step", 0)) if last else 0


class RunLog:
    """Appends records to a run folder's ``log.jsonl`` (training steps) and ``eval.jsonl`` (evaluations).

    With ``tensorboard=True`` each record's numbers also go to TensorBoard (see :func:`scalar_tags` for the tags),
    at the record's ``step``, in ``<output_dir>/tensorboard/<stage>``. The writer opens at the first record: a run
    that resumes (its JSON lines already cut back to the checkpoint's step S) reopens it with ``purge_step=S + 1``,
    so TensorBoard hides what the interrupted attempt logged after S and each step appears once.

    Args:
        output_dir: the run folder.
        enabled: ``False`` on every process but the main one: nothing is written.
        tensorboard: also write TensorBoard event files (needs ``pip install 'srf_upsample[tensorboard]'``; checked
            here, before training starts, on every process).
        stage: the stage name, the TensorBoard run's folder under ``<output_dir>/tensorboard``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = False,
        stage: str = "train",
    ) -> None:
        if not isinstance(tensorboard, bool):
            raise TypeError(f"tensorboard must be True or False, got {tensorboard!r} ({type(tensorboard).__name__}).")
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.stage = stage or "train"
        self._writer_class = _summary_writer_class() if tensorboard else None
        self._writer: Any = None

    @property
    def tensorboard_dir(self) -> Path:
        """Where the TensorBoard event files go (``tensorboard --logdir`` this folder or any above it)."""
        return self.output_dir / TENSORBOARD_DIR / self.stage

    def _open_writer(self) -> Any:
        if self._writer is None:
            earlier = self.tensorboard_dir.is_dir() and any(self.tensorboard_dir.glob("events.out.tfevents.*"))
            # Events of an earlier attempt after the step this run resumed from (log.jsonl is already cut back to
            # it) are hidden by TensorBoard from purge_step on; a new folder needs no purge.
            purge_step = _last_step(self.output_dir / LOG_NAME) + 1 if earlier else None
            self._writer = self._writer_class(log_dir=str(self.tensorboard_dir), purge_step=purge_step)
        return self._writer

    def _write(self, name: str, prefix: str, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        writer = self._open_writer() if self.tensorboard else None  # before the append: it reads log.jsonl
        with open(self.output_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            step = int(record["step"])
            for tag, value in scalar_tags(prefix, record).items():
                writer.add_scalar(tag, value, global_step=step)
            # On disk with the JSON line: a killed run loses no point before its last checkpoint.
            writer.flush()

    def train(self, record: Mapping[str, Any]) -> None:
        """One training step: ``{"step", "losses": {name: value}, "lr", "time", ...}`` (tags ``train/...``)."""
        self._write(LOG_NAME, "train", record)

    def evaluation(self, record: Mapping[str, Any]) -> None:
        """One evaluation at ``record["step"]`` (detector AP, generator fidelity, ...; tags ``eval/...``)."""
        self._write(EVAL_LOG_NAME, "eval", record)

    def close(self) -> None:
        """Flush and release what the sinks hold (the JSON lines are closed after each record)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
