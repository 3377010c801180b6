"""The frozen extractor's pyramid levels on I_tr and I_lr, computed per image and kept while stage 1 trains.

In stage 1 (section 4.1) F is frozen and in eval mode, and the data pipeline is deterministic: an image is identified
by its ``(index, flip)`` key (:func:`~srf_upsample.train.data.epoch_batches`), its resize is fixed by the config, and
the batch pads it bottom-right to ``(H, W)``. F's levels on that padded image and on its half-size version are then a
pure function of ``(index, flip, H, W)``, so :class:`FeatureCache` computes them once and returns the same tensors on
every later visit. :func:`frozen_features` is the single function both the cached and the uncached path call, so the
two give bit-identical losses and gradients.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import nn
from torch.profiler import record_function

from .pyramid import PAD_MULTIPLE, downsample_images, extract_levels, prepare_batch

__all__ = ["FeatureCache", "batch_features", "frozen_features"]

Levels = list[torch.Tensor]


@torch.no_grad()
def frozen_features(
    extractor: nn.Module,
    image: torch.Tensor,
    keys: Sequence[str],
    *,
    size: tuple[int, int],
    degradation: str,
) -> tuple[Levels, Levels]:
    """F's levels on one image padded to ``size`` (I_tr) and on its half-size degradation (I_lr).

    Args:
        extractor: the frozen F (body + FPN), in eval mode.
        image: one ``(3, H_k, W_k)`` image with values in [0, 1].
        keys: the FPN output names of the trained levels.
        size: the padded ``(H, W)`` of the batch the image is in (a multiple of 64, see ``prepare_batch``).
        degradation: how I_lr is made (bilinear, nearest, bicubic).

    Returns:
        ``(target, low)``: per level a ``(1, C, H_i, W_i)`` float32 tensor of F(I_tr) and a ``(1, C, H_i / 2, W_i / 2)``
        tensor of F(I_lr) (in the autocast dtype under AMP).
    """
    full = prepare_batch([image], size=size)
    low = downsample_images(full, degradation)
    with record_function("F(I_tr)"):
        target = [feat.float() for feat in extract_levels(extractor, full, keys)]
    with record_function("F(I_lr)"):
        return target, extract_levels(extractor, low, keys)


class FeatureCache:
    """A dictionary in RAM from ``(index, flip, H, W)`` to F's levels on I_tr and I_lr (see :func:`frozen_features`).

    Memory: per key, ``4 * C * sum_i(H_i * W_i) * 5 / 4`` bytes (float32 I_tr levels plus the quarter-size I_lr ones);
    at C = 64 and a 448 x 448 padded tile on P2-P5 that is 5.3 MB, at C = 256 21 MB. Each image is stored at most
    twice (its flip) per distinct padded batch size it is seen in.
    """

    def __init__(self) -> None:
        self.entries: dict[Hashable, tuple[Levels, Levels]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(t.numel() * t.element_size() for pair in self.entries.values() for part in pair for t in part)

    def stats(self) -> dict[str, int]:
        """``{"entries", "bytes", "hits", "misses"}`` since this process started (for the manifest)."""
        return {"entries": len(self), "bytes": self.nbytes, "hits": self.hits, "misses": self.misses}

    def get(self, key: Hashable, compute) -> tuple[Levels, Levels]:
        """The entry of ``key``, computed by ``compute()`` (and kept) on the first request."""
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            entry = compute()
            self.entries[key] = entry
        else:
            self.hits += 1
        return entry


def batch_features(
    extractor: nn.Module,
    images: Sequence[torch.Tensor],
    image_keys: Sequence[Hashable | None],
    keys: Sequence[str],
    *,
    degradation: str,
    cache: FeatureCache | None = None,
) -> tuple[Levels, Levels]:
    """F's levels on a batch of I_tr and I_lr: per image (through ``cache`` when given and the key known), stacked.

    Args:
        extractor: the frozen F.
        images: ``(3, H_k, W_k)`` images with values in [0, 1].
        image_keys: one ``(index, flip)`` per image (``None``: not cacheable, always computed).
        keys: the FPN output names of the trained levels.
        degradation: how I_lr is made.
        cache: where computed levels are kept; ``None`` computes every image.

    Returns:
        ``(target, low)``: per level an ``(N, C, H_i, W_i)`` float32 tensor of F(I_tr) on the batch padded like
        ``prepare_batch(images)``, and the ``(N, C, H_i / 2, W_i / 2)`` levels of F(I_lr).
    """
    size = _padded_size(images)
    pairs = []
    for image, key in zip(images, image_keys, strict=True):

        def compute(image: torch.Tensor = image) -> tuple[Levels, Levels]:
            return frozen_features(extractor, image, keys, size=size, degradation=degradation)

        if cache is None or key is None:
            pairs.append(compute())
        else:
            pairs.append(cache.get((*key, *size), compute))
    target = [torch.cat([pair[0][level] for pair in pairs]) for level in range(len(keys))]
    low = [torch.cat([pair[1][level] for pair in pairs]) for level in range(len(keys))]
    return target, low


def _padded_size(images: Sequence[torch.Tensor]) -> tuple[int, int]:
    """The ``(H, W)`` that ``prepare_batch(images)`` pads to."""
    height = -(-max(img.shape[-2] for img in images) // PAD_MULTIPLE) * PAD_MULTIPLE
    width = -(-max(img.shape[-1] for img in images) // PAD_MULTIPLE) * PAD_MULTIPLE
    return height, width
