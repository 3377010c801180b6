"""The trainer's checkpoints: each one a step folder written whole, then made valid by one atomic rename.

A checkpoint of step N is ``checkpoints/step_0000N/`` in the run folder: ``checkpoint.safetensors`` (every module's
weights), ``trainer_state.pt`` (optimizers, schedulers, grad scaler, counters), ``rng_state_<rank>.pt`` (each rank's
RNG), the ``save_pretrained`` folders (``generator/``, ``discriminator/``) and ``manifest.json`` (what the run was at
that step, plus the size and SHA-256 of every other file). Each part carries step N. Everything is written and
fsynced inside ``step_0000N.tmp/``, which becomes ``step_0000N/`` by one rename: a folder without ``.tmp`` is
complete. Resume takes the newest folder whose parts all check out and falls back to the one before, saying why.
The newest ``keep`` checkpoints are kept; the weights and folders of the newest are published at the top of the run
folder (hard links), where ``--init``, ``--extractor-weights`` and ``evaluate`` read them. The run folder's file
names and its other files belong to ``run_folder.py``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from .run_folder import CHECKPOINT_NAME, CHECKPOINTS_DIR, MANIFEST_NAME, STATE_NAME, file_sha256, read_json, write_json
from .state_dicts import load_prefixed, state_for_save

__all__ = [
    "KILL_PHASES",
    "TEST_KILL_ENV",
    "TrainingState",
    "checkpoint_steps",
    "choose_checkpoint",
    "clear_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
# Tests only: ``<phase>`` or ``<phase>:<step>`` makes the writer SIGKILL its own process at that phase.
TEST_KILL_ENV = "SRF_UPSAMPLE_TEST_KILL_AT"
KILL_PHASES = ("rng", "weights_partial", "weights", "trainer_state", "folders", "manifest", "commit", "publish")
_COUNTER_KEYS = ("step", "batch_cursor", "skipped_images")


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


# ----------------------------------------------------------------------------------------------- file helpers
def _kill_requested(phase: str, step: int) -> bool:
    """Tests only: whether :data:`TEST_KILL_ENV` asks for a kill at ``phase`` of the checkpoint of ``step``."""
    wanted = os.environ.get(TEST_KILL_ENV)
    if not wanted:
        return False
    name, _, at = wanted.partition(":")
    return name == phase and (not at or int(at) == step)


def _maybe_kill(phase: str, step: int) -> None:
    """Tests only: SIGKILL this process at ``phase`` when :data:`TEST_KILL_ENV` names it (and this step)."""
    if _kill_requested(phase, step):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _torch_save(value: Any, path: Path) -> None:
    torch.save(value, path)
    _fsync(path)


def _parts(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``folder`` (its manifest excluded), by relative path."""
    return {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s content, atomically: a hard link (a copy where links fail), then a rename."""
    staged = target.with_name(target.name + ".tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(source, staged)
    except OSError:
        shutil.copy2(source, staged)
    os.replace(staged, target)


def _rng_state(step: int) -> dict[str, Any]:
    return {
        "step": step,
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(rng: Mapping[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng.get("cuda") is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])


def _rng_name(rank: int) -> str:
    return f"rng_state_{rank}.pt"


def _step_dir(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS_DIR / f"step_{step:06d}"


def checkpoint_steps(output_dir: str | os.PathLike) -> list[int]:
    """The steps of the committed checkpoint folders of a run, newest first (complete or damaged, never ``.tmp``)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    steps = [int(match.group(1)) for path in root.iterdir() if (match := _STEP_DIR.match(path.name)) and path.is_dir()]
    return sorted(steps, reverse=True)


def clear_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete every checkpoint of a run folder (a run that starts over must never resume into another's)."""
    shutil.rmtree(Path(output_dir) / CHECKPOINTS_DIR, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- writing
def save_checkpoint(
    output_dir: str | os.PathLike,
    state: TrainingState,
    counters: Mapping[str, int],
    *,
    folders: Mapping[str, nn.Module],
    record: Mapping[str, Any],
    rank: int = 0,
    is_main: bool = True,
    keep: int = 2,
    barrier: Callable[[], None] = lambda: None,
) -> None:
    """Write the checkpoint of step ``counters["step"]`` as one unit (every rank calls this, with ``barrier``).

    Every rank writes its RNG; the main process writes the weights, the trainer state, ``folders`` and the
    checkpoint's manifest (``record`` plus every part's size and SHA-256), renames the folder into place, publishes
    its weights and folders at the top of the run folder and deletes all but the newest ``keep`` checkpoints.
    """
    output_dir, step = Path(output_dir), int(counters["step"])
    final = _step_dir(output_dir, step)
    if final.is_dir():  # resumed at this very step: the committed checkpoint already holds this state
        if is_main:
            _publish(output_dir, final, list(folders))
            _prune(output_dir, keep)
        return
    staged = final.with_name(final.name + ".tmp")
    if is_main:
        shutil.rmtree(staged, ignore_errors=True)  # a write that died before its rename
        staged.mkdir(parents=True)
    barrier()
    # Each rank keeps its own RNG stream (RPN/ROI sampling), so a resumed DDP run continues every stream.
    _torch_save(_rng_state(step), staged / _rng_name(rank))
    barrier()
    if is_main:
        _maybe_kill("rng", step)
        weights_path = staged / CHECKPOINT_NAME
        safetensors.torch.save_file(state_for_save(state.modules), str(weights_path), metadata={"step": str(step)})
        _fsync(weights_path)
        if _kill_requested("weights_partial", step):
            with open(weights_path, "r+b") as f:  # as if the process died halfway through the file
                f.truncate(weights_path.stat().st_size // 2)
        _maybe_kill("weights_partial", step)
        _maybe_kill("weights", step)
        # Optimizer and scheduler state dicts are nested dicts with ints: torch.save, loadable with weights_only.
        _torch_save(state.trainer_state(counters), staged / STATE_NAME)
        _maybe_kill("trainer_state", step)
        for name, module in folders.items():
            module.save_pretrained(staged / name)
            for path in (staged / name).iterdir():
                _fsync(path)
            _fsync(staged / name)
        _maybe_kill("folders", step)
        write_json(staged / MANIFEST_NAME, {**record, "step": step, "parts": _parts(staged)})
        _fsync(staged)
        _maybe_kill("manifest", step)
        os.rename(staged, final)  # the commit: from here on the checkpoint is complete
        _fsync(final.parent)
        _maybe_kill("commit", step)
        _publish(output_dir, final, list(folders))
        _maybe_kill("publish", step)
        _prune(output_dir, keep)
    barrier()


def _prune(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` committed checkpoints."""
    for old in checkpoint_steps(output_dir)[keep:]:
        shutil.rmtree(_step_dir(output_dir, old), ignore_errors=True)


def _publish(output_dir: Path, final: Path, folders: list[str]) -> None:
    """Make the top-level weights and folders of the run those of the committed checkpoint ``final``."""
    _link_or_copy(final / CHECKPOINT_NAME, output_dir / CHECKPOINT_NAME)
    for name in folders:
        staged, old, target = output_dir / f"{name}.tmp", output_dir / f"{name}.old", output_dir / name
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        for path in (final / name).iterdir():
            _link_or_copy(path, staged / path.name)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- reading
def _verify(folder: Path, step: int) -> str | None:
    """Why the checkpoint in ``folder`` cannot be trusted, or ``None`` when every part is there and intact."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return f"it has no {MANIFEST_NAME}"
    try:
        manifest = read_json(manifest_path)
    except ValueError:
        return f"its {MANIFEST_NAME} is not valid JSON"
    if manifest.get("step") != step or not isinstance(manifest.get("parts"), dict):
        return f"its {MANIFEST_NAME} is for step {manifest.get('step')!r}, not {step}"
    for name, part in manifest["parts"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != part["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the checkpoint recorded {part['bytes']}"
        if file_sha256(path) != part["sha256"]:
            return f"{name} does not match its recorded SHA-256 (damaged)"
    return None


def _load_step(folder: Path, step: int, state: TrainingState, rank: int) -> dict[str, int]:
    """Load one verified checkpoint folder; a part whose own step differs raises ValueError."""
    with safetensors.safe_open(str(folder / CHECKPOINT_NAME), framework="pt") as f:
        tagged = (f.metadata() or {}).get("step")
    trainer_state = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
    rng_path = folder / _rng_name(rank)
    rng = torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.is_file() else None
    steps = {CHECKPOINT_NAME: tagged, STATE_NAME: trainer_state.get("step"), _rng_name(rank): (rng or {}).get("step")}
    wrong = {name: value for name, value in steps.items() if value is not None and int(value) != step}
    if wrong or tagged is None:
        raise ValueError(f"its parts are from other steps ({wrong or {CHECKPOINT_NAME: None}})")
    load_prefixed(state.modules, safetensors.torch.load_file(str(folder / CHECKPOINT_NAME)), str(folder))
    state.load_trainer_state(trainer_state)
    if rng is not None:
        _set_rng_state(rng)
    else:
        logger.warning("%s has no RNG state for rank %d (more processes than when it was written)", folder, rank)
    return {key: int(trainer_state[key]) for key in _COUNTER_KEYS}


def choose_checkpoint(output_dir: str | os.PathLike) -> tuple[int | None, list[str]]:
    """The newest checkpoint step whose parts all check out (``None``: none), and why each newer one was skipped."""
    output_dir, skipped = Path(output_dir), []
    for step in checkpoint_steps(output_dir):
        reason = _verify(_step_dir(output_dir, step), step)
        if reason is None:
            return step, skipped
        skipped.append(f"step {step}: {reason}")
    return None, skipped


def load_checkpoint(
    output_dir: str | os.PathLike,
    state: TrainingState,
    *,
    rank: int = 0,
    step: int | None = None,
    skipped: list[str] | None = None,
) -> dict[str, int] | None:
    """Restore modules, optimizer state and this rank's RNG from the newest complete checkpoint of ``output_dir``.

    ``step`` (with the reasons ``skipped`` for newer ones) is what :func:`choose_checkpoint` returned; under DDP the
    main process chooses and every rank loads that step. Returns the saved counters, or ``None`` when the run
    folder has no checkpoint at all. Raises a ValueError when it has checkpoints but none is complete.
    """
    output_dir = Path(output_dir)
    if step is None and skipped is None:
        step, skipped = choose_checkpoint(output_dir)
    skipped = list(skipped or [])
    candidates = [step] if step is not None else []
    candidates += [s for s in checkpoint_steps(output_dir) if step is not None and s < step]
    for candidate in candidates:
        folder = _step_dir(output_dir, candidate)
        if candidate != step and (reason := _verify(folder, candidate)) is not None:
            skipped.append(f"step {candidate}: {reason}")
            continue
        try:
            counters = _load_step(folder, candidate, state, rank)
        except Exception as error:  # torch and safetensors raise many types for a damaged file
            skipped.append(f"step {candidate}: {type(error).__name__}: {error}")
            continue
        for reason in skipped:
            logger.warning(
                "checkpoint %s is incomplete or damaged (%s); falling back to an older one", output_dir, reason
            )
        if skipped:
            logger.warning("resuming %s from step %d, the newest complete checkpoint", output_dir, candidate)
        return counters
    if skipped:
        raise ValueError(
            f"{str(output_dir)!r} has checkpoints but none is complete ({'; '.join(skipped)}). Start the run over "
            "with --no-resume (it deletes them) or use a new --output-dir."
        )
    return None
