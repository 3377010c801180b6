"""Helpers shared by test modules (tests/ is on sys.path under pytest's default import mode)."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from srf_upsample import SRFUpsample

# A generator small enough for patching tests (8 hidden channels, one residual block), built per channel count.
SMALL_SRF = functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1)


class NearestUpsample(nn.Module):
    """Reference upsampler: exactly what a nearest-mode call site computes, so a patched model must be unchanged."""

    def __init__(self, in_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor, size=None, scale_factor=None) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``, as ``F.interpolate(..., mode="nearest")``."""
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")


def trained_looking(variant: str, channels: int = 8, num_blocks: int = 1) -> SRFUpsample:
    """A small eval-mode generator whose BN layers hold non-trivial statistics and affine parameters.

    Fresh BN (mean 0, var 1, weight 1, bias 0) is almost the identity, so fusing or exporting it would prove little.
    """
    module = SRFUpsample(channels, hidden_channels=8, num_blocks=num_blocks, variant=variant)
    for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.uniform_(bn.bias, -0.2, 0.2)
    return module.eval()
