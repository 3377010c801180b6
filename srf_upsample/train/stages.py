"""One frozen config dataclass per training stage, plus loading them from shipped or user JSON files."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    "load_config_file",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by every stage. Defaults are the paper's (section 5.1); ``configs/`` ships CPU-sized ones."""

    stage: str = ""
    # data
    data_root: str = ""
    ann_file: str = ""
    output_dir: str = ""
    eval_data_root: str | None = None
    eval_ann_file: str | None = None
    min_size: int = 800  # shorter side of I_tr (Detectron2's default for COCO)
    max_size: int = 1333
    use_flip: bool = True
    degradation: str = "bilinear"  # how I_lr is made from I_tr (Table 6: bilinear, nearest, bicubic)
    num_workers: int = 0  # DataLoader processes decoding images (0: in the training process)
    # detector / extractor F
    detector: str = "maskrcnn"
    backbone: str = "resnet50"
    backbone_weights: str | None = None
    detector_weights: str | None = None
    # Weights of the frozen extractor F (a detector checkpoint, e.g. a trained baseline's); None: detector_weights.
    # Stage 2 needs both apart: F is the trained detector, M starts from the ImageNet backbone (section 5.1).
    extractor_weights: str | None = None
    # Stages 1 and 2 refuse an F that was never trained (random FPN) unless this is set (smoke tests only).
    allow_untrained_extractor: bool = False
    trainable_backbone_layers: int | None = None
    anchor_sizes: list[int] | None = None
    anchor_scale: float = 1.0  # multiplies every anchor size (R-CNNs); stage 2 halves them for its half-size images
    detector_kwargs: dict[str, Any] | None = None  # more arguments of the torchvision detector class
    fpn_channels: int = 256  # channels of the FPN levels, and so of G's and D's input (torchvision: 256)
    levels: list[int] | None = None  # pyramid levels n_s..n_e; None: P2-P5 (R-CNNs) or P3-P5 (RetinaNet, FCOS)
    # generator G and discriminator D
    generator_variant: str = "paper"
    generator_hidden_channels: int | None = None
    generator_num_blocks: int | None = None
    # Start G's learned residual at zero, so G begins as bilinear (not in the paper; helps short schedules).
    generator_zero_init_residual: bool = False
    generator_norm: str | None = None  # SRFUpsample's norm ("none" or "batch"); None: its default
    generator_deconv_kernel: int | None = None  # SRFUpsample's deconv_kernel (paper variant); None: its default
    discriminator_hidden_channels: list[int] = field(default_factory=lambda: [512, 1024, 1024])
    adversarial_weight: float = 0.001  # lambda of Eq. (2) and (3)
    # optimisation (SGD, momentum 0.9, weight decay 1e-4)
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iters: int = 270_000
    milestones: list[int] = field(default_factory=lambda: [210_000, 250_000])
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    batch_size: int = 16  # images per step, over all processes
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # autocast dtype: "bf16" or "fp16" (with a grad scaler); None: float32
    # evaluation on eval_ann_file every eval_every steps (eval.jsonl), and always at the end
    eval_every: int | None = None
    # bookkeeping
    init: str | None = None  # output dir of the previous stage
    checkpoint_every: int = 5000
    stop_after: int | None = None  # stop (with a checkpoint) after this global step, as if the job was killed
    resume: bool = True
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Stage1Config(TrainConfig):
    """Stage 1, SRF-GAN (section 4.1): G and D against a frozen F; lr 0.001, 150k iterations, x0.1 at 120k."""

    stage: str = "stage1"
    lr: float = 0.001
    max_iters: int = 150_000
    milestones: list[int] = field(default_factory=lambda: [120_000])


@dataclass(frozen=True)
class Stage2Config(TrainConfig):
    """Stage 2, multi-scale SRF extractor (section 4.2): M on I_lr with L_INT, D continued; ``init`` = stage 1."""

    stage: str = "stage2"
    warmup_iters: int = 1000  # Detectron2's default warm-up, which the paper keeps; lr 0.02 diverges without it
    anchor_scale: float = 0.5  # I_lr is half-size: halved anchors keep each object on the anchors it has at full size
    # M's parameters other than G: False = fresh (ImageNet body, the paper's text); True = the trained detector whose
    # FPN is F (extractor_weights), as the authors' published setup does.
    init_from_extractor: bool = False
    # False: arm C of the protocol, the same pre-training (half-size images, L1 to F, L_DET) without G and D.
    use_generator: bool = True


@dataclass(frozen=True)
class Stage3Config(TrainConfig):
    """Stage 3, target detector (section 4.3): detection loss at full resolution with G from stage 2."""

    stage: str = "stage3"
    warmup_iters: int = 1000
    generator: str | None = None  # any from_pretrained folder / shipped name instead of <init>/generator
    reuse: str = "generator"  # "generator", or "extractor": also the stage-2 backbone (body + FPN)
    freeze_generator: bool = False  # ablation A4 of Table 4


@dataclass(frozen=True)
class BaselineConfig(TrainConfig):
    """The detector alone with its plain interpolation (A1 of Table 4), same schedule as stage 3."""

    stage: str = "baseline"
    warmup_iters: int = 1000
    interpolation: str = "nearest"  # the FPN's own upsampling; "bilinear" is arm B of the protocol


@dataclass(frozen=True)
class EvaluateConfig(TrainConfig):
    """Evaluate a baseline / stage2 / stage3 output dir (``init``) on ``eval_ann_file`` (COCO AP)."""

    stage: str = "evaluate"
    batch_size: int = 2


STAGES: dict[str, type[TrainConfig]] = {
    "stage1": Stage1Config,
    "stage2": Stage2Config,
    "stage3": Stage3Config,
    "baseline": BaselineConfig,
    "evaluate": EvaluateConfig,
}


def load_config_file(name_or_path: str) -> dict[str, Any]:
    """Read a JSON config: a path, or a shipped name such as ``cpu_stage1`` (see ``configs/``)."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = CONFIG_DIR / f"{name_or_path}.json"
        if not shipped.is_file():
            names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
            raise FileNotFoundError(f"Config {name_or_path!r} is neither a file nor a shipped config ({names}).")
        path = shipped
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"Config {str(path)!r} is not valid JSON: {error}.") from error
    if not isinstance(values, dict):
        raise ValueError(f"Config {str(path)!r} must hold a JSON object, got {type(values).__name__}.")
    values.pop("_comment", None)
    return values


def build_config(stage: str, values: dict[str, Any]) -> TrainConfig:
    """Build and validate the config of ``stage`` from plain values (unknown keys raise, listing the valid ones)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}.")
    cls = STAGES[stage]
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(values)
    file_stage = values.pop("stage", stage)
    if file_stage != stage:
        raise ValueError(f"The config is for stage {file_stage!r} but the command is {stage!r}; use a matching file.")
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"Unknown config keys {unknown} for {stage}; valid keys: {sorted(names)}.")
    config = cls(**values)
    _validate(config)
    return config


def _validate(config: TrainConfig) -> None:
    if config.stage != "evaluate":
        for name in ("data_root", "ann_file", "output_dir"):
            if not getattr(config, name):
                raise ValueError(f"{name} is required (--{name.replace('_', '-')}).")
        if config.max_iters <= 0 or config.batch_size <= 0:
            raise ValueError(f"max_iters and batch_size must be positive, got {config.max_iters}, {config.batch_size}.")
    if config.degradation not in ("bilinear", "nearest", "bicubic"):
        raise ValueError(f"degradation must be bilinear, nearest or bicubic (Table 6), got {config.degradation!r}.")
    if config.stage == "stage2" and config.use_generator and not config.init:
        raise ValueError("stage2 needs --init <stage-1 output dir> (its generator/ and discriminator/).")
    if config.stage == "stage2" and config.init_from_extractor and not config.extractor_weights:
        raise ValueError("init_from_extractor needs --extractor-weights (the trained detector M starts from).")
    if config.amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be bf16, fp16 or unset (float32), got {config.amp!r}.")
    if config.eval_every is not None and config.eval_every <= 0:
        raise ValueError(f"eval_every must be a positive number of steps, got {config.eval_every}.")
    if config.num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {config.num_workers}.")
    if config.anchor_scale <= 0:
        raise ValueError(f"anchor_scale must be positive, got {config.anchor_scale}.")
    if config.stage == "stage3":
        if not config.init and not config.generator:
            raise ValueError("stage3 needs --init <stage-2 output dir> or --generator <folder or shipped name>.")
        if config.reuse not in ("generator", "extractor"):
            raise ValueError(f"reuse must be 'generator' or 'extractor', got {config.reuse!r}.")
        if config.reuse == "extractor" and not config.init:
            raise ValueError("reuse='extractor' needs --init <stage-2 output dir>.")
    if config.stage == "evaluate" and (not config.init or not config.eval_ann_file):
        raise ValueError("evaluate needs --init <trained output dir> and --eval-ann-file (with --eval-data-root).")
    if config.stop_after is not None and config.stop_after <= 0:
        raise ValueError(f"stop_after must be a positive step, got {config.stop_after}.")
    same_dir = config.init and os.path.abspath(config.output_dir or ".") == os.path.abspath(config.init)
    if same_dir and config.stage != "evaluate":
        raise ValueError("output_dir must differ from init (the previous stage's folder).")
