"""Where a training step's time goes: a detector step, a stage-1 step (F cached or not) and a stage-2 step.

Run from the repository root:
    python benchmarks/bench_stage_steps.py                    # DeepForest CPU profile, then the shipped cpu_* configs
    python benchmarks/bench_stage_steps.py --setup deepforest --data DIR   # tiles already written by prepare.py
    python benchmarks/bench_stage_steps.py --quick            # tiny sizes, one round (smoke test)

For each setup it builds the trainers exactly as ``srf-upsample train`` does (the detector of the baseline, stage 1
with and without ``feature_cache``, stage 2 from a one-step stage-1 folder), gives them the SAME batch of training
tiles, and:

1. times one step of each, interleaved over ``--repeats`` rounds after a warm-up round (which also fills stage 1's
   feature cache), and prints each step's median and its ratio to the detector step of the same round;
2. profiles one step of each with ``torch.profiler`` over the labels the trainer puts on its parts (F on I_tr and
   I_lr, G, D, the losses, backward and optimizer per module) and times the data (decode, resize, flip of the batch).

F's weights are not trained here (``allow_untrained_extractor``) and stage 2's M starts from ImageNet weights, not F's
detector (``init_from_extractor`` off): the cost of a step does not depend on the weights.
Benchmarks measure; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    MachineLoad,
    benchmark_parser,
    format_table,
    header_lines,
    logger_level,
    publish,
    time_interleaved,
    torch_threads,
)

from srf_upsample.train.config import load_config_file
from srf_upsample.train.loop import _Trainer, fit
from srf_upsample.train.stage_configs import build_config
from srf_upsample.train.synthetic import write_tiny_coco

__all__ = ["main", "run_setup"]

REPO = Path(__file__).resolve().parents[1]
SECTION = "stage-steps"
CACHE = REPO / ".cache" / "srf_upsample"
# Parts of a step, as the trainer labels them (record_function), in the order a step runs them.
LABELS = (
    "F(I_tr)",
    "F(I_lr)",
    "F levels (cache lookup or compute)",
    "G forward",
    "M forward (detector on I_lr, G inside)",
    "D forward + Eq. (1)",
    "backward (discriminator)",
    "optimizer step (discriminator)",
    "D forward + Eq. (2)",
    "D forward + Eq. (3)",
    "backward (generator)",
    "optimizer step (generator)",
    "backward (detector)",
    "optimizer step (detector)",
)
STEPS = ("detector", "stage1 (F cached)", "stage1 (F computed)", "stage2")


def _deepforest_values(
    data: Path | None, tmp: Path, variant: str = "lite"
) -> tuple[dict[str, dict[str, Any]], Path, Path]:
    """The DeepForest CPU profile's settings per stage (examples/deepforest/run.py), and the training tiles."""
    sys.path.insert(0, str(REPO / "examples" / "deepforest"))
    import run as deepforest  # examples/deepforest/run.py: PROFILES, fetch_mobilenet_weights
    from prepare import prepare

    if data is None:
        data = tmp / "deepforest"
        prepare(data, CACHE / "deepforest")
    weights = deepforest.fetch_mobilenet_weights(CACHE / "mobilenet")
    profile = deepforest.PROFILES["cpu"]
    detector = {**profile["detector"], "backbone_weights": str(weights)}
    schedule = {key: value for key, value in profile["schedule"].items() if key != "eval_every"}
    # The generator as the experiment trains it at this profile (lite by default; paper at the FPN's width).
    generator = {"generator_variant": variant, **profile.get("variant_generator", {}).get(variant, {})}
    # D as the k-fold experiment's converged stage 1 sizes it (--split blocks), not the first two folds' 64/128/128.
    converged = deepforest.STAGE1_CONVERGED["cpu"]
    discriminator = {key: value for key, value in converged.items() if key.startswith("discriminator_")}
    values = {
        "baseline": {**detector, **schedule},
        "stage1": {**detector, **profile["stage1"], **discriminator, **generator},
        "stage2": {**detector, **profile["stage2"]},
    }
    return values, data / "train", data / "annotations" / "instances_train.json"


def _shipped_values() -> dict[str, dict[str, Any]]:
    """The shipped cpu_stage1 / cpu_stage2 configs, and a detector step with the same detector and batch."""
    stage1 = load_config_file("cpu_stage1")
    stage2 = load_config_file("cpu_stage2")
    baseline = {k: v for k, v in load_config_file("cpu_baseline").items() if k != "stage"}
    baseline.update({k: stage1[k] for k in ("detector", "backbone", "min_size", "max_size", "batch_size")})
    return {"baseline": baseline, "stage1": stage1, "stage2": stage2}


def _trainer(stage: str, values: dict[str, Any], common: dict[str, Any]) -> _Trainer:
    config = build_config(stage, {**{k: v for k, v in values.items() if k != "stage"}, **common})
    trainer = _Trainer(config)
    trainer.build()
    trainer.wrap()
    return trainer


def _step(trainer: _Trainer, images: list[torch.Tensor], targets: list[dict]):
    def call() -> None:
        trainer.stage.step(trainer, images, targets)
        trainer.scaler.update()

    return call


def _profile(call) -> dict[str, float]:
    """Milliseconds per labelled part of one call, plus ``"step"`` (the whole call, under the profiler)."""
    started = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    total = (time.perf_counter() - started) * 1000
    out = {event.key: event.cpu_time_total / 1000 for event in prof.key_averages() if event.key in LABELS}
    out["step"] = total
    return out


def run_setup(
    name: str,
    values: dict[str, dict[str, Any]],
    data_root: Path,
    ann_file: Path,
    work: Path,
    *,
    repeats: int,
    warmup: int,
    quick: bool,
) -> tuple[list[list[str]], dict[str, dict[str, float]], dict[str, Any]]:
    """Build the four trainers of one setup, time and profile their steps on one batch; returns table rows."""
    common = {
        "data_root": str(data_root),
        "ann_file": str(ann_file),
        "device": "cpu",
        "quiet": True,
        "allow_untrained_extractor": True,
        "extractor_weights": None,
        "resume": False,
    }
    if quick:
        small = {"min_size": 64, "max_size": 64, "batch_size": 2, "discriminator_hidden_channels": [8, 8, 8]}
        values = {stage: {**v, **small, "generator_hidden_channels": 8} for stage, v in values.items()}
        values["baseline"].pop("generator_hidden_channels")
        values["baseline"].pop("discriminator_hidden_channels")
    stage1_dir = work / f"{name}-stage1"
    # Stage 2 starts from a stage-1 folder: one step of stage 1 writes one (G and D as the profile builds them).
    init_config = build_config(
        "stage1",
        {
            **{k: v for k, v in values["stage1"].items() if k != "stage"},
            **common,
            "max_iters": 1,
            "milestones": [1],
            "output_dir": str(stage1_dir),
        },
    )
    fit(init_config)
    # M starts from ImageNet weights instead of F's detector (init_from_extractor): the same modules, the same cost.
    values["stage2"] = {**values["stage2"], "init_from_extractor": False}
    trainers = {
        "detector": _trainer("baseline", values["baseline"], {**common, "output_dir": str(work / f"{name}-b")}),
        "stage1 (F cached)": _trainer("stage1", values["stage1"], {**common, "output_dir": str(work / f"{name}-c")}),
        "stage1 (F computed)": _trainer(
            "stage1", values["stage1"], {**common, "output_dir": str(work / f"{name}-u"), "feature_cache": False}
        ),
        "stage2": _trainer(
            "stage2", values["stage2"], {**common, "output_dir": str(work / f"{name}-2"), "init": str(stage1_dir)}
        ),
    }
    batch_sizes = {trainer.config.batch_size for trainer in trainers.values()}
    if len(batch_sizes) != 1:
        raise ValueError(f"setup {name}: the stages' batch sizes differ ({batch_sizes}); the comparison needs one.")
    dataset = trainers["detector"].dataset
    keys = [(index, index % 2 == 1) for index in range(batch_sizes.pop())]
    started = time.perf_counter()
    items = [dataset[key] for key in keys]
    data_ms = (time.perf_counter() - started) * 1000
    images, targets = [image for image, _ in items], [target for _, target in items]
    calls = {label: _step(trainers[label], images, targets) for label in STEPS}
    # The warm-up round (at least one) fills stage 1's cache, as the first epoch of a run does.
    timings = time_interleaved(calls, warmup=max(1, warmup), repeats=repeats, baseline="detector")
    profiles = {label: _profile(calls[label]) for label in STEPS}
    cache = trainers["stage1 (F cached)"].feature_cache
    rows = []
    for label in LABELS:
        if any(label in profile for profile in profiles.values()):
            rows.append([label, *(f"{profiles[s][label]:.0f}" if label in profiles[s] else "" for s in STEPS)])
    rows.append(["whole step (under the profiler)", *(f"{profiles[s]['step']:.0f}" for s in STEPS)])
    rows.append(["data: decode + resize + flip of the batch", *[f"{data_ms:.0f}"] * len(STEPS)])
    config = trainers["stage1 (F cached)"].config
    info = {
        "batch": len(images),
        "tile": tuple(images[0].shape[-2:]),
        "fpn_channels": config.fpn_channels,
        "generator": config.generator_variant,
        "discriminator": config.discriminator_hidden_channels,
        "cache_bytes_per_key": cache.nbytes // max(1, len(cache)),
    }
    return rows, timings, info


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=5)
    parser.add_argument(
        "--setup",
        choices=["deepforest", "shipped", "both"],
        default="both",
        help="deepforest: the DeepForest CPU profile (examples/deepforest/run.py); shipped: cpu_stage1/cpu_stage2",
    )
    parser.add_argument("--data", type=Path, default=None, help="DeepForest tiles from prepare.py (default: write)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the experiment runs)")
    parser.add_argument(
        "--variant", choices=["lite", "paper"], default="lite", help="the DeepForest profile's generator (default lite)"
    )
    parser.add_argument(
        "--discriminator",
        default=None,
        help="D's widths for the DeepForest setup instead of the profile's, e.g. 32,64,64 (sizing a cheaper D)",
    )
    args = parser.parse_args(argv)
    try:
        widths = [int(v) for v in args.discriminator.split(",")] if args.discriminator else None
    except ValueError:
        parser.error(f"--discriminator must be comma-separated widths such as 32,64,64, got {args.discriminator!r}.")
    if args.data is not None and not (args.data / "annotations" / "instances_train.json").is_file():
        parser.error(
            f"--data {str(args.data)!r} holds no annotations/instances_train.json; pass the folder that "
            "examples/deepforest/prepare.py wrote, or leave --data out to write one."
        )
    with torch_threads(args.threads), logger_level("srf_upsample", logging.WARNING):  # main() may run in-process
        return _measure(args, widths)


def _measure(args: argparse.Namespace, widths: list[int] | None) -> int:
    repeats, warmup = (1, 1) if args.quick else (args.repeats, args.warmup)
    lines = [*header_lines("## Training-step cost by stage", quick=args.quick, dtypes=[torch.float32]), ""]
    with tempfile.TemporaryDirectory() as tmp, MachineLoad() as load:
        work = Path(tmp)
        setups = []
        if args.quick:
            image_dir, ann_file = write_tiny_coco(work / "tiny", num_images=4)
            setups.append(("tiny (quick)", _shipped_values(), image_dir, ann_file))
        else:
            if args.setup in ("deepforest", "both"):
                values, root, ann = _deepforest_values(args.data, work, args.variant)
                name = f"DeepForest CPU profile, {args.variant} G"
                if widths:
                    values = {stage: {**v, "discriminator_hidden_channels": widths} for stage, v in values.items()}
                    values["baseline"].pop("discriminator_hidden_channels")
                    name += f", D {widths} (not the profile's)"
                setups.append((name, values, root, ann))
            if args.setup in ("shipped", "both"):
                values, root, ann = _deepforest_values(args.data, work) if not setups else (None, *setups[0][2:])
                setups.append(("shipped cpu_stage1 / cpu_stage2", _shipped_values(), root, ann))
        for index, (name, values, root, ann) in enumerate(setups):
            rows, timings, info = run_setup(
                f"setup{index}", values, root, ann, work, repeats=repeats, warmup=warmup, quick=args.quick
            )
            lines += [
                f"### {name}",
                "",
                f"- batch {info['batch']} tiles of {info['tile'][0]}x{info['tile'][1]} px (the same tiles for every "
                f"step), FPN width {info['fpn_channels']}, G {info['generator']}, D {info['discriminator']}; "
                f"feature cache: {info['cache_bytes_per_key'] / 1e6:.2f} MB per (image, flip)",
                "",
                "Side by side (interleaved, medians over rounds; ratio = median of step / detector step in the same "
                "round):",
                "",
                format_table(
                    ["step", "median s", "ratio to detector step (wall)", "ratio (CPU time)"],
                    [
                        [s, f"{t['median_s']:.3f}", f"{t['ratio']:.2f}", f"{t['cpu_ratio']:.2f}"]
                        for s, t in timings.items()
                    ],
                ),
                "",
                "Profile of one step (ms, torch.profiler CPU time of each labelled part; parts nest in the step):",
                "",
                format_table(["part", *STEPS], rows),
                "",
            ]
            print(json.dumps({name: timings}), flush=True)
    lines += load.lines()
    publish("\n".join(lines), SECTION, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
