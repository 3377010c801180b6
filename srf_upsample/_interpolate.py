"""The rules of ``F.interpolate`` that the package relies on, written once: output size and ``align_corners``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["CORNER_MODES", "align_corners_for", "interpolate", "output_size"]

# Modes for which F.interpolate takes align_corners; for the others it must be None.
CORNER_MODES = ("linear", "bilinear", "bicubic", "trilinear")


def align_corners_for(mode: str) -> bool | None:
    """Return ``False`` for a mode that takes ``align_corners`` (pixel centres, torch's default), else ``None``."""
    return False if mode in CORNER_MODES else None


def interpolate(
    x: torch.Tensor,
    size: Any = None,
    scale_factor: Any = None,
    *,
    mode: str = "bilinear",
) -> torch.Tensor:
    """``F.interpolate`` with ``align_corners=False`` where ``mode`` takes it and ``None`` where it does not.

    Passing ``align_corners=False`` to ``"nearest"`` is an error in torch, and leaving it ``None`` for ``"bilinear"``
    relies on a default; every resize of the package goes through here so that both are always right.
    """
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners_for(mode))


def output_size(in_size: Sequence[Any], size: Any, scale_factor: Any) -> tuple[Any, Any] | None:
    """Return the ``(H_out, W_out)`` that ``F.interpolate`` gives a 4D input of spatial size ``in_size``.

    ``H_out = size[0]`` (an int ``size`` serves both sides) or ``floor(H * scale_factor[0])`` (a number serves both
    sides), as in ``torch.nn.functional.interpolate``. This only applies the rule and validates nothing: it returns
    ``None`` when the arguments are not those of a 2D resize (neither given, or a ``size`` / ``scale_factor`` that is
    not one value or a pair). Entries of ``size`` are returned as given, so symbolic sizes stay symbolic.
    """
    if size is not None:
        if isinstance(size, Sequence):
            return (size[0], size[1]) if len(size) == 2 else None
        return size, size
    if scale_factor is None:
        return None
    factors = tuple(scale_factor) if isinstance(scale_factor, Sequence) else (scale_factor, scale_factor)
    if len(factors) != 2:
        return None
    return math.floor(in_size[0] * float(factors[0])), math.floor(in_size[1] * float(factors[1]))
