"""The settings of each stage: one :class:`TrainConfig` subclass per stage, its fields and checks, and their registry.

These classes are data. What a stage does with its settings (the modules it builds, its step) is in ``stages.py``;
running a config is ``loop.fit``'s job (``evaluate``'s: ``cli.py``'s).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._checks import check_int, check_number
from .config import TrainConfig, check_values
from .models import END_TO_END_STARTS, INTERPOLATION_MODES, detector_first_level, level_keys
from .pyramid import guide_sources

__all__ = [
    "STAGE_CONFIGS",
    "BaselineConfig",
    "EvaluateConfig",
    "Stage1Config",
    "Stage2Config",
    "Stage3Config",
    "build_config",
    "field_names",
]


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


@dataclass(frozen=True)
class BaselineConfig(TrainConfig):
    """The detector alone with its plain interpolation (A1 of Table 4), same schedule as stage 3."""

    HELP: ClassVar[str] = "the detector alone with its plain interpolation (for comparison)"

    stage: str = "baseline"
    warmup_iters: int = 1000
    interpolation: str = "nearest"  # the FPN's own upsampling; "bilinear" is arm B of the protocol
    # "dysample" / "carafe": each FPN upsampling site gets its own one (bilinear start), trained end to end (arms
    # DySample, CARAFE; models.END_TO_END_STARTS).
    upsampler: str = "interpolate"

    def validate(self) -> None:
        """The shared checks, then ``interpolation`` is a fixed mode and ``upsampler`` a known one."""
        super().validate()
        if self.interpolation not in INTERPOLATION_MODES:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATION_MODES)}, got {self.interpolation!r}.")
        if self.upsampler not in ("interpolate", *END_TO_END_STARTS):
            raise ValueError(f"upsampler must be one of {['interpolate', *END_TO_END_STARTS]}, got {self.upsampler!r}.")
        if self.upsampler != "interpolate" and self.interpolation != "nearest":
            raise ValueError(
                f"upsampler={self.upsampler!r} replaces the FPN's interpolation: leave interpolation at 'nearest'."
            )


@dataclass(frozen=True)
class EvaluateConfig(TrainConfig):
    """Evaluate a baseline / stage2 / stage3 output dir (``init``) on ``eval_ann_file`` (COCO AP); trains nothing."""

    HELP: ClassVar[str] = "COCO AP of a baseline/stage2/stage3 output dir (--init DIR --eval-ann-file ...)"
    INIT_FROM: ClassVar[tuple[str, ...]] = ("baseline", "stage2", "stage3")

    stage: str = "evaluate"
    batch_size: int = 2

    def validate(self) -> None:
        """Only the checks that apply without training, and the two inputs it needs."""
        self._validate_common()
        if not self.init or not self.eval_ann_file:
            raise ValueError("evaluate needs --init <trained output dir> and --eval-ann-file (with --eval-data-root).")


# Every command of ``srf-upsample train``: a stage's name -> its settings. The training stages' behaviour is
# ``stages.STAGES``, under the same names.
STAGE_CONFIGS: dict[str, type[TrainConfig]] = {
    config.stage: config for config in (Stage1Config, Stage2Config, Stage3Config, BaselineConfig, EvaluateConfig)
}


def build_config(stage: str, values: dict[str, Any]) -> TrainConfig:
    """Build and validate the config of ``stage`` from plain values (unknown keys raise, listing the valid ones).

    Example:
        >>> config = build_config("stage1", {"data_root": "images", "ann_file": "train.json", "output_dir": "s1"})
        >>> type(config).__name__, config.lr, config.max_iters
        ('Stage1Config', 0.001, 150000)
    """
    if stage not in STAGE_CONFIGS:
        raise ValueError(f"stage must be one of {list(STAGE_CONFIGS)}, got {stage!r}.")
    cls = STAGE_CONFIGS[stage]
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
    return {f.name for f in dataclasses.fields(STAGE_CONFIGS[stage])}
