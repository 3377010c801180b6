"""What an experiment trains, read from JSON and checked: data, detector, the one target schedule, arms, variants."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arms import ARMS, GENERATOR_VARIANTS

__all__ = [
    "DEFAULT_ARMS",
    "EXPERIMENT_RECORD",
    "GROWING_KEYS",
    "SCHEDULE_KEYS",
    "SHARED_STAGE1_SEED",
    "DetectorSchedule",
    "ExperimentConfig",
    "load_experiment",
    "widen_experiment",
    "write_experiment",
]

# The arms an experiment runs unless it names others (every arm of the registry but the later additions).
DEFAULT_ARMS = ("A1", "B", "A5", "C", "A2", "A5g")
# A work folder's record of its experiment: the config and seeds every run so far was planned from.
EXPERIMENT_RECORD = "experiment.json"
# What a later run on a work folder may add to: which arms, variants and seeds train, and how runs are run. Any other
# difference (data, detector, schedule, pre-training) is another experiment, refused on that folder.
GROWING_KEYS = ("arms", "variants", "variant_seeds", "budget_order", "run")
# With shared_stage1, the seed whose A1 the one stage-1 run of each variant learns against.
SHARED_STAGE1_SEED = 0


@dataclass(frozen=True)
class DetectorSchedule:
    """The one schedule of every target detector: iterations, lr, warm-up, milestones, batch, flips, evaluation."""

    max_iters: int
    lr: float
    milestones: list[int]
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 2
    use_flip: bool = True
    eval_every: int | None = None

    def values(self) -> dict[str, Any]:
        """The schedule as trainer config values."""
        return dataclasses.asdict(self)


# The trainer keys that belong to the schedule and nowhere else.
SCHEDULE_KEYS = tuple(f.name for f in dataclasses.fields(DetectorSchedule))


@dataclass(frozen=True)
class ExperimentConfig:
    """What an experiment trains: data, detector, the target schedule, and the pre-training stages.

    Args:
        train_data_root / train_ann_file: the COCO-format training set.
        val_data_root / val_ann_file: the validation set every target detector is evaluated on.
        detector: detector settings shared by every run (``detector``, ``backbone``, ``backbone_weights``,
            ``min_size``, ``max_size``, ``anchor_sizes``, ``detector_kwargs``, ...: trainer config keys).
        schedule: the target detectors' :class:`DetectorSchedule`.
        stage1: SRF-GAN settings (trainer config keys: ``max_iters``, ``lr``, ``milestones``, ...).
        stage2: SRF-extractor settings, shared by A5/A5g and C's pre-training (``max_iters``, ``lr``,
            ``init_from_extractor``, ``anchor_scale``, ...).
        variants: generator variants of the SRF arms (``srf_upsample.upsample.VARIANTS``).
        arms: the arms to run (the names of :data:`~srf_upsample.train.experiment.arms.ARMS`).
        variant_seeds: restrict a variant to some seeds, e.g. ``{"paper": [0]}`` when the budget is short.
        variant_generator: a variant's generator settings (stage-1 trainer keys starting with ``generator_``),
            e.g. ``{"paper": {"generator_hidden_channels": 64}}``; stages 2 and 3 load G as stage 1 saved it.
        run: settings of every run that do not change what is learned (``device``, ``num_workers``, ``amp``,
            ``checkpoint_every``, ``quiet``).
        shared_stage1: one stage-1 run per variant (``shared/stage1-<variant>``), trained against the A1 of seed
            :data:`SHARED_STAGE1_SEED`, serves every seed's A2, A5 and A5g (the paper's reuse of one G); ``False``:
            one stage-1 run per seed. ``stage1`` is passed to the trainer as it is (a long schedule with a plateau
            stop goes there).
        budget_order: the order runs start in, as table arm names (``["A1", "B", "A2-lite", ...]``): per seed,
            every named arm in this order (pre-training just before its first user), other arms after them, the
            paper variant's last as before. Empty: the registry's tiers and ranks.
    """

    train_data_root: str
    train_ann_file: str
    val_data_root: str
    val_ann_file: str
    detector: dict[str, Any]
    schedule: DetectorSchedule
    stage1: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    variants: list[str] = field(default_factory=lambda: list(GENERATOR_VARIANTS))
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    variant_seeds: dict[str, list[int]] = field(default_factory=dict)
    variant_generator: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    shared_stage1: bool = False
    budget_order: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON values."""
        return dataclasses.asdict(self)


def load_experiment(source: str | os.PathLike | dict[str, Any]) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a JSON file or a dict, checking arms and variants."""
    values = dict(source) if isinstance(source, dict) else json.loads(Path(source).read_text(encoding="utf-8"))
    values.pop("_comment", None)
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"Unknown experiment keys {unknown}; valid keys: {sorted(names)}.")
    schedule = values.get("schedule")
    if not isinstance(schedule, dict):
        raise ValueError("The experiment needs a 'schedule' object (max_iters, lr, milestones, ...).")
    config = ExperimentConfig(**{**values, "schedule": DetectorSchedule(**schedule)})
    bad_arms = sorted(set(config.arms) - set(ARMS))
    if bad_arms:
        raise ValueError(f"Unknown arms {bad_arms}; choose from {list(ARMS)}.")
    variants = list(GENERATOR_VARIANTS)
    bad_variants = sorted(set(config.variants) - set(variants))
    if bad_variants:
        raise ValueError(f"Unknown generator variants {bad_variants}; choose from {variants}.")
    for variant, settings in config.variant_generator.items():
        if variant not in variants:
            raise ValueError(f"variant_generator: unknown variant {variant!r}; choose from {variants}.")
        bad_keys = sorted(key for key in settings if not key.startswith("generator_"))
        if bad_keys:
            raise ValueError(
                f"variant_generator[{variant!r}]: {bad_keys} are not generator settings; use stage-1 trainer keys "
                "that start with 'generator_' (e.g. generator_hidden_channels)."
            )
    from .arms import find_arm

    for name in config.budget_order:
        find_arm(name)  # a clear error for an unknown table arm
    clash = sorted(set(SCHEDULE_KEYS) & (set(config.detector) | set(config.run)))
    if clash:
        raise ValueError(
            f"{clash} belong to 'schedule' (one schedule for every target detector), not to 'detector' or 'run'."
        )
    return config


def _plain(values: Any) -> Any:
    return json.loads(json.dumps(values))


def widen_experiment(
    work_dir: str | os.PathLike, config: ExperimentConfig, seeds: list[int]
) -> tuple[ExperimentConfig, list[int]]:
    """The experiment of ``work_dir`` grown by ``config`` and ``seeds``: arms, variants and seeds of both, in order.

    Nothing is written (:func:`write_experiment` does). A folder without :data:`EXPERIMENT_RECORD` takes ``config``
    and ``seeds`` as they are.

    Raises:
        ValueError: ``work_dir`` holds another experiment: its record differs from ``config`` outside
            :data:`GROWING_KEYS`.
    """
    path = Path(work_dir) / EXPERIMENT_RECORD
    if not path.is_file():
        return config, list(seeds)
    record = json.loads(path.read_text(encoding="utf-8"))
    earlier = load_experiment(record["config"]).to_dict()
    now = config.to_dict()
    differs = sorted(key for key in now if key not in GROWING_KEYS and _plain(now[key]) != _plain(earlier[key]))
    if differs:
        raise ValueError(
            f"work_dir {str(work_dir)!r} holds another experiment: its {EXPERIMENT_RECORD} differs in {differs} "
            f"(e.g. {differs[0]}={earlier[differs[0]]!r}, now {now[differs[0]]!r}); continue it with the config it "
            "was made with, or choose another --work-dir."
        )
    grown = dict(now)
    for key in ("arms", "variants"):
        grown[key] = list(dict.fromkeys([*earlier[key], *now[key]]))
    grown["variant_seeds"] = {**earlier["variant_seeds"], **now["variant_seeds"]}
    grown["budget_order"] = now["budget_order"] or earlier["budget_order"]
    grown["schedule"] = config.schedule
    return ExperimentConfig(**grown), list(dict.fromkeys([*record.get("seeds", []), *seeds]))


def write_experiment(work_dir: str | os.PathLike, config: ExperimentConfig, seeds: list[int]) -> Path:
    """Write ``work_dir``'s :data:`EXPERIMENT_RECORD` (the config and seeds); returns its path."""
    path = Path(work_dir) / EXPERIMENT_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config.to_dict(), "seeds": list(seeds)}, indent=2) + "\n", encoding="utf-8")
    return path
