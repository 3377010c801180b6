"""Feature fidelity: how close an upsampler brings half-resolution FPN features to the full-resolution ones.

The metric and the feature pairs it compares. G's held-out L1 during training is ``heldout.py``'s, the stop on its
plateau ``plateau.py``'s, its curves ``plots.py``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._interpolate import interpolate
from .pyramid import downsample_images, extract_levels, extract_levels_and_guides, prepare_batch

__all__ = ["FIDELITY_METRICS", "INTERPOLATIONS", "feature_pairs", "fidelity", "guided_feature_pairs"]

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
def guided_feature_pairs(
    extractor: nn.Module,
    image: torch.Tensor,
    keys: Sequence[str],
    sources: Sequence[int | None],
    *,
    degradation: str = "bilinear",
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
    """:func:`feature_pairs` plus the guided generator's guides: ``(P_lr, P_tr, guides)``.

    ``guides[i]`` is the FPN lateral map of I_lr named by ``sources[i]`` (``pyramid.guide_sources``), ``(1, C, H_i,
    W_i)`` like level i of P_tr, or ``None`` (the finest level): exactly what stage 1 feeds G (same pass of F on I_lr).
    """
    extractor.eval()
    full = prepare_batch([image])
    low = downsample_images(full, degradation)
    low_levels, guides = extract_levels_and_guides(extractor, low, keys, sources)
    return low_levels, extract_levels(extractor, full, keys), guides


@torch.no_grad()
def fidelity(
    upsample: Callable[..., torch.Tensor],
    low: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    guides: Sequence[torch.Tensor | None] | None = None,
) -> list[dict[str, float]]:
    """Per level: L1 (Eq. 2's term), PSNR (peak = target's max abs) and mean cosine similarity over pixels.

    Args:
        upsample: ``upsample(x, size)``, e.g. ``lambda x, size: generator(x, size=size)`` or an entry of
            ``INTERPOLATIONS``; with ``guides``, ``upsample(x, size, guide)`` at the levels whose guide is not None.
        low: P_lr levels, ``(N, C, h_i, w_i)``.
        target: P_tr levels, ``(N, C, H_i, W_i)``.
        guides: per level the guided generator's guide ``(N, C_g, H_i, W_i)`` or ``None``; ``None``: no guides.

    Returns:
        One dict per level with the keys of ``FIDELITY_METRICS``.
    """
    rows = []
    for index, (x, y) in enumerate(zip(low, target, strict=True)):
        guide = None if guides is None else guides[index]
        size = tuple(y.shape[-2:])
        out = (upsample(x, size) if guide is None else upsample(x, size, guide)).float()
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
