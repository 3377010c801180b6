"""Draw the TensorBoard scalars of a run (``srf-upsample train ... --tensorboard``) from its event files.

The picture in docs/training.md ("TensorBoard") was made by this script from a real run; the exact commands are in
that section. Panels: the training losses, the learning rate, the detector's validation AP (``eval/bbox/...``,
``eval/segm/...``) and, for stages 1 and 2, G's held-out L1 next to the fixed interpolations'. Panels without data
are left out.

Usage: ``python examples/tensorboard_curves.py RUN_DIR --out curves.png`` (RUN_DIR: the run's ``--output-dir``, its
``tensorboard/<stage>`` folder, or any folder with event files).

Needs ``pip install 'srf_upsample[train,tensorboard]'`` (matplotlib, tensorboard).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

AP_NAMES = ("AP", "AP50", "AP75")  # the AP curves drawn (APs/APm/APl are in the event file too)


def event_folder(path: Path) -> Path:
    """The folder holding the event files: ``path`` itself, or the one ``tensorboard/<stage>`` below a run folder."""
    if any(path.glob("events.out.tfevents.*")):
        return path
    found = sorted({file.parent for file in path.glob("tensorboard/*/events.out.tfevents.*")})
    if len(found) != 1:
        raise SystemExit(f"{path}: expected event files in it or in one tensorboard/<stage> below it, found {found}.")
    return found[0]


def read_scalars(folder: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Tag -> (steps, values), as TensorBoard shows them (points purged by a resume left out)."""
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        scalars[tag] = ([event.step for event in events], [event.value for event in events])
    return scalars


def panels(scalars: dict[str, tuple[list[int], list[float]]]) -> list[tuple[str, str, list[str]]]:
    """(title, y label, tags) for each panel that has data."""
    losses = sorted(tag for tag in scalars if tag.startswith("train/loss"))
    ap = [tag for tag in sorted(scalars) if tag.startswith("eval/") and tag.rsplit("/", 1)[-1] in AP_NAMES]
    fidelity = sorted(tag for tag in scalars if tag.startswith(("eval/generator_l1/", "eval/interpolation_l1/")))
    chosen = [
        ("training losses", "loss", losses),
        ("learning rate", "lr", [tag for tag in ("train/lr",) if tag in scalars]),
        ("validation AP (COCO, pycocotools)", "AP", ap),
        ("G's held-out L1 (lower is better)", "L1", fidelity),
    ]
    return [panel for panel in chosen if panel[2]]


def draw(scalars: dict[str, tuple[list[int], list[float]]], title: str, out: Path) -> None:
    """One row of panels, saved to ``out`` (small: 100 dpi PNG)."""
    chosen = panels(scalars)
    if not chosen:
        raise SystemExit(f"no train/ or eval/ scalars to draw ({sorted(scalars)}).")
    figure, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.0), squeeze=False)
    for axis, (panel_title, label, tags) in zip(axes[0], chosen, strict=True):
        for tag in tags:
            steps, values = scalars[tag]
            marker = "o" if tag.startswith("eval/") else None
            axis.plot(steps, values, marker=marker, markersize=3, linewidth=1.2, label=tag)
        axis.set_title(panel_title, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.set_ylabel(label, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6, frameon=False)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run's --output-dir (or a folder with event files)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default=None, help="the figure's title (default: the event folder)")
    args = parser.parse_args(argv)
    folder = event_folder(args.run)
    scalars = read_scalars(folder)
    draw(scalars, args.title or str(folder), args.out)
    print(f"{args.out}: {len(scalars)} tags from {folder}, {args.out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
