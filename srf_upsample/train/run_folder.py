"""The run folder (``--output-dir``): its file names, ``manifest.json``, JSON-lines logs and the detector it holds.

Every file name of a run folder is defined here and read from here. Only this module opens ``manifest.json`` or
rebuilds a detector from a saved run; the checkpoints themselves are written and read by ``checkpoint.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..hub import load_state_dict_strict, read_safetensors
from ..upsample import SRFUpsample
from .models import DetectorSpec, patch_generator, set_fpn_interpolation
from .state_dicts import strip_prefix

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = [
    "BOX_RESULTS_NAME",
    "CHECKPOINTS_DIR",
    "CHECKPOINT_NAME",
    "DETECTIONS_NAME",
    "DISCRIMINATOR_DIR",
    "DIVERGED_NAME",
    "EVAL_LOG_NAME",
    "GENERATOR_DIR",
    "LOG_NAME",
    "MANIFEST_NAME",
    "MASK_RESULTS_NAME",
    "METRICS_NAME",
    "RESTORED_NAME",
    "RUN_CONFIG_NAME",
    "STATE_NAME",
    "TENSORBOARD_DIR",
    "check_run_folder",
    "detector_spec_of",
    "file_sha256",
    "fingerprint",
    "is_finished",
    "load_trained_detector",
    "read_json",
    "read_jsonl",
    "read_manifest",
    "truncate_jsonl",
    "update_manifest",
    "write_json",
]

CHECKPOINT_NAME = "checkpoint.safetensors"  # every module's weights: in each checkpoint and, the newest, at the top
STATE_NAME = "trainer_state.pt"  # optimizers, schedulers, grad scaler and counters of a checkpoint
CHECKPOINTS_DIR = "checkpoints"  # one complete checkpoint per step_NNNNNN/ folder (checkpoint.py)
MANIFEST_NAME = "manifest.json"
LOG_NAME = "log.jsonl"
EVAL_LOG_NAME = "eval.jsonl"
DIVERGED_NAME = "diverged.json"  # written when a run stops at a non-finite loss; removed when a run (re)starts
GENERATOR_DIR = "generator"
DISCRIMINATOR_DIR = "discriminator"
TENSORBOARD_DIR = "tensorboard"  # <output_dir>/tensorboard/<stage>/events.out.tfevents.* (run_log.py)
# What the last evaluation wrote (evaluate.py): its metrics, COCO results files, and its detections per image.
METRICS_NAME = "metrics.json"
BOX_RESULTS_NAME = "detections_bbox.json"
MASK_RESULTS_NAME = "detections_segm.json"
DETECTIONS_NAME = "detections.json.gz"  # gzip-compressed JSON, read by experiment/detections.py
RUN_CONFIG_NAME = "run_config.json"  # the values the experiment runner trained the run with (experiment/run.py)
# The marker of a run folder rebuilt from committed records (manifest, logs, detections): it holds no weights.
RESTORED_NAME = "restored.json"


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically (a temporary file, fsynced, then a rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a truncated or damaged one raises a ValueError naming the file and what to do."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({error}); the file is truncated or damaged. Restore it from the "
            "newest complete checkpoint (checkpoints/step_*/) or start the run again in a new --output-dir."
        ) from None


def read_manifest(directory: str | os.PathLike, expected: Sequence[str]) -> dict[str, Any]:
    """Read ``manifest.json`` of a stage output dir and check that it was written by one of ``expected`` stages."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} has no {MANIFEST_NAME}; expected the output dir of a {' or '.join(expected)} run."
        )
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(manifest).__name__}.")
    if manifest.get("stage") not in expected:
        raise ValueError(
            f"{str(directory)!r} holds a {manifest.get('stage')!r} checkpoint, but a {' or '.join(expected)} one is "
            "expected here (progressive learning runs stage1 -> stage2 -> stage3)."
        )
    return manifest


def update_manifest(directory: str | os.PathLike, values: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into ``manifest.json`` of ``directory`` (created if missing); returns the new manifest."""
    path = Path(directory) / MANIFEST_NAME
    manifest = read_json(path) if path.is_file() else {}
    manifest.update(values)
    write_json(path, manifest)
    return manifest


def is_finished(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a run that reached its last step."""
    path = Path(directory) / MANIFEST_NAME
    return path.is_file() and bool(read_json(path).get("finished", False))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> None:
    """Drop the records of ``path`` whose ``step`` is after ``last_step`` (a resumed run writes them again)."""
    path = Path(path)
    if path.is_file():
        kept = [record for record in read_jsonl(path) if record.get("step", 0) <= last_step]
        path.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")


def detector_spec_of(manifest: Mapping[str, Any]) -> DetectorSpec:
    """How the run's detector was built: the manifest's ``detector`` entry (older manifests: their config)."""
    if "detector" in manifest and isinstance(manifest["detector"], Mapping):
        return DetectorSpec.from_values(manifest["detector"])
    config = manifest["config"]
    return DetectorSpec.from_values(
        config,
        num_classes=len(manifest["category_ids"]) + 1,
        frozen_batchnorm=bool(config.get("backbone_weights")),
        anchor_scale=config.get("anchor_scale", 1.0),
    )


def load_trained_detector(
    directory: str | os.PathLike,
    device: torch.device | str = "cpu",
    *,
    expected: Sequence[str] = ("baseline", "stage2", "stage3"),
) -> tuple[nn.Module, dict]:
    """Rebuild the detector saved by a run of one of the ``expected`` stages (G patched in where it had one).

    The weights come from the run's checkpoint: the files used to initialise training are neither loaded nor
    required.

    Returns:
        ``(detector, manifest)``, the detector in eval mode.
    """
    manifest = read_manifest(directory, expected)
    detector = detector_spec_of(manifest).build()
    interpolation = manifest["config"].get("interpolation", "nearest")
    if interpolation != "nearest":
        set_fpn_interpolation(detector, interpolation)
    if manifest.get("has_generator"):
        patch_generator(detector, SRFUpsample.from_pretrained(str(Path(directory) / GENERATOR_DIR)))
    state = read_safetensors(Path(directory) / CHECKPOINT_NAME)
    load_state_dict_strict(
        detector, strip_prefix(state, "detector."), source=f"the {manifest['stage']} checkpoint in {str(directory)!r}"
    )
    return detector.to(device).eval(), manifest


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(config: TrainConfig) -> dict[str, Any]:
    """What defines a run: its config without the keys that do not change the result, and its data's SHA-256."""
    values = {key: value for key, value in config.to_dict().items() if key not in config.NOT_IN_FINGERPRINT}
    values["ann_file_sha256"] = file_sha256(config.ann_file) if os.path.isfile(config.ann_file) else None
    return values


def check_run_folder(directory: str | os.PathLike, config: TrainConfig, new: Mapping[str, Any]) -> dict[str, Any]:
    """Check that ``directory`` is empty or holds this run (stage and fingerprint ``new``) before resuming it.

    Returns the differences accepted by ``resume_despite_changes`` (key: [saved, new]); a mismatch without it is a
    ValueError listing the differing keys and the two ways out. Starting over (``resume=False``) checks nothing.
    """
    directory = Path(directory)
    if not config.resume or not (directory / MANIFEST_NAME).is_file():
        return {}
    manifest = read_manifest(directory, (config.stage,))
    saved = manifest.get("fingerprint")
    if not isinstance(saved, dict):  # written before fingerprints: its config is the nearest record
        saved = {
            key: value for key, value in manifest.get("config", {}).items() if key not in config.NOT_IN_FINGERPRINT
        }
    differs = {key: [value, new.get(key)] for key, value in sorted(saved.items()) if new.get(key) != value}
    if differs and not config.resume_despite_changes:
        listed = "; ".join(f"{key}: {old!r} there, {value!r} now" for key, (old, value) in differs.items())
        raise ValueError(
            f"{str(directory)!r} holds another run ({manifest.get('stage')}, step {manifest.get('step')}): "
            f"{len(differs)} key(s) that define a run differ: {listed}. Either train this config in a new "
            "--output-dir, or pass --resume-despite-changes to continue that run with these values (recorded in "
            "its manifest)."
        )
    return differs
