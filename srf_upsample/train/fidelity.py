"""Feature fidelity: how close an upsampler brings half-resolution FPN features to the full-resolution ones."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._interpolate import interpolate
from .pyramid import downsample_images, extract_levels, extract_levels_and_guides, prepare_batch

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = [
    "FIDELITY_METRICS",
    "INTERPOLATIONS",
    "HeldoutFeatures",
    "evaluations_without_gain",
    "feature_pairs",
    "fidelity",
    "guided_feature_pairs",
    "plateau_step",
    "plot_generator_curves",
]

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
    ) -> HeldoutFeatures:
        """The pairs of every readable image of ``config.eval_ann_file``, resized like training, not flipped.

        ``guide_sources`` (``pyramid.guide_sources``, for the guided generator) also keeps, per image, the lateral
        maps of I_lr that stage 1 feeds G as guides.
        """
        from .data import CocoDetectionDataset

        dataset = CocoDetectionDataset(
            config.eval_data_root or config.data_root,
            config.eval_ann_file,
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


def evaluations_without_gain(records: Sequence[Mapping[str, Any]], min_delta: float) -> list[tuple[int, int]]:
    """Per record holding ``generator_l1_mean``: ``(step, evaluations in a row without a min_delta gain)``.

    The best so far is the first value; a later value is a gain when it is below ``best * (1 - min_delta)`` (then it
    becomes the best and the count restarts at 0).

    Example:
        >>> rows = [{"step": s, "generator_l1_mean": v} for s, v in [(1, 1.0), (2, 0.9), (3, 0.895), (4, 0.899)]]
        >>> evaluations_without_gain(rows, min_delta=0.01)
        [(1, 0), (2, 0), (3, 1), (4, 2)]
    """
    counts, best, waited = [], None, 0
    for record in records:
        value = record.get("generator_l1_mean")
        if value is None:
            continue
        best, waited = (value, 0) if best is None or value < best * (1 - min_delta) else (best, waited + 1)
        counts.append((int(record["step"]), waited))
    return counts


def plateau_step(records: Sequence[Mapping[str, Any]], patience: int, min_delta: float) -> int | None:
    """The step at which G's held-out L1 plateaued, or ``None``.

    The run has plateaued at the ``patience``-th evaluation in a row without a gain (:func:`evaluations_without_gain`).

    Example:
        >>> rows = [{"step": s, "generator_l1_mean": v} for s, v in [(1, 1.0), (2, 0.9), (3, 0.895), (4, 0.899)]]
        >>> plateau_step(rows, patience=2, min_delta=0.01)
        4
    """
    return next((step for step, waited in evaluations_without_gain(records, min_delta) if waited >= patience), None)


def plot_generator_curves(runs: Mapping[str, str | os.PathLike], path: str | os.PathLike, title: str = "") -> Path:
    """G's held-out mean L1 against iterations from each run's ``eval.jsonl``; needs matplotlib.

    Args:
        runs: label -> run folder (stage 1 or stage 2 with eval_ann_file).
        path: the picture to write (PNG).
        title: the plot's title.

    Returns:
        ``path``. Dashed lines: the fixed interpolations' L1 on the same images (from the first record holding them).
    """
    from .run_folder import EVAL_LOG_NAME, read_jsonl

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Plotting the curves needs matplotlib: pip install matplotlib.") from error
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn_interpolations = False
    for label, folder in runs.items():
        log = Path(folder) / EVAL_LOG_NAME
        if not log.is_file():
            raise FileNotFoundError(f"run {label!r}: {str(log)!r} does not exist; pass run folders with an eval.jsonl.")
        records = [r for r in read_jsonl(log) if "generator_l1_mean" in r]
        if not records:
            raise ValueError(f"run {label!r}: {str(log)!r} holds no generator_l1_mean record (no G evaluation).")
        ax.plot(
            [r["step"] for r in records],
            [r["generator_l1_mean"] for r in records],
            marker="o",
            markersize=2.5,
            label=label,
        )
        baseline = next((r["interpolation_l1_mean"] for r in records if "interpolation_l1_mean" in r), None)
        if baseline and not drawn_interpolations:
            for mode, value in baseline.items():
                ax.axhline(value, linestyle="--", linewidth=1, color="grey", alpha=0.8)
                ax.annotate(mode, (0, value), fontsize=7, color="grey", xycoords=("axes fraction", "data"))
            drawn_interpolations = True
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out L1 to F(I_hr), mean over levels")
    ax.set_title(title or "G on held-out images (Eq. 2's L1; dashed: fixed interpolations)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
