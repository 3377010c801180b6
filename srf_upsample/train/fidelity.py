"""Feature fidelity: how close an upsampler brings half-resolution FPN features to the full-resolution ones."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._interpolate import interpolate
from .pyramid import downsample_images, extract_levels, prepare_batch

__all__ = ["FIDELITY_METRICS", "INTERPOLATIONS", "feature_pairs", "fidelity"]

FIDELITY_METRICS = ("L1", "PSNR", "cosine")


def _interpolation(mode: str) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    return lambda x, size: interpolate(x, size=size, mode=mode)


# The fixed interpolations the paper compares against (Table 5, Fig. 2).
INTERPOLATIONS: dict[str, Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]] = {
    mode: _interpolation(mode) for mode in ("nearest", "bilinear", "bicubic")
}


@torch.no_grad()
def feature_pairs(
    extractor: nn.Module, image: torch.Tensor, keys: Sequence[str], *, degradation: str = "bilinear"
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Return ``(P_lr, P_tr)``: the levels ``keys`` of F on the image downsampled by 0.5 and on the image itself.

    Args:
        extractor: the frozen multi-scale extractor F (a torchvision detector's ``backbone``: body + FPN).
        image: one ``(3, H, W)`` image with values in [0, 1].
        keys: FPN output names, e.g. ``["0", "1", "2", "3"]`` for P2-P5.
        degradation: how I_lr is made (the paper's Table 6: bilinear, nearest, bicubic).

    Returns:
        Two lists of ``(1, C, H_i, W_i)`` tensors; level i of P_lr is exactly half of level i of P_tr.
    """
    extractor.eval()
    full = prepare_batch([image])
    low = downsample_images(full, degradation)
    return extract_levels(extractor, low, keys), extract_levels(extractor, full, keys)


@torch.no_grad()
def fidelity(
    upsample: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
    low: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
) -> list[dict[str, float]]:
    """Per level: L1 (Eq. 2's term), PSNR (peak = target's max abs) and mean cosine similarity over pixels.

    Args:
        upsample: ``upsample(x, size)``, e.g. ``lambda x, size: generator(x, size=size)`` or an entry of
            ``INTERPOLATIONS``.
        low: P_lr levels, ``(N, C, h_i, w_i)``.
        target: P_tr levels, ``(N, C, H_i, W_i)``.

    Returns:
        One dict per level with the keys of ``FIDELITY_METRICS``.
    """
    rows = []
    for x, y in zip(low, target, strict=True):
        out = upsample(x, tuple(y.shape[-2:])).float()
        mse = F.mse_loss(out, y).item()
        peak = y.abs().max().item()
        rows.append(
            {
                "L1": F.l1_loss(out, y).item(),
                "PSNR": 10 * math.log10(peak**2 / mse) if mse > 0 else math.inf,
                "cosine": F.cosine_similarity(out, y, dim=1).mean().item(),
            }
        )
    return rows
