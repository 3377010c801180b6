"""A report's paired differences as Markdown: pooled table, where the uncertainty comes from, per fold, the reading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .intervals import EXTRA_SEEDS, METHODS, POWER
from .report import HEADLINE_QUESTIONS

__all__ = ["ARM_DETAILS", "difference_phrase", "readout_markdown", "readout_reading"]

# What an arm's reading adds to its registry question, with the experiment's iterations filled in (``{schedule}``:
# the target schedule's, ``{stage2}``: stage 2's).
ARM_DETAILS = {
    "A1+": (
        "A1+ is A1's whole trained detector trained {schedule} more iterations at full size; C had {stage2} stage-2 "
        "iterations on half-size images, then {schedule} stage-3 iterations with new detection heads, so A1+ - C "
        "compares two kinds of extra training, not equal amounts of it"
    ),
}


def _percent(level: float) -> str:
    return f"{100 * level:g} %"


def _interval(stats: Mapping[str, Any], sign: int = 1) -> tuple[float, float] | None:
    if stats.get("interval") is None:
        return None
    low, high = sorted(sign * end for end in stats["interval"])
    return low, high


def _no_interval_reason(stats: Mapping[str, Any]) -> str:
    if stats["n"] == 1:
        return "one pair: neither its seed noise nor its image noise is known"
    return "one seed per fold in one fold: its seed noise is unknown"


def difference_phrase(stats: Mapping[str, Any], *, sign: int = 1, above: str = "above", below: str = "below") -> str:
    """One difference read off its interval, claiming no more than the interval allows.

    An interval that excludes 0 reads "``above`` / ``below`` by x AP [lo, hi]"; one that holds 0 reads "no
    difference larger than y AP either way" (y its farther end); without an interval the mean and why there is
    none. ``sign`` -1 turns the difference around. Ends with the pairs, the interval's method where it is not the
    image bootstrap + seed variance, and the effect found at 80 % power.

    Example:
        >>> stats = {"n": 12, "mean": 0.1, "interval": (-0.7, 1.0), "method": "images+seeds", "mde": 1.2}
        >>> difference_phrase(stats)
        'no difference larger than 1.0 AP either way (+0.1 [-0.7, +1.0]; 12 pairs; found at 80 % power: 1.2 AP)'
    """
    mean, interval = sign * stats["mean"], _interval(stats, sign)
    if interval is None:
        pairs = f"{stats['n']} pair{'s' if stats['n'] > 1 else ''}"
        return f"{mean:+.1f} AP over {pairs}, no interval ({_no_interval_reason(stats)})"
    low, high = interval
    notes = [f"{stats['n']} pairs"]
    if stats["method"] != "images+seeds":
        notes.append(METHODS[stats["method"]])
    notes.append(f"found at {100 * POWER:g} % power: {stats['mde']:.1f} AP")
    if low > 0 or high < 0:
        return f"{above if mean > 0 else below} by {abs(mean):.1f} AP [{low:+.1f}, {high:+.1f}] ({'; '.join(notes)})"
    notes.insert(0, f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]")
    return f"no difference larger than {max(-low, high):.1f} AP either way ({'; '.join(notes)})"


def _find(report: Mapping[str, Any], arm: str, reference: str) -> Mapping[str, Any] | None:
    return next((e for e in report["differences"] if e["arm"] == arm and e["reference"] == reference), None)


def readout_reading(report: Mapping[str, Any]) -> list[str]:
    """The reading: the headline questions per generator variant, then one sentence per arm's question.

    Each difference is read off its pooled interval by :func:`difference_phrase`.

    Example:
        >>> stats = {"n": 12, "mean": 1.2, "interval": (0.2, 2.3), "method": "images+seeds", "mde": 1.5}
        >>> entry = {"arm": "C", "reference": "A1", "question": "is it G?", "contrast": None, "pooled": stats}
        >>> readout_reading({"folds": [{"schedule_iters": 400, "stage2_iters": 150}], "differences": [entry]})
        ['- **C** (is it G?): against A1, above by 1.2 AP [+0.2, +2.3] (12 pairs; found at 80 % power: 1.5 AP).']
    """
    lines = []
    variants = sorted({e["arm"].partition("-")[2] for e in report["differences"] if "-" in e["arm"]})
    for variant in variants:
        for what, arm, reference, sign in HEADLINE_QUESTIONS:
            entry = _find(report, arm.format(variant=variant), reference.format(variant=variant))
            if entry is not None:
                phrase = difference_phrase(entry["pooled"], sign=sign, above="SRF helps", below="SRF hurts")
                lines.append(f"- {what}, {variant} generator: {phrase}.")
    folds = report["folds"]
    iterations = {"schedule": folds[0]["schedule_iters"], "stage2": folds[0]["stage2_iters"]}
    arms = list(dict.fromkeys(e["arm"] for e in report["differences"]))
    for arm in arms:
        entries = [e for e in report["differences"] if e["arm"] == arm]
        parts = []
        for entry in entries:
            contrast = f" ({entry['contrast']})" if entry["contrast"] else ""
            parts.append(f"against {entry['reference']}{contrast}, {difference_phrase(entry['pooled'])}")
        detail = ARM_DETAILS.get(arm.partition("-")[0], "")
        detail = f" {detail.format(**iterations)}." if detail else ""
        lines.append(f"- **{arm}** ({entries[0]['question']}): {'; '.join(parts)}.{detail}")
    return lines


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


def _interval_cell(stats: Mapping[str, Any]) -> str:
    interval = stats.get("interval")
    return f"[{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval else "n/a"


def _fold_cell(pairs: Mapping[str, float] | None) -> str:
    if not pairs:
        return ""
    values = list(pairs.values())
    mean = sum(values) / len(values)
    return f"{mean:+.1f}" if len(values) == 1 else f"{mean:+.1f} ({', '.join(f'{v:+.1f}' for v in values)})"


def _statistics_cells(stats: Mapping[str, Any]) -> list[str]:
    p_value, mde = stats["sign_test_p"], stats.get("mde")
    return [
        _interval_cell(stats),
        METHODS[stats["method"]],
        f"{stats['above_zero']} of {stats['n']}",
        "n/a" if p_value is None else f"{p_value:.2f}",
        "n/a" if mde is None else f"{mde:.1f}",
    ]


def _half(value: float | None) -> str:
    return "n/a" if value is None else f"±{value:.1f}"


def _se(variance: float | None) -> str:
    return "n/a" if variance is None else f"{variance**0.5:.2f}"


def readout_markdown(report: Mapping[str, Any], *, forest: str | None = None) -> tuple[str, list[str]]:
    """The report as Markdown, and its reading's lines (:func:`readout_reading`).

    Args:
        report: what :func:`~srf_upsample.train.experiment.report_experiment` returns (``results.json``).
        forest: the forest plot's file name beside ``results.md``, linked under the reading.

    Example:
        >>> from srf_upsample.train.experiment.readout import paired_folds
        >>> folds = {"north": {"ap": {"A1": {0: 20.0, 1: 21.0}, "B": {0: 20.5, 1: 22.0}}, "resampled": {}}}
        >>> fold = {"label": "north", "path": "runs/north", "seeds": [0, 1], "images": None, "detections": []}
        >>> fold.update(not_run={}, diverged=[], lineage_excluded={}, schedule_iters=400, stage2_iters=150)
        >>> report = {"level": 0.95, "replicates": 1000, "seed": 0, "folds": [fold]}
        >>> text, reading = readout_markdown({**report, "differences": paired_folds(folds)})
        >>> [line for line in text.splitlines() if line.startswith("| B |")][0].split(" | ")[:6]
        ['| B', 'A1', '2', '+0.8 ± 0.4', '[-2.4, +3.9]', 't over seeds (no image noise: no detections)']
    """
    level, labels = _percent(report["level"]), [fold["label"] for fold in report["folds"]]
    sources = "; ".join(
        f"{fold['label']}: `{fold['path']}`, seeds {fold['seeds']}, "
        f"{fold['images'] if fold['images'] is not None else 'unknown'} validation images, per-image detections "
        f"kept for {len(fold['detections'])} arms"
        for fold in report["folds"]
    )
    lines = [
        "Paired AP differences (points), written by `srf_upsample.train.experiment.report_experiment` "
        f"(replicates={report['replicates']}, level={report['level']}, seed={report['seed']}) from the finished runs "
        f"of {len(labels)} fold(s) ({sources}). A pair is two "
        "runs of one fold and seed; its difference is taken within the fold, then pooled. Per difference: the mean "
        f'± sd over all pairs; a {level} interval and how it was computed ("t: image bootstrap + seed variance": '
        f"{report['replicates']} resamples of each fold's validation images give the image part, the spread of the "
        'seeds within each fold the seed part; "t over fold means": one seed per fold, so the fold means\' spread '
        "holds both); pairs above 0 and the two-sided sign test's p; the smallest true difference a two-sided test "
        f"at {100 * (1 - report['level']):g} % finds with {100 * POWER:g} % power, from the reported interval's own "
        "spread (t quantiles at its degrees of freedom); each fold's mean (per-seed values). The method: "
        'docs/experiment.md, "How the report computes intervals".',
        "",
        f"| arm | against | pairs | mean ± sd | {level} interval | interval method | pairs above 0 | sign test p "
        f"| effect found at {100 * POWER:g} % power | " + " | ".join(labels) + " |",
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(labels),
    ]
    for entry in report["differences"]:
        pooled = entry["pooled"]
        mean_sd = f"{pooled['mean']:+.1f}" if pooled["n"] == 1 else f"{pooled['mean']:+.1f} ± {pooled['sd']:.1f}"
        cells = [entry["arm"], entry["reference"], str(pooled["n"]), mean_sd, *_statistics_cells(pooled)]
        cells += [_fold_cell(entry["pairs"].get(label)) for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Where the uncertainty comes from: the standard error of the pooled mean from the validation images and from "
        f"training (seeds), and the interval's half-width now, with {EXTRA_SEEDS} more seeds per fold, and with twice "
        "the validation images per fold (each from the estimated parts; the method's t quantile at the new degrees "
        "of freedom).",
        "",
        f"| arm | against | SE images | SE seeds | {level} interval now | {EXTRA_SEEDS} more seeds per fold "
        "| twice the validation images |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in report["differences"]:
        pooled = entry["pooled"]
        interval = pooled.get("interval")
        now = None if interval is None else (interval[1] - interval[0]) / 2
        projection = pooled.get("projection") or {}
        cells = [entry["arm"], entry["reference"], _se(pooled["variance"]["images"]), _se(pooled["variance"]["seeds"])]
        cells += [_half(now), _half(projection.get("more_seeds")), _half(projection.get("twice_images"))]
        lines.append("| " + " | ".join(cells) + " |")
    if len(labels) > 1:
        lines += [
            "",
            "Per fold (the same statistics within each fold alone):",
            "",
            f"| arm | against | fold | pairs | mean | {level} interval | interval method | pairs above 0 | sign test p "
            f"| effect found at {100 * POWER:g} % power |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in report["differences"]:
            for label, stats in entry["folds"].items():
                cells = [entry["arm"], entry["reference"], label, str(stats["n"]), _signed(stats["mean"])]
                lines.append("| " + " | ".join(cells + _statistics_cells(stats)) + " |")
    notes = _fold_notes(report["folds"])
    reading = readout_reading(report)
    lines += [*notes, "", "The reading (pooled over folds):", "", *reading]
    if forest:
        lines += [
            "",
            f"![Paired AP differences: pooled interval, per-fold means, effect found at 80 % power]({forest})",
        ]
    return "\n".join(lines), reading


def _fold_notes(folds: list[Mapping[str, Any]]) -> list[str]:
    """Lines on what each fold left out: runs planned but not finished, diverged, or of another lineage."""
    lines = []
    for fold in folds:
        parts = []
        if fold["not_run"]:
            parts.append("not finished: " + ", ".join(f"{a} (seeds {s})" for a, s in sorted(fold["not_run"].items())))
        if fold["diverged"]:
            parts.append("diverged: " + ", ".join(fold["diverged"]))
        if fold["lineage_excluded"]:
            parts.append("left out (another lineage): " + ", ".join(sorted(fold["lineage_excluded"])))
        if parts:
            lines.append(f"- {fold['label']}: {'; '.join(parts)}.")
    return ["", "Runs outside the pairs:", "", *lines] if lines else []
