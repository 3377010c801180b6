"""The training loop of the three progressive stages (section 4), with checkpoints, resume and DDP."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..discriminator import FeaturePatchDiscriminator
from ..hub import load_state_dict_strict, read_safetensors
from ..losses import (
    discriminator_loss,
    downsample_targets,
    feature_l1_loss,
    integral_loss,
    srf_extractor_loss,
    srf_loss,
)
from ..upsample import SRFUpsample
from .checkpoint import (
    CHECKPOINT_NAME,
    DIVERGED_NAME,
    EVAL_LOG_NAME,
    INIT_STAGES,
    LOG_NAME,
    MANIFEST_NAME,
    STATE_NAME,
    load_prefixed,
    read_manifest,
    state_for_save,
    strip_prefix,
    truncate_jsonl,
    write_json,
)
from .data import CocoDetectionDataset, KeyBatchSampler, collate, epoch_batches, scale_targets
from .models import (
    build_detector,
    detector_first_level,
    disable_detector_resize,
    level_keys,
    patch_generator,
    set_fpn_interpolation,
)
from .pyramid import FeaturePyramidHook, downsample_images, extract_levels, prepare_batch, target_batch_size
from .stages import TrainConfig

__all__ = ["FitResult", "fit"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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

    def forward(self, feats: list[torch.Tensor], sizes: list[Sequence[int]] | None = None) -> list[torch.Tensor]:
        if sizes is None:
            return [self.net(feat) for feat in feats]
        return [self.net(feat, size=tuple(size)) for feat, size in zip(feats, sizes, strict=True)]


# ----------------------------------------------------------------------------------------------- distributed
def _init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def _parameter_hash(modules: dict[str, nn.Module]) -> str:
    digest = hashlib.sha256()
    for name in sorted(modules):
        for key, param in sorted(modules[name].named_parameters()):
            digest.update(key.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- building
def _levels(config: TrainConfig) -> list[int]:
    if config.levels:
        return list(config.levels)
    return list(range(detector_first_level(config.detector), 6))


def _detector(
    config: TrainConfig, num_classes: int, *, detector_weights: str | None = None, anchor_scale: float = 1.0
) -> nn.Module:
    return build_detector(
        config.detector,
        config.backbone,
        num_classes,
        min_size=config.min_size,
        max_size=config.max_size,
        backbone_weights=config.backbone_weights,
        detector_weights=detector_weights or config.detector_weights,
        trainable_backbone_layers=config.trainable_backbone_layers,
        anchor_sizes=config.anchor_sizes,
        anchor_scale=anchor_scale,
        detector_kwargs=config.detector_kwargs,
        fpn_channels=config.fpn_channels,
    )


def _require_trained_extractor(config: TrainConfig) -> None:
    if config.extractor_weights or config.detector_weights or config.allow_untrained_extractor:
        return
    raise ValueError(
        f"{config.stage} trains against the FPN of a trained detector (F, section 4.1), but neither "
        "--extractor-weights nor --detector-weights is given: F would be an ImageNet body under a randomly "
        "initialised FPN, and G would learn to imitate noise. Train the baseline first and pass "
        "--extractor-weights <baseline output dir>/checkpoint.safetensors (set allow_untrained_extractor=true "
        "only for smoke tests)."
    )


def _frozen_extractor(config: TrainConfig, num_classes: int) -> nn.Module:
    _require_trained_extractor(config)
    extractor = _detector(config, num_classes, detector_weights=config.extractor_weights).backbone
    extractor.eval().requires_grad_(False)
    return extractor


def _new_generator(config: TrainConfig) -> SRFUpsample:
    options = {"norm": config.generator_norm, "deconv_kernel": config.generator_deconv_kernel}
    return SRFUpsample(
        config.fpn_channels,
        hidden_channels=config.generator_hidden_channels,
        num_blocks=config.generator_num_blocks,
        zero_init_residual=config.generator_zero_init_residual,
        variant=config.generator_variant,
        **{name: value for name, value in options.items() if value is not None},
    )


# ----------------------------------------------------------------------------------------------- schedule
def _lr_lambda(config: TrainConfig):
    milestones = sorted(config.milestones)

    def factor(step: int) -> float:
        warm = 1.0
        if step < config.warmup_iters:
            alpha = step / config.warmup_iters
            warm = config.warmup_factor * (1 - alpha) + alpha
        return warm * config.gamma ** bisect.bisect_right(milestones, step)

    return factor


def _sgd(params, config: TrainConfig) -> torch.optim.SGD:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("Nothing to train: every parameter is frozen.")
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


# ----------------------------------------------------------------------------------------------- the trainer
class _Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.rank, self.world_size, self.device = _init_distributed(config.device)
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
        )
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.generator: SRFUpsample | None = None
        self.discriminator: FeaturePatchDiscriminator | None = None
        self.hook: FeaturePyramidHook | None = None
        self.amp_dtype = AMP_DTYPES.get(config.amp) if config.amp else None
        # A grad scaler only for float16: bfloat16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.step = 0
        self.batch_cursor = 0
        self.skipped_images = 0

    # ---- construction
    def build(self) -> None:
        config, num_classes = self.config, self.dataset.num_classes
        torch.manual_seed(config.seed)  # identical initial weights on every rank (DDP broadcasts rank 0's anyway)
        stage = config.stage
        if stage == "stage1":
            self.extractor = _frozen_extractor(config, num_classes).to(self.device)
            self.generator = _new_generator(config)
            self.discriminator = FeaturePatchDiscriminator(
                config.fpn_channels, hidden_channels=config.discriminator_hidden_channels
            )
            self.modules = {"generator": self.generator, "discriminator": self.discriminator}
        elif stage == "stage2":
            self.extractor = _frozen_extractor(config, num_classes).to(self.device)
            # M: fresh (ImageNet body) in the paper's text; init_from_extractor starts it from F's detector.
            m_weights = config.extractor_weights if config.init_from_extractor else None
            detector = _detector(config, num_classes, detector_weights=m_weights, anchor_scale=config.anchor_scale)
            if config.use_generator:
                init = Path(config.init)
                read_manifest(init, INIT_STAGES["stage2"])
                self.generator = SRFUpsample.from_pretrained(str(init / "generator")).train()
                self.discriminator = FeaturePatchDiscriminator.from_pretrained(str(init / "discriminator")).train()
                if self.discriminator.in_channels != config.fpn_channels:
                    raise ValueError(
                        f"The stage-1 discriminator in {str(init)!r} judges {self.discriminator.in_channels}-channel "
                        f"features but fpn_channels is {config.fpn_channels}: use the stage-1 run's fpn_channels."
                    )
                patch_generator(detector, self.generator)
                self.modules = {"detector": detector, "discriminator": self.discriminator}
            else:
                self.modules = {"detector": detector}
        elif stage == "stage3":
            manifest = read_manifest(config.init, INIT_STAGES["stage3"]) if config.init else {"has_generator": True}
            detector = _detector(config, num_classes)
            if not manifest.get("has_generator", True) and config.reuse != "extractor":
                raise ValueError(
                    f"{config.init!r} is a stage-2 run without a generator (use_generator=false): "
                    "stage 3 can only reuse its extractor (--reuse extractor)."
                )
            if manifest.get("has_generator", True):
                source = config.generator or str(Path(config.init) / "generator")
                self.generator = SRFUpsample.from_pretrained(source).train()
                patch_generator(detector, self.generator)
            if config.reuse == "extractor":
                state = read_safetensors(Path(config.init) / CHECKPOINT_NAME)
                load_state_dict_strict(
                    detector.backbone,
                    strip_prefix(state, "detector.backbone."),
                    source=f"the stage-2 extractor of {config.init!r}",
                )
            if config.freeze_generator and self.generator is not None:
                self.generator.requires_grad_(False)
            self.modules = {"detector": detector}
        elif stage == "baseline":
            detector = _detector(config, num_classes)
            if config.interpolation != "nearest":
                set_fpn_interpolation(detector, config.interpolation)
            self.modules = {"detector": detector}
        else:
            raise ValueError(f"fit() trains stage1, stage2, stage3 or baseline, got {stage!r}.")
        if "detector" in self.modules:
            disable_detector_resize(self.modules["detector"])
        for module in self.modules.values():
            module.to(self.device).train()
        if stage == "stage1":
            self.optimizers = {
                "generator": _sgd(self.generator.parameters(), config),
                "discriminator": _sgd(self.discriminator.parameters(), config),
            }
        else:
            self.optimizers = {"detector": _sgd(self.modules["detector"].parameters(), config)}
            if self.discriminator is not None:
                self.optimizers["discriminator"] = _sgd(self.discriminator.parameters(), config)
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config)) for name, opt in self.optimizers.items()
        }

    def wrap(self) -> None:
        """Wrap what trains in DDP; forward passes go through the wrappers, so gradients are all-reduced."""

        def ddp(module: nn.Module, find_unused: bool = False) -> nn.Module:
            if self.world_size == 1:
                return module
            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)

        if self.generator is not None and self.config.stage == "stage1":
            self.generator_levels = ddp(_Levelwise(self.generator))
        if self.discriminator is not None:
            self.discriminator_levels = ddp(_Levelwise(self.discriminator))
        if "detector" in self.modules:
            # Heads may leave parameters unused in a step (e.g. no positive box): let DDP look for them.
            self.detector = ddp(self.modules["detector"], find_unused=True)
            if self.config.stage == "stage2":
                self.hook = FeaturePyramidHook(self.modules["detector"].backbone)

    # ---- checkpoints
    def _checkpoint_exists(self) -> bool:
        return (self.output_dir / CHECKPOINT_NAME).is_file() and (self.output_dir / STATE_NAME).is_file()

    def maybe_resume(self) -> None:
        manifest_path = self.output_dir / MANIFEST_NAME
        if manifest_path.is_file():
            read_manifest(self.output_dir, (self.config.stage,))
        if self.is_main:
            (self.output_dir / DIVERGED_NAME).unlink(missing_ok=True)
        if not (self.config.resume and self._checkpoint_exists()):
            if self.is_main:  # a run that starts over keeps no records of an attempt that died before a checkpoint
                truncate_jsonl(self.output_dir / LOG_NAME, 0)
                truncate_jsonl(self.output_dir / EVAL_LOG_NAME, 0)
            return
        state = read_safetensors(self.output_dir / CHECKPOINT_NAME)
        load_prefixed(self.modules, state, str(self.output_dir))
        trainer_state = torch.load(self.output_dir / STATE_NAME, map_location="cpu", weights_only=True)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(trainer_state["optimizers"][name])
            self.schedulers[name].load_state_dict(trainer_state["schedulers"][name])
        if trainer_state.get("scaler"):
            self.scaler.load_state_dict(trainer_state["scaler"])
        self.step = int(trainer_state["step"])
        self.batch_cursor = int(trainer_state["batch_cursor"])
        self.skipped_images = int(trainer_state["skipped_images"])
        rng_path = self.output_dir / f"rng_state_{self.rank}.pt"
        if rng_path.is_file():
            rng = torch.load(rng_path, map_location="cpu", weights_only=True)
            torch.set_rng_state(rng["torch"])
            if torch.cuda.is_available() and rng.get("cuda") is not None:
                torch.cuda.set_rng_state_all(rng["cuda"])
            random.setstate(rng["python"])
        if self.is_main:
            truncate_jsonl(self.output_dir / LOG_NAME, self.step)
            truncate_jsonl(self.output_dir / EVAL_LOG_NAME, self.step)
        logger.info("resumed %s from step %d in %s", self.config.stage, self.step, self.output_dir)

    def save(self, finished: bool) -> None:
        rng = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        # Each rank keeps its own RNG stream (RPN/ROI sampling), so a resumed DDP run continues every stream.
        torch.save(rng, self.output_dir / f"rng_state_{self.rank}.pt")
        if not self.is_main:
            return
        weights = state_for_save(self.modules)
        safetensors.torch.save_file(weights, str(self.output_dir / (CHECKPOINT_NAME + ".tmp")))
        os.replace(self.output_dir / (CHECKPOINT_NAME + ".tmp"), self.output_dir / CHECKPOINT_NAME)
        # Optimizer and scheduler state dicts are nested dicts with ints: torch.save, loadable with weights_only.
        trainer_state = {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": self.step,
            "batch_cursor": self.batch_cursor,
            "skipped_images": self.skipped_images,
        }
        torch.save(trainer_state, self.output_dir / (STATE_NAME + ".tmp"))
        os.replace(self.output_dir / (STATE_NAME + ".tmp"), self.output_dir / STATE_NAME)
        if self.generator is not None:
            self.generator.save_pretrained(self.output_dir / "generator")
        if self.config.stage == "stage1":
            self.discriminator.save_pretrained(self.output_dir / "discriminator")
        self.write_manifest(finished)

    def write_manifest(self, finished: bool, **extra: Any) -> None:
        manifest_path = self.output_dir / MANIFEST_NAME
        manifest = {}
        if manifest_path.is_file():
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        manifest.update(
            {
                "stage": self.config.stage,
                "step": self.step,
                "finished": finished,
                "category_ids": self.dataset.category_ids,
                "levels": self.levels,
                "has_generator": self.generator is not None,
                "config": self.config.to_dict(),
            }
        )
        manifest.update(extra)
        write_json(manifest_path, manifest)

    # ---- one step per stage
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _check_finite(self, name: str, loss: torch.Tensor) -> None:
        # Training on NaN silently wastes the rest of the run; stop at the first non-finite loss instead.
        if not torch.isfinite(loss).all():
            if self.is_main:  # so that experiment tables can tell a diverged run from one not run yet
                record = {"stage": self.config.stage, "step": self.step + 1, "loss": name, "value": str(loss.item())}
                write_json(self.output_dir / DIVERGED_NAME, record)
            raise FloatingPointError(
                f"{name} is {loss.item()} at step {self.step + 1}: training diverged. Lower --lr (the paper's 0.02 is "
                f"for 16 images per step; scale it linearly: 0.02 * batch_size / 16 = "
                f"{0.02 * self.config.batch_size / 16:g}) or lengthen warmup_iters; resume restarts from the last "
                "checkpoint."
            )

    def _backward_and_step(self, name: str, loss: torch.Tensor, optimizer: str) -> None:
        """Check ``loss`` (named ``name`` in errors), backpropagate it (scaled under fp16 AMP), step ``optimizer``."""
        self._check_finite(name, loss)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizers[optimizer])

    def _stage1_step(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        with torch.no_grad(), self._autocast():
            full = prepare_batch(images)
            low = downsample_images(full, self.config.degradation)
            target_feats = [feat.float() for feat in extract_levels(self.extractor, full, self.keys)]
            low_feats = extract_levels(self.extractor, low, self.keys)
        with self._autocast():
            sr = self.generator_levels(low_feats, [feat.shape[-2:] for feat in target_feats])
        sr = [feat.float() for feat in sr]
        d_loss = self._discriminator_step(target_feats, sr)
        # G step: D's output is not detached, so the adversarial gradient reaches G; only G's optimizer steps.
        self.optimizers["generator"].zero_grad(set_to_none=True)
        g_loss = srf_loss(sr, target_feats, self._fake_logits(sr), adversarial_weight=self.config.adversarial_weight)
        self._backward_and_step("loss_g", g_loss, "generator")
        return {"loss_d": d_loss, "loss_g": g_loss.detach()}

    def _discriminator_step(self, real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.discriminator_levels(list(real) + [feat.detach() for feat in fake])
        logits = [logit.float() for logit in logits]
        loss = discriminator_loss(logits[: len(real)], logits[len(real) :])
        self._backward_and_step("loss_d", loss, "discriminator")
        return loss.detach()

    def _fake_logits(self, sr: list[torch.Tensor]) -> list[torch.Tensor]:
        wrapper = self.discriminator_levels
        with self._autocast():
            if isinstance(wrapper, DistributedDataParallel):
                # D is not stepped here: skip all-reducing its gradients (they are zeroed before D's next step).
                with wrapper.no_sync():
                    logits = wrapper(sr)
            else:
                logits = wrapper(sr)
        return [logit.float() for logit in logits]

    def _stage2_step(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        low_images = downsample_images(images, self.config.degradation)
        low_targets = scale_targets(targets, images, low_images)
        with torch.no_grad(), self._autocast():
            # I_tr padded to twice the detector's padded I_lr batch, so P_tr level i is exactly 2x M's level i.
            size = target_batch_size(low_images, self.modules["detector"].transform.size_divisible)
            target_feats = [
                feat.float() for feat in extract_levels(self.extractor, prepare_batch(images, size=size), self.keys)
            ]
        with self._autocast():
            detection = self.detector(low_images, low_targets)
        sr = [feat.float() for feat in self.hook.pop(self.keys)]
        out: dict[str, torch.Tensor] = {}
        if self.discriminator is not None:
            real = downsample_targets(target_feats, [feat.shape[-2:] for feat in sr])
            out["loss_d"] = self._discriminator_step(real, sr)
            self.optimizers["detector"].zero_grad(set_to_none=True)
            srf = srf_extractor_loss(
                sr, target_feats, self._fake_logits(sr), adversarial_weight=self.config.adversarial_weight
            )
        else:
            # Arm C of the protocol: the same pre-training without G and D, i.e. the L1 term of Eq. (3) alone.
            self.optimizers["detector"].zero_grad(set_to_none=True)
            srf = feature_l1_loss(sr, downsample_targets(target_feats, [feat.shape[-2:] for feat in sr]))
        total = integral_loss(srf, {name: value.float() for name, value in detection.items()})
        self._backward_and_step("loss_int", total, "detector")
        out.update({"loss_int": total.detach(), "loss_srf": srf.detach()})
        out.update({name: value.detach() for name, value in detection.items()})
        return out

    def _detection_step(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        with self._autocast():
            detection = self.detector(images, targets)
        total = sum(value.float() for value in detection.values())
        self.optimizers["detector"].zero_grad(set_to_none=True)
        self._backward_and_step("loss", total, "detector")
        out = {"loss": total.detach()}
        out.update({name: value.detach() for name, value in detection.items()})
        return out

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

    def _all_ranks_have_data(self, has_data: bool) -> bool:
        if self.world_size == 1:
            return has_data
        flag = torch.tensor([1 if has_data else 0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    # ---- evaluation
    def _evaluate(self, step: int) -> dict[str, Any]:
        """COCO AP of the detector on ``eval_ann_file`` now; appended to ``eval.jsonl`` (main process only)."""
        from .evaluate import evaluate_detector

        config = self.config
        started = time.perf_counter()
        metrics = evaluate_detector(
            self.modules["detector"],
            config.eval_data_root or config.data_root,
            config.eval_ann_file,
            category_ids=self.dataset.category_ids,
            output_dir=self.output_dir,
            min_size=config.min_size,
            max_size=config.max_size,
            device=self.device,
            quiet=True,
        )
        with open(self.output_dir / EVAL_LOG_NAME, "a", encoding="utf-8") as f:
            record = {"step": step, **metrics, "seconds": round(time.perf_counter() - started, 2)}
            f.write(json.dumps(record) + "\n")
        return metrics

    def _evaluates(self) -> bool:
        return bool(self.config.eval_ann_file) and "detector" in self.modules and self.is_main

    # ---- the loop
    def run(self) -> FitResult:
        config = self.config
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.world_size > 1:
            dist.barrier()
        self.build()
        self.maybe_resume()
        if self.step == 0:
            # Per-rank streams for the detectors' box sampling; a resumed run restored its streams above.
            torch.manual_seed(config.seed + 1000 * self.rank)
        self.wrap()
        step_fn = {"stage1": self._stage1_step, "stage2": self._stage2_step}.get(config.stage, self._detection_step)
        last_step = min(config.max_iters, config.stop_after or config.max_iters)
        progress = _progress(config, self.step, disable=config.quiet or not self.is_main)
        log_file = open(self.output_dir / LOG_NAME, "a", encoding="utf-8") if self.is_main else None
        losses: dict[str, float] = {}
        metrics: dict[str, Any] = {}
        empty_in_a_row = 0
        batches_per_epoch = max(1, len(self._batches_of_epoch(0)))
        batches = iter(self._loader()) if self.step < last_step else iter(())
        try:
            while self.step < last_step:
                started = time.perf_counter()
                batch = next(batches)
                self.batch_cursor += 1
                if batch.num_skipped:
                    self.skipped_images += batch.num_skipped
                    logger.warning("skipped %d unreadable image(s) (%d so far)", batch.num_skipped, self.skipped_images)
                if not self._all_ranks_have_data(bool(batch.images)):
                    empty_in_a_row += 1
                    if empty_in_a_row > batches_per_epoch:
                        raise ValueError(
                            f"No readable image in a whole epoch of {config.ann_file!r} "
                            f"({self.skipped_images} unreadable); refusing to train on nothing."
                        )
                    continue
                empty_in_a_row = 0
                images = [image.to(self.device, non_blocking=True) for image in batch.images]
                targets = [
                    {
                        k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                        for k, v in t.items()
                    }
                    for t in batch.targets
                ]
                step_losses = step_fn(images, targets)
                self.scaler.update()
                for scheduler in self.schedulers.values():
                    scheduler.step()
                self.step += 1
                losses = {name: float(value) for name, value in step_losses.items()}
                if log_file is not None:
                    record = {
                        "step": self.step,
                        "losses": losses,
                        "lr": self.schedulers[next(iter(self.schedulers))].get_last_lr()[0],
                        "time": round(time.perf_counter() - started, 4),
                        "skipped_images": self.skipped_images,
                    }
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                progress.update(1)
                progress.set_postfix({name: f"{value:.3f}" for name, value in losses.items() if "loss" in name})
                periodic_eval = config.eval_every and self.step % config.eval_every == 0
                if periodic_eval and self.step < config.max_iters and self._evaluates():
                    self._evaluate(self.step)
                if self.step % config.checkpoint_every == 0 and self.step < last_step:
                    self.save(finished=False)
        finally:
            del batches  # shuts the loader's workers down
            progress.close()
            if log_file is not None:
                log_file.close()
            if self.hook is not None:
                self.hook.remove()  # the trained detector keeps no trainer hook
        finished = self.step >= config.max_iters
        self.save(finished=finished)
        rank_hashes = self._check_ranks_in_sync()
        if finished and self._evaluates():
            metrics = self._evaluate(self.step)
        if self.is_main:
            self.write_manifest(finished, rank_parameter_hashes=rank_hashes, skipped_images=self.skipped_images)
        if self.world_size > 1:
            dist.barrier()
        if self.skipped_images:
            logger.warning("%d unreadable image(s) were skipped in total", self.skipped_images)
        return FitResult(self.modules, self.step, losses, metrics, self.skipped_images)

    def _check_ranks_in_sync(self) -> list[str]:
        """All-gather a hash of every trained parameter; DDP must have kept the ranks identical."""
        digest = _parameter_hash(self.modules)
        if self.world_size == 1:
            return [digest]
        gathered: list[str] = [""] * self.world_size
        dist.all_gather_object(gathered, digest)
        if len(set(gathered)) != 1:
            raise RuntimeError(
                f"Parameters differ across ranks after training ({gathered}); gradients were not "
                "all-reduced (call the DDP wrapper, not .module)."
            )
        return gathered


def _progress(config: TrainConfig, initial: int, disable: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError("The trainer's progress bar needs tqdm: pip install 'srf_upsample[train]'.") from error
    return tqdm(total=config.max_iters, initial=initial, desc=config.stage, disable=disable, dynamic_ncols=True)


def fit(config: TrainConfig) -> FitResult:
    """Train one stage (``stage1``, ``stage2``, ``stage3`` or ``baseline``) as its config says.

    Resumes from ``config.output_dir`` when it holds a checkpoint of the same stage (``resume=True``), writes
    ``checkpoint.safetensors`` + ``trainer_state.pt`` every ``checkpoint_every`` steps and at the end, the generator
    as a ``save_pretrained`` folder, ``log.jsonl`` and ``manifest.json``. Under ``torchrun`` it trains with DDP.

    Returns:
        The trained modules, the final step and losses, and the evaluation metrics if ``eval_ann_file`` is set.
    """
    return _Trainer(config).run()
