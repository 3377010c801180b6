"""The forest plot of a report: per paired difference its pooled interval, its folds' means, its detectable effect."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_forest"]


def plot_forest(report: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Draw one row per difference of ``report`` (``results.json``) into a PNG at ``path``; needs matplotlib.

    Each row: the pooled mean (black dot) and its interval (line), each fold's mean (coloured diamonds, one colour
    per fold), the smallest effect found at 80 % power as grey ticks at ± that effect around 0, and the zero line.

    Example:
        >>> import tempfile
        >>> stats = {"mean": 0.4, "interval": [-0.2, 1.0], "mde": 0.9}
        >>> entry = {"arm": "B", "reference": "A1", "pooled": stats, "pairs": {"fold 0": {"0": 0.3, "1": 0.5}}}
        >>> report = {"level": 0.95, "folds": [{"label": "fold 0"}], "differences": [entry]}
        >>> plot_forest(report, Path(tempfile.mkdtemp()) / "forest.png").suffix
        '.png'
    """
    try:  # a Figure of its own, no pyplot: the process's backend and figures stay as they are
        from matplotlib import colormaps
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("Plotting the forest needs matplotlib: pip install matplotlib.") from error
    entries = list(report["differences"])
    labels = [fold["label"] for fold in report["folds"]]
    colours = colormaps["tab10"]
    fig = Figure(figsize=(8, 0.9 + 0.32 * max(len(entries), 1)))
    ax = fig.subplots()
    rows = range(len(entries))[::-1]  # the first difference on top
    for row, entry in zip(rows, entries, strict=True):
        pooled = entry["pooled"]
        for index, label in enumerate(labels):
            pairs = entry["pairs"].get(label)
            if pairs:
                mean = sum(pairs.values()) / len(pairs)
                offset = 0.25 * (index - (len(labels) - 1) / 2) / max(len(labels), 1)
                ax.plot(mean, row + offset, "D", color=colours(index % 10), markersize=3.5, alpha=0.85)
        if pooled.get("interval"):
            ax.plot(pooled["interval"], [row, row], color="black", linewidth=1.6)
        ax.plot(pooled["mean"], row, "o", color="black", markersize=4.5)
        if pooled.get("mde"):
            ax.plot([-pooled["mde"], pooled["mde"]], [row, row], "|", color="0.55", markersize=11)
    ax.axvline(0.0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_yticks(list(rows), [f"{e['arm']} - {e['reference']}" for e in entries], fontsize=8)
    ax.set_ylim(-0.7, len(entries) - 0.3)
    ax.set_xlabel("paired AP difference (points)")
    for index, label in enumerate(labels):  # legend entries only
        ax.plot([], [], "D", color=colours(index % 10), markersize=3.5, label=f"{label} mean")
    ax.plot([], [], "|", color="0.55", markersize=11, label="± effect found at 80 % power")
    ax.plot([], [], "o-", color="black", markersize=4.5, label=f"pooled mean, {100 * report['level']:g} % interval")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or "Paired AP differences over folds", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
