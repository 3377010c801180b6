"""Feeding FPN extractors: normalised padded batches, the half-size image I_lr, and the pyramid levels P_i."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .._interpolate import interpolate

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "PAD_MULTIPLE",
    "FeaturePyramidHook",
    "downsample_images",
    "extract_levels",
    "extract_levels_and_guides",
    "guide_sources",
    "lateral_blocks",
    "prepare_batch",
    "target_batch_size",
]

# torchvision's detectors normalise with the ImageNet statistics; F must see the same input as the detector.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# The whole pipeline pads to a multiple of 2 * 32: the half-size image then pads to a multiple of 32 too, so every
# level of P_lr is exactly half of the same level of P_tr.
PAD_MULTIPLE = 64


def prepare_batch(
    images: Sequence[torch.Tensor], multiple: int = PAD_MULTIPLE, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Normalise ``(3, H_k, W_k)`` images like the detector and pad them bottom-right into one ``(N, 3, H, W)`` batch.

    ``H`` and ``W`` are the largest image sides rounded up to ``multiple`` (64), so the half-size batch is an exact 2x
    downsample whose pyramid levels are exactly half of the full-size ones. ``size`` fixes ``(H, W)`` instead; an
    image larger than ``size`` is cropped bottom-right (at most the odd last row/column, see
    :func:`target_batch_size`).
    """
    if size is None:
        height = math.ceil(max(img.shape[-2] for img in images) / multiple) * multiple
        width = math.ceil(max(img.shape[-1] for img in images) / multiple) * multiple
    else:
        height, width = size
    first = images[0]
    batch = first.new_zeros((len(images), 3, height, width))
    mean = torch.tensor(IMAGE_MEAN, dtype=first.dtype, device=first.device)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=first.dtype, device=first.device)[:, None, None]
    for index, img in enumerate(images):
        crop = img[:, :height, :width]
        batch[index, :, : crop.shape[-2], : crop.shape[-1]] = (crop - mean) / std
    return batch


def target_batch_size(low_images: Sequence[torch.Tensor], size_divisible: int = 32) -> tuple[int, int]:
    """The padded ``(H, W)`` of the I_tr batch whose FPN levels are exactly twice those of the I_lr batch.

    The detector pads the I_lr batch to a multiple of ``size_divisible``; I_tr is padded to twice that. An I_tr of odd
    side ``2h + 1`` (its I_lr has side ``h``) may then be one pixel longer than the padded batch: that last row or
    column is cropped, so pixel ``(y, x)`` of I_lr still covers pixels ``2y, 2y + 1`` of I_tr.
    """
    height = math.ceil(max(img.shape[-2] for img in low_images) / size_divisible) * size_divisible
    width = math.ceil(max(img.shape[-1] for img in low_images) / size_divisible) * size_divisible
    return 2 * height, 2 * width


def downsample_images(x: torch.Tensor | Sequence[torch.Tensor], mode: str, scale: float = 0.5):
    """I_lr = degradation of I_tr by ``scale``: an ``(N, 3, H, W)`` batch or a list of ``(3, H, W)`` images."""
    if isinstance(x, torch.Tensor):
        return interpolate(x, scale_factor=scale, mode=mode)
    out = []
    for img in x:
        size = (max(1, math.floor(img.shape[-2] * scale)), max(1, math.floor(img.shape[-1] * scale)))
        low = interpolate(img[None], size=size, mode=mode)[0]
        out.append(low.clamp(0, 1) if mode == "bicubic" else low)
    return out


def extract_levels(backbone: nn.Module, x: torch.Tensor, keys: Sequence[str]) -> list[torch.Tensor]:
    """Run the FPN backbone (body + fpn) on a prepared ``(N, 3, H, W)`` batch; the levels named by ``keys``."""
    feats = backbone(x)
    return [feats[key] for key in keys]


def guide_sources(keys: Sequence[str]) -> list[int | None]:
    """Per trained level, the index of the FPN lateral conv whose output guides G there; ``None``: unguided.

    Inside torchvision's FPN the map of input ``k`` (output key ``str(k)``, see ``models.level_keys``) is upsampled to
    the size of input ``k - 1`` and added to ``inner_blocks[k - 1]`` of it: that lateral map is the guide the patched
    FPN passes (docs/guided_generator.md). Key ``"0"`` is the FPN's finest level: no finer lateral map, so G runs its
    unguided pass there.

    Example:
        >>> guide_sources(["0", "1", "2", "3"])
        [None, 0, 1, 2]
    """
    return [int(key) - 1 if int(key) > 0 else None for key in keys]


def lateral_blocks(backbone: nn.Module) -> nn.ModuleList:
    """The lateral 1x1 convs of ``backbone``'s torchvision FPN (``backbone.fpn.inner_blocks``), finest first."""
    blocks = getattr(getattr(backbone, "fpn", None), "inner_blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"The guided generator's guide is the FPN's lateral map (backbone.fpn.inner_blocks of torchvision's "
            f"FeaturePyramidNetwork), but the extractor {type(backbone).__name__} has no fpn.inner_blocks: train "
            "the guided variant against a torchvision FPN backbone, or set generator_variant to 'lite'."
        )
    return blocks


def extract_levels_and_guides(
    backbone: nn.Module, x: torch.Tensor, keys: Sequence[str], sources: Sequence[int | None]
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """:func:`extract_levels`, plus per level the FPN lateral map ``inner_blocks[source](C_source)`` of the same pass.

    Args:
        backbone: the FPN backbone (body + torchvision FPN).
        x: a prepared ``(N, 3, H, W)`` batch.
        keys: the FPN output names of the trained levels.
        sources: per level, the lateral conv index (:func:`guide_sources`) or ``None``.

    Returns:
        ``(levels, guides)``: the ``(N, C, H_i, W_i)`` levels, and per level the ``(N, C, 2 H_i, 2 W_i)`` lateral map
        of the next-finer FPN input (captured by a forward hook, so F runs once) or ``None``.
    """
    if len(sources) != len(keys):
        raise ValueError(f"sources needs one entry per key ({len(keys)}), got {len(sources)}.")
    blocks = lateral_blocks(backbone)
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for index in sorted({source for source in sources if source is not None}):
        if not 0 <= index < len(blocks):
            raise ValueError(f"guide source {index} is not a lateral conv of this FPN (it has {len(blocks)}).")

        def keep(module: nn.Module, args, output: torch.Tensor, index: int = index) -> None:
            captured[index] = output

        handles.append(blocks[index].register_forward_hook(keep))
    try:
        levels = extract_levels(backbone, x, keys)
    finally:
        for handle in handles:
            handle.remove()
    return levels, [None if source is None else captured[source] for source in sources]


class FeaturePyramidHook:
    """Keeps the FPN outputs of ``model.backbone`` from the last forward (for Eq. (3) in the same pass as L_DET)."""

    def __init__(self, backbone: nn.Module) -> None:
        self.features: OrderedDict[str, torch.Tensor] | None = None
        self.handle = backbone.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args, output) -> None:
        self.features = output

    def pop(self, keys: Sequence[str]) -> list[torch.Tensor]:
        """Return and forget the captured levels named by ``keys``."""
        if self.features is None:
            raise RuntimeError("No FPN features captured; the detector's backbone did not run.")
        feats, self.features = self.features, None
        return [feats[key] for key in keys]

    def remove(self) -> None:
        """Detach the hook from the backbone."""
        self.handle.remove()
