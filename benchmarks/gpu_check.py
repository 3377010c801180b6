"""On a CUDA machine: every trainer stage and evaluation for a few iterations (float32, bf16 and fp16 autocast) at
real image sizes, then detector latency with and without SRF. Prints a short report; at most a few minutes.

Training check: a synthetic COCO-format set of odd-sized images (533x640, 193x290, ...) resized to 800 as the
paper configs do; Mask R-CNN R50-FPN with random weights (``allow_untrained_extractor``: this checks the machinery,
not accuracy); stage 1 -> stage 2 -> stage 3 -> evaluate, 3 iterations each, batch 2.

Latency: batch 1 at 800x1216, Mask R-CNN R50-FPN, unpatched / lite-patched / paper-patched (fused generators),
float32 and fp16 autocast, CUDA-synchronised wall time, median of ``--repeats`` interleaved rounds:
- backbone + FPN: the only part the patch changes;
- the whole detector with fixed-work heads, as in ``benchmarks/bench_detectors.py``: random weights, the RPN's
  convolutions run but the same 1000 seeded proposals go to the box head (``FixedWorkRPN``), and
  ``box_score_thresh=1.01`` keeps none of them, so the heads' work does not depend on the features.

Usage: ``python benchmarks/gpu_check.py [--skip-training] [--skip-latency] [--repeats 20]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import format_table, time_interleaved
from bench_detectors import FixedWorkRPN

from srf_upsample import SRFUpsample, patch_fpn
from srf_upsample.train.cli import main as train_main
from srf_upsample.train.synthetic import write_tiny_coco

SIZES = [(533, 640), (193, 290), (682, 1024), (480, 640)]
TINY_G = ["--set", "discriminator_hidden_channels=[64,64,64]"]


def check_training(
    work: Path, device: str = "cuda", detector: str = "maskrcnn", backbone: str = "resnet50", min_size: int = 800
) -> list[list[str]]:
    """Stage 1 -> 2 -> 3 -> evaluate for each precision; one row per (precision, stage)."""
    cuda = device == "cuda"
    image_dir, ann = write_tiny_coco(work / "coco", sizes=SIZES)
    data = [
        "--data-root",
        str(image_dir),
        "--ann-file",
        str(ann),
        "--eval-data-root",
        str(image_dir),
        "--eval-ann-file",
        str(ann),
    ]
    common = [
        *data,
        "--detector",
        detector,
        "--backbone",
        backbone,
        "--min-size",
        str(min_size),
        "--max-size",
        "1333",
        "--batch-size",
        "2",
        "--max-iters",
        "3",
        "--device",
        device,
        "--quiet",
        "--log-level",
        "WARNING",
        "--allow-untrained-extractor",
        "--set",
        "warmup_iters=0",
        "--set",
        "milestones=[2]",
        # the paper's lr 0.02 is for 16 images; 2 images and no warm-up diverge on random weights
        "--lr",
        "0.0025",
        "--num-workers",
        "2",
        *TINY_G,
    ]
    rows = []
    for amp in (None, "bf16", "fp16"):
        name = amp or "fp32"
        amp_args = ["--amp", amp] if amp else []
        out = work / name
        chain = [
            ("stage1", ["--set", "generator_variant=lite"]),
            ("stage2", ["--init", str(out / "stage1")]),
            ("stage3", ["--init", str(out / "stage2"), "--reuse", "extractor"]),
        ]
        for stage, extra in chain:
            started = time.perf_counter()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                code = train_main([stage, *common, *amp_args, *extra, "--output-dir", str(out / stage)])
            except Exception as error:  # report and go on: the next precision may still work
                print(f"{name} {stage}: {type(error).__name__}: {error}", file=sys.stderr)
                code = type(error).__name__
            seconds = time.perf_counter() - started
            log = (
                [json.loads(line) for line in (out / stage / "log.jsonl").read_text().splitlines()] if code == 0 else []
            )
            losses = log[-1]["losses"] if log else {}
            finite = all(math.isfinite(v) for v in losses.values()) if losses else False
            main_loss = losses.get("loss_g", losses.get("loss_int", losses.get("loss", float("nan"))))
            rows.append(
                [
                    name,
                    stage,
                    "ok" if code == 0 and finite else f"FAILED (exit {code})",
                    f"{seconds:.1f}",
                    f"{main_loss:.3f}",
                    f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if cuda else "",
                ]
            )
        started = time.perf_counter()
        try:
            code = train_main(
                [
                    "evaluate",
                    "--init",
                    str(out / "stage3"),
                    *data[4:],
                    "--device",
                    device,
                    "--quiet",
                    "--log-level",
                    "WARNING",
                ]
            )
        except Exception as error:
            print(f"{name} evaluate: {type(error).__name__}: {error}", file=sys.stderr)
            code = type(error).__name__
        metrics = json.loads((out / "stage3" / "metrics.json").read_text()) if code == 0 else {}
        expected = "segm" if detector == "maskrcnn" else "bbox"
        rows.append(
            [
                name,
                "evaluate",
                "ok" if code == 0 and expected in metrics else f"FAILED (exit {code})",
                f"{time.perf_counter() - started:.1f}",
                f"AP {metrics.get('bbox', {}).get('AP', float('nan')):.3f}",
                "",
            ]
        )
    return rows


def _detector(upsampler: str) -> torch.nn.Module:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=1.01)
    model.rpn = FixedWorkRPN(model.rpn)
    if upsampler != "nearest":
        generator = SRFUpsample(256, variant=upsampler).eval().fuse()
        patch_fpn(model, upsampler=generator, share=True, strict=True)
    return model.cuda().eval()


def check_latency(repeats: int) -> list[list[str]]:
    """Paired latency ratios to the unpatched detector: backbone + FPN and the fixed-work whole detector."""
    torch.manual_seed(0)
    image = torch.rand(3, 800, 1216, device="cuda")
    batch = torch.rand(1, 3, 800, 1216, device="cuda")
    models = {name: _detector(name) for name in ("nearest", "lite", "paper")}
    rows = []
    for precision in ("fp32", "fp16"):

        def autocast(precision=precision):
            return torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16")

        def backbone_fn(model):
            def run():
                with torch.no_grad(), autocast():
                    model.backbone(batch)

            return run

        def detector_fn(model):
            def run():
                with torch.no_grad(), autocast():
                    model([image])

            return run

        for part, make in (("backbone + FPN", backbone_fn), ("whole detector (fixed-work heads)", detector_fn)):
            timings = time_interleaved(
                {name: make(model) for name, model in models.items()},
                warmup=3,
                repeats=repeats,
                device="cuda",
                baseline="nearest",
            )
            for name in models:
                rows.append(
                    [precision, part, name, f"{1000 * timings[name]['median_s']:.2f}", f"{timings[name]['ratio']:.2f}x"]
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run the training check on the CPU with a small detector (tests this script)",
    )
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        with tempfile.TemporaryDirectory() as tmp:
            rows = check_training(Path(tmp), "cpu", "fasterrcnn", "resnet18", 160)
        print(format_table(["precision", "stage", "result", "seconds", "last loss / AP", "peak GiB"], rows))
        return 1 if any(row[2] != "ok" for row in rows) else 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check.", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    failed = False
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as tmp:
            rows = check_training(Path(tmp))
        print("\nTraining stages on CUDA (Mask R-CNN R50-FPN, images resized to 800, 3 iterations each, batch 2):\n")
        print(format_table(["precision", "stage", "result", "seconds", "last loss / AP", "peak GiB"], rows))
        failed = any(row[2] != "ok" for row in rows)
    if not args.skip_latency:
        rows = check_latency(args.repeats)
        print(
            f"\nLatency, batch 1 at 800x1216, median of {args.repeats} interleaved rounds (ratio: paired, to "
            "the unpatched detector):\n"
        )
        print(format_table(["precision", "part", "upsampler", "median ms", "ratio"], rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
