"""The SRF-GAN losses of the paper, Eq. (1)-(3) and the integral loss, as plain functions over pyramid levels.

Every function takes one tensor per pyramid level n_s..n_e (a sequence, ordered as the caller likes) and sums the
per-level terms, each a mean over its own pixels, exactly as the equations normalise by ``W_i H_i`` (and ``C``).
The discriminator returns logits; ``D(.)`` of the paper is ``sigmoid(logits)``, applied here through the
``*_with_logits`` losses for numerical stability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_levels, check_number
from ._interpolate import interpolate, output_size

__all__ = [
    "ADVERSARIAL_WEIGHT",
    "DOWNSCALE_FACTOR",
    "discriminator_loss",
    "downsample_targets",
    "feature_l1_loss",
    "generator_adversarial_loss",
    "integral_loss",
    "srf_extractor_loss",
    "srf_loss",
]

ADVERSARIAL_WEIGHT = 0.001  # lambda of Eq. (2) and (3)
DOWNSCALE_FACTOR = 0.5  # s of section 3.2


def discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. (1), as the loss D minimises: ``-sum_i [mean log D(P_i^tr) + mean log(1 - D(G(P_i^lr)))]``.

    Args:
        real_logits: D's logits on the target features, one ``(N, 1, H_i, W_i)`` tensor per level.
        fake_logits: D's logits on the super-resolved features (detach G's output before D for this loss).

    Returns:
        A scalar: per level, the mean over the batch and the ``W_i H_i`` pixels, summed over levels.
    """
    check_levels("real_logits", real_logits)
    check_levels("fake_logits", fake_logits, real_logits, "real_logits")
    total = real_logits[0].new_zeros(())
    for real, fake in zip(real_logits, fake_logits, strict=False):
        total = total + F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        total = total + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    return total


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The adversarial term of Eq. (2) and (3): ``sum_i mean(-log D(P_i^sr))``.

    The gradient must flow through D into G: do not detach ``fake_logits`` (D's parameters are simply not stepped).
    """
    check_levels("fake_logits", fake_logits)
    total = fake_logits[0].new_zeros(())
    for fake in fake_logits:
        total = total + F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    return total


def feature_l1_loss(sr_features: Sequence[torch.Tensor], target_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L1 term of Eq. (2): ``sum_i mean_{c,x,y} |P_i^tr - G(P_i^lr)|`` (also averaged over the batch)."""
    check_levels("sr_features", sr_features)
    check_levels("target_features", target_features, sr_features, "sr_features")
    total = sr_features[0].new_zeros(())
    for level, (sr, target) in enumerate(zip(sr_features, target_features, strict=False)):
        if sr.shape != target.shape:
            raise ValueError(
                f"Level {level}: super-resolved features have shape {tuple(sr.shape)} but the target has "
                f"{tuple(target.shape)}; upsample with size=target.shape[-2:] so that they match."
            )
        total = total + F.l1_loss(sr, target)
    return total


def srf_loss(
    sr_features: Sequence[torch.Tensor],
    target_features: Sequence[torch.Tensor],
    fake_logits: Sequence[torch.Tensor],
    *,
    adversarial_weight: float = ADVERSARIAL_WEIGHT,
) -> torch.Tensor:
    """Eq. (2), L_SRF(G, D, F) = L_L1 + lambda * L_adv, the loss G minimises in SRF-GAN training (section 4.1).

    Args:
        sr_features: ``G(P_i^lr)``, one ``(N, C, H_i, W_i)`` tensor per level.
        target_features: ``P_i^tr`` from the frozen extractor F on the full-size image, same shapes.
        fake_logits: ``D(G(P_i^lr))`` logits, not detached.
        adversarial_weight: lambda (paper: 0.001).

    Returns:
        The scalar loss.

    Example:
        >>> sr = [torch.zeros(1, 2, 4, 4)]
        >>> srf_loss(sr, [torch.ones(1, 2, 4, 4)], [torch.zeros(1, 1, 4, 4)], adversarial_weight=0.0)
        tensor(1.)
    """
    check_number("adversarial_weight", adversarial_weight, minimum=0.0, hint="the paper's lambda is 0.001")
    loss = feature_l1_loss(sr_features, target_features)
    if adversarial_weight:
        loss = loss + adversarial_weight * generator_adversarial_loss(fake_logits)
    return loss


def downsample_targets(
    target_features: Sequence[torch.Tensor],
    sizes: Sequence[Sequence[int]] | None = None,
    *,
    scale: float = DOWNSCALE_FACTOR,
    mode: str = "bilinear",
) -> list[torch.Tensor]:
    """``↓×s(P_i^tr)`` of Eq. (3): each level resized to ``floor(s H_i) x floor(s W_i)``, or to ``sizes[i]``.

    ``sizes`` exists because the FPN of the half-size image can round odd sizes up where ``floor`` rounds down; the
    trainer passes the sizes of M's features so that both sides of Eq. (3) have the same shape.
    """
    check_levels("target_features", target_features)
    check_number("scale", scale, minimum=0.0, maximum=1.0, is_open=True, hint="the paper's s is 0.5")
    check_choice("mode", mode, ["nearest", "bilinear", "bicubic"])
    if sizes is not None and len(sizes) != len(target_features):
        raise ValueError(f"sizes has {len(sizes)} entries but target_features has {len(target_features)} levels.")
    out = []
    for level, feat in enumerate(target_features):
        if sizes is not None:
            size = tuple(int(s) for s in sizes[level])
        else:
            size = output_size(feat.shape[-2:], None, scale)
        out.append(interpolate(feat, size=size, mode=mode))
    return out


def srf_extractor_loss(
    sr_features: Sequence[torch.Tensor],
    target_features: Sequence[torch.Tensor],
    fake_logits: Sequence[torch.Tensor],
    *,
    adversarial_weight: float = ADVERSARIAL_WEIGHT,
    scale: float = DOWNSCALE_FACTOR,
) -> torch.Tensor:
    """Eq. (3), L_SRF(M, D, F): Eq. (2) against the targets downsampled by s, for the SRF extractor (section 4.2).

    Args:
        sr_features: ``P_i^sr``, the pyramid of M (the detector's FPN with G patched in) on the half-size image.
        target_features: ``P_i^tr`` from the frozen F on the full-size image, at full size; they are resized here to
            the shape of ``sr_features`` (``floor(s W_i) x floor(s H_i)`` when the image size is even at every level).
        fake_logits: D's logits on ``sr_features``, not detached.
        adversarial_weight: lambda (paper: 0.001).
        scale: s (paper: 0.5), used to check that each level really is about ``s`` times its target.

    Returns:
        The scalar loss.
    """
    check_levels("sr_features", sr_features)
    check_levels("target_features", target_features, sr_features, "sr_features")
    check_number("scale", scale, minimum=0.0, maximum=1.0, is_open=True, hint="the paper's s is 0.5")
    for level, (sr, target) in enumerate(zip(sr_features, target_features, strict=False)):
        for dim in (-2, -1):
            if abs(sr.shape[dim] - scale * target.shape[dim]) > 1:
                raise ValueError(
                    f"Level {level}: sr_features is {tuple(sr.shape[-2:])} but s * target is about "
                    f"{tuple(round(scale * t) for t in target.shape[-2:])} (s={scale}); feed M the image downsampled "
                    "by s and F the full-size image."
                )
    downsampled = downsample_targets(target_features, [sr.shape[-2:] for sr in sr_features], scale=scale)
    return srf_loss(sr_features, downsampled, fake_logits, adversarial_weight=adversarial_weight)


def integral_loss(
    srf_extractor_term: torch.Tensor, detection_losses: Mapping[str, torch.Tensor] | torch.Tensor
) -> torch.Tensor:
    """L_INT(M, D, F) = L_SRF(M, D, F) + L_DET(M), section 4.2.

    Args:
        srf_extractor_term: Eq. (3) as returned by :func:`srf_extractor_loss`.
        detection_losses: the detector's loss dict (torchvision detectors return one in train mode) or its sum.

    Returns:
        The scalar loss.
    """
    if isinstance(detection_losses, Mapping):
        if not detection_losses:
            raise ValueError("detection_losses is empty; call the detector in train mode with targets.")
        detection = sum(detection_losses.values())
    elif isinstance(detection_losses, torch.Tensor):
        detection = detection_losses
    else:
        raise TypeError(
            f"detection_losses must be a dict of tensors or a tensor, got {type(detection_losses).__name__}."
        )
    return srf_extractor_term + detection
