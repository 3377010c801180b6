"""Plan an experiment: every trainer run of every seed, from the arm registry, with dependencies and budget order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arms import ARMS, BASELINE, PRETRAINING, Arm, Pretraining
from .config import ExperimentConfig

__all__ = ["Job", "plan_jobs"]

# The trainer switch of a stage-3 run that trains a generator built afresh (an arm with ``new_generator``).
NEW_GENERATOR_KEY = "use_new_generator"


@dataclass
class Job:
    """One trainer run of the experiment: its stage, output folder, config values and the runs it needs first."""

    name: str
    stage: str
    output_dir: Path
    values: dict[str, Any]
    needs: list[str]
    priority: tuple[int, ...]
    arm: str | None = None  # set for target detectors (the rows of the table)
    seed: int = 0


def _generator_values(config: ExperimentConfig, variant: str) -> dict[str, Any]:
    """The generator a variant's stage 1 builds: stage 1's ``generator_*`` keys, the variant's own, the variant."""
    shared = {key: value for key, value in config.stage1.items() if key.startswith("generator_")}
    return {**shared, **config.variant_generator.get(variant, {}), "generator_variant": variant}


def plan_jobs(config: ExperimentConfig, seeds: Sequence[int], work_dir: str | os.PathLike) -> list[Job]:
    """Every run of the experiment for ``seeds``, with dependencies, in the order the budget favours.

    Each arm of ``config.arms`` (and A1, which every pre-training run learns against) gets one target run per seed
    (per variant and seed for arms with a generator), after the pre-training runs it starts from. Jobs are ordered
    by budget tier, then seed, then rank (the registry's budget order), pre-training first.
    """
    work = Path(work_dir)
    base = {
        **config.detector,
        **config.run,
        "data_root": config.train_data_root,
        "ann_file": config.train_ann_file,
        "eval_data_root": config.val_data_root,
        "eval_ann_file": config.val_ann_file,
    }
    target = {**base, **config.schedule.values()}  # the schedule goes last: no arm can override it
    arms = [ARMS[name] for name in ARMS if name == BASELINE or name in config.arms]
    jobs: dict[str, Job] = {}

    def folder(seed: int, name: str) -> Path:
        return work / f"seed{seed}" / name

    def add(name: str, seed: int, stage: str, values: dict[str, Any], init: str | None, priority: tuple) -> None:
        key = f"seed{seed}/{name}"
        if key in jobs:  # a pre-training run shared by several arms
            return
        output_dir = folder(seed, name)
        needs = [f"seed{seed}/{init}"] if init else []
        values = {**values, "seed": seed, "output_dir": str(output_dir)}
        jobs[key] = Job(key, stage, output_dir, values, needs, priority, seed=seed)

    def add_pretraining(run: Pretraining, variant: str | None, seed: int, tier: int) -> None:
        init = run.init.format(variant=variant) if run.init else None
        if run.init:
            add_pretraining(PRETRAINING[run.init], variant, seed, tier)
        pre = {**base, "extractor_weights": str(folder(seed, BASELINE) / "checkpoint.safetensors")}
        values = {**pre, "eval_ann_file": None, **getattr(config, run.settings)}
        if init:
            values["init"] = str(folder(seed, init))
        values.update(run.values)
        if run.new_generator:
            values.update(_generator_values(config, variant))
        add(
            run.name.format(variant=variant),
            seed,
            run.stage,
            values,
            init or BASELINE,
            (tier, seed, run.rank, _depth(run.name)),
        )

    def add_arm(arm: Arm, variant: str | None, seed: int, variant_tier: int) -> None:
        tier = max(variant_tier, arm.tier)
        values = dict(target)
        init = arm.init.format(variant=variant) if arm.init else None
        if arm.init:
            add_pretraining(PRETRAINING[arm.init], variant, seed, variant_tier)
            source = folder(seed, init)
            values[arm.init_as] = str(source / "generator" if arm.init_as == "generator" else source)
        if arm.new_generator:
            values.update(_generator_values(config, variant), **{NEW_GENERATOR_KEY: True})
        values.update(arm.values)  # last: an arm's own settings hold whatever the variant's generator says
        name = f"{arm.name}-{variant}" if variant else arm.name
        depth = 1 + _depth(arm.init) if arm.init else 0  # after the pre-training it starts from
        add(name, seed, arm.stage, values, init, (tier, seed, arm.rank, depth))
        jobs[f"seed{seed}/{name}"].arm = name

    for seed in seeds:
        for arm in arms:
            if not arm.has_variant:
                add_arm(arm, None, seed, 0)
                continue
            for variant in config.variants:
                if seed in config.variant_seeds.get(variant, [seed]):
                    add_arm(arm, variant, seed, 0 if variant == config.variants[0] else 2)
    return sorted(jobs.values(), key=lambda job: job.priority)


def _depth(name: str) -> int:
    """How many pre-training runs the run ``name`` starts from (``stage1-{variant}``: 0, ``stage2-{variant}``: 1)."""
    init = PRETRAINING[name].init
    return 0 if init is None else 1 + _depth(init)
