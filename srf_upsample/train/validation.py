"""The trainer's validation: COCO AP and G's held-out L1 into ``eval.jsonl``, and the plateau stop on that L1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch.distributed as dist

from .heldout import HeldoutFeatures
from .plateau import plateau_step
from .pyramid import guide_sources
from .run_folder import EVAL_LOG_NAME, read_jsonl

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .config import TrainConfig
    from .data import CocoDetectionDataset
    from .run_log import RunLog

__all__ = ["TrainerView", "Validation"]


class TrainerView(Protocol):
    """What :class:`Validation` reads of the trainer that owns it (``loop._Trainer`` has it all)."""

    config: TrainConfig
    modules: dict[str, nn.Module]  # what trains, by name; ``"detector"`` is scored with COCO AP
    dataset: CocoDetectionDataset  # the training set (its category ids)
    output_dir: Path
    device: torch.device
    step: int
    keys: list[str]  # the FPN keys of the trained levels
    levels: list[int]
    is_main: bool
    world_size: int
    run_log: RunLog

    @property
    def generator(self) -> nn.Module | None:
        """G, if the stage has one."""

    @property
    def extractor(self) -> nn.Module | None:
        """The frozen extractor F, if the stage has one."""


class Validation:
    """What a run measures every ``eval_every`` steps and at its end, for the trainer that owns it.

    The detector (if the stage has one) is scored with pycocotools on ``eval_ann_file``; G (if the stage has G and
    the frozen extractor F) by Eq. (2)'s L1 per level on the same held-out images (:class:`HeldoutFeatures`, built at
    the first evaluation).
    """

    def __init__(self, trainer: TrainerView) -> None:
        self.trainer = trainer
        self.heldout: HeldoutFeatures | None = None
        self.eval_file = None  # the evaluation file as read once by check_set (a coco.CocoFile)
        self.eval_report: dict[str, Any] = {}  # its counts, for the manifest

    def check_set(self) -> None:
        """Refuse an evaluation set that holds no usable box before training, not at the first evaluation."""
        trainer, config = self.trainer, self.trainer.config
        if not config.eval_ann_file or "detector" not in trainer.modules:
            return
        from .data import CocoDetectionDataset

        # As evaluate_detector reads it: a set without a usable box is a ValueError naming the file.
        dataset = CocoDetectionDataset(
            config.eval_data_root or config.data_root,
            config.eval_ann_file,
            category_ids=trainer.dataset.category_ids,
            area=config.coco_area,
        )
        self.eval_file, self.eval_report = dataset.coco_file, dataset.report

    def evaluates_generator(self) -> bool:
        """Whether the stage has G and F, so G's held-out L1 can be measured."""
        return self.trainer.generator is not None and self.trainer.extractor is not None

    def active(self) -> bool:
        """Whether this process evaluates: an evaluation set, something to score, and the main process."""
        trainer = self.trainer
        has_subject = "detector" in trainer.modules or self.evaluates_generator()
        return bool(trainer.config.eval_ann_file) and has_subject and trainer.is_main

    def evaluate(self, step: int) -> dict[str, Any]:
        """One ``eval.jsonl`` record at ``step`` (main process only): COCO AP of the detector, G's held-out L1, or both.

        The record is ``{"step", <the AP metrics, e.g. "bbox">, <generator_fidelity's keys>, "seconds"}``; returns
        it without ``step`` and ``seconds``.
        """
        trainer, config = self.trainer, self.trainer.config
        started = time.perf_counter()
        metrics: dict[str, Any] = {}
        if "detector" in trainer.modules:
            from .evaluate import evaluate_detector

            metrics.update(
                evaluate_detector(
                    trainer.modules["detector"],
                    config.eval_data_root or config.data_root,
                    self.eval_file or config.eval_ann_file,
                    category_ids=trainer.dataset.category_ids,
                    output_dir=trainer.output_dir,
                    min_size=config.min_size,
                    max_size=config.max_size,
                    device=trainer.device,
                    quiet=True,
                    step=trainer.step,
                    area=config.coco_area,
                )
            )
        if self.evaluates_generator():
            if self.heldout is None:
                # The guided G gets the guides stage 1 feeds it (the lateral maps of I_lr), or it measures its
                # unguided pass.
                guided = getattr(trainer.generator, "accepts_guide", False)
                self.heldout = HeldoutFeatures.from_config(
                    config,
                    trainer.extractor,
                    trainer.keys,
                    trainer.levels,
                    trainer.device,
                    guide_sources=guide_sources(trainer.keys) if guided else None,
                    eval_file=self.eval_file,
                )
            # The fixed interpolations once per run: at the first evaluation that eval.jsonl does not already hold.
            earlier = read_jsonl(trainer.output_dir / EVAL_LOG_NAME)
            with_interpolations = not any("interpolation_l1" in record for record in earlier)
            metrics.update(self.heldout.generator_fidelity(trainer.generator, interpolations=with_interpolations))
        trainer.run_log.evaluation({"step": step, **metrics, "seconds": round(time.perf_counter() - started, 2)})
        return metrics

    def plateau(self) -> dict[str, Any] | None:
        """Why the run stops early, or ``None``; the same on every rank.

        Returns:
            ``{"step", "reason"}`` once G's held-out L1 in ``eval.jsonl`` has plateaued (``plateau_patience``).
        """
        trainer, config = self.trainer, self.trainer.config
        patience = getattr(config, "plateau_patience", None)
        if patience is None:
            return None
        found = [None]
        if trainer.is_main:
            records = read_jsonl(trainer.output_dir / EVAL_LOG_NAME)
            found[0] = plateau_step(records, patience, config.plateau_min_delta)
        if trainer.world_size > 1:
            dist.broadcast_object_list(found, src=0)
        if found[0] is None:
            return None
        return {
            "step": trainer.step,
            "reason": (
                f"plateau: G's held-out generator_l1_mean has not improved by {config.plateau_min_delta:g} "
                f"(relative) on its best for {patience} evaluations in a row (at step {found[0]})"
            ),
        }
