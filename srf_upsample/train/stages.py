"""The training stages, one class each: its config fields plus what the trainer calls (build, step, validate).

Adding a stage is one new subclass of :class:`~srf_upsample.train.config.TrainConfig` and one entry in
:data:`STAGES`: the CLI lists it, ``--init`` checks follow its ``INIT_FROM``, and the loop runs its ``build`` and
``step`` without asking its name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.profiler import record_function

from .._checks import check_int, check_number
from ..discriminator import FeaturePatchDiscriminator
from ..hub import load_state_dict_strict, read_safetensors
from ..losses import (
    discriminator_loss,
    downsample_targets,
    feature_l1_loss,
    generator_adversarial_loss,
    integral_loss,
    srf_extractor_loss,
)
from ..upsample import SRFUpsample
from .config import CONFIG_DIR, StageModules, TrainConfig, check_values, load_config_file
from .data import scale_targets
from .feature_cache import batch_features
from .generators import load_start_generator, new_generator
from .models import INTERPOLATION_MODES, detector_first_level, level_keys, patch_generator, set_fpn_interpolation
from .pyramid import downsample_images, extract_levels, guide_sources, prepare_batch, target_batch_size
from .run_folder import CHECKPOINT_NAME, DISCRIMINATOR_DIR, GENERATOR_DIR
from .state_dicts import strip_prefix

__all__ = [
    "CONFIG_DIR",
    "STAGES",
    "BaselineConfig",
    "EvaluateConfig",
    "Stage1Config",
    "Stage2Config",
    "Stage3Config",
    "TrainConfig",
    "build_config",
    "field_names",
    "load_config_file",
]


def _discriminator_update(trainer: Any, real: list[torch.Tensor], sr: list[torch.Tensor]) -> torch.Tensor:
    """D's step on Eq. (1): real features against ``sr`` detached; returns the detached loss."""
    trainer.optimizers["discriminator"].zero_grad(set_to_none=True)
    with trainer.autocast(), record_function("D forward + Eq. (1)"):
        logits = trainer.discriminator_levels(list(real) + [feat.detach() for feat in sr])
        logits = [logit.float() for logit in logits]
        loss = discriminator_loss(logits[: len(real)], logits[len(real) :])
    trainer.backward_and_step("loss_d", loss, "discriminator")
    return loss.detach()


def _validate_plateau(config: TrainConfig) -> None:
    """``plateau_patience`` is a positive int (or None) with evaluations to compare; ``plateau_min_delta`` >= 0."""
    check_number("plateau_min_delta", config.plateau_min_delta, minimum=0.0, hint="a share of the best L1, e.g. 0.01")
    if config.plateau_patience is None:
        return
    check_int("plateau_patience", config.plateau_patience, hint="a number of evaluations")
    if not config.eval_ann_file or not config.eval_every:
        raise ValueError(
            f"plateau_patience={config.plateau_patience} stops on G's held-out L1, measured every eval_every steps "
            f"on eval_ann_file, but eval_ann_file={config.eval_ann_file!r} and eval_every={config.eval_every!r}: "
            "pass --eval-ann-file (with --eval-data-root) and --eval-every, or drop plateau_patience."
        )


@dataclass(frozen=True)
class Stage1Config(TrainConfig):
    """Stage 1, SRF-GAN (section 4.1): G and D against a frozen F; lr 0.001, 150k iterations, x0.1 at 120k."""

    HELP: ClassVar[str] = "SRF-GAN: G and D against a frozen FPN (Eq. 1, 2)"

    # Caching F's levels changes no number (the same function computes them), so it is not part of the fingerprint.
    NOT_IN_FINGERPRINT: ClassVar[frozenset[str]] = TrainConfig.NOT_IN_FINGERPRINT | {"feature_cache"}

    stage: str = "stage1"
    lr: float = 0.001
    max_iters: int = 150_000
    milestones: list[int] = field(default_factory=lambda: [120_000])
    # Keep F's levels on each (image, flip) in RAM after their first computation (F is frozen): see feature_cache.py.
    feature_cache: bool = True
    # A trained generator folder (or shipped name) G starts from instead of its fresh init: one of generator_variant,
    # or a lite G for generator_variant="guided" (its trunk; the guide branch starts at zero). None: fresh.
    generator: str | None = None
    # Stop (as finished) when G's held-out mean L1 has not improved by plateau_min_delta (relative to the best so far)
    # for plateau_patience evaluations in a row; None: train to max_iters. Needs eval_ann_file and eval_every.
    plateau_patience: int | None = None
    plateau_min_delta: float = 0.01

    def validate(self) -> None:
        """The shared checks, the plateau stop's settings, and that a guided G has a level with a guide."""
        super().validate()
        _validate_plateau(self)
        if self.generator_variant == "guided":
            levels = self.levels or list(range(detector_first_level(self.detector), 6))
            if not any(source is not None for source in guide_sources(level_keys(self.detector, levels))):
                raise ValueError(
                    f"generator_variant='guided' learns from the lateral map of the next-finer FPN level, but levels="
                    f"{levels} has only the FPN's finest level, where G runs unguided: its guide branch would never "
                    "train. Add a coarser level (e.g. levels=[2,3,4,5]) or use generator_variant='lite'."
                )

    def build(self, num_classes: int) -> StageModules:
        """F from the trained detector, a fresh G and D; both train, both are saved as folders."""
        extractor = self.frozen_extractor(num_classes)
        generator = new_generator(self)
        if self.generator:
            load_start_generator(generator, self.generator)
        discriminator = FeaturePatchDiscriminator(self.fpn_channels, hidden_channels=self.discriminator_hidden_channels)
        modules = {"generator": generator, "discriminator": discriminator}
        return StageModules(
            modules,
            folders={GENERATOR_DIR: generator, DISCRIMINATOR_DIR: discriminator},
            generator=generator,
            discriminator=discriminator,
            extractor=extractor,
        )

    def step(self, trainer: Any, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """One D step on Eq. (1), then one G step on Eq. (2) through the updated D (its output not detached).

        The guided G gets, at each level but the FPN's finest, the lateral map of I_lr it meets inside the FPN
        (``pyramid.guide_sources``); the other variants get no guide.
        """
        image_keys = [target.get("dataset_key") for target in targets]
        sources = guide_sources(trainer.keys) if getattr(trainer.generator, "accepts_guide", False) else None
        with torch.no_grad(), trainer.autocast(), record_function("F levels (cache lookup or compute)"):
            # F per image (cached when feature_cache is on: F is frozen, the keys name deterministic views).
            target_feats, low_feats, guides = batch_features(
                trainer.extractor,
                images,
                image_keys,
                trainer.keys,
                degradation=self.degradation,
                cache=trainer.feature_cache,
                guide_sources=sources,
            )
        sizes = [feat.shape[-2:] for feat in target_feats]
        with trainer.autocast(), record_function("G forward"):
            sr = trainer.generator_levels(low_feats, sizes, guides)  # guides: all None unless G is guided
        sr = [feat.float() for feat in sr]
        d_loss = _discriminator_update(trainer, target_feats, sr)
        # G step: D's output is not detached, so the adversarial gradient reaches G; only G's optimizer steps.
        trainer.optimizers["generator"].zero_grad(set_to_none=True)
        with record_function("D forward + Eq. (2)"):
            l1 = feature_l1_loss(sr, target_feats)
            adversarial = generator_adversarial_loss(trainer.fake_logits(sr))
            # Eq. (2) as srf_loss computes it (L1 + lambda * L_adv), with its two parts kept for the log.
            g_loss = l1 + self.adversarial_weight * adversarial if self.adversarial_weight else l1
        trainer.backward_and_step("loss_g", g_loss, "generator")
        return {
            "loss_d": d_loss,
            "loss_g": g_loss.detach(),
            "loss_g_l1": l1.detach(),
            "loss_g_adv": adversarial.detach(),
        }


@dataclass(frozen=True)
class Stage2Config(TrainConfig):
    """Stage 2, multi-scale SRF extractor (section 4.2): M on I_lr with L_INT, D continued; ``init`` = stage 1."""

    HELP: ClassVar[str] = (
        "multi-scale SRF extractor: detector with G patched in, fed I_lr, L_INT = Eq. (3) + L_DET (--init stage1 dir)"
    )
    INIT_FROM: ClassVar[tuple[str, ...]] = ("stage1",)

    stage: str = "stage2"
    warmup_iters: int = 1000  # Detectron2's default warm-up, which the paper keeps; lr 0.02 diverges without it
    anchor_scale: float = 0.5  # I_lr is half-size: halved anchors keep each object on the anchors it has at full size
    # M's parameters other than G: False = fresh (ImageNet body, the paper's text); True = the trained detector whose
    # FPN is F (extractor_weights), as the authors' published setup does.
    init_from_extractor: bool = False
    # False: arm C of the protocol, the same pre-training (half-size images, L1 to F, L_DET) without G and D.
    use_generator: bool = True
    # The plateau stop of stage 1, on G's held-out L1 (see Stage1Config); None: train to max_iters.
    plateau_patience: int | None = None
    plateau_min_delta: float = 0.01

    def validate(self) -> None:
        """The shared checks, then: G and D come from ``init``; ``init_from_extractor`` needs F's weights."""
        super().validate()
        _validate_plateau(self)
        if self.plateau_patience is not None and not self.use_generator:
            raise ValueError("plateau_patience stops on G's held-out L1, but use_generator is false: drop one.")
        if self.use_generator and not self.init:
            raise ValueError("stage2 needs --init <stage-1 output dir> (its generator/ and discriminator/).")
        if self.init_from_extractor and not self.extractor_weights:
            raise ValueError("init_from_extractor needs --extractor-weights (the trained detector M starts from).")

    def build(self, num_classes: int) -> StageModules:
        """F, then M (half-size anchors) with the stage-1 G patched in and D continued (or neither: arm C)."""
        extractor = self.frozen_extractor(num_classes)
        spec = self.detector_spec(num_classes, anchor_scale=self.anchor_scale)
        # M: fresh (ImageNet body) in the paper's text; init_from_extractor starts it from F's detector.
        m_weights = self.extractor_weights if self.init_from_extractor else None
        detector = spec.build(
            backbone_weights=self.backbone_weights, detector_weights=m_weights or self.detector_weights
        )
        if not self.use_generator:
            return StageModules({"detector": detector}, extractor=extractor, detector_spec=spec, captures_fpn=True)
        init = Path(self.init)
        self.read_init()
        generator = SRFUpsample.from_pretrained(str(init / GENERATOR_DIR)).train()
        discriminator = FeaturePatchDiscriminator.from_pretrained(str(init / DISCRIMINATOR_DIR)).train()
        if discriminator.in_channels != self.fpn_channels:
            raise ValueError(
                f"The stage-1 discriminator in {str(init)!r} judges {discriminator.in_channels}-channel "
                f"features but fpn_channels is {self.fpn_channels}: use the stage-1 run's fpn_channels."
            )
        patch_generator(detector, generator)
        return StageModules(
            {"detector": detector, "discriminator": discriminator},
            folders={GENERATOR_DIR: generator},
            generator=generator,
            discriminator=discriminator,
            extractor=extractor,
            detector_spec=spec,
            captures_fpn=True,
        )

    def step(self, trainer: Any, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """M on I_lr: L_INT = Eq. (3) on its FPN levels (captured in the same forward) + the detection losses."""
        low_images = downsample_images(images, self.degradation)
        low_targets = scale_targets(targets, images, low_images)
        with torch.no_grad(), trainer.autocast(), record_function("F(I_tr)"):
            # I_tr padded to twice the detector's padded I_lr batch, so P_tr level i is exactly 2x M's level i.
            size = target_batch_size(low_images, trainer.modules["detector"].transform.size_divisible)
            batch = prepare_batch(images, size=size)
            target_feats = [feat.float() for feat in extract_levels(trainer.extractor, batch, trainer.keys)]
        with trainer.autocast(), record_function("M forward (detector on I_lr, G inside)"):
            detection = trainer.detector(low_images, low_targets)
        sr = [feat.float() for feat in trainer.hook.pop(trainer.keys)]
        out: dict[str, torch.Tensor] = {}
        if trainer.discriminator is not None:
            real = downsample_targets(target_feats, [feat.shape[-2:] for feat in sr])
            out["loss_d"] = _discriminator_update(trainer, real, sr)
            trainer.optimizers["detector"].zero_grad(set_to_none=True)
            with record_function("D forward + Eq. (3)"):
                srf = srf_extractor_loss(
                    sr, target_feats, trainer.fake_logits(sr), adversarial_weight=self.adversarial_weight
                )
        else:
            # Arm C of the protocol: the same pre-training without G and D, i.e. the L1 term of Eq. (3) alone.
            trainer.optimizers["detector"].zero_grad(set_to_none=True)
            srf = feature_l1_loss(sr, downsample_targets(target_feats, [feat.shape[-2:] for feat in sr]))
        total = integral_loss(srf, {name: value.float() for name, value in detection.items()})
        trainer.backward_and_step("loss_int", total, "detector")
        out.update({"loss_int": total.detach(), "loss_srf": srf.detach()})
        out.update({name: value.detach() for name, value in detection.items()})
        return out


@dataclass(frozen=True)
class Stage3Config(TrainConfig):
    """Stage 3, target detector (section 4.3): detection loss at full resolution with G from stage 2."""

    HELP: ClassVar[str] = (
        "target detector with G (--init stage2 dir or --generator), full resolution, detection loss only"
    )
    INIT_FROM: ClassVar[tuple[str, ...]] = ("stage2",)
    REUSE_CHOICES: ClassVar[tuple[str, ...]] = ("generator", "extractor")

    stage: str = "stage3"
    warmup_iters: int = 1000
    generator: str | None = None  # any from_pretrained folder / shipped name instead of <init>/generator
    reuse: str = "generator"  # "generator", or "extractor": also the stage-2 backbone (body + FPN)
    freeze_generator: bool = False  # ablation A4 of Table 4
    # A new G from the generator_* settings, trained by the detection loss alone (no stage 1 or 2: arm E2E).
    use_new_generator: bool = False

    def validate(self) -> None:
        """The shared checks, then: G comes from ``init``, ``generator`` or is new; ``reuse`` is known and possible."""
        super().validate()
        if self.reuse not in self.REUSE_CHOICES:
            raise ValueError(f"reuse must be 'generator' or 'extractor', got {self.reuse!r}.")
        if self.use_new_generator and (self.init or self.generator or self.freeze_generator):
            raise ValueError(
                "use_new_generator builds G afresh from the generator_* settings and trains it: drop --init, "
                "--generator and --freeze-generator, or unset use_new_generator to take G from a trained run."
            )
        if not self.init and not self.generator and not self.use_new_generator:
            raise ValueError("stage3 needs --init <stage-2 output dir> or --generator <folder or shipped name>.")
        if self.reuse == "extractor" and not self.init:
            raise ValueError("reuse='extractor' needs --init <stage-2 output dir>.")

    def build(self, num_classes: int) -> StageModules:
        """A fresh detector with G patched in (fine-tuned unless frozen), and with ``reuse=extractor`` M's backbone."""
        manifest = self.read_init() if self.init else {"has_generator": True}
        spec = self.detector_spec(num_classes)
        detector = spec.build(backbone_weights=self.backbone_weights, detector_weights=self.detector_weights)
        has_generator = manifest.get("has_generator", True)
        if not has_generator and self.reuse != "extractor":
            raise ValueError(
                f"{self.init!r} is a stage-2 run without a generator (use_generator=false): "
                "stage 3 can only reuse its extractor (--reuse extractor)."
            )
        generator = None
        if self.use_new_generator:
            generator = new_generator(self)
        elif has_generator:
            generator = SRFUpsample.from_pretrained(self.generator or str(Path(self.init) / GENERATOR_DIR)).train()
        if generator is not None:
            patch_generator(detector, generator)
        if self.reuse == "extractor":
            state = read_safetensors(Path(self.init) / CHECKPOINT_NAME)
            load_state_dict_strict(
                detector.backbone,
                strip_prefix(state, "detector.backbone."),
                source=f"the stage-2 extractor of {self.init!r}",
            )
        if self.freeze_generator and generator is not None:
            generator.requires_grad_(False)
        folders = {GENERATOR_DIR: generator} if generator is not None else {}
        return StageModules({"detector": detector}, folders=folders, generator=generator, detector_spec=spec)


@dataclass(frozen=True)
class BaselineConfig(TrainConfig):
    """The detector alone with its plain interpolation (A1 of Table 4), same schedule as stage 3."""

    HELP: ClassVar[str] = "the detector alone with its plain interpolation (for comparison)"

    stage: str = "baseline"
    warmup_iters: int = 1000
    interpolation: str = "nearest"  # the FPN's own upsampling; "bilinear" is arm B of the protocol
    # "dysample": each FPN upsampling site gets its own DySample (bilinear start), trained end to end (arm DySample).
    upsampler: str = "interpolate"

    def validate(self) -> None:
        """The shared checks, then ``interpolation`` is a fixed mode and ``upsampler`` a known one."""
        super().validate()
        if self.interpolation not in INTERPOLATION_MODES:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATION_MODES)}, got {self.interpolation!r}.")
        if self.upsampler not in ("interpolate", "dysample"):
            raise ValueError(f"upsampler must be 'interpolate' or 'dysample', got {self.upsampler!r}.")
        if self.upsampler == "dysample" and self.interpolation != "nearest":
            raise ValueError("upsampler='dysample' replaces the FPN's interpolation: leave interpolation at 'nearest'.")

    def build(self, num_classes: int) -> StageModules:
        """A fresh detector; its FPN's nearest upsampling swapped for ``interpolation`` or for DySample modules."""
        spec = self.detector_spec(num_classes)
        detector = spec.build(backbone_weights=self.backbone_weights, detector_weights=self.detector_weights)
        if self.interpolation != "nearest":
            set_fpn_interpolation(detector, self.interpolation)
        if self.upsampler == "dysample":
            from ..dysample import DySample
            from ..patch import patch_fpn

            patch_fpn(detector, upsampler=DySample, share=False, strict=True)  # one per site, as in its paper
        return StageModules({"detector": detector}, detector_spec=spec)


@dataclass(frozen=True)
class EvaluateConfig(TrainConfig):
    """Evaluate a baseline / stage2 / stage3 output dir (``init``) on ``eval_ann_file`` (COCO AP)."""

    HELP: ClassVar[str] = "COCO AP of a baseline/stage2/stage3 output dir (--init DIR --eval-ann-file ...)"
    INIT_FROM: ClassVar[tuple[str, ...]] = ("baseline", "stage2", "stage3")

    stage: str = "evaluate"
    batch_size: int = 2

    def validate(self) -> None:
        """Only the checks that apply without training, and the two inputs it needs."""
        self._validate_common()
        if not self.init or not self.eval_ann_file:
            raise ValueError("evaluate needs --init <trained output dir> and --eval-ann-file (with --eval-data-root).")

    def run(self) -> dict[str, Any]:
        """COCO AP of the detector in ``init`` (rebuilt from its run folder); metrics go next to it."""
        from .distributed import resolve_device
        from .evaluate import evaluate_detector
        from .run_folder import load_trained_detector

        device = resolve_device(self.device)
        detector, manifest = load_trained_detector(self.init, device, expected=self.INIT_FROM)
        train_config = manifest["config"]
        return evaluate_detector(
            detector,
            self.eval_data_root or self.data_root or train_config["data_root"],
            self.eval_ann_file,
            category_ids=manifest["category_ids"],
            output_dir=self.output_dir or self.init,
            min_size=train_config["min_size"],
            max_size=train_config["max_size"],
            batch_size=self.batch_size,
            device=device,
            quiet=bool(self.quiet),
        )


STAGES: dict[str, type[TrainConfig]] = {
    config.stage: config for config in (Stage1Config, Stage2Config, Stage3Config, BaselineConfig, EvaluateConfig)
}


def build_config(stage: str, values: dict[str, Any]) -> TrainConfig:
    """Build and validate the config of ``stage`` from plain values (unknown keys raise, listing the valid ones)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}.")
    cls = STAGES[stage]
    values = dict(values)
    file_stage = values.pop("stage", stage)
    if file_stage != stage:
        raise ValueError(f"The config is for stage {file_stage!r} but the command is {stage!r}; use a matching file.")
    check_values(cls, values)
    config = cls(**values)
    config.validate()
    return config


def field_names(stage: str) -> set[str]:
    """The config keys of ``stage``."""
    return {f.name for f in dataclasses.fields(STAGES[stage])}
