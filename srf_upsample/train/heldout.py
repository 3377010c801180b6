"""G's held-out L1 during training: F's feature pairs on the evaluation images, computed once, and G scored on them."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .fidelity import INTERPOLATIONS, feature_pairs, fidelity, guided_feature_pairs

if TYPE_CHECKING:
    from .coco import CocoFile
    from .config import TrainConfig

__all__ = ["HeldoutFeatures"]


def _level_means(per_image: Sequence[Sequence[dict[str, float]]], names: Sequence[str]) -> dict[str, float]:
    """Per level, the mean over images of the L1 of :func:`fidelity`; plus ``"mean"`` over the levels."""
    levels = {name: statistics.fmean(rows[index]["L1"] for rows in per_image) for index, name in enumerate(names)}
    return {**levels, "mean": statistics.fmean(levels.values())}


@dataclass
class HeldoutFeatures:
    """F's ``(P_lr, P_tr)`` pairs on held-out images, computed once, to measure G's Eq. (2) L1 during training.

    Attributes:
        pairs: one :func:`feature_pairs` result per image (levels ``(1, C, H_i, W_i)``).
        level_names: ``"P2"``... one per level.
        guides: for the guided generator, per image the guides of :func:`guided_feature_pairs` (per level a
            ``(1, C, H_i, W_i)`` lateral map of I_lr or ``None``); ``None`` for the other variants.
    """

    pairs: list[tuple[list[torch.Tensor], list[torch.Tensor]]]
    level_names: list[str]
    guides: list[list[torch.Tensor | None]] | None = None

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        extractor: nn.Module,
        keys: Sequence[str],
        levels: Sequence[int],
        device: torch.device,
        *,
        guide_sources: Sequence[int | None] | None = None,
        eval_file: CocoFile | None = None,
    ) -> HeldoutFeatures:
        """The pairs of every readable image of ``config.eval_ann_file``, resized like training, not flipped.

        ``guide_sources`` (``pyramid.guide_sources``, for the guided generator) also keeps, per image, the lateral
        maps of I_lr that stage 1 feeds G as guides. ``eval_file``: that file as already read
        (a :class:`~srf_upsample.train.coco.CocoFile`), so it is not read again; ``None`` reads it.
        """
        from .data import CocoDetectionDataset

        dataset = CocoDetectionDataset(
            config.eval_data_root or config.data_root,
            eval_file if eval_file is not None else config.eval_ann_file,
            min_size=config.min_size,
            max_size=config.max_size,
        )
        pairs = []
        guides: list[list[torch.Tensor | None]] | None = None if guide_sources is None else []
        for index in range(len(dataset)):
            item = dataset[(index, False)]
            if item is None:
                continue
            image = item[0].to(device)
            if guides is None:
                low, target = feature_pairs(extractor, image, keys, degradation=config.degradation)
            else:
                low, target, image_guides = guided_feature_pairs(
                    extractor, image, keys, guide_sources, degradation=config.degradation
                )
                guides.append([None if g is None else g.float() for g in image_guides])
            pairs.append(([x.float() for x in low], [y.float() for y in target]))
        if not pairs:
            raise ValueError(f"No readable image in {config.eval_ann_file!r} to measure G on; check --eval-data-root.")
        return cls(pairs, [f"P{level}" for level in levels], guides)

    @torch.no_grad()
    def generator_fidelity(self, generator: nn.Module, *, interpolations: bool = False) -> dict[str, Any]:
        """Eq. (2)'s L1 per level between G(P_lr) and P_tr, averaged over the images (G in eval mode meanwhile).

        A guided G (``accepts_guide``) gets the held-out guides, as in stage 1 (built with ``guide_sources``); the
        interpolations never get one.

        Returns:
            ``{"generator_l1": {"P2": ..}, "generator_l1_mean": .., "heldout_images": n}``, and with
            ``interpolations`` also ``"interpolation_l1": {"nearest" | "bilinear" | "bicubic": {"P2": .., ..}}`` and
            ``"interpolation_l1_mean": {mode: ..}``.
        """
        guided = bool(getattr(generator, "accepts_guide", False))
        if guided != (self.guides is not None):
            raise ValueError(
                f"The held-out features were built {'with' if self.guides is not None else 'without'} guides, but "
                f"the generator ({getattr(generator, 'variant', type(generator).__name__)!r}) "
                f"{'takes' if guided else 'takes no'} guide: build HeldoutFeatures.from_config with guide_sources="
                "pyramid.guide_sources(keys) exactly for a guided generator."
            )
        was_training = generator.training
        generator.eval()
        try:
            methods: dict[str, Callable] = {
                "generator": lambda x, size, guide=None: (
                    generator(x, size=size) if guide is None else generator(x, size=size, guide=guide)
                )
            }
            if interpolations:
                methods.update(INTERPOLATIONS)
            per_image_guides = self.guides or [None] * len(self.pairs)
            scores = {
                name: _level_means(
                    [
                        fidelity(method, low, target, guides if name == "generator" else None)
                        for (low, target), guides in zip(self.pairs, per_image_guides, strict=True)
                    ],
                    self.level_names,
                )
                for name, method in methods.items()
            }
        finally:
            generator.train(was_training)
        levels = scores.pop("generator")
        mean = levels.pop("mean")
        record: dict[str, Any] = {
            "generator_l1": levels,
            "generator_l1_mean": mean,
            "heldout_images": len(self.pairs),
        }
        if interpolations:
            record["interpolation_l1_mean"] = {mode: levels.pop("mean") for mode, levels in scores.items()}
            record["interpolation_l1"] = scores
        return record
