"""Per-upsampler cost at the FPN steps of an 800x1216 image: parameters, GFLOPs and latency relative to F.interpolate.

Run from the repository root:
    python benchmarks/bench_upsamplers.py                 # full run, CPU, float32 + bfloat16, writes RESULTS.md
    python benchmarks/bench_upsamplers.py --device cuda   # same on a GPU (its own section of RESULTS.md)
    python benchmarks/bench_upsamplers.py --quick         # tiny sizes, one repetition (CI smoke test)
    python benchmarks/bench_upsamplers.py --registry      # every name of list_upsamplers(): params and FLOPs only

``--registry`` prints (and writes nothing) one row per upsampler name: parameters at 256 channels and the FLOPs of
its three FPN calls for one 800x1216 image (Mask R-CNN's size), no timings. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of convolutions and matrix products), plus what it
does not see, counted from the shapes as in ``bench_backbone_fpn.py``: ``2 * k_up**2 * C * H_out * W_out`` for
CARAFE's reassembly and ``2 * 4 * C * H_out * W_out`` (four bilinear taps) for DySample's ``grid_sample``.

Every learned upsampler is timed fused (``.eval().fuse()``), under ``torch.inference_mode()``, with batch size 1,
interleaved with ``F.interpolate(mode="nearest")`` (what torchvision's FPN calls) on the same input in the same run.
The ratio column is the median over rounds of (candidate time / nearest time in that round).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import MachineLoad, benchmark_parser, format_table, header_lines, publish, rounds, time_interleaved
from torch.utils.flop_counter import FlopCounterMode

from srf_upsample import SRFUpsample, build_upsampler, list_upsamplers
from srf_upsample.upsample import VARIANTS

__all__ = ["main", "run"]

# FPN levels of a 800x1216 input (strides 32, 16, 8, 4): each step doubles H and W.
FULL_IMAGE = (800, 1216)
QUICK_IMAGE = (64, 96)
STEPS = (("P5->P4", 32), ("P4->P3", 16), ("P3->P2", 8))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _count_flops(fn: Callable[[], object]) -> int:
    # FlopCounterMode counts matmul/conv-like ops only; interpolation, activations and adds count as zero.
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _candidates(in_channels: int, use_channels_last: bool) -> dict[str, tuple[int, torch.nn.Module | None, bool]]:
    """Name -> (parameters as shipped, fused inference module or None for F.interpolate, channels_last)."""
    candidates: dict[str, tuple[int, torch.nn.Module | None, bool]] = {"nearest": (0, None, False)}
    candidates["bilinear"] = (0, None, False)
    for variant in VARIANTS:
        module = SRFUpsample(in_channels, variant=variant).eval()
        params = sum(p.numel() for p in module.parameters())
        module.fuse()
        candidates[variant] = (params, module, False)
        if use_channels_last:
            # A separate copy: .to(memory_format=...) converts a module in place.
            channels_last = copy.deepcopy(module).to(memory_format=torch.channels_last)
            candidates[f"{variant} channels_last"] = (params, channels_last, True)
    return candidates


def _to(module: torch.nn.Module, device: str, dtype: torch.dtype, channels_last: bool) -> torch.nn.Module:
    module = module.to(device=device, dtype=dtype)
    return module.to(memory_format=torch.channels_last) if channels_last else module


def run(
    *,
    device: str = "cpu",
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    image: tuple[int, int] = FULL_IMAGE,
    in_channels: int = 256,
    warmup: int = 1,
    repeats: int = 5,
    use_channels_last: bool = True,
    quiet: bool = False,
) -> str:
    """Run the benchmark and return the markdown table."""
    torch.manual_seed(0)
    rows = []
    candidates = _candidates(in_channels, use_channels_last)
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        modules = {
            name: (params, None if module is None else _to(module, device, dtype, channels_last), channels_last)
            for name, (params, module, channels_last) in candidates.items()
        }
        for step, stride in STEPS:
            height, width = image[0] // stride, image[1] // stride
            size = (2 * height, 2 * width)
            x = torch.randn(1, in_channels, height, width, device=device, dtype=dtype)
            x_channels_last = x.contiguous(memory_format=torch.channels_last)
            fns: dict[str, Callable[[], object]] = {}
            for name, (_, module, channels_last) in modules.items():
                if module is None:
                    fns[name] = lambda x=x, mode=name, size=size: F.interpolate(x, size=size, mode=mode)
                else:
                    fns[name] = lambda x=(x_channels_last if channels_last else x), m=module, size=size: m(x, size=size)
            with torch.inference_mode():
                flops = {name: _count_flops(fn) for name, fn in fns.items()}
                timings = time_interleaved(fns, warmup=warmup, repeats=repeats, device=device, baseline="nearest")
            for name, (params, _, _) in modules.items():
                rows.append(
                    [
                        dtype_name,
                        step,
                        f"{in_channels}x{height}x{width} -> {size[0]}x{size[1]}",
                        name,
                        f"{params / 1e6:.3f}",
                        f"{flops[name] / 1e9:.2f}",
                        f"{timings[name]['median_s'] * 1e3:.2f}",
                        f"{timings[name]['ratio']:.2f}",
                        f"{timings[name]['cpu_ratio']:.2f}",
                    ]
                )
            if not quiet:
                print(f"done {dtype_name} {step}", file=sys.stderr, flush=True)
    headers = ["dtype", "step", "shape (C x H x W)", "upsampler", "params (M)", "GFLOPs", "median ms", "x nearest"]
    headers.append("x nearest (CPU time)")
    return format_table(headers, rows)


def _uncounted_flops(module: torch.nn.Module, channels: int, out_size: tuple[int, int]) -> int:
    """FLOPs FlopCounterMode does not see: CARAFE's reassembly and DySample's bilinear sampling (0 for the rest)."""
    pixels = channels * out_size[0] * out_size[1]
    k_up = getattr(module, "k_up", None)
    if type(module).__name__ == "CARAFE" and isinstance(k_up, int):
        return 2 * k_up * k_up * pixels
    if type(module).__name__ == "DySample":
        return 2 * 4 * pixels
    return 0


def registry_table(*, image: tuple[int, int] = FULL_IMAGE, in_channels: int = 256) -> str:
    """Params and FLOPs of every upsampler name at the FPN steps of ``image`` (inference: eval mode, SRF fused)."""
    torch.manual_seed(0)
    rows = []
    for name in list_upsamplers():
        module = build_upsampler(name, in_channels).eval()
        params = sum(p.numel() for p in module.parameters())
        if isinstance(module, SRFUpsample):
            module.fuse()
        counted = uncounted = 0
        for _, stride in STEPS:
            height, width = image[0] // stride, image[1] // stride
            size = (2 * height, 2 * width)
            x = torch.randn(1, in_channels, height, width)
            # A guide-taking upsampler gets, as in a patched FPN, the lateral map its output is added to.
            extra = {"guide": torch.randn(1, in_channels, *size)} if getattr(module, "accepts_guide", False) else {}
            with torch.inference_mode():
                counted += _count_flops(lambda m=module, x=x, size=size, extra=extra: m(x, size=size, **extra))
            uncounted += _uncounted_flops(module, in_channels, size)
        rows.append(
            [
                name,
                f"{params:,}",
                f"{counted / 1e9:.2f}",
                f"{uncounted / 1e9:.2f}",
                f"{(counted + uncounted) / 1e9:.2f}",
            ]
        )
    headers = ["upsampler", f"params ({in_channels} ch)", "GFLOPs (counter)", "GFLOPs (not counted)", "GFLOPs"]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--no-channels-last", action="store_true", help="skip the channels_last rows")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--registry", action="store_true", help="params and FLOPs of every upsampler name, no timing")
    args = parser.parse_args(argv)
    image = QUICK_IMAGE if args.quick else FULL_IMAGE
    if args.registry:
        print(
            f"Upsamplers by name: params at 256 channels, FLOPs of the three FPN calls (P5->P4, P4->P3, P3->P2) "
            f"for one {image[0]}x{image[1]} image, eval mode, SRF generators fused; torch {torch.__version__}\n"
        )
        print(registry_table(image=image))
        return 0
    repeats, warmup = rounds(args)
    with MachineLoad() as load:
        table = run(
            device=args.device,
            dtypes=tuple(args.dtypes),
            image=image,
            warmup=warmup,
            repeats=repeats,
            use_channels_last=not args.no_channels_last,
            quiet=args.quiet,
        )
    device_type = torch.device(args.device).type
    header = [
        *header_lines(
            f"## Per-upsampler cost ({device_type})",
            quick=args.quick,
            device=args.device,
            dtypes=[DTYPES[d] for d in args.dtypes],
        ),
        f"- image {image[0]}x{image[1]}, batch 1, FPN width 256; {warmup} warm-up + {repeats} interleaved timed "
        "rounds, median; learned upsamplers fused (`.eval().fuse()`), `torch.inference_mode()`",
        "- `x nearest`: median over rounds of (time / time of `F.interpolate(mode='nearest')` on the same input in "
        "the same round), for wall time and for the process's CPU time (it leaves out time spent waiting for a core). "
        "GFLOPs from `torch.utils.flop_counter` (convolutions only: interpolation counts 0). "
        "params: as shipped (unfused, BN included)",
        *load.lines(),
    ]
    publish("\n".join(header) + "\n\n" + table, f"upsamplers-{device_type}", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
