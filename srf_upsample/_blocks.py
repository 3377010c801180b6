"""The layers SRFUpsample is built from: normalisation choices, conv chains and the two residual blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["NORMS", "Chain", "GuideModulation", "ResidualBlock", "SeparableResidualBlock", "pointwise"]


def _no_norm(channels: int) -> nn.Module:
    return nn.Identity()


# Normalisation inside the residual blocks. "batch" is the paper's text (BN in each residual block); "none" is the
# authors' released code, and our default: one G serves every pyramid level, and BN's running statistics mix the
# levels, so a BN generator computes something else in eval mode than in training (docs/paper_fidelity.md).
NORMS: dict[str, Callable[[int], nn.Module]] = {"batch": nn.BatchNorm2d, "none": _no_norm}


def _leaky_relu(layer: nn.LeakyReLU, x: torch.Tensor, inplace: bool) -> torch.Tensor:
    return F.leaky_relu_(x, layer.negative_slope) if inplace else layer(x)


def _fold_norm(conv: nn.Conv2d, norm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Return ``(conv, norm)`` with a BatchNorm folded into ``conv``; without BatchNorm there is nothing to fold."""
    if isinstance(norm, nn.BatchNorm2d):
        return fuse_conv_bn_eval(conv, norm), nn.Identity()
    return conv, norm


class Chain(nn.Sequential):
    """An ``nn.Sequential`` that can apply its LeakyReLUs in place (inference without autograd: less memory).

    Both inference routes of SRFUpsample run the same chain of layers, so they cannot drift apart; ``inplace`` only
    changes where the activations are written. Keys stay those of ``nn.Sequential`` (``head.0.weight``, ...).
    """

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        for layer in self:
            x = _leaky_relu(layer, x, inplace) if isinstance(layer, nn.LeakyReLU) else layer(x)
        return x


class ResidualBlock(nn.Module):
    """3x3 conv, norm, LeakyReLU, 3x3 conv, norm, plus the identity (the paper's residual block). Shape-preserving."""

    def __init__(self, channels: int, negative_slope: float, norm: str) -> None:
        super().__init__()
        # A conv followed by BN needs no bias (BN cancels it); without normalisation the conv keeps its bias. The
        # norm layers keep the names bn1/bn2 for every choice, so state dicts saved before `norm` existed still load.
        has_bias = norm == "none"
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=has_bias)
        self.bn1 = NORMS[norm](channels)
        self.act = nn.LeakyReLU(negative_slope)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=has_bias)
        self.bn2 = NORMS[norm](channels)

    @property
    def last_conv(self) -> nn.Conv2d:
        """The convolution that ends the residual branch (zero-initialised when there is no normalisation)."""
        return self.conv2

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        branch = self.bn2(self.conv2(_leaky_relu(self.act, self.bn1(self.conv1(x)), inplace)))
        return branch.add_(x) if inplace else x + branch

    def fuse(self) -> None:
        self.conv1, self.bn1 = _fold_norm(self.conv1, self.bn1)
        self.conv2, self.bn2 = _fold_norm(self.conv2, self.bn2)


class SeparableResidualBlock(nn.Module):
    """The lite residual block: each 3x3 conv of the paper's block is a depthwise 3x3 then a pointwise 1x1."""

    def __init__(self, channels: int, negative_slope: float, norm: str) -> None:
        super().__init__()
        # As in ResidualBlock: bias only without BN, and the norm layers keep their old names. A depthwise conv
        # needs no bias either way: the pointwise conv after it is linear and absorbs it.
        has_bias = norm == "none"
        self.depthwise1 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise1 = nn.Conv2d(channels, channels, 1, bias=has_bias)
        self.bn1 = NORMS[norm](channels)
        self.act = nn.LeakyReLU(negative_slope)
        self.depthwise2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise2 = nn.Conv2d(channels, channels, 1, bias=has_bias)
        self.bn2 = NORMS[norm](channels)

    @property
    def last_conv(self) -> nn.Conv2d:
        """The convolution that ends the residual branch (zero-initialised when there is no normalisation)."""
        return self.pointwise2

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        branch = _leaky_relu(self.act, self.bn1(self.pointwise1(self.depthwise1(x))), inplace)
        branch = self.bn2(self.pointwise2(self.depthwise2(branch)))
        return branch.add_(x) if inplace else x + branch

    def fuse(self) -> None:
        self.pointwise1, self.bn1 = _fold_norm(self.pointwise1, self.bn1)
        self.pointwise2, self.bn2 = _fold_norm(self.pointwise2, self.bn2)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``conv`` applied as one batched GEMM: ``(N, C_in, H, W)`` -> ``(N, C_out, H, W)``, the same function.

    On the project's 2-core CPU, ``nn.Conv2d`` with a 1x1 kernel on large maps ran 2-5x slower than the equivalent
    matrix product in a micro-benchmark (256 -> 16 channels at 200x304: 131 ms vs 55 ms, 2 threads, a loaded
    machine), and the guide branch runs at the output size.
    """
    n, _, height, width = x.shape
    weight = conv.weight.view(conv.out_channels, -1).to(x.dtype).expand(n, -1, -1)
    flat = x.reshape(n, x.shape[1], height * width)
    if conv.bias is None:
        out = torch.bmm(weight, flat)
    else:
        out = torch.baddbmm(conv.bias.to(x.dtype).view(1, -1, 1), weight, flat)
    return out.view(n, conv.out_channels, height, width)


class GuideModulation(nn.Module):
    """The guided generator's guide branch: a per-pixel scale and shift of G's hidden map, read from the guide.

    ``g = LeakyReLU(depthwise3x3(conv1x1(guide)))`` projects the guide (``guide_channels`` channels, any count) to a
    narrow width (``guide_width``) and gives each pixel a 3x3 neighbourhood; a 1x1 conv then predicts
    ``(gamma, beta)`` for the ``hidden_channels`` of the hidden map, which becomes ``hidden * (1 + gamma) + beta``
    (feature-wise linear modulation, conditioned per pixel). ``modulation`` starts at zero (``reset_zero``), so a
    fresh branch leaves ``hidden`` unchanged. The 1x1 convs run as batched matrix products (:func:`pointwise`).

    Shape:
        - hidden: :math:`(N, C_h, H, W)`; guide: :math:`(N, C_g, H, W)`; output: :math:`(N, C_h, H, W)`
    """

    def __init__(self, guide_channels: int, hidden_channels: int, guide_width: int, negative_slope: float) -> None:
        super().__init__()
        self.project = nn.Conv2d(guide_channels, guide_width, 1)
        self.depthwise = nn.Conv2d(guide_width, guide_width, 3, padding=1, groups=guide_width, bias=False)
        self.act = nn.LeakyReLU(negative_slope)
        self.modulation = nn.Conv2d(guide_width, 2 * hidden_channels, 1)

    def reset_zero(self) -> None:
        """Zero the conv that predicts ``(gamma, beta)``: the branch is then the identity on ``hidden``."""
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, hidden: torch.Tensor, guide: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        g = _leaky_relu(self.act, self.depthwise(pointwise(self.project, guide)), inplace)
        gamma, beta = pointwise(self.modulation, g).to(hidden.dtype).chunk(2, dim=1)
        if inplace:
            return hidden.addcmul_(hidden, gamma).add_(beta)
        return hidden + hidden * gamma + beta
