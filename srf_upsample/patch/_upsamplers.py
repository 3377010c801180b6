"""Which module serves an upsampling call: the upsamplers patch_fpn builds, and the per-call enlargement guard."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._interpolate import output_size
from ..upsample import SRFUpsample
from ..upsamplers import resolve_upsampler, upsampler_types

PARAMETER_REASON = "resizes a parameter (e.g. a position embedding), not a feature map"

__all__ = ["PARAMETER_REASON", "Upsampler", "UpsamplerProvider", "direction", "enlarge_or_interpolate", "is_upsampler"]

Upsampler = str | nn.Module | Callable[[int], nn.Module]

# Upsamplers that patch_fpn put in place (besides the registry's classes, which are always recognised, also when a
# checkpoint reloads them), so that patching twice sees them as already patched instead of as new call sites (a
# reference upsampler calls F.interpolate itself).
_INSTALLED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def is_upsampler(module: nn.Module) -> bool:
    """Return True for a module of a registry class (SRFUpsample, DySample, CARAFE) or one patch_fpn installed."""
    return isinstance(module, upsampler_types()) or module in _INSTALLED


def direction(input_shape: Sequence[int] | None, output_shape: Sequence[int] | None) -> str:
    """Return "" for a true enlargement, else the reason the site is left alone."""
    if input_shape is None or output_shape is None:
        return "no shape on the example input (the call did not run)"
    if len(input_shape) != 4 or len(output_shape) != 4:
        return f"not a 4D feature map (input shape {tuple(input_shape)})"
    height, width = input_shape[-2:]
    out_height, out_width = output_shape[-2:]
    if height == 1 and width == 1:
        return "broadcast from a 1x1 map (e.g. global pooling), not an enlargement"
    if (out_height, out_width) == (height, width):
        return "same-size resize"
    if out_height <= height and out_width <= width:
        return "downsampling"
    if out_height < height or out_width < width:
        return "enlarges one side and shrinks the other"
    return ""


def enlarge_or_interpolate(
    upsampler: nn.Module,
    x: torch.Tensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
    guide: torch.Tensor | None = None,
) -> torch.Tensor:
    """Call ``upsampler`` where this call enlarges a floating point 4D map, else do exactly what F.interpolate does.

    A site chosen on the example input can be a same-size resize, a shrink or a 1x1 broadcast on another input (two
    pyramid levels that round to the same size); the original call must then run, not the generator. Under
    ``torch.export`` the upsampler is called unconditionally, as at patch time: the check compares run-time sizes of
    different inputs, which would otherwise tie dynamic dimensions together.

    Args:
        upsampler: the module serving enlargements, called with the input and ``size`` or ``scale_factor``.
        x: the input of the original call.
        size: F.interpolate's ``size``.
        scale_factor: F.interpolate's ``scale_factor``.
        mode: F.interpolate's ``mode``, used when the original call runs.
        align_corners: F.interpolate's ``align_corners``.
        recompute_scale_factor: F.interpolate's ``recompute_scale_factor``.
        antialias: F.interpolate's ``antialias``.
        guide: the tensor the output meets next (``patch_fpn`` wires it for upsamplers that take one); passed as
            ``guide=`` when it has the output's batch and size, else the upsampler runs unguided (a broadcasting add).

    Returns:
        The upsampled (or, for a non-enlargement, interpolated) tensor.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from srf_upsample import SRFUpsample
        >>> upsampler = SRFUpsample(8, hidden_channels=8, num_blocks=1)
        >>> x = torch.rand(2, 8, 5, 7)
        >>> enlarge_or_interpolate(upsampler, x, scale_factor=2).shape  # an enlargement: the upsampler runs
        torch.Size([2, 8, 10, 14])
        >>> torch.equal(enlarge_or_interpolate(upsampler, x, size=(3, 4)), F.interpolate(x, size=(3, 4)))  # a shrink
        True
    """
    if not torch.compiler.is_exporting():
        out_size = output_size(x.shape[-2:], size, scale_factor) if x.dim() == 4 and x.is_floating_point() else None
        if guide is not None and (
            out_size is None or guide.dim() != 4 or guide.shape[0] != x.shape[0] or tuple(guide.shape[-2:]) != out_size
        ):
            guide = None
        if out_size is None or direction(tuple(x.shape), (*x.shape[:2], *out_size)):
            return F.interpolate(
                x,
                size=size,
                scale_factor=scale_factor,
                mode=mode,
                align_corners=align_corners,
                recompute_scale_factor=recompute_scale_factor,
                antialias=antialias,
            )
    extra = {} if guide is None else {"guide": guide}
    if size is not None:
        return upsampler(x, size=size, **extra)
    return upsampler(x, scale_factor=scale_factor, **extra)


class UpsamplerProvider:
    """Hands out the upsampler for each site: shared per channel count, or one per call site."""

    def __init__(self, upsampler: Upsampler | None, share: bool) -> None:
        if upsampler is None:
            upsampler = SRFUpsample
        elif isinstance(upsampler, str):
            # A registry name (srf_upsample.list_upsamplers()); an unknown one is a ValueError listing the names.
            upsampler = resolve_upsampler(upsampler)
        if not isinstance(upsampler, nn.Module) and not callable(upsampler):
            raise TypeError(
                "upsampler must be a name from srf_upsample.list_upsamplers() (e.g. 'carafe'), an nn.Module, a "
                "factory called with the channel count (e.g. SRFUpsample or functools.partial(SRFUpsample, "
                f"variant='lite')), or None, got {type(upsampler).__name__}."
            )
        if not isinstance(share, bool):
            raise TypeError(f"share must be a bool, got {share!r}.")
        self.upsampler = upsampler
        self.share = share
        self.shared: dict[int, nn.Module] = {}
        self.handed_out: list[nn.Module] = []

    def mismatch(self, channels: int) -> str:
        """Return why a ready module cannot serve ``channels``, or ""."""
        expected = getattr(self.upsampler, "in_channels", None) if isinstance(self.upsampler, nn.Module) else None
        if isinstance(expected, int) and expected != channels:
            return (
                f"the upsampler module has in_channels={expected} but this site has {channels} channels; "
                "pass a factory (e.g. upsampler=SRFUpsample) to build one per channel count"
            )
        return ""

    def get(self, channels: int, site_name: str) -> tuple[str, nn.Module]:
        """Return the attribute name and the module serving a site with ``channels`` channels."""
        if self.share:
            name = f"srf_upsampler_c{channels}"
            if channels not in self.shared:
                self.shared[channels] = self._build(channels, copy_module=False)
            return name, self.shared[channels]
        return f"srf_{site_name}", self._build(channels, copy_module=True)

    def _build(self, channels: int, copy_module: bool) -> nn.Module:
        if isinstance(self.upsampler, nn.Module):
            module = copy.deepcopy(self.upsampler) if copy_module else self.upsampler
            self.handed_out.append(module)
            return module
        module = self.upsampler(channels)
        if not isinstance(module, nn.Module):
            raise TypeError(f"upsampler factory must return an nn.Module, got {type(module).__name__}.")
        self.handed_out.append(module)
        return module

    def installed(self) -> None:
        """Mark every module handed out as an upsampler (see is_upsampler); call once the patch is swapped in."""
        _INSTALLED.update(self.handed_out)
