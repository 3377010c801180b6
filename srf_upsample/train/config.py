"""The settings every training stage shares, their checks, and reading them from shipped or user JSON files.

A config is data: its fields and :meth:`TrainConfig.validate`. Each stage's own fields are a subclass in
``stage_configs.py``; what a stage does with them (build, step) is in ``stages.py``; running one is ``loop.fit``'s.
This module imports nothing else of the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .._checks import check_choice, check_device, check_int, check_number

__all__ = [
    "AMP_CHOICES",
    "COCO_AREAS",
    "CONFIG_DIR",
    "DEGRADATIONS",
    "TrainConfig",
    "check_values",
    "load_config_file",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEGRADATIONS = ("bilinear", "nearest", "bicubic")  # how I_lr is made from I_tr (Table 6)
AMP_CHOICES = ("bf16", "fp16")
COCO_AREAS = ("file", "box")  # what sizes ground truth for APs/APm/APl: the file's ``area`` or each box's w*h


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by every stage. Defaults are the paper's (section 5.1); ``configs/`` ships CPU-sized ones."""

    HELP: ClassVar[str] = ""  # one line for ``srf-upsample train --help``
    INIT_FROM: ClassVar[tuple[str, ...]] = ()  # the stages whose output dir ``--init`` takes
    # What does not change the trained result, so a run may resume with other values (the rest is the fingerprint).
    NOT_IN_FINGERPRINT: ClassVar[frozenset[str]] = frozenset(
        {
            "output_dir",
            "num_workers",
            "device",
            "quiet",
            "resume",
            "stop_after",
            "checkpoint_every",
            "eval_every",
            "eval_data_root",
            "eval_ann_file",
            "coco_area",
            "keep_checkpoints",
            "resume_despite_changes",
            "allow_unfinished_init",
            "max_dropped_fraction",
            "tensorboard",
        }
    )

    stage: str = ""
    # data
    data_root: str = ""
    ann_file: str = ""
    output_dir: str = ""
    eval_data_root: str | None = None
    eval_ann_file: str | None = None
    # Which area sizes ground truth for APs/APm/APl: "file" (COCO's meaning) or "box" (each box's w*h); coco.read_coco.
    coco_area: str = "file"
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
    # Also write TensorBoard event files to <output_dir>/tensorboard/<stage> (pip install 'srf_upsample[tensorboard]').
    tensorboard: bool = False
    keep_checkpoints: int = 2  # complete checkpoints kept in <output_dir>/checkpoints (the newest ones)
    # Resume a run folder although this config differs from the one it was started with (recorded in its manifest).
    resume_despite_changes: bool = False
    allow_unfinished_init: bool = False  # accept an --init (or --extractor-weights) run that has not finished
    max_dropped_fraction: float = 0.1  # the largest share of unusable annotations (data.DROP_REASONS) accepted

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values."""
        return dataclasses.asdict(self)

    # ---- validation
    def validate(self) -> None:
        """Raise a ValueError naming the field, the value and the fix for the first invalid value."""
        self._validate_common()
        for name in ("data_root", "ann_file", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required (--{name.replace('_', '-')}).")
        check_int("max_iters", self.max_iters)
        check_int("batch_size", self.batch_size, hint="images per step over all processes")
        check_int("checkpoint_every", self.checkpoint_every)
        check_int("keep_checkpoints", self.keep_checkpoints, hint="the newest complete checkpoints kept")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise ValueError(
                f"output_dir {self.output_dir!r} is a file, not a folder; pass a folder path (--output-dir), "
                "which is created if missing."
            )
        if self.init and os.path.abspath(self.output_dir) == os.path.abspath(self.init):
            raise ValueError("output_dir must differ from init (the previous stage's folder).")

    def _validate_common(self) -> None:
        check_choice("degradation", self.degradation, DEGRADATIONS)
        check_choice("coco_area", self.coco_area, COCO_AREAS)
        if self.amp is not None:
            check_choice("amp", self.amp, AMP_CHOICES)
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, hint="a number of steps")
        check_int("num_workers", self.num_workers, minimum=0)
        check_number("anchor_scale", self.anchor_scale, minimum=0, is_open=True)
        if self.stop_after is not None:
            check_int("stop_after", self.stop_after, hint="the global step to stop after")
        check_number("max_dropped_fraction", self.max_dropped_fraction, minimum=0, maximum=1)
        if self.device != "auto":  # --device cuda on a machine without a GPU fails here, before anything is written
            check_device("device (--device)", self.device)


def _matches(value: Any, kind: Any) -> bool:
    """Whether a JSON ``value`` fits the field type ``kind`` (``int | None``, ``list[int]``, ...)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if kind is type(None):
        return value is None
    if kind is Any:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


_KIND_NAMES = {int: "an int", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _describe(kind: Any) -> str:
    """``int | None`` -> ``"an int or null"``, ``list[int]`` -> ``"a list of an int"``: the type in words."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is list:
        return f"a JSON list of {_describe(args[0]).split(' ', 1)[-1]}s"
    if origin is dict:
        return "a JSON object"
    return _KIND_NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def check_values(cls: type[TrainConfig], values: dict[str, Any]) -> None:
    """Raise a ValueError for an unknown key of ``cls`` or a value of the wrong type (e.g. ``--set lr=abc``)."""
    kinds = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"Unknown config keys {unknown} for {cls.stage}; valid keys: {sorted(fields)}.")
    for key, value in values.items():
        if not _matches(value, kinds[key]):
            raise ValueError(
                f"{key} must be {_describe(kinds[key])}, got {value!r} ({type(value).__name__}); give it a value of "
                f"that type in the config file or as --set {key}=VALUE (VALUE is read as JSON: 0.01, true, [3,4,5])."
            )


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
