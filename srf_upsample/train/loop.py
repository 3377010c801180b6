"""The training loop: one stage's modules, stepped over the data, checkpointed, resumed and run under DDP.

What differs between stages (what is built, how one step goes) is the stage's ``build`` and ``step``
(``stages.py``, found by ``stages.stage_for(config)``); this loop calls them and never asks which stage it runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import TrainingState, choose_checkpoint, clear_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import CocoDetectionDataset, KeyBatchSampler, collate, epoch_batches, log_report
from .distributed import all_ranks_true, gather_parameter_hashes, init_distributed
from .feature_cache import FeatureCache
from .models import detector_first_level, disable_detector_resize, level_keys
from .optim import optimizers_for
from .pyramid import FeaturePyramidHook
from .run_folder import (
    DIVERGED_NAME,
    EVAL_LOG_NAME,
    LOG_NAME,
    MANIFEST_NAME,
    check_run_folder,
    fingerprint,
    read_json,
    read_jsonl,
    truncate_jsonl,
    update_manifest,
)
from .run_log import RunLog
from .stages import StageModules, stage_for
from .step_tools import AMP_DTYPES, StepTools
from .validation import Validation

__all__ = ["FitResult", "fit"]

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained modules (unwrapped), last losses, metrics and the final step."""

    modules: dict[str, nn.Module]
    step: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped_images: int = 0


class _Levelwise(nn.Module):
    """Applies one module to every pyramid level, so DDP sees one forward (and one all-reduce) per backward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        feats: list[torch.Tensor],
        sizes: list[Sequence[int]] | None = None,
        guides: list[torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor]:
        """``net`` per level: ``(N, C, h_i, w_i)`` to ``sizes[i]``, guided by ``guides[i]`` where it is a tensor."""
        if sizes is None:
            return [self.net(feat) for feat in feats]
        if guides is None:
            return [self.net(feat, size=tuple(size)) for feat, size in zip(feats, sizes, strict=True)]
        return [
            self.net(feat, size=tuple(size)) if guide is None else self.net(feat, size=tuple(size), guide=guide)
            for feat, size, guide in zip(feats, sizes, guides, strict=True)
        ]


def _levels(config: TrainConfig) -> list[int]:
    if config.levels:
        return list(config.levels)
    return list(range(detector_first_level(config.detector), 6))


class _Trainer(StepTools):
    """Runs one stage config; the stage's ``step`` reaches the modules, optimizers and helpers through it."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.stage = stage_for(config)  # what the stage builds and how it steps
        self.rank, self.world_size, self.device = init_distributed(config.device)
        self.is_main = self.rank == 0
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size ({config.batch_size}) must be divisible by the number of processes "
                f"({self.world_size}); it is the total over all of them."
            )
        self.output_dir = Path(config.output_dir)
        self.levels = _levels(config)
        self.keys = level_keys(config.detector, self.levels)
        self.dataset = CocoDetectionDataset(
            config.data_root,
            config.ann_file,
            min_size=config.min_size,
            max_size=config.max_size,
            use_masks=config.detector == "maskrcnn",
            max_dropped_fraction=config.max_dropped_fraction,
            area=config.coco_area,
        )
        if self.is_main:  # the data summary, once per run (also in the manifest)
            log_report(self.dataset.report)
        self.fingerprint = fingerprint(config)
        self.accepted_changes: dict[str, Any] = {}
        self.built = StageModules({})
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.hook: FeaturePyramidHook | None = None
        self.amp_dtype = AMP_DTYPES.get(config.amp) if config.amp else None
        # A grad scaler only for float16: bfloat16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.run_log = RunLog(self.output_dir, enabled=self.is_main, tensorboard=config.tensorboard, stage=config.stage)
        self.step = 0
        self.batch_cursor = 0
        self.skipped_images = 0
        # F's levels per (image, flip), kept while the run lasts (stage 1's feature_cache; recomputed after a resume).
        self.feature_cache = FeatureCache() if getattr(config, "feature_cache", False) else None
        self.validation = Validation(self)
        self.stopped: dict[str, Any] | None = None  # why the run ended before max_iters (plateau stop)

    # ---- what the stage built
    @property
    def generator(self) -> nn.Module | None:
        """G (standalone or patched into the detector), if the stage has one."""
        return self.built.generator

    @property
    def discriminator(self) -> nn.Module | None:
        """D, if the stage trains one."""
        return self.built.discriminator

    @property
    def extractor(self) -> nn.Module | None:
        """The frozen extractor F, if the stage has one."""
        return self.built.extractor

    def build(self) -> None:
        """Build the stage's modules (seeded), move them to the device, and give each an optimizer and schedule."""
        config = self.config
        torch.manual_seed(config.seed)  # identical initial weights on every rank (DDP broadcasts rank 0's anyway)
        self.built = self.stage.build(self.dataset.num_classes)
        self.modules = self.built.modules
        if self.built.extractor is not None:
            self.built.extractor.to(self.device)
        if "detector" in self.modules:
            disable_detector_resize(self.modules["detector"])
        for module in self.modules.values():
            module.to(self.device).train()
        self.optimizers, self.schedulers = optimizers_for(self.modules, config)

    def wrap(self) -> None:
        """Wrap what trains in DDP; forward passes go through the wrappers, so gradients are all-reduced."""

        def ddp(module: nn.Module, find_unused: bool = False) -> nn.Module:
            if self.world_size == 1:
                return module
            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)

        if "generator" in self.modules:  # G trained on its own (stage 1), not inside a detector
            self.generator_levels = ddp(_Levelwise(self.modules["generator"]))
        if self.discriminator is not None:
            self.discriminator_levels = ddp(_Levelwise(self.discriminator))
        if "detector" in self.modules:
            # Heads may leave parameters unused in a step (e.g. no positive box): let DDP look for them.
            self.detector = ddp(self.modules["detector"], find_unused=True)
            if self.built.captures_fpn:
                self.hook = FeaturePyramidHook(self.modules["detector"].backbone)

    # ---- checkpoints
    def _training_state(self) -> TrainingState:
        return TrainingState(self.modules, self.optimizers, self.schedulers, self.scaler)

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def maybe_resume(self) -> None:
        """Continue from the newest complete checkpoint in ``output_dir`` (``resume``); else start clean."""
        if self.is_main:
            (self.output_dir / DIVERGED_NAME).unlink(missing_ok=True)
        counters = None
        if self.config.resume:
            # The main process chooses the checkpoint, so that every rank loads the same one.
            choice = [choose_checkpoint(self.output_dir) if self.is_main else None]
            if self.world_size > 1:
                dist.broadcast_object_list(choice, src=0)
            step, skipped = choice[0]
            counters = load_checkpoint(
                self.output_dir, self._training_state(), rank=self.rank, step=step, skipped=skipped
            )
        if counters is None:
            self._barrier()
            if self.is_main:  # a run that starts over keeps nothing of an earlier attempt
                clear_checkpoints(self.output_dir)
                truncate_jsonl(self.output_dir / LOG_NAME, 0)
                truncate_jsonl(self.output_dir / EVAL_LOG_NAME, 0)
            return
        self.step = counters["step"]
        self.batch_cursor = counters["batch_cursor"]
        self.skipped_images = counters["skipped_images"]
        if self.is_main:
            truncate_jsonl(self.output_dir / LOG_NAME, self.step)
            truncate_jsonl(self.output_dir / EVAL_LOG_NAME, self.step)
        logger.info("resumed %s from step %d in %s", self.config.stage, self.step, self.output_dir)

    def save(self, finished: bool) -> None:
        """Write a checkpoint of the current step, then the manifest."""
        counters = {"step": self.step, "batch_cursor": self.batch_cursor, "skipped_images": self.skipped_images}
        save_checkpoint(
            self.output_dir,
            self._training_state(),
            counters,
            folders=self.built.folders,
            record=self._manifest_values(finished),
            rank=self.rank,
            is_main=self.is_main,
            keep=self.config.keep_checkpoints,
            barrier=self._barrier,
        )
        if self.is_main:
            self.write_manifest(finished)

    def _manifest_values(self, finished: bool) -> dict[str, Any]:
        """What the run is at this step: stage, step, what ran (config, detector spec), its fingerprint and data."""
        spec = self.built.detector_spec
        return {
            "stage": self.config.stage,
            "step": self.step,
            "finished": finished,
            "category_ids": self.dataset.category_ids,
            "levels": self.levels,
            "has_generator": self.generator is not None,
            "modules": sorted(self.modules),
            "config": self.stage.recorded(self.built),
            **({"detector": spec.to_dict()} if spec is not None else {}),
            "fingerprint": self.fingerprint,
            "data": self.dataset.report,
            **({"eval_data": self.validation.eval_report} if self.validation.eval_report else {}),
            **({"stopped": self.stopped} if self.stopped else {}),
            **({"feature_cache": self.feature_cache.stats()} if self.feature_cache is not None else {}),
        }

    def write_manifest(self, finished: bool, **extra: Any) -> None:
        """Record the run in its top-level ``manifest.json`` (:meth:`_manifest_values` and ``extra``)."""
        update_manifest(self.output_dir, {**self._manifest_values(finished), **extra})

    # ---- data
    def _batches_of_epoch(self, epoch: int):
        return epoch_batches(
            len(self.dataset),
            self.config.batch_size // self.world_size,
            epoch=epoch,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world_size,
            flip=self.config.use_flip,
        )

    def _loader(self) -> torch.utils.data.DataLoader:
        """Batches from ``batch_cursor`` on; workers decode images, the sampler alone decides the order."""
        workers = self.config.num_workers
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=KeyBatchSampler(self._batches_of_epoch, self.batch_cursor),
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if workers else None,
            # Its own generator: creating the iterator must not draw from the global RNG that resume restores.
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    # ---- the loop
    def _next_batch(self, batches, empty_in_a_row: int, batches_per_epoch: int):
        """The next batch on the device, or ``None`` when some rank got only unreadable images."""
        batch = next(batches)
        self.batch_cursor += 1
        if batch.num_skipped:
            self.skipped_images += batch.num_skipped
            logger.warning("skipped %d unreadable image(s) (%d so far)", batch.num_skipped, self.skipped_images)
        if not all_ranks_true(bool(batch.images), self.world_size, self.device):
            if empty_in_a_row + 1 > batches_per_epoch:
                raise ValueError(
                    f"No readable image in a whole epoch of {self.config.ann_file!r} "
                    f"({self.skipped_images} unreadable); refusing to train on nothing."
                )
            return None
        images = [image.to(self.device, non_blocking=True) for image in batch.images]
        targets = [
            {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in batch.targets
        ]
        return images, targets

    def run(self) -> FitResult:
        """Build, resume, train to ``max_iters`` (or ``stop_after``), checkpoint, evaluate, write the manifest."""
        config = self.config
        self.build()
        self.validation.check_set()
        # Before anything is written: the folder must be new or hold this very run.
        self.accepted_changes = check_run_folder(self.output_dir, config, self.fingerprint)
        if self.is_main:
            try:
                self.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(
                    f"output_dir {str(self.output_dir)!r} cannot be created ({error.strerror}); pass a folder path "
                    "whose parents are folders you can write to."
                ) from None
        self._barrier()
        self.maybe_resume()
        if self.accepted_changes and self.is_main:
            logger.warning("resuming %s despite changes to %s", self.output_dir, sorted(self.accepted_changes))
            history = read_json(self.output_dir / MANIFEST_NAME).get("resumed_despite_changes", [])
            history.append({"step": self.step, "changes": self.accepted_changes})
            update_manifest(self.output_dir, {"resumed_despite_changes": history})
        if self.step == 0:
            # Per-rank streams for the detectors' box sampling; a resumed run restored its streams above.
            torch.manual_seed(config.seed + 1000 * self.rank)
        self.wrap()
        last_step = min(config.max_iters, config.stop_after or config.max_iters)
        progress = _progress(config, self.step, disable=config.quiet or not self.is_main)
        losses: dict[str, float] = {}
        metrics: dict[str, Any] = {}
        empty_in_a_row = 0
        batches_per_epoch = max(1, len(self._batches_of_epoch(0)))
        # A resumed run that had plateaued stays stopped (eval.jsonl was cut back to the checkpoint's step).
        self.stopped = self.validation.plateau()
        plateaued = self.stopped is not None
        batches = iter(self._loader()) if self.step < last_step and not plateaued else iter(())
        try:
            while self.step < last_step and not plateaued:
                started = time.perf_counter()
                batch = self._next_batch(batches, empty_in_a_row, batches_per_epoch)
                if batch is None:
                    empty_in_a_row += 1
                    continue
                empty_in_a_row = 0
                step_losses = self.stage.step(self, *batch)
                self.scaler.update()
                for scheduler in self.schedulers.values():
                    scheduler.step()
                self.step += 1
                losses = {name: float(value) for name, value in step_losses.items()}
                self.run_log.train(
                    {
                        "step": self.step,
                        "losses": losses,
                        "lr": self.schedulers[next(iter(self.schedulers))].get_last_lr()[0],
                        "time": round(time.perf_counter() - started, 4),
                        "skipped_images": self.skipped_images,
                    }
                )
                progress.update(1)
                progress.set_postfix({name: f"{value:.3f}" for name, value in losses.items() if "loss" in name})
                periodic_eval = config.eval_every and self.step % config.eval_every == 0
                if periodic_eval and self.step < config.max_iters:
                    if self.validation.active():
                        metrics = self.validation.evaluate(self.step)
                    self.stopped = self.validation.plateau()
                    plateaued = self.stopped is not None
                    if plateaued:
                        break
                if self.step % config.checkpoint_every == 0 and self.step < last_step:
                    self.save(finished=False)
        finally:
            del batches  # shuts the loader's workers down
            progress.close()
            if self.hook is not None:
                self.hook.remove()  # the trained detector keeps no trainer hook
        finished = self.step >= config.max_iters or plateaued
        if plateaued and self.is_main:
            logger.info("%s stopped at step %d: %s", config.stage, self.step, self.stopped["reason"])
        self.save(finished=finished)
        rank_hashes = gather_parameter_hashes(self.modules, self.world_size)
        evaluated = read_jsonl(self.output_dir / EVAL_LOG_NAME) if plateaued and self.is_main else []
        if plateaued and evaluated and evaluated[-1]["step"] == self.step:  # the stopping evaluation is the final one
            metrics = {key: value for key, value in evaluated[-1].items() if key not in ("step", "seconds")}
        elif finished and self.validation.active():
            metrics = self.validation.evaluate(self.step)
        if self.is_main:
            self.write_manifest(finished, rank_parameter_hashes=rank_hashes, skipped_images=self.skipped_images)
        self.run_log.close()
        if self.world_size > 1:
            dist.barrier()
        if self.skipped_images:
            logger.warning("%d unreadable image(s) were skipped in total", self.skipped_images)
        return FitResult(self.modules, self.step, losses, metrics, self.skipped_images)


def _progress(config: TrainConfig, initial: int, disable: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError("The trainer's progress bar needs tqdm: pip install 'srf_upsample[train]'.") from error
    return tqdm(total=config.max_iters, initial=initial, desc=config.stage, disable=disable, dynamic_ncols=True)


def fit(config: TrainConfig) -> FitResult:
    """Train one stage as its config says (``stage1``, ``stage2``, ``stage3``, ``baseline``: ``stages.STAGES``).

    Resumes from ``config.output_dir`` when it holds a checkpoint of the same stage (``resume=True``), writes a
    checkpoint every ``checkpoint_every`` steps and at the end (weights, optimizer state, RNG, the generator as a
    ``save_pretrained`` folder), ``log.jsonl`` and ``manifest.json``. Under ``torchrun`` it trains with DDP.

    Returns:
        The trained modules, the final step and losses, and the evaluation metrics if ``eval_ann_file`` is set.
    """
    return _Trainer(config).run()
