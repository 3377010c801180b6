"""How much a generator's learned residual changes between training and evaluation mode, level by level.

One G serves every FPN level. With BatchNorm (``norm="batch"``, the paper's text) training normalises each call with
that level's batch statistics, while evaluation uses running statistics mixed over all levels; with ``norm="none"``
(our default, the authors' code) nothing depends on the mode. For each held-out image and level i:
``r_mode = G(P_lr_i) - bilinear(P_lr_i)`` in train and in eval mode (same input, G's running statistics not updated),
and we report ``|r_train - r_eval|_1 / |r_eval|_1`` averaged over images. A guided generator (``variant="guided"``)
gets, at every level but the FPN's finest, the FPN lateral map of I_lr as guide in both modes, as stage 1 feeds it
(``fidelity.guided_feature_pairs``); F then needs a torchvision FPN, or the script raises a ValueError.

Usage: ``python benchmarks/bench_train_eval_gap.py [--generator NAME_OR_DIR ...] [--detector DIR] [--images DIR]``
(default: the shipped generators against the shipped detector's FPN, on the held-out tile committed with the tests).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import command_line, environment_lines, format_table, write_section
from bench_fidelity import check_guided_generator, load_images

from srf_upsample import SRFUpsample, list_shipped
from srf_upsample.train.fidelity import feature_pairs, guided_feature_pairs
from srf_upsample.train.pyramid import guide_sources
from srf_upsample.train.shipped import DEFAULT_DETECTOR, load_shipped_extractor

REPO = Path(__file__).resolve().parents[1]
LEVELS = ("P2", "P3", "P4", "P5")
KEYS = ["0", "1", "2", "3"]


def residual(
    generator: SRFUpsample, x: torch.Tensor, size: tuple[int, int], train: bool, guide: torch.Tensor | None = None
) -> torch.Tensor:
    """G's output (given ``guide`` when not None) minus its bilinear shortcut, in train or eval mode; G is unchanged."""
    model = copy.deepcopy(generator).train(train)  # a copy: train mode would update the running statistics
    out = model(x, size=size) if guide is None else model(x, size=size, guide=guide)
    return out - F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def gaps(
    generator: SRFUpsample,
    low: list[torch.Tensor],
    target: list[torch.Tensor],
    guides: list[torch.Tensor | None] | None = None,
) -> list[float]:
    """Per upsampled level (P_lr_i -> size of P_tr_i): the relative L1 gap between train- and eval-mode residuals.

    ``guides``: per level the guide of a guided G (``fidelity.guided_feature_pairs``) or None; None: no guides.
    """
    out = []
    for index, (x, y) in enumerate(zip(low, target, strict=True)):
        size = tuple(y.shape[-2:])
        guide = None if guides is None else guides[index]
        in_train, in_eval = residual(generator, x, size, True, guide), residual(generator, x, size, False, guide)
        out.append(((in_train - in_eval).abs().sum() / in_eval.abs().sum().clamp_min(1e-12)).item())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", nargs="+", default=None, help="shipped names or from_pretrained folders")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, help="shipped detector name or folder (F)")
    parser.add_argument("--images", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--write", action="store_true", help="update this benchmark's section of RESULTS.md")
    parser.add_argument("--section", default="train-eval-gap", help="name of that section")
    args = parser.parse_args(argv)
    extractor = load_shipped_extractor(args.detector)
    generators = {name: SRFUpsample.from_pretrained(name) for name in args.generator or list_shipped()}
    for name, generator in generators.items():
        check_guided_generator(name, generator, extractor, KEYS, args.detector)  # a ValueError if F cannot guide it
    images = load_images(args.images, None)
    guided = any(generator.accepts_guide for generator in generators.values())
    if guided:  # the same P_lr and P_tr, plus the guides stage 1 feeds a guided G
        triples = [guided_feature_pairs(extractor, image, KEYS, guide_sources(KEYS)) for image in images]
    else:
        triples = [(*feature_pairs(extractor, image, KEYS), None) for image in images]
    rows = []
    for name, generator in generators.items():
        per_image = [
            gaps(generator, low, target, guides if generator.accepts_guide else None) for low, target, guides in triples
        ]
        per_level = [statistics.mean(values) for values in zip(*per_image, strict=True)]
        rows.append(
            [
                Path(name).name if Path(name).exists() else name,
                generator.norm,
                *[f"{100 * gap:.1f} %" for gap in per_level],
                f"{100 * max(per_level):.1f} %",
            ]
        )
    text = "\n".join(
        [
            f"Command: `{command_line()}`; F: {args.detector}; {len(images)} held-out image(s).",
            *environment_lines("cpu"),
            *(
                ["Guided generators get, at P3-P5, the FPN lateral map of I_lr as guide (as in stage 1)."]
                if guided
                else []
            ),
            "",
            format_table(["generator", "norm", *[f"{level} (x2)" for level in LEVELS], "max"], rows),
        ]
    )
    print(text)
    if args.write:
        write_section(args.section, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
