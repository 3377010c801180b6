"""A run's records as they happen: one line per training step in ``log.jsonl``, one per evaluation in ``eval.jsonl``.

Every record the trainer writes goes through :class:`RunLog`, so a further sink (e.g. TensorBoard) is added here
and nowhere else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .run_folder import EVAL_LOG_NAME, LOG_NAME

__all__ = ["RunLog"]


class RunLog:
    """Appends records to a run folder's ``log.jsonl`` (training steps) and ``eval.jsonl`` (evaluations).

    Args:
        output_dir: the run folder.
        enabled: ``False`` on every process but the main one: nothing is written.
    """

    def __init__(self, output_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.output_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def train(self, record: Mapping[str, Any]) -> None:
        """One training step: ``{"step", "losses": {name: value}, "lr", "time", ...}``."""
        self._append(LOG_NAME, record)

    def evaluation(self, record: Mapping[str, Any]) -> None:
        """One evaluation at ``record["step"]`` (detector AP, generator fidelity, ...)."""
        self._append(EVAL_LOG_NAME, record)

    def close(self) -> None:
        """Flush and release what the sinks hold (the JSON lines are closed after each record)."""
