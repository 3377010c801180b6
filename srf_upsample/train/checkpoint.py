"""The trainer's checkpoints: writing every part of one (weights, optimizer state, RNG, folders) and reading it back.

The run folder's other files (``manifest.json``, logs) belong to ``run_folder.py``; its names are re-exported here
for code that imported them from this module.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..hub import read_safetensors
from .run_folder import (
    CHECKPOINT_NAME,
    DIVERGED_NAME,
    EVAL_LOG_NAME,
    LOG_NAME,
    MANIFEST_NAME,
    STATE_NAME,
    is_finished,
    read_jsonl,
    read_manifest,
    truncate_jsonl,
    write_json,
)
from .state_dicts import load_prefixed, state_for_save, strip_prefix

__all__ = [
    "CHECKPOINT_NAME",
    "DIVERGED_NAME",
    "EVAL_LOG_NAME",
    "LOG_NAME",
    "MANIFEST_NAME",
    "STATE_NAME",
    "TrainingState",
    "has_checkpoint",
    "is_finished",
    "load_checkpoint",
    "load_prefixed",
    "read_jsonl",
    "read_manifest",
    "save_checkpoint",
    "state_for_save",
    "strip_prefix",
    "truncate_jsonl",
    "write_json",
]


def _rng_name(rank: int) -> str:
    return f"rng_state_{rank}.pt"


class TrainingState:
    """What a checkpoint holds besides the modules: optimizers, schedulers, the grad scaler and the counters."""

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
        scaler: torch.amp.GradScaler,
    ) -> None:
        self.modules, self.optimizers, self.schedulers, self.scaler = modules, optimizers, schedulers, scaler

    def trainer_state(self, counters: Mapping[str, int]) -> dict[str, Any]:
        """Optimizer and scheduler state dicts, the scaler's, and ``counters`` (step, data cursor, ...)."""
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            **counters,
        }

    def load_trainer_state(self, state: Mapping[str, Any]) -> None:
        """Restore optimizers, schedulers and scaler from :meth:`trainer_state`'s dict."""
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(rng: Mapping[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng.get("cuda") is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])


def has_checkpoint(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir`` holds a checkpoint to resume from."""
    output_dir = Path(output_dir)
    return (output_dir / CHECKPOINT_NAME).is_file() and (output_dir / STATE_NAME).is_file()


def save_checkpoint(
    output_dir: str | os.PathLike,
    state: TrainingState,
    counters: Mapping[str, int],
    *,
    folders: Mapping[str, nn.Module],
    rank: int,
    is_main: bool,
) -> None:
    """Write the checkpoint of step ``counters["step"]``: every rank its RNG, the main process everything else."""
    output_dir = Path(output_dir)
    # Each rank keeps its own RNG stream (RPN/ROI sampling), so a resumed DDP run continues every stream.
    torch.save(_rng_state(), output_dir / _rng_name(rank))
    if not is_main:
        return
    weights = state_for_save(state.modules)
    safetensors.torch.save_file(weights, str(output_dir / (CHECKPOINT_NAME + ".tmp")))
    os.replace(output_dir / (CHECKPOINT_NAME + ".tmp"), output_dir / CHECKPOINT_NAME)
    # Optimizer and scheduler state dicts are nested dicts with ints: torch.save, loadable with weights_only.
    torch.save(state.trainer_state(counters), output_dir / (STATE_NAME + ".tmp"))
    os.replace(output_dir / (STATE_NAME + ".tmp"), output_dir / STATE_NAME)
    for name, module in folders.items():
        module.save_pretrained(output_dir / name)


def load_checkpoint(output_dir: str | os.PathLike, state: TrainingState, *, rank: int) -> dict[str, int]:
    """Restore modules, optimizer state and this rank's RNG from ``output_dir``; returns the saved counters."""
    output_dir = Path(output_dir)
    load_prefixed(state.modules, read_safetensors(output_dir / CHECKPOINT_NAME), str(output_dir))
    trainer_state = torch.load(output_dir / STATE_NAME, map_location="cpu", weights_only=True)
    state.load_trainer_state(trainer_state)
    rng_path = output_dir / _rng_name(rank)
    if rng_path.is_file():
        _set_rng_state(torch.load(rng_path, map_location="cpu", weights_only=True))
    return {
        key: int(value) for key, value in trainer_state.items() if key not in ("optimizers", "schedulers", "scaler")
    }
