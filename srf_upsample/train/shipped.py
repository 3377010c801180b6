"""The detector shipped in ``weights/`` (the real F our shipped generators were trained against), rebuilt offline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..hub import load_state_dict_strict, read_safetensors, shipped_weights_dir
from .models import DetectorSpec
from .state_dicts import strip_prefix

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTOR_SPEC_NAME",
    "DETECTOR_WEIGHTS_NAME",
    "load_shipped_detector",
    "load_shipped_extractor",
    "save_detector_folder",
]

DEFAULT_DETECTOR = "fasterrcnn-mobilenetv2-fpn-deepforest"
DETECTOR_SPEC_NAME = "detector.json"
DETECTOR_WEIGHTS_NAME = "detector.safetensors"
_SPEC_KEYS = ("detector", "backbone", "num_classes", "min_size", "max_size", "anchor_sizes", "detector_kwargs")


def _folder(name_or_dir: str | os.PathLike) -> Path:
    folder = Path(name_or_dir)
    if not folder.is_dir():
        folder = shipped_weights_dir() / str(name_or_dir)
    if (folder / DETECTOR_SPEC_NAME).is_file() and (folder / DETECTOR_WEIGHTS_NAME).is_file():
        return folder
    if str(name_or_dir) == DEFAULT_DETECTOR and not folder.is_dir():
        # The wheel ships the generators only (pyproject.toml): the detector's 39 MB serve the examples alone.
        raise ValueError(
            f"The detector {DEFAULT_DETECTOR!r} ships with the repository, not with the installed package (not in "
            f"{str(shipped_weights_dir())!r}). Get it from https://github.com/srf-upsample/srf_upsample: clone it and "
            f"pass the folder, load_shipped_detector('srf_upsample/weights/{DEFAULT_DETECTOR}'), or install the clone "
            "with `pip install -e .` so that the name resolves."
        )
    raise ValueError(
        f"{str(name_or_dir)!r} is not a detector folder (needs {DETECTOR_SPEC_NAME} and {DETECTOR_WEIGHTS_NAME}); "
        f"the shipped one is {DEFAULT_DETECTOR!r}."
    )


def load_shipped_detector(name_or_dir: str | os.PathLike = DEFAULT_DETECTOR) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a detector saved by :func:`save_detector_folder` (float32, eval mode); returns it and its spec.

    The spec (``detector.json``) holds the fields of :class:`~srf_upsample.train.models.DetectorSpec` (the builder
    arguments of :func:`~srf_upsample.train.models.build_detector`) and the category names; weights may be stored
    in float16 to halve the file and are cast back to float32.
    """
    folder = _folder(name_or_dir)
    spec = json.loads((folder / DETECTOR_SPEC_NAME).read_text())
    # A shipped detector carries no ImageNet file: its BatchNorm is frozen as it was in training.
    model = DetectorSpec.from_values(spec, frozen_batchnorm=True).build()
    state = {key: value.float() for key, value in read_safetensors(folder / DETECTOR_WEIGHTS_NAME).items()}
    load_state_dict_strict(model, state, source=f"detector weights from {str(folder)!r}")
    return model.eval(), spec


def load_shipped_extractor(name_or_dir: str | os.PathLike = DEFAULT_DETECTOR) -> nn.Module:
    """The frozen multi-scale extractor F (body + FPN) of a shipped detector; ``F(x)`` returns the FPN levels."""
    model, _ = load_shipped_detector(name_or_dir)
    return model.backbone.eval().requires_grad_(False)


def save_detector_folder(
    checkpoint: str | os.PathLike, folder: str | os.PathLike, spec: dict[str, Any], *, half: bool = True
) -> Path:
    """Write a trainer checkpoint's ``detector.`` weights and its spec as a folder ``load_shipped_detector`` reads."""
    from safetensors.torch import save_file

    missing = [key for key in _SPEC_KEYS if key not in spec]
    if missing:
        raise ValueError(f"spec lacks {missing}; it needs {list(_SPEC_KEYS)}.")
    state = read_safetensors(checkpoint)
    weights = strip_prefix(state, "detector.")
    if not weights:
        raise ValueError(f"{str(checkpoint)!r} holds no detector weights (keys starting with 'detector.').")
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / DETECTOR_WEIGHTS_NAME))
    (folder / DETECTOR_SPEC_NAME).write_text(json.dumps(spec, indent=2) + "\n")
    return folder
