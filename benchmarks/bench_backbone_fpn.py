"""Cost of patching the FPN where the patch acts: backbone + FPN time as paired ratios, params and FLOPs.

Run from the repository root:
    python benchmarks/bench_backbone_fpn.py            # 800x1216, 11 rounds (~4 min on 2 cores), writes RESULTS.md
    python benchmarks/bench_backbone_fpn.py --quick    # tiny image, one round, no FLOP count (CI smoke test)

The model is torchvision's Mask R-CNN R50-FPN with random weights (speed does not depend on them). Its backbone + FPN
(``model.backbone``: ResNet-50, FPN, the max-pool P6) is the same module in Faster R-CNN R50-FPN, so the ratios hold
for both. Patched variants are deep copies whose FPN top-down ``F.interpolate`` calls are replaced by ``patch_fpn``
with one shared ``SRFUpsample(256, variant=...)``, in eval mode and fused. Candidates:

- ``unpatched``: the FPN's nearest-neighbour upsampling (the baseline of every ratio);
- ``lite (reference pass)``: the lite generator's module-by-module pass (``use_fast_inference = False``);
- ``lite``: the same generator on its default inference route (in place, tail fused: ``SRFUpsample.uses_fast_pass``);
- ``lite (onnxruntime)``: the same generator exported by ``srf_upsample.export.export_generator`` and run by
  onnxruntime inside the PyTorch backbone (numpy views in and out, no copies), skipped without the export extra;
- ``paper``: the paper's generator (6x6 deconvolution, no BatchNorm: the defaults);
- ``DySample``: ``srf_upsample.DySample(256)`` (the paper's light setting), a learned peer;
- ``CARAFE``: ``srf_upsample.CARAFE(256)`` (the paper's defaults), a learned peer, on its inference route.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions and matrix
products only), for the backbone + FPN and for the whole detector in inference with ``box_score_thresh=1.01`` (the
box head scores every proposal and keeps none, so the heads' work does not depend on the features). The counter
sees neither CARAFE's reassembly (multiply-adds of tensors) nor DySample's bilinear sampling (``grid_sample``), so
the FLOP table adds them from their shapes in a separate column: ``2 * k_up**2 * C * H_out * W_out`` per CARAFE call
and ``2 * 4 * C * H_out * W_out`` (four bilinear taps) per DySample call.
"""

from __future__ import annotations

import copy
import functools
import sys
import tempfile
from pathlib import Path

import bench_detectors
import torch
from _common import MachineLoad, benchmark_parser, format_table, header_lines, publish, rounds, time_interleaved
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from srf_upsample import CARAFE, DySample, SRFUpsample, patch_fpn

__all__ = ["main", "run"]

FULL_SIZE = (800, 1216)
QUICK_SIZE = (64, 96)
CANDIDATES = ("unpatched", "lite (reference pass)", "lite", "lite (onnxruntime)", "paper", "DySample", "CARAFE")
# The learned peers, built like the generators: one module of 256 channels (the FPN's width) shared by every level.
PEERS: dict[str, type[nn.Module]] = {"DySample": DySample, "CARAFE": CARAFE}


def build_detector(size: tuple[int, int]) -> nn.Module:
    """Mask R-CNN R50-FPN, random weights (seed 0), transform keeping ``size``, heads with a fixed workload.

    With random weights the heads' work would follow the features: ``rpn_nms_thresh=1.0`` makes the RPN's NMS keep
    every box, so it passes its cap of 1000 proposals whatever the features, and ``box_score_thresh=1.01`` makes the
    box head score them all and keep none, so no mask is computed. It is ``bench_detectors``' unpatched Mask R-CNN,
    in eval mode.
    """
    return bench_detectors.build("maskrcnn", None, size).eval()


def patched_copy(module: nn.Module, variant: str, *, use_fast_pass: bool = True) -> nn.Module:
    """A deep copy of ``module`` (a detector or its backbone) with the FPN patched by a fused ``variant`` generator.

    ``variant`` is an SRFUpsample variant (``"lite"``, ``"paper"``) or a key of ``PEERS`` (``"DySample"``,
    ``"CARAFE"``), which is patched in with its default configuration (nothing to fuse).
    """
    module = copy.deepcopy(module)
    backbone = module.backbone if hasattr(module, "backbone") else module
    torch.manual_seed(1)
    # The same seed: every copy gets the same upsampler.
    upsampler = PEERS[variant](256) if variant in PEERS else SRFUpsample(256, variant=variant)
    # Patch the backbone (FPN inside), not the detector: patch_fpn runs its example input through the module.
    patch_fpn(backbone, upsampler=upsampler, example_inputs=(torch.randn(1, 3, 64, 96),), strict=True)
    module.eval()
    # patch_fpn may hold copies of the upsampler, so set every generator the patched module holds.
    for generator in (m for m in module.modules() if isinstance(m, SRFUpsample)):
        generator.fuse()
        generator.use_fast_inference = use_fast_pass
    return module


class _OnnxRuntimeUpsample(nn.Module):
    """Runs an exported generator with onnxruntime, called like the SRFUpsample it replaces (one pass, CPU)."""

    def __init__(self, module: SRFUpsample, directory: str) -> None:
        super().__init__()
        from srf_upsample.export import export_generator, inference_session

        path = export_generator(module, Path(directory) / f"{module.variant}.onnx", fuse=True)
        self.session = inference_session(path, torch.get_num_threads())

    def forward(self, x: torch.Tensor, size: object = None, scale_factor: object = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        if size is None:
            factor = 2.0 if scale_factor is None else scale_factor
            size = (int(height * factor), int(width * factor))
        size = (size, size) if isinstance(size, int) else tuple(size)
        like = torch.empty(1, 0, *size).numpy()
        return torch.from_numpy(self.session.run(None, {"x": x.contiguous().numpy(), "like": like})[0])


def onnxruntime_copy(backbone: nn.Module, directory: str) -> nn.Module:
    """``backbone`` (patched) with every SRFUpsample replaced by one onnxruntime runner; None without the extra."""
    backbone = copy.deepcopy(backbone)
    names = [name for name, m in backbone.named_modules(remove_duplicate=False) if isinstance(m, SRFUpsample)]
    runner = _OnnxRuntimeUpsample(backbone.get_submodule(names[0]), directory)
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        setattr(backbone.get_submodule(parent_name) if parent_name else backbone, child_name, runner)
    return backbone


def count_flops(module: nn.Module, inputs: tuple) -> tuple[int, int | None]:
    """FLOPs of one inference of ``module(*inputs)`` (``FlopCounterMode``), and the RPN's proposal count if any."""
    proposals: list[int] = []
    rpn = getattr(module, "rpn", None)
    handle = rpn.register_forward_hook(lambda _m, _i, out: proposals.append(len(out[0][0]))) if rpn else None
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    if handle is not None:
        handle.remove()
    return counter.get_total_flops(), (proposals[0] if proposals else None)


def uncounted_flops(module: nn.Module, inputs: tuple) -> int:
    """FLOPs ``FlopCounterMode`` does not see in one ``module(*inputs)``: CARAFE's reassembly, DySample's sampling.

    Per call, from the shapes: ``2 * k_up**2 * C * H_out * W_out`` for CARAFE (each output value is a
    ``k_up x k_up`` weighted sum), ``2 * 4 * C * H_out * W_out`` for DySample (four bilinear taps per output value).
    """
    total = 0

    def add(upsampler: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        taps = upsampler.k_up**2 if isinstance(upsampler, CARAFE) else 4
        total += 2 * taps * out.numel()

    handles = [m.register_forward_hook(add) for m in module.modules() if isinstance(m, tuple(PEERS.values()))]
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total


def _share(flops: int, base: int) -> str:
    return f"{(flops - base) / 1e9:+.2f} ({(flops / base - 1) * 100:+.1f} %)"


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(
    *, size: tuple[int, int], warmup: int, repeats: int, use_flops: bool, use_onnx: bool
) -> tuple[str, MachineLoad]:
    """Time the candidates and count params and FLOPs; return the markdown tables and the measured load."""
    detector = build_detector(size)
    backbones: dict[str, nn.Module] = {"unpatched": detector.backbone}
    backbones["lite (reference pass)"] = patched_copy(detector.backbone, "lite", use_fast_pass=False)
    backbones["lite"] = patched_copy(detector.backbone, "lite")
    directory = tempfile.mkdtemp(prefix="srf_bench_")
    if use_onnx:
        try:
            backbones["lite (onnxruntime)"] = onnxruntime_copy(backbones["lite"], directory)
        except ImportError as error:
            print(f"skipping lite (onnxruntime): {error}", file=sys.stderr)
    backbones["paper"] = patched_copy(detector.backbone, "paper")
    for name in PEERS:
        backbones[name] = patched_copy(detector.backbone, name)
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = backbones["unpatched"](image)
    fns = {name: functools.partial(module, image) for name, module in backbones.items()}
    with MachineLoad() as load, torch.inference_mode():
        timings = time_interleaved(fns, warmup=warmup, repeats=repeats, baseline="unpatched")
    with torch.inference_mode():
        fast, slow = backbones["lite"](image), backbones["lite (reference pass)"](image)
    max_difference = max((fast[k] - slow[k]).abs().max().item() for k in fast)
    scale = max(slow[k].abs().max().item() for k in slow)

    rows = []
    for name, entry in timings.items():
        rows.append(
            [
                name,
                f"{entry['median_s'] * 1e3:.0f}",
                f"{entry['ratio']:.3f}",
                f"{entry['cpu_median_s'] * 1e3:.0f}",
                f"{entry['cpu_ratio']:.3f}",
            ]
        )
    text = "### Backbone + FPN, batch 1\n\n" + format_table(
        ["model", "median ms", "x unpatched", "CPU ms", "x unpatched (CPU time)"], rows
    )
    text += (
        f"\n\n`lite` vs `lite (reference pass)`: max |difference| {max_difference:.2e} over all pyramid levels, "
        f"largest feature {scale:.2f} (levels: {', '.join(f'{k} {tuple(v.shape[-2:])}' for k, v in reference.items())})"
    )
    if use_flops:
        flop_rows = []
        detectors = {
            "unpatched": detector,
            "lite": patched_copy(detector, "lite"),
            "paper": patched_copy(detector, "paper"),
            **{name: patched_copy(detector, name) for name in PEERS},
        }
        base_backbone, _ = count_flops(backbones["unpatched"], (image,))
        base_detector, _ = count_flops(detector, ([image[0]],))
        for name, model in detectors.items():
            backbone_flops, _ = count_flops(backbones[name], (image,))
            detector_flops, proposals = count_flops(model, ([image[0]],))
            uncounted = uncounted_flops(backbones[name], (image,))
            upsampler = next((m for m in model.modules() if isinstance(m, (SRFUpsample, *PEERS.values()))), None)
            flop_rows.append(
                [
                    name,
                    f"{_params(upsampler):,}" if upsampler is not None else "0",
                    f"{_params(model):,}",
                    f"{backbone_flops / 1e9:.1f}",
                    _share(backbone_flops, base_backbone),
                    f"{detector_flops / 1e9:.1f}",
                    _share(detector_flops, base_detector),
                    f"{uncounted / 1e9:.2f}",
                    str(proposals),
                ]
            )
        headers = [
            "model",
            "upsampler params (fused)",
            "detector params",
            "backbone + FPN GFLOPs",
            "upsampler's GFLOPs (share)",
            "whole detector GFLOPs",
            "upsampler's GFLOPs (share)",
            "reassembly / sampling GFLOPs not counted",
            "RPN proposals",
        ]
        text += "\n\n### Params and FLOPs (Mask R-CNN R50-FPN, batch 1)\n\n" + format_table(headers, flop_rows)
    return text, load


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        __doc__, repeats=11, quick_help="tiny image, one round, no FLOPs, no onnxruntime", size=FULL_SIZE
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime candidate")
    args = parser.parse_args(argv)
    size = QUICK_SIZE if args.quick else args.size
    repeats, warmup = rounds(args)
    tables, load = run(
        size=size,
        warmup=warmup,
        repeats=repeats,
        use_flops=not (args.quick or args.no_flops),
        use_onnx=not (args.quick or args.no_onnx),
    )
    lines = [
        *header_lines(
            f"## Backbone + FPN: Mask R-CNN / Faster R-CNN R50-FPN at {size[0]}x{size[1]} (cpu)",
            quick=args.quick,
            dtypes=[torch.float32],
        ),
        *load.lines(),
        f"- {warmup} warm-up + {repeats} interleaved timed rounds (order rotated each round), median, under "
        "`torch.inference_mode()`; `x unpatched`: median over rounds of (time / unpatched time in the same round), for "
        "wall time and for the process's CPU time (all threads)",
        "- random weights; generators fused, eval mode; `lite (reference pass)` and `lite` are the same generator on "
        "its module-by-module pass and on its default inference route; `lite (onnxruntime)`: that generator exported "
        "with `srf_upsample.export.export_generator` and run by onnxruntime inside the backbone; `DySample` and "
        "`CARAFE`: `DySample(256)` and `CARAFE(256)` with their defaults (CARAFE on its no-autograd route), patched "
        "in the same way",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add; convolutions and matrix products, "
        "interpolation counts 0; CARAFE's reassembly and DySample's sampling, which it does not see, are counted from "
        "their shapes in their own column: 2 * k_up**2 * C * H_out * W_out and 2 * 4 * C * H_out * W_out); whole "
        "detector in inference with `box_score_thresh=1.01` (fixed head workload: "
        "`rpn_nms_thresh=1.0` keeps the RPN at its cap of 1000 proposals, the box head keeps none, no mask is run)",
    ]
    publish("\n".join(lines) + "\n\n" + tables, "backbone-fpn-cpu", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
