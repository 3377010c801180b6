"""Training cost of each generator at the DeepForest CPU profile: forward + backward of G's FPN upsamplings.

Run from the repository root:
    python benchmarks/bench_generator_train_step.py             # 64-channel FPN, 4 tiles of 400 px, one thread
    python benchmarks/bench_generator_train_step.py --no-write  # print only
    python benchmarks/bench_generator_train_step.py --quick     # tiny sizes, one repetition (smoke test)

What it sizes: how much one training step of an SRF arm costs over the detector's own step, for the lite generator,
the paper generator at the FPN's width, and the paper generator at its default 256-channel body. The inputs are the
coarse maps G upsamples in an FPN over a ``--tile`` px image (P3, P4 and P5, i.e. strides 8, 16, 32), in training
mode (BatchNorm updating). Timings are interleaved over repetitions; the ratios are against the lite generator in
the same round, by wall time and by this process's CPU time (the steadier one when other jobs share the cores).
"""

from __future__ import annotations

import math

import torch
from _common import (
    QUICK_NOTE,
    MachineLoad,
    benchmark_parser,
    command_line,
    environment_lines,
    format_table,
    publish,
    time_interleaved,
    torch_threads,
)

from srf_upsample import SRFUpsample

__all__ = ["main", "run"]

SECTION = "generator-train-step"


def _generators(channels: int, quick: bool) -> dict[str, SRFUpsample]:
    # The paper's G at the FPN's width and at its default 256-wide body (16 in quick mode, to stay tiny).
    candidates = [
        SRFUpsample(channels, variant="lite", hidden_channels=8 if quick else None),
        SRFUpsample(channels, variant="paper", hidden_channels=channels),
        SRFUpsample(channels, variant="paper", hidden_channels=16 if quick else None),
    ]
    return {"lite" if g.variant == "lite" else f"paper, body {g.hidden_channels}": g for g in candidates}


def run(*, channels: int, batch: int, tile: int, repeats: int, quick: bool = False) -> str:
    """Time the candidates; returns the markdown section (environment, table)."""
    sizes = [math.ceil(tile / stride) for stride in (8, 16, 32)]
    inputs = [torch.randn(batch, channels, size, size) for size in sizes]
    generators = {name: g.train() for name, g in _generators(channels, quick).items()}

    def step(generator: SRFUpsample):
        def call() -> None:
            generator.zero_grad(set_to_none=True)
            total = sum(generator(x, scale_factor=2).square().mean() for x in inputs)
            total.backward()

        return call

    with MachineLoad() as load:
        timings = time_interleaved(
            {name: step(g) for name, g in generators.items()}, warmup=1, repeats=repeats, baseline="lite"
        )
    rows = [
        [
            name,
            f"{sum(p.numel() for p in g.parameters()) / 1e6:.2f}",
            f"{timings[name]['median_s']:.2f}",
            f"{timings[name]['ratio']:.1f}",
            f"{timings[name]['cpu_ratio']:.1f}",
        ]
        for name, g in generators.items()
    ]
    table = format_table(["generator", "params (M)", "fwd+bwd s (median)", "x lite (wall)", "x lite (CPU time)"], rows)
    lines = [
        f"Command: `{command_line()}`; {batch} images, {channels}-channel maps of {sizes} px upsampled x2 "
        f"(an FPN over {tile} px tiles), training mode, {repeats} interleaved repetitions"
        + (QUICK_NOTE if quick else "")
        + ".",
        "",
        *environment_lines("cpu"),
        *load.lines(),
        "",
        table,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=5, warmup=False, quick_help="tiny sizes, one repetition")
    parser.add_argument("--channels", type=int, default=64, help="FPN channels (the CPU profile's 64)")
    parser.add_argument("--batch", type=int, default=4, help="images per step (the CPU profile's 4)")
    parser.add_argument("--tile", type=int, default=400, help="image side in px (400)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one per run in the CPU grid)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        args.channels, args.batch, args.tile, args.repeats = 8, 1, 64, 1
    with torch_threads(args.threads):
        text = run(channels=args.channels, batch=args.batch, tile=args.tile, repeats=args.repeats, quick=args.quick)
    publish(text, SECTION, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
