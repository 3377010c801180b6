"""Cost of the guided generator where it acts: backbone + FPN time beside lite and DySample, params and FLOPs.

Run from the repository root:
    python benchmarks/bench_guided_cost.py             # 800x1216, 5 rounds (~3 min on 2 cores), writes RESULTS.md
    python benchmarks/bench_guided_cost.py --quick     # tiny image, one round, no FLOP count (smoke test)

The model is torchvision's Mask R-CNN R50-FPN backbone + FPN (``model.backbone``) with random weights, as in
``bench_backbone_fpn.py`` (speed does not depend on them). Patched candidates are deep copies whose FPN top-down
``F.interpolate`` calls are replaced by ``patch_fpn`` with one shared upsampler of 256 channels, in eval mode:

- ``unpatched``: the FPN's nearest-neighbour upsampling (the baseline of every ratio);
- ``lite``: ``SRFUpsample(256, variant="lite")``, fused, on its default inference route;
- ``guided``: ``SRFUpsample(256, variant="guided")``, fused, its guides (the FPN's lateral maps) wired by patch_fpn;
- ``dysample``: ``DySample(256)`` (Liu et al. 2023, LP style, static scope), the light learned peer.

The issue's budget: guided at most 1.10x the backbone + FPN time of lite. Benchmarks measure; nothing is asserted.
"""

from __future__ import annotations

import copy
import functools
import sys

import torch
import torchvision
from _common import MachineLoad, benchmark_parser, format_table, header_lines, publish, rounds, time_interleaved
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from srf_upsample import SRFUpsample, patch_fpn

__all__ = ["main", "run"]

FULL_SIZE = (800, 1216)
QUICK_SIZE = (64, 96)


def _dysample_factory() -> object | None:
    try:
        from srf_upsample import DySample
    except ImportError:
        return None
    return DySample


def build_backbone() -> nn.Module:
    """Mask R-CNN R50-FPN's backbone + FPN (ResNet-50, FPN, max-pool P6), random weights (seed 0), eval mode."""
    torch.manual_seed(0)
    detector = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    return detector.backbone.eval()


def patched_copy(backbone: nn.Module, factory: object) -> tuple[nn.Module, int]:
    """A deep copy of ``backbone`` patched with ``factory(256)``; returns it and how many sites got a guide."""
    backbone = copy.deepcopy(backbone)
    torch.manual_seed(1)  # every copy gets the same upsampler weights for its kind
    _, report = patch_fpn(backbone, upsampler=factory, example_inputs=(torch.randn(1, 3, 64, 96),), strict=True)
    backbone.eval()
    for generator in (m for m in backbone.modules() if isinstance(m, SRFUpsample)):
        generator.fuse()
    return backbone, len(report.guided)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _upsampler_params(backbone: nn.Module) -> int:
    seen = {id(m): m for name, m in backbone.named_modules() if name.rsplit(".", 1)[-1].startswith("srf_")}
    return sum(_params(m) for m in seen.values())


def count_flops(module: nn.Module, image: torch.Tensor) -> int:
    """FLOPs of one inference (``FlopCounterMode``: 2 per multiply-add, convolutions and matrix products)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(image)
    return counter.get_total_flops()


def run(*, size: tuple[int, int], warmup: int, repeats: int, use_flops: bool) -> tuple[str, MachineLoad, list[str]]:
    """Time the candidates interleaved and count params and FLOPs; return the markdown tables, the load, notes."""
    base = build_backbone()
    factories: dict[str, object] = {
        "lite": functools.partial(SRFUpsample, variant="lite"),
        "guided": functools.partial(SRFUpsample, variant="guided"),
    }
    notes = []
    dysample = _dysample_factory()
    if dysample is not None:
        factories["dysample"] = dysample
    else:
        notes.append("DySample is not in this checkout (srf_upsample.DySample missing): measured without it")
    backbones: dict[str, nn.Module] = {"unpatched": base}
    guided_sites: dict[str, int] = {"unpatched": 0}
    for name, factory in factories.items():
        backbones[name], guided_sites[name] = patched_copy(base, factory)
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    fns = {name: functools.partial(module, image) for name, module in backbones.items()}
    with MachineLoad() as load, torch.inference_mode():
        timings = time_interleaved(fns, warmup=warmup, repeats=repeats, baseline="unpatched")

    flops = {name: count_flops(module, image) for name, module in backbones.items()} if use_flops else {}
    rows = []
    for name, entry in timings.items():
        rows.append(
            [
                name,
                f"{_upsampler_params(backbones[name]):,}",
                f"{flops[name] / 1e9:.1f}" if flops else "-",
                f"{(flops[name] - flops['unpatched']) / 1e9:+.2f}" if flops else "-",
                str(guided_sites[name]),
                f"{entry['median_s'] * 1e3:.0f}",
                f"{entry['ratio']:.3f}",
                f"{entry['cpu_ratio']:.3f}",
            ]
        )
    text = "### Backbone + FPN, batch 1\n\n" + format_table(
        [
            "model",
            "upsampler params",
            "GFLOPs",
            "upsampler GFLOPs",
            "guided sites",
            "median ms",
            "x unpatched",
            "x unpatched (CPU time)",
        ],
        rows,
    )
    ratio_rows = []
    for other in ("lite", "dysample"):
        if other in timings:
            wall = timings["guided"]["ratio"] / timings[other]["ratio"]
            cpu = timings["guided"]["cpu_ratio"] / timings[other]["cpu_ratio"]
            flop_ratio = f"{flops['guided'] / flops[other]:.3f}" if flops else "-"
            ratio_rows.append([f"guided / {other}", f"{wall:.3f}", f"{cpu:.3f}", flop_ratio])
    text += "\n\n### Guided against its peers (backbone + FPN)\n\n" + format_table(
        ["ratio", "time (of the x unpatched medians)", "CPU time", "GFLOPs"], ratio_rows
    )
    return text, load, notes


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=5, quick_help="tiny image, one round, no FLOPs", size=FULL_SIZE)
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    args = parser.parse_args(argv)
    size = QUICK_SIZE if args.quick else args.size
    repeats, warmup = rounds(args)
    tables, load, notes = run(size=size, warmup=warmup, repeats=repeats, use_flops=not (args.quick or args.no_flops))
    for note in notes:
        print(note, file=sys.stderr)
    lines = [
        *header_lines(
            f"## Guided generator cost: Mask R-CNN R50-FPN backbone + FPN at {size[0]}x{size[1]} (cpu)",
            quick=args.quick,
            dtypes=[torch.float32],
        ),
        *load.lines(),
        f"- {warmup} warm-up + {repeats} interleaved timed rounds (order rotated each round), median, under "
        "`torch.inference_mode()`; `x unpatched`: median over rounds of (time / unpatched time in the same round); "
        "`guided / lite`: the ratio of those medians",
        "- random weights; one shared upsampler of 256 channels per model, eval mode, SRF generators fused; guided "
        "sites: FPN sites whose upsampler receives the lateral map as guide (patch_fpn)",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add; convolutions and matrix products; "
        "interpolation and grid_sample count 0)",
        *(f"- {note}" for note in notes),
    ]
    publish("\n".join(lines) + "\n\n" + tables, "guided-cost-cpu", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
