"""Whole-detector cost of patching the FPN: inference latency, peak memory and training step time, patched vs not.

Run from the repository root:
    python benchmarks/bench_detectors.py                  # full CPU run (~15 min on 2 cores), writes RESULTS.md
    python benchmarks/bench_detectors.py --device cuda    # same on a GPU, in its own section of RESULTS.md
    python benchmarks/bench_detectors.py --quick          # tiny images, one round (CI smoke test)

Detectors are torchvision's Faster R-CNN and Mask R-CNN R50-FPN with random weights. Their image transform is set to
keep the benchmark size (``min_size=H, max_size=W``). With random weights the heads' work follows the features (NMS
over 1000 proposals x 90 classes), so any change to the features would change the heads' time; in inference the heads
are given a fixed workload instead: the RPN runs its head convolutions on the features but passes on a fixed set of
1000 seeded proposals per image (``FixedWorkRPN``: with random weights even ``rpn_nms_thresh=1.0`` left 904 to 1000
proposals depending on the features, as degenerate boxes are dropped), and ``box_score_thresh=1.01`` makes the box
head score every proposal and keep none (0 detections, no mask head work). The cost of the FPN patch alone is
timed by ``benchmarks/bench_backbone_fpn.py``. A patched
model is a deep copy of the unpatched one whose ``backbone.fpn`` top-down ``F.interpolate`` calls are replaced by
``patch_fpn`` with one shared ``SRFUpsample(256, variant=...)``; for inference it is fused (``.eval().fuse()``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
import torchvision
from _common import (
    MachineLoad,
    benchmark_parser,
    format_table,
    header_lines,
    parse_size,
    publish,
    rounds,
    time_interleaved,
)

from srf_upsample import SRFUpsample, patch_fpn

__all__ = ["main", "run"]

DETECTORS = {
    "fasterrcnn": torchvision.models.detection.fasterrcnn_resnet50_fpn,
    "maskrcnn": torchvision.models.detection.maskrcnn_resnet50_fpn,
}
# "<variant>-cl" additionally converts the upsampler's weights to channels_last (the detector stays NCHW).
VARIANTS = ("lite", "lite-cl", "paper")
FULL_SIZES = ((800, 1216), (512, 768))
FULL_TRAIN_SIZE = (384, 576)
QUICK_SIZE = (64, 96)


# Quick mode only: fewer proposals and detections, so the ROI heads (about 1000 proposals through two 1024-wide FC
# layers, and a 4-conv mask head on 100 detections: fixed work, whatever the image size) do not dominate a smoke test.
QUICK_DETECTOR_KWARGS = {
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "rpn_pre_nms_top_n_train": 50,
    "rpn_post_nms_top_n_train": 20,
    "box_batch_size_per_image": 16,
    "box_detections_per_img": 5,
}


def build(
    detector: str,
    variant: str | None,
    size: tuple[int, int],
    *,
    base: torch.nn.Module | None = None,
    is_quick: bool = False,
) -> torch.nn.Module:
    """The unpatched detector (``variant=None``), or a patched deep copy of ``base`` (``None``: patch a fresh one)."""
    if variant is None or base is None:
        torch.manual_seed(0)
        model = DETECTORS[detector](
            weights=None,
            weights_backbone=None,
            min_size=min(size),
            max_size=max(size),
            rpn_nms_thresh=1.0,
            box_score_thresh=1.01,
            **(QUICK_DETECTOR_KWARGS if is_quick else {}),
        )
        if variant is None:
            return model
    else:
        model = copy.deepcopy(base)
    upsampler = SRFUpsample(256, variant=variant.removesuffix("-cl"))
    # Patch the backbone (FPN inside), not the detector: patch_fpn runs its example input through the module, and a
    # whole detector would first resize it to 800 pixels. Any image size works afterwards (sizes are run-time).
    patch_fpn(model.backbone, upsampler=upsampler, example_inputs=(torch.randn(1, 3, 64, 96),), strict=True)
    return model


class FixedWorkRPN(torch.nn.Module):
    """The RPN's head convolutions on the features (their cost), then the same seeded proposals whatever they say."""

    def __init__(self, rpn: torch.nn.Module, count: int = 1000) -> None:
        super().__init__()
        self.rpn = rpn
        self.count = count

    def forward(self, images, features, targets=None):
        """``(proposals, {})`` like torchvision's RPN in eval mode: ``count`` boxes per image, fixed by a seed."""
        feats = list(features.values())
        self.rpn.head(feats)  # the convolutions run; their output is not used
        generator = torch.Generator().manual_seed(0)
        proposals = []
        for height, width in images.image_sizes:
            scale = torch.tensor([width, height], dtype=torch.float32)
            corner = torch.rand(self.count, 2, generator=generator) * scale * 0.8
            extent = torch.rand(self.count, 2, generator=generator) * scale * 0.2 + 8
            proposals.append(torch.cat([corner, corner + extent], dim=1).to(feats[0].device))
        return proposals, {}


def _prepare_inference(model: torch.nn.Module, variant: str | None, device: str) -> torch.nn.Module:
    model = model.eval().to(device)
    model.rpn = FixedWorkRPN(model.rpn)
    for module in model.modules():
        if isinstance(module, SRFUpsample):
            module.fuse()
            if variant is not None and variant.endswith("-cl"):
                module.to(memory_format=torch.channels_last)
    return model


def _images(size: tuple[int, int], device: str, count: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, *size, generator=generator).to(device) for _ in range(count)]


def _targets(detector: str, size: tuple[int, int], device: str, count: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    height, width = size
    targets = []
    for _ in range(count):
        x0 = torch.rand(4, generator=generator) * width / 2
        y0 = torch.rand(4, generator=generator) * height / 2
        boxes = torch.stack([x0, y0, x0 + width / 4, y0 + height / 4], dim=1)
        target = {"boxes": boxes, "labels": torch.randint(1, 91, (4,), generator=generator)}
        if detector == "maskrcnn":
            masks = torch.zeros(4, height, width, dtype=torch.uint8)
            for i, (a, b, c, d) in enumerate(boxes.long().tolist()):
                masks[i, b:d, a:c] = 1
            target["masks"] = masks
        targets.append({k: v.to(device) for k, v in target.items()})
    return targets


def _label(variant: str | None) -> str:
    return "unpatched" if variant is None else f"patched {variant}"


def _infer(model: torch.nn.Module, images: list, detections: dict, variant: str | None) -> None:
    detections[variant] = len(model(images)[0]["boxes"])


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: list, targets: list) -> None:
    losses = model(images, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


def _read_peak_rss_mib() -> float:
    # VmHWM is the process's peak resident set size; ru_maxrss is the same number where /proc is missing.
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(
    detector: str, variant: str | None, size: tuple[int, int], device: str, is_quick: bool
) -> dict[str, float]:
    """Peak memory of one inference in a fresh process (what a user's process would see)."""
    model = _prepare_inference(build(detector, variant, size, is_quick=is_quick), variant, device)
    images = _images(size, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
        with torch.inference_mode():
            model(images)
        torch.cuda.synchronize()
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "before_mib": before}
    gc.collect()
    # Writing "5" to clear_refs resets VmHWM to the current RSS (Linux), so the peak below is that of the inference
    # (weights, runtime and activations resident at once), not of building the model. Elsewhere it includes building.
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _read_peak_rss_mib()
    with torch.inference_mode():
        model(images)
    return {"peak_mib": _read_peak_rss_mib(), "before_mib": before}


def _memory(detector: str, variant: str | None, size: tuple[int, int], device: str, is_quick: bool) -> dict[str, float]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        json.dumps([detector, variant, list(size), device, is_quick]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(
    *,
    device: str = "cpu",
    detectors: tuple[str, ...] = tuple(DETECTORS),
    variants: tuple[str, ...] = VARIANTS,
    sizes: tuple[tuple[int, int], ...] = FULL_SIZES,
    train_size: tuple[int, int] | None = FULL_TRAIN_SIZE,
    warmup: int = 1,
    repeats: int = 3,
    use_memory: bool = True,
    is_quick: bool = False,
    quiet: bool = False,
) -> str:
    """Run the benchmark and return its markdown tables."""
    inference_rows, train_rows = [], []
    for detector in detectors:
        for size in sizes:
            base = build(detector, None, size, is_quick=is_quick)
            models = {None: base, **{v: build(detector, v, size, base=base) for v in variants}}
            models = {v: _prepare_inference(m, v, device) for v, m in models.items()}
            images = _images(size, device)
            detections: dict[str | None, int] = {}
            fns = {_label(v): functools.partial(_infer, m, images, detections, v) for v, m in models.items()}
            with torch.inference_mode():
                timings = time_interleaved(fns, warmup=warmup, repeats=repeats, device=device, baseline="unpatched")
            memory = {v: _memory(detector, v, size, device, is_quick) for v in models} if use_memory else {}
            for variant in models:
                label = _label(variant)
                row = [
                    detector,
                    f"{size[0]}x{size[1]}",
                    label,
                    f"{timings[label]['median_s'] * 1e3:.0f}",
                    f"{timings[label]['ratio']:.3f}",
                    f"{timings[label]['cpu_ratio']:.3f}",
                    str(detections.get(variant, "-")),
                ]
                if use_memory:
                    peak, unpatched_peak = memory[variant]["peak_mib"], memory[None]["peak_mib"]
                    row += [f"{peak:.0f}", f"{peak - unpatched_peak:+.0f}"]
                inference_rows.append(row)
            if not quiet:
                print(f"done inference {detector} {size}", file=sys.stderr, flush=True)
            del models, base
        if train_size is not None:
            base = build(detector, None, train_size, is_quick=is_quick)
            models = {None: base, **{v: build(detector, v, train_size, base=base) for v in variants if "-cl" not in v}}
            images = _images(train_size, device, count=2)
            targets = _targets(detector, train_size, device, count=2)
            steps = {}
            for variant, model in models.items():
                model.train().to(device)
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
                steps[_label(variant)] = functools.partial(_train_step, model, optimizer, images, targets)
            timings = time_interleaved(steps, warmup=warmup, repeats=repeats, device=device, baseline="unpatched")
            for variant in models:
                label = _label(variant)
                train_rows.append(
                    [
                        detector,
                        f"2x{train_size[0]}x{train_size[1]}",
                        label,
                        f"{timings[label]['median_s'] * 1e3:.0f}",
                        f"{timings[label]['ratio']:.3f}",
                        f"{timings[label]['cpu_ratio']:.3f}",
                    ]
                )
            if not quiet:
                print(f"done training {detector} {train_size}", file=sys.stderr, flush=True)
    headers = ["detector", "image", "model", "median ms", "x unpatched", "x unpatched (CPU time)", "detections"]
    if use_memory:
        headers += ["peak MiB", "vs unpatched"]
    text = "### Inference (batch 1)\n\n" + format_table(headers, inference_rows)
    if train_rows:
        text += "\n\n### Training step (batch 2: forward with losses, backward, SGD step)\n\n"
        text += format_table(
            ["detector", "batch", "model", "median ms", "x unpatched", "x unpatched (CPU time)"], train_rows
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=3, quick_help="tiny images and one round, for smoke tests")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=list(FULL_SIZES), help="HxW, e.g. 800x1216")
    parser.add_argument("--train-size", type=parse_size, default=FULL_TRAIN_SIZE, help="HxW of the training images")
    parser.add_argument("--no-train", action="store_true", help="skip the training step benchmark")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        detector, variant, size, device, is_quick = json.loads(args.memory_child)
        print(json.dumps(_memory_child(detector, variant, tuple(size), device, is_quick)))
        return 0
    sizes = (QUICK_SIZE,) if args.quick else tuple(args.sizes)
    train_size = None if args.no_train else (QUICK_SIZE if args.quick else args.train_size)
    repeats, warmup = rounds(args)
    device_type = torch.device(args.device).type
    memory_note = (
        "`torch.cuda.max_memory_allocated` during one inference (tensors only, allocator cache excluded)"
        if device_type == "cuda"
        else "peak resident set size during one inference in a fresh process (VmHWM, reset via /proc/self/clear_refs "
        "after building the model; it includes the Python/torch runtime and the weights, so compare the difference "
        "column)"
    )
    header = [
        f"- {warmup} warm-up + {repeats} interleaved timed rounds, median; inference under `torch.inference_mode()`; "
        "`x unpatched`: median over rounds of (time / unpatched time in the same round), for wall time and for the "
        "process's CPU time (steadier on a shared machine: it leaves out time spent waiting for a core)",
        "- random weights with a fixed head workload: `rpn_nms_thresh=1.0` (the RPN keeps its cap of 1000 proposals) "
        "and `box_score_thresh=1.01` (the box head scores them all and keeps none: 0 detections, no mask head work); "
        "transform keeps the image size; `lite-cl`: the upsampler's weights in channels_last",
        f"- peak memory: {memory_note}",
    ]
    if train_size is not None:
        header.append(
            f"- training step at {train_size[0]}x{train_size[1]} (smaller than 800x1216 to keep the CPU run short), "
            "2 images with 4 random boxes each, upsampler unfused and trained with the detector"
        )
    for detector in args.detectors:
        with MachineLoad() as load:
            tables = run(
                device=args.device,
                detectors=(detector,),
                variants=tuple(args.variants),
                sizes=sizes,
                train_size=train_size,
                warmup=warmup,
                repeats=repeats,
                use_memory=not args.no_memory,
                is_quick=args.quick,
                quiet=args.quiet,
            )
        title = f"## Whole detector: {detector} R50-FPN ({device_type})"
        lines = header_lines(title, quick=args.quick, device=args.device, dtypes=[torch.float32])
        body = "\n".join(lines + header + load.lines()) + "\n\n" + tables
        # One section per detector, written as soon as it is done, so a long run leaves results as it goes.
        publish(body, f"detectors-{device_type}-{detector}", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
