"""The fair protocol as a command: every arm on one target schedule, over seeds, with a paired results table.

Arms (one row per seed each; see ``docs/experiment.md``):

- ``A1``: the detector as it is (nearest-neighbour FPN upsampling).
- ``B``: A1 with bilinear FPN upsampling (G has a bilinear shortcut: is "SRF" just bilinear?).
- ``A2-<v>``: the stage-1 generator (trained against the trained A1's FPN) patched into a fresh detector, stage 3.
- ``A5-<v>``: stage 1 -> stage 2 (SRF extractor, L_INT) -> stage 3 reusing the extractor (the paper's full method).
- ``A5g-<v>``: as A5, but stage 3 takes only G from stage 2 into a fresh detector.
- ``C``: the stage-2 pre-training of A5 without G and D (half-size images, L1 to F, L_DET), then stage 3 reusing it.

``<v>`` is a generator variant (``lite``, ``paper``). Every target detector (A1, B, A2, A5, A5g and C's stage 3) is
trained from one :class:`DetectorSchedule` object, applied last over everything else, so no arm can get another
schedule; :func:`summarize` checks it again in every run's saved config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import DIVERGED_NAME, EVAL_LOG_NAME, LOG_NAME, MANIFEST_NAME, is_finished, read_jsonl, write_json

__all__ = [
    "ARM_QUESTIONS",
    "METRICS",
    "DetectorSchedule",
    "ExperimentConfig",
    "Job",
    "load_experiment",
    "plan_jobs",
    "pool_paired",
    "pooled_markdown",
    "run_jobs",
    "summarize",
]

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm")
ARM_QUESTIONS = {
    "A1": "the baseline (nearest-neighbour FPN)",
    "B": "is SRF just bilinear? (bilinear FPN, nothing learned)",
    "A2": "does the stage-1 generator alone help?",
    "A5": "the paper's full method (stage 1 -> 2 -> 3, reuse M)",
    "A5g": "the paper's 'reuse G' after stage 2",
    "C": "is A5's gain from G or from the extra stage-2 pre-training?",
}
# The order arms are started in when the budget is short (EXPERIMENT.md): tier, then seed.
_TIERS = {"A1": 0, "B": 0, "A5": 0, "C": 0, "A2": 1, "A5g": 1}
_SCHEDULE_KEYS = (
    "max_iters",
    "lr",
    "warmup_iters",
    "warmup_factor",
    "milestones",
    "gamma",
    "momentum",
    "weight_decay",
    "batch_size",
    "use_flip",
    "eval_every",
)


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
        variants: generator variants of the SRF arms.
        arms: the arms to run (``A1``, ``B``, ``A2``, ``A5``, ``A5g``, ``C``).
        variant_seeds: restrict a variant to some seeds, e.g. ``{"paper": [0]}`` when the budget is short.
        variant_generator: a variant's generator settings (stage-1 trainer keys starting with ``generator_``),
            e.g. ``{"paper": {"generator_hidden_channels": 64}}``; stages 2 and 3 load G as stage 1 saved it.
        run: settings of every run that do not change what is learned (``device``, ``num_workers``, ``amp``,
            ``checkpoint_every``, ``quiet``).
    """

    train_data_root: str
    train_ann_file: str
    val_data_root: str
    val_ann_file: str
    detector: dict[str, Any]
    schedule: DetectorSchedule
    stage1: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    variants: list[str] = field(default_factory=lambda: ["lite", "paper"])
    arms: list[str] = field(default_factory=lambda: ["A1", "B", "A5", "C", "A2", "A5g"])
    variant_seeds: dict[str, list[int]] = field(default_factory=dict)
    variant_generator: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

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
    bad_arms = sorted(set(config.arms) - set(ARM_QUESTIONS))
    if bad_arms:
        raise ValueError(f"Unknown arms {bad_arms}; choose from {list(ARM_QUESTIONS)}.")
    bad_variants = sorted(set(config.variants) - {"lite", "paper"})
    if bad_variants:
        raise ValueError(f"Unknown generator variants {bad_variants}; choose from ['lite', 'paper'].")
    for variant, settings in config.variant_generator.items():
        if variant not in ("lite", "paper"):
            raise ValueError(f"variant_generator: unknown variant {variant!r}; choose from ['lite', 'paper'].")
        bad_keys = sorted(key for key in settings if not key.startswith("generator_"))
        if bad_keys:
            raise ValueError(
                f"variant_generator[{variant!r}]: {bad_keys} are not generator settings; use stage-1 trainer keys "
                "that start with 'generator_' (e.g. generator_hidden_channels)."
            )
    clash = sorted(set(_SCHEDULE_KEYS) & (set(config.detector) | set(config.run)))
    if clash:
        raise ValueError(
            f"{clash} belong to 'schedule' (one schedule for every target detector), not to 'detector' or 'run'."
        )
    return config


@dataclass
class Job:
    """One trainer run of the experiment: its stage, output folder, config values and the runs it needs first."""

    name: str
    stage: str
    output_dir: Path
    values: dict[str, Any]
    needs: list[str]
    priority: tuple[int, int, int]
    arm: str | None = None  # set for target detectors (the rows of the table)
    seed: int = 0


def plan_jobs(config: ExperimentConfig, seeds: Sequence[int], work_dir: str | os.PathLike) -> list[Job]:
    """Every run of the experiment for ``seeds``, with dependencies, in the order the budget favours."""
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
    jobs: list[Job] = []

    def add(
        name: str, seed: int, stage: str, values: dict[str, Any], needs: list[str], tier: int, arm: str | None = None
    ) -> None:
        folder = work / f"seed{seed}" / name
        jobs.append(
            Job(
                f"seed{seed}/{name}",
                stage,
                folder,
                {**values, "seed": seed, "output_dir": str(folder)},
                [f"seed{seed}/{need}" for need in needs],
                (tier, seed, len(jobs)),
                arm,
                seed,
            )
        )

    for seed in seeds:
        a1 = str(work / f"seed{seed}" / "A1" / "checkpoint.safetensors")
        pre = {**base, "extractor_weights": a1}
        stage2 = {**pre, "eval_ann_file": None, **config.stage2}
        add("A1", seed, "baseline", target, [], 0, "A1")
        if "B" in config.arms:
            add("B", seed, "baseline", {**target, "interpolation": "bilinear"}, [], 0, "B")
        for variant in config.variants:
            if seed not in config.variant_seeds.get(variant, [seed]):
                continue
            tier = 0 if variant == config.variants[0] else 2
            generator = {**config.variant_generator.get(variant, {}), "generator_variant": variant}
            srf_arms = [arm for arm in ("A2", "A5", "A5g") if arm in config.arms]
            if not srf_arms:
                continue
            add(
                f"stage1-{variant}",
                seed,
                "stage1",
                {**pre, "eval_ann_file": None, **config.stage1, **generator},
                ["A1"],
                tier,
            )
            s1 = str(work / f"seed{seed}" / f"stage1-{variant}")
            if "A5" in srf_arms or "A5g" in srf_arms:
                add(f"stage2-{variant}", seed, "stage2", {**stage2, "init": s1}, [f"stage1-{variant}"], tier)
                s2 = str(work / f"seed{seed}" / f"stage2-{variant}")
                if "A5" in srf_arms:
                    add(
                        f"A5-{variant}",
                        seed,
                        "stage3",
                        {**target, "init": s2, "reuse": "extractor"},
                        [f"stage2-{variant}"],
                        tier,
                        f"A5-{variant}",
                    )
                if "A5g" in srf_arms:
                    add(
                        f"A5g-{variant}",
                        seed,
                        "stage3",
                        {**target, "init": s2, "reuse": "generator"},
                        [f"stage2-{variant}"],
                        max(tier, _TIERS["A5g"]),
                        f"A5g-{variant}",
                    )
            if "A2" in srf_arms:
                add(
                    f"A2-{variant}",
                    seed,
                    "stage3",
                    {**target, "generator": str(Path(s1) / "generator")},
                    [f"stage1-{variant}"],
                    max(tier, _TIERS["A2"]),
                    f"A2-{variant}",
                )
        if "C" in config.arms:
            add("stage2-C", seed, "stage2", {**stage2, "use_generator": False}, ["A1"], 0)
            add(
                "C",
                seed,
                "stage3",
                {**target, "init": str(work / f"seed{seed}" / "stage2-C"), "reuse": "extractor"},
                ["stage2-C"],
                0,
                "C",
            )
    return sorted(jobs, key=lambda job: job.priority)


def _command(job: Job) -> list[str]:
    values = {key: value for key, value in job.values.items() if value is not None}
    config_file = job.output_dir / "run_config.json"
    job.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_file, {"stage": job.stage, **values})
    return [sys.executable, "-m", "srf_upsample.cli", "train", job.stage, "--config", str(config_file)]


def run_jobs(jobs: Sequence[Job], *, max_parallel: int = 1, poll_seconds: float = 2.0) -> dict[str, str]:
    """Run ``jobs`` as ``srf-upsample train`` processes, at most ``max_parallel`` at once, dependencies first.

    Finished runs are skipped and stopped runs resume from their checkpoint, so calling it again continues the
    experiment. Each run's output goes to ``<output_dir>/train.log``. Returns each job's state: ``done``,
    ``failed`` or ``skipped`` (a run it needs failed).
    """
    state = {job.name: "done" if is_finished(job.output_dir) else "pending" for job in jobs}
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    by_name = {job.name: job for job in jobs}
    while any(value in ("pending", "running") for value in state.values()):
        for name, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[name]
                ok = process.returncode == 0 and is_finished(by_name[name].output_dir)
                state[name] = "done" if ok else "failed"
                logger.info("%s %s", name, state[name])
                if not ok:
                    logger.error(
                        "%s failed (exit %s); see %s", name, process.returncode, by_name[name].output_dir / "train.log"
                    )
        for job in jobs:
            if state[job.name] != "pending":
                continue
            if any(state.get(need) in ("failed", "skipped") for need in job.needs):
                state[job.name] = "skipped"
                continue
            if len(running) >= max_parallel or any(state.get(need) != "done" for need in job.needs):
                continue
            command = _command(job)
            log = open(job.output_dir / "train.log", "a", encoding="utf-8")
            logger.info("start %s: %s", job.name, " ".join(command))
            running[job.name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
            state[job.name] = "running"
        if running:
            time.sleep(poll_seconds)
    return state


def _final_metrics(output_dir: Path, max_iters: int) -> dict[str, float] | None:
    records = [r for r in read_jsonl(output_dir / EVAL_LOG_NAME) if r["step"] == max_iters]
    return records[-1]["bbox"] if records else None


def _compute_minutes(output_dir: Path) -> dict[str, float | None]:
    """Logged time of a finished run, in minutes: training steps (data loading included) and validation.

    Steps lost to an interruption are not counted (a resumed run's logs are cut back to its checkpoint). Validation
    is ``None`` where ``eval.jsonl`` predates its ``seconds`` field; a run without validation has 0.
    """
    steps = sum(record["time"] for record in read_jsonl(output_dir / LOG_NAME)) / 60
    evals = read_jsonl(output_dir / EVAL_LOG_NAME)
    if any("seconds" not in record for record in evals):
        return {"steps": steps, "validation": None}
    return {"steps": steps, "validation": sum(record["seconds"] for record in evals) / 60}


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _paired_differences(ap: dict[str, dict[int, float]]) -> dict[str, dict[str, dict[int, float]]]:
    """Per arm and reference (A1, B; and C for A5 arms), the AP difference of each seed both finished."""
    differences: dict[str, dict[str, dict[int, float]]] = {}
    for arm, seeds in ap.items():
        # C had A5's stage-2 pre-training without G: A5 - C is what G adds.
        for reference in ("A1", "B", "C") if arm.startswith("A5-") else ("A1", "B"):
            if arm in ("A1", reference):
                continue
            paired = {s: seeds[s] - ap[reference][s] for s in sorted(seeds) if s in ap.get(reference, {})}
            if paired:
                differences.setdefault(arm, {})[reference] = paired
    return differences


def summarize(jobs: Sequence[Job], config: ExperimentConfig) -> dict[str, Any]:
    """The results table: per arm, mean +- sd over seeds of each metric, paired differences and validation curves.

    Metrics are in AP points (x100); the paired differences are to A1 and to B, per seed. Checks that every target
    run trained on the one schedule (a ValueError otherwise); arms planned but not finished are listed, and every
    finished run's logged minutes (training steps, validation) are kept per seed (``compute_minutes``).
    """
    schedule = config.schedule.values()
    per_seed: dict[str, dict[int, dict[str, float]]] = {}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    missing: dict[str, list[int]] = {}
    diverged: dict[str, dict[str, Any]] = {}
    compute: dict[int, dict[str, dict[str, float | None]]] = {}
    for job in jobs:
        finished = is_finished(job.output_dir)
        if finished and (job.output_dir / LOG_NAME).is_file():
            compute.setdefault(job.seed, {})[job.name.split("/", 1)[1]] = _compute_minutes(job.output_dir)
        if not finished and (job.output_dir / DIVERGED_NAME).is_file():
            diverged[job.name] = json.loads((job.output_dir / DIVERGED_NAME).read_text(encoding="utf-8"))
            continue
        if job.arm is None:
            continue
        if not finished:
            missing.setdefault(job.arm, []).append(job.seed)
            continue
        saved = json.loads((job.output_dir / MANIFEST_NAME).read_text(encoding="utf-8"))["config"]
        differs = {key: (saved.get(key), value) for key, value in schedule.items() if saved.get(key) != value}
        if differs:
            raise ValueError(f"{job.name} was trained on another schedule than the experiment's: {differs}.")
        metrics = _final_metrics(job.output_dir, config.schedule.max_iters)
        if metrics is None:
            continue
        per_seed.setdefault(job.arm, {})[job.seed] = {name: 100 * metrics[name] for name in METRICS}
        curves.setdefault(job.arm, {})[job.seed] = [
            (r["step"], 100 * r["bbox"]["AP"]) for r in read_jsonl(job.output_dir / EVAL_LOG_NAME)
        ]
    differences = _paired_differences({arm: {s: m["AP"] for s, m in seeds.items()} for arm, seeds in per_seed.items()})
    table: dict[str, Any] = {}
    for arm, seeds in per_seed.items():
        row: dict[str, Any] = {"seeds": sorted(seeds)}
        for name in METRICS:
            row[name] = _mean_sd([seeds[s][name] for s in sorted(seeds)])
        for reference, paired in differences.get(arm, {}).items():
            row[f"AP_minus_{reference}"] = {"per_seed": paired, "mean_sd": _mean_sd(list(paired.values()))}
        table[arm] = row
    return {
        "schedule": schedule,
        "per_seed": per_seed,
        "table": table,
        "curves": curves,
        "not_run": missing,
        "diverged": diverged,
        "compute_minutes": compute,
    }


def _arm_order(arm: str) -> tuple[int, str]:
    head = arm.split("-")[0]
    return (list(ARM_QUESTIONS).index(head) if head in ARM_QUESTIONS else 99, arm)


def _cell(mean: float, sd: float, *, one_seed: bool, sign: bool = False) -> str:
    value = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return value if one_seed else f"{value} ± {sd:.1f}"


def _paired_cells(paired: dict[str, Any]) -> tuple[str, str]:
    """A paired difference as (mean ± sd, per-seed values); one seed shows its value alone."""
    mean_sd = _cell(*paired["mean_sd"], one_seed=len(paired["per_seed"]) == 1, sign=True)
    return mean_sd, ", ".join(f"{v:+.1f}" for v in paired["per_seed"].values())


def _compute_line(compute: dict[int, dict[str, dict[str, float | None]]]) -> str:
    """One sentence: each seed's logged minutes over its finished runs (one process each; parallel runs overlap)."""
    parts = []
    for seed in sorted(compute):
        runs = compute[seed]
        steps = sum(run["steps"] for run in runs.values())
        validation = [run["validation"] for run in runs.values()]
        if None in validation:
            text = f"{steps:.0f} min of training steps (validation time not logged)"
        else:
            total = steps + sum(validation)
            text = f"{total:.0f} min ({steps:.0f} training steps + {sum(validation):.0f} validation)"
        parts.append(f"seed {seed}: {text} over {len(runs)} run{'s' if len(runs) > 1 else ''}")
    if not parts:
        return ""
    return "Compute, summed over each seed's finished runs (one process per run): " + "; ".join(parts) + "."


def markdown_table(summary: dict[str, Any]) -> str:
    """The results table as Markdown: mean +- sd over seeds, the paired AP difference to A1 and B, and A5's to C.

    An arm with one seed shows its value alone: its spread is unknown, not zero.
    """
    lines = [
        "| arm | seeds | " + " | ".join(METRICS) + " | AP - A1 (paired, mean ± sd) | AP - A1 per seed "
        "| AP - B (paired, mean ± sd) | AP - B per seed |",
        "|---|---|" + "---|" * (len(METRICS) + 4),
    ]
    for arm in sorted(summary["table"], key=_arm_order):
        row = summary["table"][arm]
        one_seed = len(row["seeds"]) == 1
        cells = [_cell(*row[name], one_seed=one_seed) for name in METRICS]
        for reference in ("A1", "B"):
            paired = row.get(f"AP_minus_{reference}")
            cells.extend(_paired_cells(paired) if paired else ("", ""))
        lines.append(f"| {arm} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    against_c = {arm: row["AP_minus_C"] for arm, row in summary["table"].items() if "AP_minus_C" in row}
    if against_c:
        paired_text = "; ".join(
            "{} {} (per seed {})".format(arm, *_paired_cells(paired))
            for arm, paired in sorted(against_c.items(), key=lambda item: _arm_order(item[0]))
        )
        lines += ["", f"AP - C, paired (what G adds to the same stage-2 pre-training): {paired_text}."]
    compute_line = _compute_line(summary.get("compute_minutes") or {})
    if compute_line:
        lines += ["", compute_line]
    not_run = summary.get("not_run") or {}
    if not_run:
        listed = "; ".join(
            f"{arm} (seeds {', '.join(map(str, seeds))})"
            for arm, seeds in sorted(not_run.items(), key=lambda item: _arm_order(item[0]))
        )
        lines += ["", f"Planned but not finished: {listed}."]
    diverged = summary.get("diverged") or {}
    if diverged:
        listed = "; ".join(
            f"{name} at step {record['step']} ({record['loss']} {record['value']})"
            for name, record in sorted(diverged.items())
        )
        lines += [
            "",
            "Diverged (the trainer stopped at a non-finite loss; kept on the one schedule, not rescued with "
            f"another lr): {listed}.",
        ]
    return "\n".join(lines)


def pool_paired(summaries: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paired AP differences pooled over several experiments (e.g. spatial folds), one pair per (experiment, seed).

    Args:
        summaries: :func:`summarize` answers (or their JSON round-trips), keyed by a label such as ``"fold 0"``.

    Returns:
        ``{arm: {"AP_minus_<ref>": {"pairs": {label: {seed: diff}}, "mean_sd": (mean, sd), "n": n,
        "above_zero": k}}}`` for the references A1, B and (for A5 arms) C. A pair needs both runs of one seed
        of one experiment; differences are taken within an experiment, never across.
    """
    pooled: dict[str, dict[str, Any]] = {}
    for label, summary in summaries.items():
        per_seed = {arm: {int(s): m["AP"] for s, m in seeds.items()} for arm, seeds in summary["per_seed"].items()}
        for arm, references in _paired_differences(per_seed).items():
            for reference, pairs in references.items():
                entry = pooled.setdefault(arm, {}).setdefault(f"AP_minus_{reference}", {"pairs": {}})
                entry["pairs"][label] = pairs
    for rows in pooled.values():
        for entry in rows.values():
            values = [diff for pairs in entry["pairs"].values() for diff in pairs.values()]
            entry.update(mean_sd=_mean_sd(values), n=len(values), above_zero=sum(diff > 0 for diff in values))
    return pooled


def pooled_markdown(pooled: dict[str, dict[str, Any]]) -> str:
    """:func:`pool_paired` as Markdown: per arm and reference, mean ± sd over all pairs, each experiment's mean."""
    labels = sorted({label for rows in pooled.values() for e in rows.values() for label in e["pairs"]})
    lines = [
        "| arm | against | pairs | mean ± sd (all pairs) | pairs above 0 | " + " | ".join(labels) + " |",
        "|---|---|---|---|---|" + "---|" * len(labels),
    ]
    for arm in sorted(pooled, key=_arm_order):
        for key in ("AP_minus_A1", "AP_minus_B", "AP_minus_C"):
            entry = pooled[arm].get(key)
            if entry is None:
                continue
            cells = []
            for label in labels:
                pairs = entry["pairs"].get(label)
                if pairs:
                    mean_sd, values = _paired_cells({"mean_sd": _mean_sd(list(pairs.values())), "per_seed": pairs})
                    cells.append(mean_sd if len(pairs) == 1 else f"{mean_sd} ({values})")
                else:
                    cells.append("")
            overall = _cell(*entry["mean_sd"], one_seed=entry["n"] == 1, sign=True)
            lines.append(
                f"| {arm} | {key.removeprefix('AP_minus_')} | {entry['n']} | {overall} | "
                f"{entry['above_zero']} of {entry['n']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Validation AP against iterations, one line per arm (mean over seeds, band = min..max); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Plotting the curves needs matplotlib: pip install matplotlib.") from error
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in sorted(summary["curves"], key=_arm_order):
        runs = summary["curves"][arm]
        steps = sorted({step for curve in runs.values() for step, _ in curve})
        rows = [dict(curve) for curve in runs.values()]
        mean = [statistics.mean(r[s] for r in rows if s in r) for s in steps]
        low = [min(r[s] for r in rows if s in r) for s in steps]
        high = [max(r[s] for r in rows if s in r) for s in steps]
        label = f"{arm} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        (line,) = ax.plot(steps, mean, marker="o", markersize=2.5, label=label)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation AP (COCO, x100)")
    ax.set_title(title or "Validation AP during training (mean over seeds; band: min-max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``srf-upsample experiment``: plan, run (resumably) and summarise the protocol; returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(prog="srf-upsample experiment", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment JSON (see docs/experiment.md)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--summarize-only", action="store_true", help="only write the table from finished runs")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and stop")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_experiment(args.config)
    except (ValueError, TypeError, FileNotFoundError, json.JSONDecodeError) as error:
        print(f"srf-upsample experiment: error: {error}", file=sys.stderr)
        return 2
    jobs = plan_jobs(config, args.seeds, args.work_dir)
    if args.dry_run:
        for job in jobs:
            print(f"{job.name:24s} {job.stage:8s} needs {job.needs}")
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.work_dir / "experiment.json", {"config": config.to_dict(), "seeds": args.seeds})
    states = {} if args.summarize_only else run_jobs(jobs, max_parallel=args.jobs)
    summary = summarize(jobs, config)
    summary["states"] = states
    write_json(args.work_dir / "results.json", summary)
    text = markdown_table(summary)
    (args.work_dir / "results.md").write_text(text + "\n", encoding="utf-8")
    if summary["curves"]:
        plot_curves(summary, args.work_dir / "curves.png")
    print(text)
    failed = [name for name, value in states.items() if value != "done"]
    if failed:
        print(f"not finished: {failed}", file=sys.stderr)
    return 1 if failed else 0
