"""onnxruntime (CPU) latency of the exported generator vs. PyTorch eager on the same inputs, as a ratio from one run.

Run from the repository root:
    python benchmarks/bench_onnx.py           # FPN steps of an 800x1216 image, paper + lite, writes RESULTS.md
    python benchmarks/bench_onnx.py --quick   # tiny module and sizes, one round (CI smoke test; --no-write to skip)

Each generator (``in_channels=256``, the variant's default width, random weights: latency does not depend on them)
is exported once with ``srf_upsample.export.export_generator`` (fused, opset 18, dynamic H/W) and timed on the
same input tensors as the fused PyTorch module under ``torch.inference_mode()``, interleaved round by round. Both
use the same number of CPU threads. ``ort / torch`` is the median over rounds of (onnxruntime time / PyTorch time in
the same round); below 1 means onnxruntime is faster. The parity columns come from the same outputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _common import MachineLoad, benchmark_parser, format_table, header_lines, publish, rounds, time_interleaved

from srf_upsample import SRFUpsample
from srf_upsample.export import DEFAULT_OPSET, export_generator, inference_session, onnx_operators
from srf_upsample.upsample import VARIANTS

__all__ = ["main"]

# (label, input H x W, output H x W): FPN top-down steps of an 800x1216 image, plus the odd-size example of the docs.
FULL_CASES = (
    ("odd 17x25", (17, 25), (33, 49)),
    ("P5->P4", (25, 38), (50, 76)),
    ("P4->P3", (50, 76), (100, 152)),
)
QUICK_CASES = (("odd 17x25", (17, 25), (33, 49)), ("quick", (8, 12), (16, 24)))


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=5, quick_help="tiny module and sizes, one round, for smoke tests")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = parser.parse_args(argv)

    import onnxruntime

    torch.manual_seed(0)
    cases = QUICK_CASES if args.quick else FULL_CASES
    repeats, warmup = rounds(args)
    threads = torch.get_num_threads()

    rows = []
    operators_by_variant = {}
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode(), MachineLoad() as load:
        for variant in args.variants:
            if args.quick:
                module = SRFUpsample(8, hidden_channels=8, num_blocks=1, variant=variant)
            else:
                module = SRFUpsample(256, variant=variant)
            module = module.eval()
            with torch.inference_mode(False):
                path = export_generator(module, Path(folder) / f"{variant}.onnx", opset=args.opset, fuse=True)
            operators_by_variant[variant] = onnx_operators(path)
            session = inference_session(path, threads)
            fused = module.fuse()
            for label, (height, width), target in cases:
                x = torch.randn(1, module.in_channels, height, width)
                feeds = {"x": x.numpy(), "like": torch.empty(1, 0, *target).numpy()}
                timings = time_interleaved(
                    {
                        "torch": lambda fused=fused, x=x, target=target: fused(x, size=target),
                        "ort": lambda session=session, feeds=feeds: session.run(["y"], feeds),
                    },
                    warmup=warmup,
                    repeats=repeats,
                    baseline="torch",
                )
                reference = fused(x, size=target)
                output = torch.from_numpy(session.run(["y"], feeds)[0])
                max_abs_diff = (output - reference).abs().max().item()
                rel_error = max_abs_diff / reference.abs().max().item()
                rows.append(
                    [
                        variant,
                        label,
                        f"{module.in_channels}x{height}x{width} -> {target[0]}x{target[1]}",
                        f"{timings['torch']['median_s'] * 1e3:.2f}",
                        f"{timings['ort']['median_s'] * 1e3:.2f}",
                        f"{timings['ort']['ratio']:.2f}",
                        f"{max_abs_diff:.2e}",
                        f"{rel_error:.2e}",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)

    table = format_table(
        ["variant", "case", "shape (C x H x W)", "torch ms", "ort ms", "ort / torch", "max abs diff", "rel error"],
        rows,
    )
    body = "\n".join(
        [
            *header_lines(
                "## ONNX export: onnxruntime vs PyTorch eager (cpu)", quick=args.quick, dtypes=[torch.float32]
            ),
            f"- onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, intra-op threads {threads}), "
            f"opset {args.opset}",
            f"- batch 1, float32, fused generators (BN folded), random weights; {warmup} warm-up + {repeats} "
            "interleaved timed rounds, median; `ort / torch`: median over rounds of (onnxruntime time / PyTorch "
            "time in the same round), < 1 means onnxruntime is faster",
            "- rel error: max |ort - torch| / max |torch| on the timed input",
            "- operators: "
            + "; ".join(f"{variant}: {', '.join(ops)}" for variant, ops in operators_by_variant.items()),
            *load.lines(),
            "",
            table,
        ]
    )
    publish(body, "onnx", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
