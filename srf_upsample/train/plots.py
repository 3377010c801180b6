"""Pictures of a run's curves, drawn from its run folder with matplotlib (the ``[train]`` extra)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .run_folder import EVAL_LOG_NAME, read_jsonl

__all__ = ["new_figure", "plot_generator_curves", "save_figure"]


def new_figure(figsize: tuple[float, float] = (7, 4.2)):
    """A matplotlib ``(Figure, Axes)`` for a file; a missing matplotlib raises naming the pip command.

    The figure is made without pyplot, so the caller's matplotlib backend and open figures are left as they are.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("Plotting the curves needs matplotlib: pip install matplotlib.") from error
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (PNG, 120 dpi; parent folders created) and return ``path``."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_generator_curves(runs: Mapping[str, str | os.PathLike], path: str | os.PathLike, title: str = "") -> Path:
    """G's held-out mean L1 against iterations from each run's ``eval.jsonl``; needs matplotlib.

    Args:
        runs: label -> run folder (stage 1 or stage 2 with eval_ann_file).
        path: the picture to write (PNG).
        title: the plot's title.

    Returns:
        ``path``. Dashed lines: the fixed interpolations' L1 on the same images (from the first record holding them).
    """
    fig, ax = new_figure((7, 4.2))
    drawn_interpolations = False
    for label, folder in runs.items():
        log = Path(folder) / EVAL_LOG_NAME
        if not log.is_file():
            raise FileNotFoundError(f"run {label!r}: {str(log)!r} does not exist; pass run folders with an eval.jsonl.")
        records = [r for r in read_jsonl(log) if "generator_l1_mean" in r]
        if not records:
            raise ValueError(f"run {label!r}: {str(log)!r} holds no generator_l1_mean record (no G evaluation).")
        ax.plot(
            [r["step"] for r in records],
            [r["generator_l1_mean"] for r in records],
            marker="o",
            markersize=2.5,
            label=label,
        )
        baseline = next((r["interpolation_l1_mean"] for r in records if "interpolation_l1_mean" in r), None)
        if baseline and not drawn_interpolations:
            for mode, value in baseline.items():
                ax.axhline(value, linestyle="--", linewidth=1, color="grey", alpha=0.8)
                ax.annotate(mode, (0, value), fontsize=7, color="grey", xycoords=("axes fraction", "data"))
            drawn_interpolations = True
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out L1 to F(I_hr), mean over levels")
    ax.set_title(title or "G on held-out images (Eq. 2's L1; dashed: fixed interpolations)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
