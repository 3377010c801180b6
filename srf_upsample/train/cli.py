"""``srf-upsample train <stage>``: turns command-line arguments into a stage config and runs it.

Running a config is this module's job: a training stage goes to ``loop.fit``, ``evaluate`` to
``evaluate.evaluate_detector`` on the run folder's detector.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .config import TrainConfig, load_config_file
from .distributed import resolve_device
from .evaluate import evaluate_detector
from .loop import fit
from .run_folder import load_trained_detector
from .stage_configs import STAGE_CONFIGS, EvaluateConfig, build_config, field_names

__all__ = ["main", "parse_config", "run_config"]

logger = logging.getLogger(__name__)


def _description() -> str:
    """The ``--help`` text; each stage's line comes from its class (``HELP``)."""
    stages = "\n".join(f"  {name:<9} {cls.HELP}" for name, cls in STAGE_CONFIGS.items())
    return f"""Train the SRF-GAN stages of Lee & Bae (section 4) on a COCO-format dataset.

stages:
{stages}

Values: defaults (the paper's schedule) < --config FILE < --set key=value < explicit flags.
Shipped configs: paper_stage1, paper_stage2, paper_stage3, paper_baseline (3x: 270k iterations), paper_stage2_1x,
paper_stage3_1x, paper_baseline_1x (1x: 90k), cpu_stage1, cpu_stage2, cpu_stage3, cpu_baseline (--config cpu_stage1).
Stages 1 and 2 need a trained F: train the baseline first, then pass
--extractor-weights <baseline>/checkpoint.safetensors.
"""


# Explicit flags: (flag, config key, type). Booleans are handled separately.
_FLAGS = [
    ("--data-root", "data_root", str),
    ("--ann-file", "ann_file", str),
    ("--output-dir", "output_dir", str),
    ("--eval-data-root", "eval_data_root", str),
    ("--eval-ann-file", "eval_ann_file", str),
    ("--detector", "detector", str),
    ("--backbone", "backbone", str),
    ("--backbone-weights", "backbone_weights", str),
    ("--detector-weights", "detector_weights", str),
    ("--extractor-weights", "extractor_weights", str),
    ("--init", "init", str),
    ("--generator", "generator", str),
    ("--reuse", "reuse", str),
    ("--max-iters", "max_iters", int),
    ("--batch-size", "batch_size", int),
    ("--lr", "lr", float),
    ("--min-size", "min_size", int),
    ("--max-size", "max_size", int),
    ("--degradation", "degradation", str),
    ("--device", "device", str),
    ("--seed", "seed", int),
    ("--num-workers", "num_workers", int),
    ("--checkpoint-every", "checkpoint_every", int),
    ("--stop-after", "stop_after", int),
    ("--amp", "amp", str),
    ("--eval-every", "eval_every", int),
    ("--keep-checkpoints", "keep_checkpoints", int),
]
# Switches: (flag, config key, value when given, help).
_SWITCHES = [
    ("--freeze-generator", "freeze_generator", True, "stage3: keep G fixed (ablation A4)"),
    (
        "--allow-untrained-extractor",
        "allow_untrained_extractor",
        True,
        "stages 1-2: accept an F without trained weights (smoke tests only)",
    ),
    ("--no-resume", "resume", False, "start over even if --output-dir holds checkpoints (they are deleted)"),
    (
        "--resume-despite-changes",
        "resume_despite_changes",
        True,
        "resume --output-dir although this config differs from its run's (the differences go to its manifest)",
    ),
    (
        "--allow-unfinished-init",
        "allow_unfinished_init",
        True,
        "accept an --init / --extractor-weights run that has not finished (its last checkpoint)",
    ),
    ("--quiet", "quiet", True, "no progress bar"),
    (
        "--tensorboard",
        "tensorboard",
        True,
        "also write TensorBoard event files to <output-dir>/tensorboard/<stage> (the tensorboard extra)",
    ),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srf-upsample train", description=_description(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=list(STAGE_CONFIGS))
    parser.add_argument("--config", help="JSON config file or shipped name (e.g. cpu_stage1)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key; VALUE is JSON (e.g. levels=[3,4,5]) or a plain string",
    )
    for flag, key, kind in _FLAGS:
        parser.add_argument(flag, dest=key, type=kind, default=None)
    parser.add_argument(
        "--levels",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="pyramid levels, e.g. 2,3,4,5 (P2-P5) or 3,4,5",
    )
    parser.add_argument(
        "--area",
        dest="coco_area",
        choices=("file", "box"),
        default=None,
        help="what sizes ground truth for APs/APm/APl: the annotation file's area (default) or each box's w*h",
    )
    for flag, key, value, text in _SWITCHES:
        parser.add_argument(flag, dest=key, action="store_const", const=value, default=None, help=text)
    parser.add_argument("--log-level", default="INFO")
    return parser


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_config(argv: list[str]):
    """Parse ``argv`` (without ``train``) into ``(config, args)``."""
    args = _parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}.")
        key, text = item.split("=", 1)
        values[key.strip().replace("-", "_")] = _parse_value(text)
    names = field_names(args.stage)
    for key in [key for _, key, _ in _FLAGS] + ["levels", "coco_area"] + [key for _, key, _, _ in _SWITCHES]:
        value = getattr(args, key)
        if value is not None:
            if key not in names:
                raise ValueError(f"--{key.replace('_', '-')} does not apply to {args.stage}.")
            values[key] = value
    return build_config(args.stage, values), args


def _evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """COCO AP of the detector in ``config.init`` (rebuilt from its run folder); metrics go next to it."""
    device = resolve_device(config.device)
    detector, manifest = load_trained_detector(config.init, device, expected=config.INIT_FROM)
    train_config = manifest["config"]
    return evaluate_detector(
        detector,
        config.eval_data_root or config.data_root or train_config["data_root"],
        config.eval_ann_file,
        category_ids=manifest["category_ids"],
        output_dir=config.output_dir or config.init,
        min_size=train_config["min_size"],
        max_size=train_config["max_size"],
        batch_size=config.batch_size,
        device=device,
        quiet=bool(config.quiet),
        area=config.coco_area,
    )


def run_config(config: TrainConfig) -> dict[str, Any]:
    """Run a built config: train its stage (``loop.fit``) or, for ``evaluate``, score its run folder.

    Returns:
        What ``srf-upsample train`` prints: ``{"stage", "step", "losses", "metrics", "skipped_images"}`` after
        training, the COCO metrics after ``evaluate``.
    """
    if isinstance(config, EvaluateConfig):
        return _evaluate(config)
    result = fit(config)
    return {
        "stage": config.stage,
        "step": result.step,
        "losses": result.losses,
        "metrics": result.metrics,
        "skipped_images": result.skipped_images,
    }


def main(argv: list[str] | None = None) -> int:
    """Run ``srf-upsample train <stage> ...``; returns the exit code (2 for a usage or data error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config, args = parse_config(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"srf-upsample train: error: {error}", file=sys.stderr)
        return 2
    root = logging.getLogger("srf_upsample")
    level, handlers = root.level, root.handlers[:]  # restored on return: main() may be called in-process
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(args.log_level.upper())
    try:
        summary = run_config(config)
    except (ValueError, FileNotFoundError, ImportError) as error:  # ImportError: an optional extra (tensorboard)
        print(f"srf-upsample train: error: {error}", file=sys.stderr)
        return 2
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    print(json.dumps(summary))
    return 0
