"""Private validation helpers shared by the public modules."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["check_positive_int", "check_feature_map", "resolve_output_size", "check_choice"]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (bools excluded), else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r} of type {type(value).__name__}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}.")
    return value


def check_feature_map(x: object, in_channels: int | None = None, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a (N, C, H, W) floating tensor with ``in_channels`` channels."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be a 4D tensor of shape (N, C, H, W), got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) for a single (C, H, W) map."
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {x.dtype}; call x.float() first.")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but this module was built with in_channels={in_channels}; "
            f"build it with in_channels={x.shape[1]} or pass a feature map with {in_channels} channels."
        )
    return x


def _pair(name: str, value: object) -> tuple:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a pair (H, W) for a 4D input, got {value!r}.")
        return tuple(value)
    return (value, value)


def resolve_output_size(
    in_size: Sequence[int],
    size: int | Sequence[int] | None,
    scale_factor: float | Sequence[float] | None,
) -> tuple[int, int]:
    """Return the (H_out, W_out) that ``F.interpolate`` would produce for these arguments.

    ``H_out = size[0]`` or ``floor(H * scale_factor[0])``, as in ``torch.nn.functional.interpolate``.
    """
    if size is not None and scale_factor is not None:
        raise ValueError(
            f"Pass exactly one of size or scale_factor (as with F.interpolate), got size={size!r} and "
            f"scale_factor={scale_factor!r}."
        )
    if size is None and scale_factor is None:
        scale_factor = 2.0
    if size is not None:
        out = _pair("size", size)
        # torch.SymInt (torch.export) and fx Proxies are not plain ints, so accept any int-like.
        if any(isinstance(s, bool) or not hasattr(s, "__index__") and not isinstance(s, torch.SymInt) for s in out):
            raise TypeError(f"size must hold ints, got {size!r}.")
        if any(isinstance(s, int) and s <= 0 for s in out):
            raise ValueError(f"size must be positive, got {size!r}.")
        return out  # type: ignore[return-value]
    factors = _pair("scale_factor", scale_factor)
    if any(isinstance(f, bool) or not isinstance(f, (int, float)) for f in factors):
        raise TypeError(f"scale_factor must be a positive float or a pair of them, got {scale_factor!r}.")
    if any(not math.isfinite(f) or f <= 0 for f in factors):
        raise ValueError(f"scale_factor must be positive and finite, got {scale_factor!r}.")
    return (math.floor(in_size[0] * factors[0]), math.floor(in_size[1] * factors[1]))
