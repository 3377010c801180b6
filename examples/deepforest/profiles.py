"""The DeepForest experiment's profiles: detector, target schedule and pre-training settings for a GPU and for a CPU,
the quick smoke-test sizes, and what ``--split blocks`` adds (arms, budget order, one shared converged stage 1).

``experiment_values`` turns them into the experiment config of ``srf-upsample experiment`` for a fold's prepared
tiles; ``record_experiment`` keeps the work folder's ``experiment_config.json`` as wide as every run so far asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from generators import PLATEAU
from restore import EXPERIMENT_CONFIG_NAME

from srf_upsample.train.experiment import DEFAULT_ARMS, GENERATOR_VARIANTS

DETECTOR = {
    "detector": "fasterrcnn",
    "backbone": "mobilenet_v2",
    "min_size": 400,
    "max_size": 400,
    "anchor_sizes": [16, 32, 64, 128, 256],
    "detector_kwargs": {"box_batch_size_per_image": 128},
}
# 62 training tiles: 400 iterations of 8 images are about 52 epochs. lr: the paper's 0.02 for 16 images, scaled
# linearly to 8 (Goyal et al.'s rule, as Detectron2 does); x0.1 at 70 % and 90 % of the run.
SCHEDULE = {
    "max_iters": 400,
    "lr": 0.01,
    "milestones": [280, 360],
    "warmup_iters": 40,
    "batch_size": 8,
    "eval_every": 20,
}
# Stage 1 (SRF-GAN): 10x the paper's lr and G starting as bilinear, because it runs 250 iterations, not 150k.
STAGE1 = {"max_iters": 250, "lr": 0.01, "milestones": [200], "batch_size": 8, "generator_zero_init_residual": True}
# Stage 2 (SRF extractor): M starts from the trained A1 detector (the authors' published setup), anchors halved.
STAGE2 = {
    "max_iters": 250,
    "lr": 0.01,
    "milestones": [200],
    "warmup_iters": 25,
    "batch_size": 8,
    "init_from_extractor": True,
    "anchor_scale": 0.5,
}
# The CPU profile: the budget it is sized for (one seed of every lite arm in about 90 minutes on 2 CPU cores).
# The FPN and the RPN at P2 dominate this detector's cost, so the FPN is 64 channels wide instead of 256 (18 s ->
# 5 s per step of 8 tiles here); the batch is halved (lr with it, so the same lr per image) over the GPU profile's
# 400 iterations: 26 epochs, x0.1 after 18 (A1 on the GPU profile plateaued after 15-20 epochs; a first CPU try with
# 240 iterations, x0.1 after 11 epochs, left A1 still rising). D is 1/8 of the paper's width (64/128/128 for
# 512/1024/1024): at 1/4 (128/256/256) one stage-1 step takes 14 s. Same tiles, tile size, anchors, RoIs and
# evaluation as the GPU profile.
DETECTOR_CPU = {**DETECTOR, "fpn_channels": 64}
SCHEDULE_CPU = {**SCHEDULE, "lr": 0.005, "batch_size": 4}
STAGE1_CPU = {
    **STAGE1,
    "max_iters": 150,
    "milestones": [120],
    "batch_size": 4,
    "discriminator_hidden_channels": [64, 128, 128],
}
STAGE2_CPU = {**STAGE2, "max_iters": 150, "lr": 0.005, "milestones": [120], "warmup_iters": 15, "batch_size": 4}
# The paper generator at the CPU profile's FPN width: the paper's G is as wide as its FPN (C = 256, section 3.2);
# here C = 64, so its body is 64 wide too (5 residual blocks, 6x6 deconvolution: 0.59 M parameters). At its default
# 256 it would be 4x wider than the features it upsamples, and its forward + backward over 4 tiles would take
# 18.6 s on one core against 1.5 s at 64 (`benchmarks/bench_generator_train_step.py`), next to a 3 s detector step.
GENERATOR_CPU = {"paper": {"generator_hidden_channels": 64}}
PROFILES = {
    "gpu": {"schedule": SCHEDULE, "stage1": STAGE1, "stage2": STAGE2, "detector": DETECTOR},
    "cpu": {
        "schedule": SCHEDULE_CPU,
        "stage1": STAGE1_CPU,
        "stage2": STAGE2_CPU,
        "detector": DETECTOR_CPU,
        "variant_generator": GENERATOR_CPU,
    },
}
QUICK = {
    "schedule": {"max_iters": 2, "lr": 0.005, "milestones": [1], "warmup_iters": 0, "batch_size": 2, "eval_every": 1},
    "stage1": {
        **STAGE1,
        "max_iters": 1,
        "milestones": [1],
        "batch_size": 2,
        "discriminator_hidden_channels": [16, 16, 16],
    },
    "stage2": {**STAGE2, "max_iters": 1, "milestones": [1], "warmup_iters": 0, "batch_size": 2},
    # The CPU profile's 64-channel FPN and 100 proposals per image at test time: at 256 channels and torchvision's
    # 1000 proposals, the box head took most of each validation of a quick run.
    "detector": {
        **DETECTOR_CPU,
        "min_size": 160,
        "max_size": 160,
        "detector_kwargs": {
            **DETECTOR_CPU["detector_kwargs"],
            "rpn_pre_nms_top_n_test": 100,
            "rpn_post_nms_top_n_test": 100,
        },
    },
}


# --split blocks: the arms in their budget order (the paper variant's arms follow when --variants has
# it), and one converged stage-1 run per fold and variant serving every seed (the paper's reuse of one G).
BLOCKS_ARMS = ["A1", "B", "A2", "E2E", "DySample", "A5", "C", "A1+"]
BLOCKS_ORDER = ["A1", "B", "A2-{v}", "E2E-{v}", "DySample", "A5-{v}", "C", "A1+"]
# Stage 1 to a plateau of G's held-out L1 (measured on the fold's validation tiles, which no detector trains on):
# 8x the short schedule at most, stopped after 5 evaluations without a 1 % gain. The CPU profile's D is ours to
# size: at 64/128/128 it takes 3.9 of a stage-1 step's 4.6 s (1.7x a detector step even with F cached); at
# 16/32/32 a step is 0.27x a detector step (`benchmarks/bench_stage_steps.py --setup deepforest`). G's loss is
# L1 + 0.001 x adversarial, so D's width moves G's gradient little; the GPU profile keeps the paper's D.
STAGE1_CONVERGED = {
    "gpu": {"max_iters": 2000, "milestones": [1600]},
    "cpu": {"max_iters": 1200, "milestones": [960], "discriminator_hidden_channels": [16, 32, 32]},
}


def blocks_values(data: Path, profile: str, stage1: dict, variants: list[str], arms: list[str] | None) -> dict:
    """What ``--split blocks`` adds to the experiment config: arms, budget order, one shared converged stage 1."""
    converged = {**stage1, **STAGE1_CONVERGED[profile]}
    converged.update(  # the trainer's plateau stop on G's held-out L1, measured every 1/20 of the cap
        PLATEAU,
        eval_every=converged["max_iters"] // 20,
        eval_data_root=str(data / "val"),
        eval_ann_file=str(data / "annotations" / "instances_val.json"),
    )
    order = [name.format(v=variants[0]) for name in BLOCKS_ORDER]
    order += [f"{arm}-{variant}" for variant in variants[1:] for arm in ("A2", "E2E", "A5")]
    return {"arms": arms or BLOCKS_ARMS, "budget_order": order, "shared_stage1": True, "stage1": converged}


def default_variants(profile: str) -> list[str]:
    """The generator variants a profile trains unless --variants says otherwise."""
    # The guided variant is an arm only with --variants: its own trainer path feeds G its guide.
    return ["lite"] if profile == "cpu" else [variant for variant in GENERATOR_VARIANTS if variant != "guided"]


def experiment_values(
    data: Path,
    weights: Path,
    *,
    quick: bool,
    variants: list[str],
    paper_seeds: list[int] | None,
    run: dict,
    arms: list[str] | None = None,
    profile: str = "gpu",
    split: str = "rows",
) -> dict:
    """The experiment config of ``srf-upsample experiment`` for the prepared tiles in ``data``."""
    chosen = QUICK if quick else PROFILES[profile]
    values = {
        "train_data_root": str(data / "train"),
        "train_ann_file": str(data / "annotations" / "instances_train.json"),
        "val_data_root": str(data / "val"),
        "val_ann_file": str(data / "annotations" / "instances_val.json"),
        "detector": {**chosen["detector"], "backbone_weights": str(weights)},
        "schedule": chosen["schedule"],
        "stage1": chosen["stage1"],
        "stage2": chosen["stage2"],
        "variants": variants,
        "arms": arms or list(DEFAULT_ARMS),
        "variant_seeds": {"paper": paper_seeds} if paper_seeds is not None else {},
        "variant_generator": chosen.get("variant_generator", {}),
        "run": {"checkpoint_every": 1 if quick else 100, "quiet": True, **run},
    }
    if split == "blocks":
        values.update(blocks_values(data, profile, chosen["stage1"], variants, arms))
        if quick:  # a smoke test: the shared stage 1 as short as the other quick runs
            values["stage1"] = {**values["stage1"], **{k: QUICK["stage1"][k] for k in ("max_iters", "milestones")}}
            values["stage1"]["eval_every"] = 1 if "eval_every" in values["stage1"] else None
            values["stage1"] = {k: v for k, v in values["stage1"].items() if v is not None}
    return values


def record_experiment(work: Path, values: dict, build: Callable[[list[str]], dict]) -> dict:
    """Write ``work/experiment_config.json``: this run's config widened to every variant, arm and variant seed the
    folder's earlier config held, so a run with fewer ``--variants`` keeps the other variants' rows in
    ``--summarize-only``. ``build(variants)`` gives the config for other variants; ``values`` (what trains now) is
    left as it is. Returns what was written."""
    recorded = work / EXPERIMENT_CONFIG_NAME
    earlier = json.loads(recorded.read_text()) if recorded.is_file() else {}
    variants = list(dict.fromkeys([*earlier.get("variants", []), *values["variants"]]))
    written = dict(values) if variants == values["variants"] else build(variants)
    written["arms"] = list(dict.fromkeys([*earlier.get("arms", []), *written["arms"], *values["arms"]]))
    written["variant_seeds"] = {**earlier.get("variant_seeds", {}), **values["variant_seeds"]}
    recorded.write_text(json.dumps(written, indent=2))
    return written
