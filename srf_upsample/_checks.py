"""Private validation helpers shared by the public modules: one message format, one exception type per mistake.

A wrong type raises TypeError, a wrong value ValueError (STYLE.md section 5). Every message names the argument, what
it must be, the value received and, where there is one, the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ._interpolate import output_size

__all__ = [
    "check_choice",
    "check_device",
    "check_feature_map",
    "check_guide",
    "check_int",
    "check_levels",
    "check_number",
    "check_positive_int",
    "check_size_pair",
    "resolve_output_size",
]


def _message(name: str, expectation: str, value: object, hint: str = "", *, with_type: bool = False) -> str:
    got = f"{value!r} of type {type(value).__name__}" if with_type else repr(value)
    return f"{name} must be {expectation}, got {got}" + (f"; {hint}" if hint else "") + "."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    multiple_of: int = 1,
    hint: str = "",
) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[minimum, maximum]`` and a multiple of ``multiple_of``."""
    if maximum is not None:
        expectation = f"an int between {minimum} and {maximum}"
    elif minimum == 1 and multiple_of == 1:
        expectation = "a positive int"
    else:
        expectation = f"{'an even' if multiple_of == 2 else 'an'} int >= {minimum}"
    if multiple_of > 2:
        expectation += f" and a multiple of {multiple_of}"
    if not _is_int(value):
        raise TypeError(_message(name, expectation, value, hint, with_type=True))
    if value < minimum or (maximum is not None and value > maximum) or value % multiple_of:
        raise ValueError(_message(name, expectation, value, hint))
    return value


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (bools excluded), else raise."""
    return check_int(name, value, minimum=1)


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    is_open: bool = False,
    hint: str = "",
) -> float:
    """Return ``value`` as a float if it is a finite real number in range, else raise.

    The range is ``[minimum, maximum]``, or ``(minimum, maximum)`` with ``is_open``; a missing bound is unbounded.
    """
    low = "-inf" if minimum is None else f"{minimum:g}"
    high = "inf" if maximum is None else f"{maximum:g}"
    opening = "(" if minimum is None or is_open else "["
    closing = ")" if maximum is None or is_open else "]"
    expectation = f"a float in {opening}{low}, {high}{closing}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(_message(name, expectation, value, hint, with_type=True))
    below = minimum is not None and (value <= minimum if is_open else value < minimum)
    above = maximum is not None and (value >= maximum if is_open else value > maximum)
    if not math.isfinite(value) or below or above:
        raise ValueError(_message(name, expectation, value, hint))
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise an error listing them."""
    expectation = f"one of {sorted(choices)}"
    if not isinstance(value, str):
        raise TypeError(_message(name, expectation, value, with_type=True))
    if value not in choices:
        raise ValueError(_message(name, expectation, value))
    return value


def check_size_pair(name: str, value: object, *, minimum: int = 1) -> tuple[int, int]:
    """Return ``value`` as ``(H, W)`` if it is a pair of ints ``>= minimum``, else raise."""
    expectation = f"a pair (H, W) of ints >= {minimum}"
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise TypeError(_message(name, expectation, value, with_type=True))
    if any(v < minimum for v in value):
        raise ValueError(_message(name, expectation, value))
    return value[0], value[1]


def check_levels(name: str, levels: object, other: Sequence[Any] | None = None, other_name: str = "") -> None:
    """Check that ``levels`` is a non-empty list of tensors, one per pyramid level (as many as ``other``)."""
    expectation = "a non-empty list of tensors, one per pyramid level"
    if isinstance(levels, torch.Tensor) or not isinstance(levels, Sequence):
        raise TypeError(
            f"{name} must be {expectation}, got a {type(levels).__name__}; wrap a single level in a list: [tensor]."
        )
    if len(levels) == 0:
        raise ValueError(_message(name, expectation, levels))
    if other is not None and len(other) != len(levels):
        raise ValueError(f"{name} has {len(levels)} levels but {other_name} has {len(other)}; pass the same levels.")


def check_device(name: str, value: object) -> torch.device:
    """Return ``value`` as a ``torch.device`` if it names one this machine has, else raise."""
    expectation = "a torch.device or a device string such as 'cpu' or 'cuda:0'"
    if not isinstance(value, (str, torch.device)):
        raise TypeError(_message(name, expectation, value, with_type=True))
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(_message(name, expectation, value)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(_message(name, "a device this machine has", value, "CUDA is not available here: pass 'cpu'"))
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            _message(
                name,
                "a device this machine has",
                value,
                f"this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}",
            )
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(_message(name, "a device this machine has", value, "MPS is not available here: pass 'cpu'"))
    return device


def check_feature_map(x: object, in_channels: int | None = None, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a (N, C, H, W) floating tensor with ``in_channels`` channels and H, W >= 1."""
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
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(
            f"{name} must have H >= 1 and W >= 1, got shape {tuple(x.shape)}: an empty feature map has nothing to "
            "upsample; skip the call for empty inputs."
        )
    return x


def _check_pair_length(name: str, value: object, what: str) -> None:
    if isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be {what} or a pair of them (as with F.interpolate), got a torch.Tensor {value!r}; "
            f"pass plain numbers, e.g. {name}=tuple(t.tolist()) or size=feature.shape[-2:]."
        )
    if isinstance(value, (tuple, list)) and len(value) != 2:
        raise ValueError(f"{name} must be a number or a pair (H, W) for a 4D input, got {value!r}.")


def resolve_output_size(
    in_size: Sequence[int],
    size: int | Sequence[int] | None,
    scale_factor: float | Sequence[float] | None,
) -> tuple[int, int]:
    """Check ``size`` / ``scale_factor`` and return the (H_out, W_out) that ``F.interpolate`` would produce.

    ``H_out = size[0]`` or ``floor(H * scale_factor[0])``, as in ``torch.nn.functional.interpolate`` (the rule lives
    in ``_interpolate.output_size``). Neither given means ``scale_factor=2``.
    """
    if size is not None and scale_factor is not None:
        raise ValueError(
            f"Pass exactly one of size or scale_factor (as with F.interpolate), got size={size!r} and "
            f"scale_factor={scale_factor!r}."
        )
    if size is None and scale_factor is None:
        scale_factor = 2.0
    if size is not None:
        _check_pair_length("size", size, "an int")
        out = output_size(in_size, size, None)
        # torch.SymInt (torch.export) and fx Proxies are not plain ints, so accept any int-like.
        if any(isinstance(s, bool) or not hasattr(s, "__index__") and not isinstance(s, torch.SymInt) for s in out):
            raise TypeError(f"size must hold ints, got {size!r}.")
        if any(isinstance(s, int) and s <= 0 for s in out):
            raise ValueError(f"size must be positive, got {size!r}.")
        return out  # type: ignore[return-value]
    _check_pair_length("scale_factor", scale_factor, "a positive float")
    factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
    if any(isinstance(f, bool) or not isinstance(f, (int, float)) for f in factors):
        raise TypeError(f"scale_factor must be a positive float or a pair of them, got {scale_factor!r}.")
    if any(not math.isfinite(f) or f <= 0 for f in factors):
        raise ValueError(f"scale_factor must be positive and finite, got {scale_factor!r}.")
    return output_size(in_size, None, scale_factor)  # type: ignore[return-value]


def check_guide(
    guide: object,
    x: torch.Tensor,
    out_size: Sequence[int],
    guide_channels: int | None,
    variant: str,
) -> torch.Tensor:
    """Check the ``guide`` of a guided upsampling call: a (N, C_g, H_out, W_out) floating map that matches ``x``.

    Args:
        guide: what was passed as ``guide=``.
        x: the map being upsampled, ``(N, C, H, W)``.
        out_size: the ``(H_out, W_out)`` the call produces.
        guide_channels: the C_g the module was built for (``None``: it takes no guide).
        variant: the module's variant, named in the message when it takes no guide.
    """
    if guide_channels is None:
        raise ValueError(
            f"guide= is accepted only by SRFUpsample(..., variant='guided'); this module is variant={variant!r}. "
            "Build a guided generator, or call it without guide."
        )
    if not isinstance(guide, torch.Tensor):
        raise TypeError(f"guide must be a torch.Tensor of shape (N, C_g, H_out, W_out), got {type(guide).__name__}.")
    if guide.dim() != 4:
        raise ValueError(f"guide must be a 4D tensor (N, C_g, H_out, W_out), got shape {tuple(guide.shape)}.")
    if not guide.is_floating_point():
        raise TypeError(f"guide must be a floating point tensor, got dtype {guide.dtype}; call guide.float() first.")
    if guide.shape[0] != x.shape[0]:
        raise ValueError(
            f"guide has batch size {guide.shape[0]} but x has {x.shape[0]}; pass the guide of the same images."
        )
    if guide.shape[1] != guide_channels:
        raise ValueError(
            f"guide has {guide.shape[1]} channels but this module was built with guide_channels={guide_channels}; "
            f"build it with guide_channels={guide.shape[1]} or pass a guide with {guide_channels} channels."
        )
    if tuple(guide.shape[-2:]) != tuple(out_size):
        raise ValueError(
            f"guide must have the output size {out_size[0]}x{out_size[1]}, got {guide.shape[-2]}x{guide.shape[-1]} "
            f"(shape {tuple(guide.shape)}); pass the map the output is added to or concatenated with, or call with "
            "size=guide.shape[-2:]."
        )
    return guide
