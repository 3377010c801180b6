"""Run-folder I/O: file names, ``manifest.json``, prefixed checkpoint state dicts and JSON-lines logs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hub import load_state_dict_strict

__all__ = [
    "CHECKPOINT_NAME",
    "EVAL_LOG_NAME",
    "INIT_STAGES",
    "LOG_NAME",
    "MANIFEST_NAME",
    "STATE_NAME",
    "is_finished",
    "load_prefixed",
    "read_jsonl",
    "read_manifest",
    "state_for_save",
    "strip_prefix",
    "truncate_jsonl",
    "write_json",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
STATE_NAME = "trainer_state.pt"
MANIFEST_NAME = "manifest.json"
LOG_NAME = "log.jsonl"
EVAL_LOG_NAME = "eval.jsonl"
DIVERGED_NAME = "diverged.json"  # written when a run stops at a non-finite loss; removed when a run (re)starts
# Which previous stage each stage's --init must come from (section 4: 1 -> 2 -> 3).
INIT_STAGES = {"stage2": ("stage1",), "stage3": ("stage2",), "evaluate": ("baseline", "stage2", "stage3")}


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose key starts with ``prefix`` (e.g. ``"detector."``), with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def load_prefixed(modules: Mapping[str, nn.Module], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (keys ``"<name>.<key>"``) strictly into each module of ``modules`` by name."""
    for name, module in modules.items():
        load_state_dict_strict(module, strip_prefix(state, name + "."), source=f"{name} weights of {source}")


def state_for_save(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat state dict ``"<name>.<key>"`` on the CPU, every tensor its own contiguous copy."""
    # Clone: a shared G sits under several names of the patched FPN, and safetensors refuses shared storage.
    return {
        f"{name}.{key}": value.detach().cpu().clone().contiguous()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def read_manifest(directory: str | os.PathLike, expected: Sequence[str]) -> dict[str, Any]:
    """Read ``manifest.json`` of a stage output dir and check that it was written by one of ``expected`` stages."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} has no {MANIFEST_NAME}; expected the output dir of a {' or '.join(expected)} run."
        )
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("stage") not in expected:
        raise ValueError(
            f"{str(directory)!r} holds a {manifest.get('stage')!r} checkpoint, but a {' or '.join(expected)} one is "
            "expected here (progressive learning runs stage1 -> stage2 -> stage3)."
        )
    return manifest


def is_finished(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a run that reached its last step."""
    path = Path(directory) / MANIFEST_NAME
    return path.is_file() and bool(json.loads(path.read_text(encoding="utf-8")).get("finished", False))


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
