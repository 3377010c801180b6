"""SRFUpsample: the SRF-GAN generator G, a learned drop-in for ``F.interpolate`` on feature maps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ._checks import check_choice, check_feature_map, check_positive_int, resolve_output_size
from .hub import SRFHubMixin

__all__ = ["SRFUpsample", "VARIANTS"]

# Per-variant defaults for the arguments left as None. "paper" is section 3.1 of the paper; "lite" is ours (README).
VARIANTS: dict[str, dict[str, int]] = {
    "paper": {"hidden_channels": 256, "num_blocks": 5},
    "lite": {"hidden_channels": 64, "num_blocks": 2},
}


class _ResidualBlock(nn.Module):
    """3x3 conv, BN, LeakyReLU, 3x3 conv, BN, plus the identity (the paper's residual block). Shape-preserving."""

    def __init__(self, channels: int, negative_slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act = nn.LeakyReLU(negative_slope)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))

    def fuse(self) -> None:
        self.conv1, self.bn1 = fuse_conv_bn_eval(self.conv1, self.bn1), nn.Identity()
        self.conv2, self.bn2 = fuse_conv_bn_eval(self.conv2, self.bn2), nn.Identity()


class _SeparableResidualBlock(nn.Module):
    """The lite residual block: each 3x3 conv of the paper's block is a depthwise 3x3 then a pointwise 1x1."""

    def __init__(self, channels: int, negative_slope: float) -> None:
        super().__init__()
        self.depthwise1 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act = nn.LeakyReLU(negative_slope)
        self.depthwise2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise2 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.pointwise1(self.depthwise1(x))))
        return x + self.bn2(self.pointwise2(self.depthwise2(y)))

    def fuse(self) -> None:
        self.pointwise1, self.bn1 = fuse_conv_bn_eval(self.pointwise1, self.bn1), nn.Identity()
        self.pointwise2, self.bn2 = fuse_conv_bn_eval(self.pointwise2, self.bn2), nn.Identity()


class SRFUpsample(
    nn.Module,
    SRFHubMixin,
    library_name="srf_upsample",
    tags=["srf-gan", "feature-upsampling", "fpn", "object-detection"],
    repo_url="https://github.com/srf-upsample/srf_upsample",
):
    """Learned feature-map upsampling (the SRF-GAN generator G), called like ``F.interpolate``.

    The ``"paper"`` variant is section 3.1 of Lee & Bae: a 3x3 conv + LeakyReLU(0.2), ``num_blocks`` residual blocks
    (3x3 conv, BN, LeakyReLU, 3x3 conv, BN, identity shortcut), a conv block (3x3 conv + LeakyReLU) and a deconvolution
    block (4x4 transposed conv, stride 2, + LeakyReLU) that double the resolution, and a 1x1 conv back to
    ``in_channels``. The result is a residual added to the input upsampled bilinearly.

    The ``"lite"`` variant (ours, not the paper's) keeps that idea, a learned residual over bilinear, with a cheaper
    residual branch: a 1x1 conv ``in_channels -> hidden_channels`` (64) + LeakyReLU; ``num_blocks`` (2)
    depthwise-separable residual blocks (each 3x3 conv of the paper's block becomes a depthwise 3x3, a pointwise 1x1
    and BN); a 1x1 conv to ``4 * hidden_channels``, pixel shuffle x2 and LeakyReLU instead of the deconvolution; and
    the 1x1 conv back to ``in_channels``. About 69 k parameters and 3.6 GFLOPs at FPN's P3->P2 step of an 800x1216
    image, against 8.2 M and 255 GFLOPs for ``"paper"`` (``docs/performance.md``). For inference call
    ``.eval().fuse()``; on CPU, ``.to(memory_format=torch.channels_last)`` speeds up the lite variant further
    (``benchmarks/RESULTS.md``).

    One generator pass doubles H and W. For other targets: ``n = max(1, ceil(log2(max(H_out / H, W_out / W))))``
    passes are chained; every pass but the last outputs exactly ``(2H, 2W)``; in the last pass the learned residual
    (computed at twice the pass input) is resized bilinearly to the exact target and the shortcut is the pass input
    resized bilinearly to the exact target. So 17x25 -> 33x49 is one pass whose 34x50 residual is resized to 33x49.

    Args:
        in_channels: channels C of the feature maps it upsamples (256 in FPN).
        hidden_channels: width of the body; ``None`` takes the variant's default (paper: 256, lite: 64).
        num_blocks: number of residual blocks; ``None`` takes the variant's default (paper: 5, lite: 2).
        variant: ``"paper"`` or ``"lite"``.
        negative_slope: slope of every LeakyReLU (paper: 0.2).
        zero_init_residual: start the learned residual at zero, so that a fresh module equals bilinear
            interpolation (not in the paper; off by default).

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: :math:`(N, C, H_{out}, W_{out})` with ``H_out = size[0]`` or ``floor(H * scale_factor)``;
          the default is ``scale_factor=2``. The output must be at least as large as the input in both dimensions
          and larger in one.

    Example:
        >>> up = SRFUpsample(8, hidden_channels=8, num_blocks=1)
        >>> up(torch.randn(2, 8, 17, 25), size=(33, 49)).shape
        torch.Size([2, 8, 33, 49])
        >>> up(torch.randn(2, 8, 5, 6), scale_factor=4).shape
        torch.Size([2, 8, 20, 24])
    """

    def __init__(
        self,
        in_channels: int = 256,
        *,
        hidden_channels: int | None = None,
        num_blocks: int | None = None,
        variant: str = "paper",
        negative_slope: float = 0.2,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_choice("variant", variant, list(VARIANTS))
        defaults = VARIANTS[variant]
        hidden_channels = defaults["hidden_channels"] if hidden_channels is None else hidden_channels
        num_blocks = defaults["num_blocks"] if num_blocks is None else num_blocks
        check_positive_int("hidden_channels", hidden_channels)
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be a non-negative int, got {num_blocks!r}.")
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or negative_slope < 0:
            raise ValueError(f"negative_slope must be a non-negative float, got {negative_slope!r}.")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.num_blocks = num_blocks
        self.variant = variant
        self.negative_slope = float(negative_slope)
        self.zero_init_residual = bool(zero_init_residual)
        self.is_fused = False

        if variant == "paper":
            self.head = nn.Sequential(
                nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.LeakyReLU(negative_slope)
            )
            self.body = nn.Sequential(*(_ResidualBlock(hidden_channels, negative_slope) for _ in range(num_blocks)))
            self.upsample = nn.Sequential(
                nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
                nn.LeakyReLU(negative_slope),
                nn.ConvTranspose2d(hidden_channels, hidden_channels, 4, stride=2, padding=1),
                nn.LeakyReLU(negative_slope),
            )
        else:
            self.head = nn.Sequential(nn.Conv2d(in_channels, hidden_channels, 1), nn.LeakyReLU(negative_slope))
            self.body = nn.Sequential(
                *(_SeparableResidualBlock(hidden_channels, negative_slope) for _ in range(num_blocks))
            )
            self.upsample = nn.Sequential(
                nn.Conv2d(hidden_channels, 4 * hidden_channels, 1),
                nn.PixelShuffle(2),
                nn.LeakyReLU(negative_slope),
            )
        self.tail = nn.Conv2d(hidden_channels, in_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re-)initialise every weight; safe to call again."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                # The paper gives no scheme; He init matched to the LeakyReLU slope keeps activations in scale.
                nn.init.kaiming_normal_(module.weight, a=self.negative_slope, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
        if self.zero_init_residual:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr``."""
        return (
            f"{self.in_channels}, hidden_channels={self.hidden_channels}, num_blocks={self.num_blocks}, "
            f"variant={self.variant!r}, negative_slope={self.negative_slope}, "
            f"zero_init_residual={self.zero_init_residual}, is_fused={self.is_fused}"
        )

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The learned branch of one pass: ``(N, C, H, W)`` -> ``(N, C, 2H, 2W)``."""
        return self.tail(self.upsample(self.body(self.head(x))))

    def forward(
        self,
        x: torch.Tensor,
        size: int | Sequence[int] | None = None,
        scale_factor: float | Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Upsample ``x`` to ``size`` or by ``scale_factor`` (default 2), like ``F.interpolate``."""
        check_feature_map(x, self.in_channels)
        height, width = x.shape[-2], x.shape[-1]
        out_height, out_width = resolve_output_size((height, width), size, scale_factor)
        if out_height < height or out_width < width or (out_height == height and out_width == width):
            raise ValueError(
                f"SRFUpsample only enlarges feature maps: input is {height}x{width}, requested "
                f"{out_height}x{out_width} (size={size!r}, scale_factor={scale_factor!r}). "
                "Use F.interpolate for shrinking or same-size resizes."
            )
        num_passes = max(1, math.ceil(math.log2(max(out_height / height, out_width / width))))
        for index in range(num_passes):
            is_last = index == num_passes - 1
            target = (out_height, out_width) if is_last else (2 * x.shape[-2], 2 * x.shape[-1])
            x = self._one_pass(x, target)
        return x

    def _one_pass(self, x: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
        residual = self.residual(x)
        if residual.shape[-2] != target[0] or residual.shape[-1] != target[1]:
            residual = F.interpolate(residual, size=target, mode="bilinear", align_corners=False)
        shortcut = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        return shortcut + residual.to(shortcut.dtype)

    @torch.no_grad()
    def fuse(self) -> SRFUpsample:
        """Fold every BatchNorm into the convolution before it, in place, for inference; returns ``self``.

        Needs eval mode (BN then uses running statistics). A fused module cannot be saved with ``save_pretrained``
        (its weights no longer match the config); save before fusing.
        """
        if self.training:
            raise ValueError("fuse() needs eval mode (BatchNorm running statistics); call .eval() first.")
        if not self.is_fused:
            for block in self.body:
                block.fuse()
            self.is_fused = True
        return self

    def _save_pretrained(self, save_directory: Path) -> None:
        if self.is_fused:
            raise ValueError(
                "This SRFUpsample is fused; its weights no longer match its config. Save it before fuse()."
            )
        super()._save_pretrained(save_directory)
