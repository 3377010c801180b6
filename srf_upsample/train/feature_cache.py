"""The frozen extractor's pyramid levels on I_tr and I_lr, computed per image and kept while stage 1 trains.

In stage 1 (section 4.1) F is frozen and in eval mode, and the data pipeline is deterministic: an image is identified
by its ``(index, flip)`` key (:func:`~srf_upsample.train.data.epoch_batches`), its resize is fixed by the config, and
the batch pads it bottom-right to ``(H, W)``. F's levels on that padded image and on its half-size version are then a
pure function of ``(index, flip, H, W)``, so :class:`FeatureCache` computes them once and returns the same tensors on
every later visit. :func:`frozen_features` is the single function both the cached and the uncached path call, so the
two give bit-identical losses and gradients.

For the guided generator (docs/guided_generator.md) an entry also holds, per trained level, the FPN lateral map of
I_lr that guides G there (``guide_sources``); for the other variants that part is ``None`` per level.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import nn
from torch.profiler import record_function

from .pyramid import PAD_MULTIPLE, downsample_images, extract_levels, extract_levels_and_guides, prepare_batch

__all__ = ["FeatureCache", "batch_features", "frozen_features"]

Levels = list[torch.Tensor]
Guides = list[torch.Tensor | None]


@torch.no_grad()
def frozen_features(
    extractor: nn.Module,
    image: torch.Tensor,
    keys: Sequence[str],
    *,
    size: tuple[int, int],
    degradation: str,
    guide_sources: Sequence[int | None] | None = None,
) -> tuple[Levels, Levels, Guides]:
    """F's levels on one image padded to ``size`` (I_tr) and on its half-size degradation (I_lr).

    Args:
        extractor: the frozen F (body + FPN), in eval mode.
        image: one ``(3, H_k, W_k)`` image with values in [0, 1].
        keys: the FPN output names of the trained levels.
        size: the padded ``(H, W)`` of the batch the image is in (a multiple of 64, see ``prepare_batch``).
        degradation: how I_lr is made (bilinear, nearest, bicubic).
        guide_sources: for the guided generator, per level the FPN lateral conv whose output on I_lr is G's guide
            (``pyramid.guide_sources``; ``None`` entries: unguided); ``None``: no guides (paper, lite).

    Returns:
        ``(target, low, guides)``: per level a ``(1, C, H_i, W_i)`` float32 tensor of F(I_tr), a
        ``(1, C, H_i / 2, W_i / 2)`` tensor of F(I_lr) (in the autocast dtype under AMP), and the ``(1, C, H_i, W_i)``
        lateral map of I_lr that guides G at that level, or ``None`` (always ``None`` without ``guide_sources``).
    """
    full = prepare_batch([image], size=size)
    low = downsample_images(full, degradation)
    with record_function("F(I_tr)"):
        target = [feat.float() for feat in extract_levels(extractor, full, keys)]
    with record_function("F(I_lr)"):
        if guide_sources is None:
            return target, extract_levels(extractor, low, keys), [None] * len(keys)
        return target, *extract_levels_and_guides(extractor, low, keys, guide_sources)


class FeatureCache:
    """A dictionary in RAM from ``(index, flip, H, W)`` to F's levels on I_tr and I_lr (see :func:`frozen_features`).

    Memory: per key, ``4 * C * sum_i(H_i * W_i) * 5 / 4`` bytes (float32 I_tr levels plus the quarter-size I_lr ones);
    at C = 64 and a 448 x 448 padded tile on P2-P5 that is 5.3 MB, at C = 256 21 MB. The guided generator's lateral
    maps have the I_tr levels' sizes (all but the finest level's): up to ``4 * C * sum_{i > first}(H_i * W_i)`` more
    bytes, about +20 % for P2-P5. Each image is stored at most twice (its flip) per distinct padded batch size it is
    seen in.
    """

    def __init__(self) -> None:
        self.entries: dict[Hashable, tuple[Levels, Levels, Guides]] = {}
        self.hits = 0
        self.misses = 0
        self.guide_sources: tuple[int | None, ...] | None = None  # the guides its entries hold (batch_features)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(
            t.numel() * t.element_size()
            for entry in self.entries.values()
            for part in entry
            for t in part
            if t is not None
        )

    def stats(self) -> dict[str, int]:
        """``{"entries", "bytes", "hits", "misses"}`` since this process started (for the manifest)."""
        return {"entries": len(self), "bytes": self.nbytes, "hits": self.hits, "misses": self.misses}

    def use_guides(self, guide_sources: Sequence[int | None] | None) -> None:
        """Check that entries are computed with ``guide_sources`` (:func:`frozen_features`); an empty cache takes it.

        A cache filled without guides would otherwise serve a guided run levels without them (or the reverse).
        """
        sources = None if guide_sources is None else tuple(guide_sources)
        if not self.entries:
            self.guide_sources = sources
        elif sources != self.guide_sources:
            raise ValueError(
                f"This FeatureCache holds entries with guide_sources={self.guide_sources}, but guide_sources="
                f"{sources} was asked: use one FeatureCache per guide setting (the trainer builds one per run)."
            )

    def get(self, key: Hashable, compute) -> tuple[Levels, Levels, Guides]:
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
    guide_sources: Sequence[int | None] | None = None,
) -> tuple[Levels, Levels, Guides]:
    """F's levels on a batch of I_tr and I_lr: per image (through ``cache`` when given and the key known), stacked.

    Args:
        extractor: the frozen F.
        images: ``(3, H_k, W_k)`` images with values in [0, 1].
        image_keys: one ``(index, flip)`` per image (``None``: not cacheable, always computed).
        keys: the FPN output names of the trained levels.
        degradation: how I_lr is made.
        cache: where computed levels are kept; ``None`` computes every image.
        guide_sources: the guided generator's guide per level (see :func:`frozen_features`); ``None``: no guides.
            One cache serves one setting (:meth:`FeatureCache.use_guides`): the trainer builds one per run.

    Returns:
        ``(target, low, guides)``: per level an ``(N, C, H_i, W_i)`` float32 tensor of F(I_tr) on the batch padded
        like ``prepare_batch(images)``, the ``(N, C, H_i / 2, W_i / 2)`` levels of F(I_lr), and the
        ``(N, C, H_i, W_i)`` lateral map of I_lr guiding G at that level, or ``None`` (the finest level, or no
        ``guide_sources``).
    """
    size = _padded_size(images)
    if cache is not None:
        cache.use_guides(guide_sources)
    entries = []
    for image, key in zip(images, image_keys, strict=True):

        def compute(image: torch.Tensor = image) -> tuple[Levels, Levels, Guides]:
            return frozen_features(
                extractor, image, keys, size=size, degradation=degradation, guide_sources=guide_sources
            )

        if cache is None or key is None:
            entries.append(compute())
        else:
            entries.append(cache.get((*key, *size), compute))
    target = [torch.cat([entry[0][level] for entry in entries]) for level in range(len(keys))]
    low = [torch.cat([entry[1][level] for entry in entries]) for level in range(len(keys))]
    guides: Guides = [
        None if entries[0][2][level] is None else torch.cat([entry[2][level] for entry in entries])
        for level in range(len(keys))
    ]
    return target, low, guides


def _padded_size(images: Sequence[torch.Tensor]) -> tuple[int, int]:
    """The ``(H, W)`` that ``prepare_batch(images)`` pads to."""
    height = -(-max(img.shape[-2] for img in images) // PAD_MULTIPLE) * PAD_MULTIPLE
    width = -(-max(img.shape[-1] for img in images) // PAD_MULTIPLE) * PAD_MULTIPLE
    return height, width
