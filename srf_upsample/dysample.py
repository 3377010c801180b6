"""DySample: a light learned upsampler that resamples the input at content-dependent points, for cost and AP baselines.

Written from the description in Liu, Lu, Fu & Cao, "Learning to Upsample by Learning to Sample" (ICCV 2023), in
plain PyTorch (a 1x1 conv, pixel shuffle and ``F.grid_sample``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_feature_map, check_int, resolve_output_size
from ._interpolate import interpolate

__all__ = ["STATIC_SCOPE", "STYLES", "DySample"]

# Offset generation styles of the paper: "lp" = linear (1x1 conv) then pixel shuffle, "pl" = pixel shuffle then linear.
STYLES = ("lp", "pl")

# The paper's static scope factor: offsets are 0.25 x the linear layer's output, which keeps neighbouring sampling
# points from overlapping (their initial spacing is half an input pixel at x2).
STATIC_SCOPE = 0.25


class DySample(nn.Module):
    """DySample (Liu et al., ICCV 2023): upsampling as point sampling, called like ``F.interpolate``.

    A 1x1 conv predicts, from the low-resolution input ``x`` (N, C, H, W), a 2D offset per output pixel and per channel
    group; each output pixel bilinearly samples ``x`` at its own position plus that offset (``F.grid_sample``). The
    defaults are the variant the paper calls plain **DySample**, its light recommended setting: ``style="lp"``
    (linear ``C -> 2 * groups * scale**2``, then pixel shuffle to (N, 2 * groups, scale * H, scale * W)), the static
    scope factor 0.25, ``groups=4``. ``style="pl"`` is DySample-S (pixel shuffle ``x`` to ``C / scale**2`` channels,
    then linear to ``2 * groups``: ``scale**4`` times fewer weights); ``dynamic=True`` is DySample+ / DySample-S+
    (offsets times ``0.5 * sigmoid(linear'(x))``, a learned per-point scope in [0, 0.5] instead of 0.25).

    Initial sampling: the paper's "bilinear initialisation". The sampling grid is the output pixel centres mapped into
    ``x``, ``(dst + 0.5) * in / out - 0.5`` per side (``(dst + 0.5) / scale_factor - 0.5`` when ``scale_factor`` is
    passed), exactly the source positions of ``F.interpolate(mode="bilinear", align_corners=False)``, and samples
    outside ``x`` are clamped to its border as there. The offset layer (and the dynamic scope layer) start at zero
    weight and bias, so a new module returns exactly ``F.interpolate(x, ..., mode="bilinear", align_corners=False)``
    (up to float rounding) until it is trained: patching a detector changes nothing at first. Offsets are in input
    pixels.

    Sizes: any input size (odd sizes included) and any requested output size; the output has exactly the size
    ``F.interpolate`` would give (``size``, or ``floor(H * scale_factor)``; neither means ``scale_factor=scale``).
    Offsets are predicted on the ``scale``-times grid (``scale * H`` x ``scale * W``); when the requested size
    differs (an odd FPN level asking for ``2H - 1``, or a non-integer ratio such as 1.5), that offset field is resized
    bilinearly to the requested size and added to the requested size's own grid. So a ratio other than ``scale`` uses
    offsets learned for ``scale`` on a grid that is exactly bilinear's.

    Args:
        in_channels: channels C of the input; must be divisible by ``groups`` (and by ``scale**2`` for ``"pl"``).
        scale: the upsampling ratio the offsets are learned for (FPN: 2).
        groups: channel groups, each with its own offsets (the paper uses 4).
        style: ``"lp"`` (DySample) or ``"pl"`` (DySample-S).
        dynamic: learned scope factor (DySample+) instead of the static 0.25.

    Shapes:
        x: (N, C, H, W) floating point -> (N, C, H_out, W_out).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> up = DySample(8)
        >>> x = torch.rand(2, 8, 5, 7)
        >>> up(x, size=(9, 13)).shape
        torch.Size([2, 8, 9, 13])
        >>> torch.allclose(up(x, scale_factor=2), F.interpolate(x, scale_factor=2, mode="bilinear"), atol=1e-6)
        True
    """

    def __init__(
        self, in_channels: int, *, scale: int = 2, groups: int = 4, style: str = "lp", dynamic: bool = False
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.scale = check_int("scale", scale, minimum=2)
        self.groups = check_int("groups", groups, minimum=1)
        self.style = check_choice("style", style, STYLES)
        if not isinstance(dynamic, bool):
            raise TypeError(f"dynamic must be a bool, got {dynamic!r}.")
        self.dynamic = dynamic
        if in_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} must be divisible by groups={groups} (each group samples C / groups "
                "channels at its own points); pick groups dividing the channel count."
            )
        if style == "pl" and in_channels % (scale * scale):
            raise ValueError(
                f"style='pl' pixel-shuffles the input first, so in_channels={in_channels} must be divisible by "
                f"scale**2={scale * scale}; use style='lp' or another scale."
            )
        if style == "lp":
            offset_in, offset_out = in_channels, 2 * groups * scale * scale
        else:
            offset_in, offset_out = in_channels // (scale * scale), 2 * groups
        self.offset = nn.Conv2d(offset_in, offset_out, 1)
        self.scope = nn.Conv2d(offset_in, offset_out, 1) if dynamic else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the offset (and scope) layers: zero offsets, the bilinear start (scope factor 0.5 * sigmoid(0))."""
        # Zero weights give zero offsets, so the module starts as bilinear interpolation exactly (see the class
        # docstring); the gradient of the offset layer is not zero there, so training moves it at once.
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)
            nn.init.zeros_(self.scope.bias)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr``."""
        return (
            f"in_channels={self.in_channels}, scale={self.scale}, groups={self.groups}, style={self.style!r}, "
            f"dynamic={self.dynamic}"
        )

    def offsets(self, x: torch.Tensor) -> torch.Tensor:
        """Return the offsets in input pixels, (N, C, H, W) -> (N, 2 * groups, scale * H, scale * W), (dx, dy) pairs."""
        if self.style == "pl":
            x = F.pixel_shuffle(x, self.scale)
        offset = self.offset(x)
        if self.scope is not None:
            offset = offset * (0.5 * torch.sigmoid(self.scope(x)))
        else:
            offset = offset * STATIC_SCOPE
        return F.pixel_shuffle(offset, self.scale) if self.style == "lp" else offset

    def forward(
        self,
        x: torch.Tensor,
        size: int | Sequence[int] | None = None,
        scale_factor: float | Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Upsample ``x`` (N, C, H, W) to ``size`` or by ``scale_factor`` (default ``scale``), like F.interpolate."""
        check_feature_map(x, self.in_channels)
        if size is None and scale_factor is None:
            scale_factor = self.scale
        batch, channels, height, width = x.shape
        out_height, out_width = resolve_output_size((height, width), size, scale_factor)
        offset = self.offsets(x)
        # Under torch.export the resize is always traced (a same-size bilinear resize is an exact copy): the size
        # test would otherwise be decided once for the example input and frozen into the graph, wrong for inputs
        # whose target is not exactly scale times theirs (odd FPN levels).
        if torch.compiler.is_exporting() or tuple(offset.shape[-2:]) != (out_height, out_width):
            offset = interpolate(offset, size=(out_height, out_width), mode="bilinear")
        if size is None:
            factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
            step_y, step_x = 1.0 / float(factors[0]), 1.0 / float(factors[1])
        else:
            step_y, step_x = height / out_height, width / out_width
        # Source positions of the output pixel centres in input pixels, as F.interpolate(align_corners=False).
        ys = (torch.arange(out_height, device=x.device, dtype=x.dtype) + 0.5) * step_y - 0.5
        xs = (torch.arange(out_width, device=x.device, dtype=x.dtype) + 0.5) * step_x - 0.5
        offset = offset.reshape(batch * self.groups, 2, out_height, out_width)
        pos_x = xs.view(1, 1, -1) + offset[:, 0]
        pos_y = ys.view(1, -1, 1) + offset[:, 1]
        # Pixel coordinates -> grid_sample's [-1, 1] (align_corners=False: -1 is the left edge of pixel 0).
        grid = torch.stack(((2 * pos_x + 1) / width - 1, (2 * pos_y + 1) / height - 1), dim=-1)
        out = F.grid_sample(
            x.reshape(batch * self.groups, channels // self.groups, height, width),
            grid.to(x.dtype),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return out.reshape(batch, channels, out_height, out_width)
