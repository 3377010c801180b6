"""FeaturePatchDiscriminator: the SRF-GAN feature patch discriminator D, used only while training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_feature_map, check_number, check_positive_int
from .hub import SRFHubMixin

__all__ = ["FeaturePatchDiscriminator"]


class FeaturePatchDiscriminator(
    nn.Module,
    SRFHubMixin,
    library_name="srf_upsample",
    tags=["srf-gan", "discriminator"],
    repo_url="https://github.com/srf-upsample/srf_upsample",
):
    """Classifies every feature pixel as target (real) or super-resolved (fake), section 3.1 of the paper.

    Three blocks of 3x3 conv (stride 1) + BN + LeakyReLU(0.2) with 512, 1024 and 1024 channels, then a 1x1 conv to
    one logit per feature pixel. The paper ends with a sigmoid; we return logits and apply the sigmoid inside the
    losses (``binary_cross_entropy_with_logits``), which is the same function but numerically stable.

    Args:
        in_channels: channels C of the feature maps it judges (256 in FPN).
        hidden_channels: widths of the conv blocks (paper: ``[512, 1024, 1024]``).
        negative_slope: slope of every LeakyReLU (paper: 0.2).

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: :math:`(N, 1, H, W)`, logits (same resolution as the input, as in the paper).

    Example:
        >>> disc = FeaturePatchDiscriminator(8, hidden_channels=[16, 16, 16])
        >>> disc(torch.randn(2, 8, 9, 13)).shape
        torch.Size([2, 1, 9, 13])
    """

    def __init__(
        self,
        in_channels: int = 256,
        *,
        hidden_channels: Sequence[int] = (512, 1024, 1024),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        if isinstance(hidden_channels, (str, bytes)) or not isinstance(hidden_channels, Sequence):
            raise TypeError(
                f"hidden_channels must be a list of positive ints, one width per conv block, got {hidden_channels!r} "
                f"of type {type(hidden_channels).__name__}; the paper's is [512, 1024, 1024]."
            )
        hidden_channels = list(hidden_channels)
        if not hidden_channels:
            raise ValueError(
                "hidden_channels must be a list of positive ints, one width per conv block, got []; the paper's is "
                "[512, 1024, 1024]."
            )
        for index, width in enumerate(hidden_channels):
            check_positive_int(f"hidden_channels[{index}]", width)
        check_number("negative_slope", negative_slope, minimum=0.0)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.negative_slope = float(negative_slope)
        blocks: list[nn.Module] = []
        previous = in_channels
        for width in hidden_channels:
            blocks += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(negative_slope),
            ]
            previous = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(previous, 1, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re-)initialise every weight; safe to call again."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He init matched to the LeakyReLU slope, as in the generator; the paper gives no scheme.
                nn.init.kaiming_normal_(module.weight, a=self.negative_slope, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr``."""
        return f"{self.in_channels}, hidden_channels={self.hidden_channels}, negative_slope={self.negative_slope}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return one real/fake logit per feature pixel, ``(N, 1, H, W)``."""
        check_feature_map(x, self.in_channels)
        return self.classifier(self.features(x))
