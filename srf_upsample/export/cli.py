"""``srf-upsample export``: build or load an upsampler by name, export it, print its operators and its parity."""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

from ..hub import list_shipped
from ..upsample import SRFUpsample
from ..upsamplers import build_upsampler, list_upsamplers
from ._generator import describe, export_generator
from ._onnx import DEFAULT_OPSET, SUPPORTED_OPSETS, check_opset, onnx_operators, require_export_deps
from ._parity import DEFAULT_PARITY_SIZES, PARITY_TOLERANCE, check_generator_parity, check_single_pass_sizes

__all__ = ["main"]


def _parse_size_pair(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        source, target = text.split(":")
        height, width = (int(v) for v in source.lower().split("x"))
        out_height, out_width = (int(v) for v in target.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW:HOUTxWOUT such as 17x25:33x49, got {text!r}") from None
    return (height, width), (out_height, out_width)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srf-upsample export",
        description="Export an upsampler to ONNX and check it in onnxruntime (CPU).",
    )
    parser.add_argument(
        "name_or_dir",
        help=f"an upsampler name ({', '.join(list_upsamplers())}), a folder written by save_pretrained, or a Hub "
        "repo id",
    )
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions before export")
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset ({SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}, default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=None,
        help="channels of a built-in upsampler (carafe, dysample, srf-*; default 256); weights bring their own",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of a built-in upsampler's initial weights")
    parser.add_argument("--revision", default=None, help="Hub revision (for repo ids)")
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_parse_size_pair,
        default=list(DEFAULT_PARITY_SIZES),
        metavar="HxW:HOUTxWOUT",
        help="parity-check sizes (default: 17x25:33x49 16x16:32x32 5x7:9x13 32x48:64x96)",
    )
    return parser


def _load(args: argparse.Namespace) -> tuple[nn.Module, bool]:
    """The module named on the command line and whether it is a freshly built (untrained) one."""
    name = args.name_or_dir
    # Not a folder, a shipped name or an owner/name repo id: a built-in name (an unknown one lists the names).
    if not os.path.exists(name) and "/" not in name and name not in list_shipped():
        torch.manual_seed(args.seed)
        return build_upsampler(name, 256 if args.channels is None else args.channels), True
    module = SRFUpsample.from_pretrained(name, revision=args.revision)
    if args.channels is not None and args.channels != module.in_channels:
        raise ValueError(
            f"--channels {args.channels}: {name!r} holds a generator for {module.in_channels} channels; leave "
            "--channels out (it applies to the built-in names only)."
        )
    return module, False


def main(argv: list[str] | None = None) -> int:
    """Run ``srf-upsample export <name-or-dir> out.onnx [--channels C] [--fuse] [--opset N]``; returns the exit code.

    A built-in name of :func:`srf_upsample.list_upsamplers` (``carafe``, ``dysample``, ``srf-lite``, ...) builds
    that upsampler for ``--channels`` channels with seeded initial weights; anything else (a shipped generator, a
    ``save_pretrained`` folder, a Hub repo id) is loaded with ``SRFUpsample.from_pretrained``. The command exports
    it, prints the operators of the graph and the onnxruntime vs. PyTorch parity on several input sizes, and fails
    (exit code 1) above ``PARITY_TOLERANCE``. A usage error (missing extra, bad opset or sizes, an unknown name, a
    folder that cannot be loaded) prints one line and returns 2.
    """
    args = _parser().parse_args(argv)
    try:
        require_export_deps()
        check_opset(args.opset)
        check_single_pass_sizes(args.sizes)
        module, is_new = _load(args)
        path = export_generator(module, args.output, opset=args.opset, fuse=args.fuse)
        operators = onnx_operators(path)
        results = check_generator_parity(module, path, sizes=args.sizes, fuse=args.fuse)
    except (ImportError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"srf-upsample export: error: {error}", file=sys.stderr)
        return 2
    print(
        f"exported {args.name_or_dir!r} ({describe(module)}{', untrained' if is_new else ''}, "
        f"in_channels={module.in_channels}, fused={args.fuse}) to {path} "
        f"(opset {args.opset}, torch {torch.__version__})"
    )
    print(f"operators ({len(operators)}, all in the default ONNX domain): {', '.join(operators)}")
    print(f"parity, onnxruntime CPU vs PyTorch eager, float32 (tolerance: rel_error <= {PARITY_TOLERANCE:g}):")
    for result in results:
        print(f"  {result}")
    worst = max(result.rel_error for result in results)
    if worst > PARITY_TOLERANCE:
        print(f"FAILED: rel_error {worst:.3e} exceeds {PARITY_TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0
