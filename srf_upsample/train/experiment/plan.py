"""Plan an experiment: every trainer run of every seed, from the arm registry, with dependencies and budget order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run_folder import CHECKPOINT_NAME, GENERATOR_DIR
from .arms import ARMS, BASELINE, GENERATOR_VARIANTS, PRETRAINING, Arm, Pretraining
from .config import SHARED_STAGE1_SEED, ExperimentConfig

__all__ = ["Job", "check_arm_names", "plan_jobs", "select_arms", "select_jobs"]

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
    # Lineage (recorded in the run's manifest by run_jobs): the run whose A1 its detector or F descends from (an A1
    # run itself, or a run whose recorded A1 it inherits), and the run whose generator it takes.
    a1_from: str | None = None
    generator_from: str | None = None


def _generator_values(config: ExperimentConfig, variant: str) -> dict[str, Any]:
    """The generator a variant's stage 1 builds: stage 1's ``generator_*`` keys, the variant's own, the variant."""
    shared = {key: value for key, value in config.stage1.items() if key.startswith("generator_")}
    return {**shared, **config.variant_generator.get(variant, {}), "generator_variant": variant}


def plan_jobs(config: ExperimentConfig, seeds: Sequence[int], work_dir: str | os.PathLike) -> list[Job]:
    """Every run of the experiment for ``seeds``, with dependencies, in the order the budget favours.

    Each arm of ``config.arms`` (and A1, which every pre-training run learns against) gets one target run per seed
    (per variant and seed for arms with a generator), after the pre-training runs it starts from. Jobs are ordered
    by budget tier, then seed, then rank (the registry's budget order, or ``config.budget_order``), pre-training
    first. With ``config.shared_stage1`` each variant's stage 1 is one run, ``shared/stage1-<variant>``, trained
    against seed :data:`SHARED_STAGE1_SEED`'s A1 (planned too if that seed is not in ``seeds``).
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

    order = list(config.budget_order)

    def shared(name: str) -> bool:
        return config.shared_stage1 and PRETRAINING[name].stage == "stage1"

    def key_of(seed: int, name: str) -> str:
        """The job name of run ``name`` (a formatted pre-training or table arm name) for ``seed``."""
        head = name.rsplit("-", 1)[0] + "-{variant}" if "-" in name else name
        return f"shared/{name}" if head in PRETRAINING and shared(head) else f"seed{seed}/{name}"

    def folder(seed: int, name: str) -> Path:
        return work / key_of(seed, name)

    def add(name: str, seed: int, stage: str, values: dict[str, Any], init: str | None, priority: tuple) -> Job:
        key = key_of(seed, name)
        if key in jobs:  # a pre-training run shared by several arms: it starts before the first of them
            jobs[key].priority = min(jobs[key].priority, priority)
            return jobs[key]
        output_dir = work / key
        needs = [key_of(seed, init)] if init else []
        values = {**values, "seed": seed, "output_dir": str(output_dir)}
        jobs[key] = Job(key, stage, output_dir, values, needs, priority, seed=seed)
        return jobs[key]

    def add_a1(seed: int) -> None:
        add_arm(ARMS[BASELINE], None, seed, 0)
        if seed not in seeds:
            jobs[key_of(seed, BASELINE)].arm = None  # planned only as the shared stage 1's F: not a table row

    def add_pretraining(run: Pretraining, variant: str | None, seed: int, tier: int, rank: int | None) -> None:
        init = run.init.format(variant=variant) if run.init else None
        if run.init:
            add_pretraining(PRETRAINING[run.init], variant, seed, tier, rank)
        f_seed = SHARED_STAGE1_SEED if shared(run.name) else seed
        if f_seed != seed and key_of(f_seed, BASELINE) not in jobs:
            add_a1(f_seed)
        pre = {**base, "extractor_weights": str(folder(f_seed, BASELINE) / CHECKPOINT_NAME)}
        values = {**pre, "eval_ann_file": None, **getattr(config, run.settings)}
        if init:
            values["init"] = str(folder(seed, init))
        values.update(run.values)
        if run.new_generator:
            values.update(_generator_values(config, variant))
        job = add(
            run.name.format(variant=variant),
            f_seed,
            run.stage,
            values,
            None,
            (tier, f_seed, run.rank if rank is None else rank, _depth(run.name)),
        )
        job.needs = sorted({*job.needs, key_of(f_seed, BASELINE), *([key_of(seed, init)] if init else [])})
        job.a1_from = key_of(f_seed, BASELINE)
        if init:
            job.generator_from = key_of(seed, init)

    def add_arm(arm: Arm, variant: str | None, seed: int, variant_tier: int) -> None:
        name = f"{arm.name}-{variant}" if variant else arm.name
        tier, rank = max(variant_tier, arm.tier), arm.rank
        if order:  # the experiment's own budget order: named arms first, in that order; tiers only for variants
            tier, rank = variant_tier, order.index(name) if name in order else len(order) + arm.rank
        values = dict(target)
        init = arm.init.format(variant=variant) if arm.init else None
        if arm.init and arm.init != BASELINE:
            add_pretraining(PRETRAINING[arm.init], variant, seed, variant_tier, rank if order else None)
        if init:
            source = folder(seed, init)
            sources = {"generator": source / GENERATOR_DIR, "detector_weights": source / CHECKPOINT_NAME}
            values[arm.init_as] = str(sources.get(arm.init_as, source))
        if arm.new_generator:
            values.update(_generator_values(config, variant), **{NEW_GENERATOR_KEY: True})
        values.update(arm.values)  # last: an arm's own settings hold whatever the variant's generator says
        depth = 1 + _depth(arm.init) if arm.init in PRETRAINING else int(bool(arm.init))  # after what it starts from
        job = add(name, seed, arm.stage, values, init, (tier, seed, rank, depth))
        job.arm = name
        if init and arm.init_as == "generator":
            job.generator_from = key_of(seed, init)
        elif init:
            job.a1_from = key_of(seed, init)

    for seed in seeds:
        for arm in arms:
            if not arm.has_variant:
                add_arm(arm, None, seed, 0)
                continue
            for variant in config.variants:
                if seed in config.variant_seeds.get(variant, [seed]):
                    add_arm(arm, variant, seed, 0 if variant == config.variants[0] else 2)
    return sorted(jobs.values(), key=lambda job: job.priority)


def select_jobs(jobs: Sequence[Job], names: Sequence[str]) -> list[Job]:
    """The jobs named ``names`` and every job they need, transitively, in the order of ``jobs``."""
    by_name = {job.name: job for job in jobs}
    wanted, keep = list(names), set()
    while wanted:
        name = wanted.pop()
        if name not in keep:
            keep.add(name)
            wanted.extend(by_name[name].needs)
    return [job for job in jobs if job.name in keep]


def check_arm_names(names: Sequence[str]) -> list[str]:
    """The registry arms ``names`` stand for (``A2-lite`` -> ``A2``), in order; an unknown name raises.

    A name is a registry arm (``A1``, ``B``, ``DySample``, ``A2`` for every variant of it) or an arm with a generator
    and one variant (``A2-lite``).

    Example:
        >>> check_arm_names(["A1", "A2-lite", "A2", "DySample"])
        ['A1', 'A2', 'DySample']
    """
    heads = []
    for name in names:
        head, _, variant = name.partition("-")
        arm = ARMS.get(name) or ARMS.get(head)
        if arm is None or (arm.name != name and (not arm.has_variant or variant not in GENERATOR_VARIANTS)):
            with_variant = [f"{a}-<variant>" for a in ARMS if ARMS[a].has_variant]
            raise ValueError(
                f"arms: unknown arm {name!r}; known arms are {list(ARMS)} (those with a generator also as "
                f"{with_variant}, variant in {list(GENERATOR_VARIANTS)})."
            )
        heads.append(arm.name)
    return list(dict.fromkeys(heads))


def select_arms(jobs: Sequence[Job], names: Sequence[str]) -> list[Job]:
    """The target runs of the arms ``names``, every A1, and what they need, in the order of ``jobs``.

    ``A2`` selects every variant's A2 runs, ``A2-lite`` only the lite one's.
    """
    wanted = set(names)
    keep = [
        job.name
        for job in jobs
        if (job.arm and (job.arm in wanted or job.arm.split("-")[0] in wanted))
        or job.name.rsplit("/", 1)[-1] == BASELINE
    ]
    return select_jobs(jobs, keep)


def _depth(name: str) -> int:
    """How many pre-training runs the run ``name`` starts from (``stage1-{variant}``: 0, ``stage2-{variant}``: 1)."""
    init = PRETRAINING[name].init
    return 0 if init is None else 1 + _depth(init)
