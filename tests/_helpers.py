"""Helpers shared by test modules (tests/ is on sys.path under pytest's default import mode)."""

import functools
from collections.abc import Callable
from pathlib import Path

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


def give_trained_weights(module: SRFUpsample) -> SRFUpsample:
    """Give a generator the kind of weights training leaves, in place; returns it (its mode unchanged).

    Fresh BN (mean 0, var 1, weight 1, bias 0) is almost the identity, and with norm="none" the last conv of each
    residual block starts at zero (the block is the identity), so fusing, exporting or comparing routes of a fresh
    generator would prove little. BN layers get random statistics and affine parameters, the last convs random weights.
    """
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)
        if module.norm == "none":
            for block in module.body:
                nn.init.kaiming_normal_(block.last_conv.weight, a=module.negative_slope, nonlinearity="leaky_relu")
                nn.init.uniform_(block.last_conv.bias, -0.1, 0.1)
    return module


def trained_looking(
    variant: str = "paper", channels: int = 8, num_blocks: int = 1, *, norm: str = "none", deconv_kernel: int = 6
) -> SRFUpsample:
    """A small eval-mode generator (8 hidden channels) with trained-looking weights (:func:`give_trained_weights`)."""
    module = SRFUpsample(
        channels, hidden_channels=8, num_blocks=num_blocks, variant=variant, norm=norm, deconv_kernel=deconv_kernel
    )
    return give_trained_weights(module).eval()


def quick_results(main: Callable[[list[str]], int], folder: Path) -> str:
    """Run a benchmark's ``main`` in quick mode, writing into ``folder/RESULTS.md``; the text it wrote.

    The run must succeed (``main`` returns 0).
    """
    path = folder / "RESULTS.md"
    assert main(["--quick", "--results", str(path)]) == 0
    return path.read_text()
