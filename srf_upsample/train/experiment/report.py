"""Write an experiment's summary for readers: the Markdown results tables and the validation-curve picture."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from ..plots import new_figure, save_figure
from .arms import ARMS, arm_order, find_arm
from .stats import mean_sd, pairs_to_find, references
from .summary import METRICS

__all__ = [
    "HEADLINE_QUESTIONS",
    "PAIRS_NEEDED",
    "TARGET_EFFECT",
    "markdown_table",
    "plot_curves",
    "pooled_markdown",
    "pooled_reading",
]


def _cell(mean: float, sd: float, *, one_seed: bool, sign: bool = False) -> str:
    value = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return value if one_seed else f"{value} ± {sd:.1f}"


def _paired_cells(paired: dict[str, Any]) -> tuple[str, str]:
    """A paired difference as (mean ± sd, per-seed values); one seed shows its value alone."""
    mean_sd_text = _cell(*paired["mean_sd"], one_seed=len(paired["per_seed"]) == 1, sign=True)
    return mean_sd_text, ", ".join(f"{v:+.1f}" for v in paired["per_seed"].values())


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


def _contrast_lines(table: dict[str, Any]) -> list[str]:
    """One sentence per contrast of the registry (an arm against a reference beyond A1 and B, e.g. A5 - C)."""
    lines = []
    contrasts = [(arm, reference, text) for arm in ARMS.values() for reference, text in arm.contrast.items()]
    for owner, template, text in contrasts:
        cells = []
        for arm in sorted(table, key=arm_order):
            row, variant = find_arm(arm)
            paired = table[arm].get(f"AP_minus_{template.format(variant=variant)}")
            if row is owner and paired:
                cells.append("{} {} (per seed {})".format(arm, *_paired_cells(paired)))
        if cells:
            label = template.replace("{variant}", "<variant>")
            lines += ["", f"AP - {label}, paired ({text}): {'; '.join(cells)}."]
    return lines


def markdown_table(summary: dict[str, Any]) -> str:
    """The results table as Markdown: mean +- sd over seeds, the paired AP difference to A1 and B, and A5's to C.

    An arm with one seed shows its value alone: its spread is unknown, not zero.
    """
    lines = [
        "| arm | seeds | " + " | ".join(METRICS) + " | AP - A1 (paired, mean ± sd) | AP - A1 per seed "
        "| AP - B (paired, mean ± sd) | AP - B per seed |",
        "|---|---|" + "---|" * (len(METRICS) + 4),
    ]
    for arm in sorted(summary["table"], key=arm_order):
        row = summary["table"][arm]
        one_seed = len(row["seeds"]) == 1
        cells = [_cell(*row[name], one_seed=one_seed) for name in METRICS]
        for reference in ("A1", "B"):
            paired = row.get(f"AP_minus_{reference}")
            cells.extend(_paired_cells(paired) if paired else ("", ""))
        lines.append(f"| {arm} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += _contrast_lines(summary["table"])
    if summary.get("shared_stage1"):
        lines += [
            "",
            "Generators: one stage-1 run per variant for this fold ("
            + ", ".join(f"`{name}`" for name in summary["shared_stage1"])
            + "), trained against seed 0's A1, serves every seed's A2, A5 and A5g (the paper's own reuse of one G); "
            "each seed's stage 2 and target runs descend from that seed's A1.",
        ]
    excluded = summary.get("lineage_excluded") or {}
    if excluded:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(excluded.items()))
        lines += ["", f"Left out (another lineage than the table's A1, never paired): {listed}."]
    compute_line = _compute_line(summary.get("compute_minutes") or {})
    if compute_line:
        lines += ["", compute_line]
    not_run = summary.get("not_run") or {}
    if not_run:
        listed = "; ".join(
            f"{arm} (seeds {', '.join(map(str, seeds))})"
            for arm, seeds in sorted(not_run.items(), key=lambda item: arm_order(item[0]))
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


def _pooled_cells(entry: dict[str, Any]) -> list[str]:
    """The statistics of one pooled difference: mean ± sd, interval, signs, sign test, smallest detectable effect."""
    interval = entry.get("interval")
    p_value, effect = entry.get("sign_test_p"), entry.get("mde_80")
    return [
        _cell(*entry["mean_sd"], one_seed=entry["n"] == 1, sign=True),
        f"[{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval else "n/a",
        f"{entry['above_zero']} of {entry['n']}",
        f"{p_value:.2f}" if p_value is not None else "n/a",
        f"{effect:.1f}" if effect is not None else "n/a",
    ]


def pooled_markdown(pooled: dict[str, dict[str, Any]]) -> str:
    """:func:`pool_paired` as Markdown: per arm and reference, the pooled statistics and each experiment's mean.

    Columns: mean ± sd over all pairs, the 95 % paired-bootstrap interval (tiles and seeds resampled; "n/a" where
    the runs kept no per-image detections), pairs above 0 with the two-sided sign test's p, the smallest effect a
    paired t-test at 5 % finds with 80 % power given the pairs' sd, and each experiment's mean ± sd (per seed).
    """
    labels = sorted({label for rows in pooled.values() for e in rows.values() for label in e["pairs"]})
    lines = [
        "| arm | against | pairs | mean ± sd (all pairs) | 95 % interval (bootstrap: tiles, seeds) | pairs above 0 "
        "| sign test p | effect found at 80 % power | " + " | ".join(labels) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(labels),
    ]
    for arm in sorted(pooled, key=arm_order):
        for reference in references(arm):
            entry = pooled[arm].get(f"AP_minus_{reference}")
            if entry is None:
                continue
            cells = []
            for label in labels:
                pairs = entry["pairs"].get(label)
                if pairs:
                    mean_sd_text, values = _paired_cells({"mean_sd": mean_sd(list(pairs.values())), "per_seed": pairs})
                    cells.append(mean_sd_text if len(pairs) == 1 else f"{mean_sd_text} ({values})")
                else:
                    cells.append("")
            statistics_cells = _pooled_cells(entry)
            lines.append(f"| {arm} | {reference} | {entry['n']} | " + " | ".join(statistics_cells + cells) + " |")
    return "\n".join(lines)


# The questions the headline answers: (what, arm, reference, sign). ``sign`` -1 turns ``arm - reference`` around so
# that above 0 always means "SRF's generator (or method) is better"; ``{variant}`` is the generator variant.
HEADLINE_QUESTIONS = (
    ("G alone (A2 - B: the stage-1 generator against bilinear)", "A2-{variant}", "B", 1),
    (
        "G against its end-to-end twin (A2 - E2E: does the GAN pre-training matter?)",
        "E2E-{variant}",
        "A2-{variant}",
        -1,
    ),
    ("G against DySample (A2 - DySample: against the light learned peer)", "A2-{variant}", "DySample", 1),
    ("the full method against its control (A5 - C: what G adds to stage 2)", "A5-{variant}", "C", 1),
)
# The design's pairs per difference: 4 spatial folds x 3 seeds.
PAIRS_NEEDED = 12
# The effect the issue asks the experiment to see (AP points); the reading says how many pairs that takes.
TARGET_EFFECT = 0.3


def pooled_reading(pooled: dict[str, dict[str, Any]], *, variant: str, pairs_needed: int = PAIRS_NEEDED) -> str:
    """The headline of a pooled experiment: one line per :data:`HEADLINE_QUESTIONS` entry, read off its interval.

    A difference whose 95 % interval excludes 0 reads "SRF helps by x [lo, hi]" (or "hurts"); one whose interval
    holds 0 reads "no effect larger than y", y the interval's farther end. Fewer than ``pairs_needed`` pairs, or no
    interval (no per-image detections), give no reading, and the line says why. Each line with an sd ends with
    the pairs a paired t-test needs at that sd to find :data:`TARGET_EFFECT` with 80 % power.
    """
    lines = []
    for what, arm, reference, sign in HEADLINE_QUESTIONS:
        arm, reference = arm.format(variant=variant), reference.format(variant=variant)
        entry = pooled.get(arm, {}).get(f"AP_minus_{reference}")
        pairs = entry["n"] if entry else 0
        interval = entry.get("interval") if entry else None
        power = ""
        if entry and entry["n"] > 1 and entry["mean_sd"][1] > 0:
            sd = entry["mean_sd"][1]
            power = f" At this sd ({sd:.1f}), {TARGET_EFFECT} AP takes {pairs_to_find(TARGET_EFFECT, sd)} pairs."
        if pairs < pairs_needed or interval is None:
            missing = f"{pairs} of the {pairs_needed} pairs" if pairs < pairs_needed else "no interval over tiles"
            lines.append(f"- {what}: no reading yet ({missing}).{power}")
            continue
        mean = sign * entry["mean_sd"][0]
        low, high = sorted((sign * interval[0], sign * interval[1]))
        if low > 0 or high < 0:
            verb = "helps" if mean > 0 else "hurts"
            lines.append(f"- {what}: SRF {verb} by {abs(mean):.1f} AP [{low:+.1f}, {high:+.1f}], {pairs} pairs.{power}")
        else:
            bound = max(-low, high)
            lines.append(
                f"- {what}: no effect larger than {bound:.1f} AP either way ({mean:+.1f} [{low:+.1f}, {high:+.1f}], "
                f"{pairs} pairs).{power}"
            )
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Validation AP against iterations, one line per arm (mean over seeds, band = min..max); needs matplotlib."""
    fig, ax = new_figure((7, 4.2))
    for arm in sorted(summary["curves"], key=arm_order):
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
    return save_figure(fig, path)
