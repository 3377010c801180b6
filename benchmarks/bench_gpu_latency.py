"""GPU latency of patching the FPN: Mask R-CNN R50-FPN unpatched, lite and paper, fp32 and fp16, in one run.

Run from the repository root (the first thing a session lent a GPU runs, see ``benchmarks/gpu_session.sh``):
    python benchmarks/bench_gpu_latency.py --out DIR             # CUDA, 800x1216, 10 warm-up + 50 timed rounds
    python benchmarks/bench_gpu_latency.py --device cpu --quick  # CPU smoke test: 64x96, 16 proposals, one round

It prints the markdown and writes it as the ``gpu-latency`` section of RESULTS.md (``--no-write``: print only); with
``--out DIR`` it also writes ``gpu_latency.md`` and ``gpu_latency.json`` (the same numbers and every sample) there,
which is what comes back from a lent GPU machine.

The detector is torchvision's Mask R-CNN R50-FPN with random weights (speed does not depend on them), batch 1, its
transform keeping the image size, and the fixed head workload of ``benchmarks/bench_detectors.py``: the RPN runs its
head convolutions but passes on the same 1000 seeded proposals whatever the features say (``FixedWorkRPN``), and
``box_score_thresh=1.01`` makes the box head score every proposal and keep none (0 detections, no mask head work),
so the heads cost the same in every model. Patched models are deep copies whose FPN top-down ``F.interpolate``
calls are replaced by ``patch_fpn`` with one ``SRFUpsample(256, variant=...)`` (random weights, no download), fused
for inference.

Two parts are timed, each as its own interleaved group (round r runs every model once, in an order rotated by r):
``backbone + FPN`` on the transformed image batch (the only part the patch changes) and the ``whole detector`` on
the image (transform, backbone + FPN, fixed-work heads, postprocessing). fp32 runs as is, fp16 under
``torch.autocast`` (the models stay float32). On CUDA each call is timed with CUDA events recorded around it after
warm-up; on CPU with ``time.perf_counter``. Reported per model: median, interquartile range, min and max in ms, and
``x unpatched``, the median over rounds of (model time / unpatched time in the same round) with its IQR. Params and
FLOPs (``torch.utils.flop_counter.FlopCounterMode``, fp32, 2 per multiply-add) come from the same models.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import benchmark_parser, cudnn_benchmark, format_table, header_lines, interleaved_rounds, publish, rounds  # noqa: E402
from bench_backbone_fpn import count_flops  # noqa: E402
from bench_detectors import FixedWorkRPN  # noqa: E402
from bench_detectors import build as build_detector  # noqa: E402

from srf_upsample import SRFUpsample  # noqa: E402

__all__ = ["main", "run"]

FULL_SIZE = (800, 1216)
QUICK_SIZE = (64, 96)
QUICK_PROPOSALS = 16
SECTION = "gpu-latency"
MODELS = ("unpatched", "lite", "paper")
# fp32 and fp16 are the pair and the default; bf16 on request (and in the CPU smoke test, where fp16
# convolutions run about 10x slower than fp32 and would make the test minutes long).
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_DTYPES = ("fp32", "fp16")
PROPOSALS = 1000  # bench_detectors.FixedWorkRPN's default: the fixed head workload
MARKDOWN_NAME = "gpu_latency.md"
JSON_NAME = "gpu_latency.json"


def build_models(
    size: tuple[int, int], variants: tuple[str, ...], device: torch.device, *, proposals: int = PROPOSALS
) -> dict[str, nn.Module]:
    """The unpatched Mask R-CNN and a patched copy per variant, with fixed-work heads, fused, in eval mode."""
    base = build_detector("maskrcnn", None, size)
    models = {"unpatched": base, **{v: build_detector("maskrcnn", v, size, base=base) for v in variants}}
    for model in models.values():
        model.eval().to(device)
        model.rpn = FixedWorkRPN(model.rpn, count=proposals)
        for module in model.modules():
            if isinstance(module, SRFUpsample):
                module.fuse()
    return models


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes: CUDA events around it on a GPU, ``time.perf_counter`` on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_time = time.perf_counter()
    fn()
    return time.perf_counter() - start_time


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = torch.tensor(values, dtype=torch.float64).quantile(torch.tensor([0.25, 0.5, 0.75]).double())
    return q1.item(), median.item(), q3.item()


def summarize(samples: dict[str, list[float]], baseline: str) -> dict[str, dict[str, object]]:
    """Median, quartiles, min and max in ms per model, and the paired ratio to ``baseline`` with its quartiles."""
    summary = {}
    for name, values in samples.items():
        q1, median, q3 = _quartiles(values)
        ratios = [t / b for t, b in zip(values, samples[baseline], strict=True)]
        ratio_q1, ratio, ratio_q3 = _quartiles(ratios)
        summary[name] = {
            "median_ms": median * 1e3,
            "q1_ms": q1 * 1e3,
            "q3_ms": q3 * 1e3,
            "min_ms": min(values) * 1e3,
            "max_ms": max(values) * 1e3,
            "ratio": ratio,
            "ratio_q1": ratio_q1,
            "ratio_q3": ratio_q3,
            "samples_ms": [v * 1e3 for v in values],
        }
    return summary


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _backbone_call(model: nn.Module, batch: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], object]:
    def call() -> object:
        with _autocast(batch.device, dtype):
            return model.backbone(batch)

    return call


def _detector_call(
    model: nn.Module, image: torch.Tensor, dtype: torch.dtype | None, detections: dict[str, int], name: str
) -> Callable[[], object]:
    def call() -> object:
        with _autocast(image.device, dtype):
            output = model([image])
        detections[name] = len(output[0]["boxes"])
        return output

    return call


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_costs(models: dict[str, nn.Module], image: torch.Tensor, batch: torch.Tensor) -> dict[str, dict[str, int]]:
    """Params (generator, fused; detector) and fp32 FLOPs (backbone + FPN; whole detector) per model."""
    costs = {}
    for name, model in models.items():
        backbone_flops, _ = count_flops(model.backbone, (batch,))
        detector_flops, proposals = count_flops(model, ([image],))
        generator = next((m for m in model.modules() if isinstance(m, SRFUpsample)), None)
        costs[name] = {
            "generator_params": _params(generator) if generator is not None else 0,
            "detector_params": _params(model),
            "backbone_fpn_flops": backbone_flops,
            "detector_flops": detector_flops,
            "rpn_proposals": proposals,
        }
    return costs


def run(
    *,
    device: torch.device,
    size: tuple[int, int],
    dtypes: tuple[str, ...],
    variants: tuple[str, ...],
    warmup: int,
    repeats: int,
    proposals: int = PROPOSALS,
    use_flops: bool,
) -> dict[str, object]:
    """Build the models, time both parts in each dtype and count costs; return everything as one JSON-able dict."""
    models = build_models(size, variants, device, proposals=proposals)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        # The backbone sees what the detector's transform makes of the image (normalised, padded to a multiple of 32).
        batch = models["unpatched"].transform([image])[0].tensors
    results = []
    detections: dict[str, dict[str, int]] = {}
    for dtype_name in dtypes:
        dtype, found = DTYPES[dtype_name], detections.setdefault(dtype_name, {})
        groups = {
            "backbone + FPN": {name: _backbone_call(model, batch, dtype) for name, model in models.items()},
            "whole detector": {
                name: _detector_call(model, image, dtype, found, name) for name, model in models.items()
            },
        }
        for part, fns in groups.items():
            with torch.inference_mode():
                samples = interleaved_rounds(
                    fns, warmup=warmup, repeats=repeats, device=device, measure=lambda fn: time_call(fn, device)
                )
            for name, entry in summarize(samples, baseline="unpatched").items():
                results.append({"dtype": dtype_name, "part": part, "model": name, **entry})
    costs = {}
    if use_flops:
        costs = count_costs(models, image, batch)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "image": list(size),
        "batch": 1,
        "warmup": warmup,
        "repeats": repeats,
        "proposals": proposals,
        "timer": "cuda events" if device.type == "cuda" else "time.perf_counter",
        "results": results,
        "detections": detections,
        "costs": costs,
    }


def _backend_lines(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return []
    return [
        f"- CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"cudnn.benchmark {torch.backends.cudnn.benchmark}, TF32 convolutions {torch.backends.cudnn.allow_tf32}, "
        f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}"
    ]


def _share(flops: int, base: int) -> str:
    return f"{flops / 1e9:.1f} ({(flops / base - 1) * 100:+.1f} %)"


def to_markdown(report: dict[str, object], header: list[str]) -> str:
    """The report as a markdown section: ``header`` (title, command, environment), latency, params and FLOPs."""
    lines = [
        *header,
        f"- timer: {report['timer']}, {report['warmup']} warm-up + {report['repeats']} timed rounds per part and "
        "dtype, models interleaved (order rotated each round); `x unpatched`: median over rounds of the paired ratio",
        f"- heads: fixed workload ({report['proposals']} seeded proposals, `box_score_thresh=1.01`); random weights; "
        "generators fused",
        "",
        "### Latency",
        "",
    ]
    rows = []
    for entry in report["results"]:
        is_detector = entry["part"] == "whole detector"
        rows.append(
            [
                entry["dtype"],
                entry["part"],
                entry["model"],
                f"{entry['median_ms']:.2f}",
                f"{entry['q1_ms']:.2f}-{entry['q3_ms']:.2f}",
                f"{entry['min_ms']:.2f}-{entry['max_ms']:.2f}",
                f"{entry['ratio']:.3f}",
                f"{entry['ratio_q1']:.3f}-{entry['ratio_q3']:.3f}",
                str(report["detections"][entry["dtype"]][entry["model"]]) if is_detector else "-",
            ]
        )
    headers = [
        "dtype",
        "part",
        "model",
        "median ms",
        "IQR ms",
        "min-max ms",
        "x unpatched",
        "x unpatched IQR",
        "detections",
    ]
    lines.append(format_table(headers, rows))
    costs = report["costs"]
    if costs:
        base = costs["unpatched"]
        cost_rows = [
            [
                name,
                f"{cost['generator_params']:,}",
                f"{cost['detector_params']:,}",
                _share(cost["backbone_fpn_flops"], base["backbone_fpn_flops"]),
                _share(cost["detector_flops"], base["detector_flops"]),
                str(cost["rpn_proposals"]),
            ]
            for name, cost in costs.items()
        ]
        cost_headers = [
            "model",
            "generator params (fused)",
            "detector params",
            "backbone + FPN GFLOPs (vs unpatched)",
            "whole detector GFLOPs (vs unpatched)",
            "RPN proposals",
        ]
        lines += ["", "### Params and FLOPs (fp32 count)", "", format_table(cost_headers, cost_rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        __doc__,
        repeats=50,
        warmup=False,
        quick_help="64x96 image, 16 proposals, one round: a CPU smoke test",
        size=FULL_SIZE,
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds before timing (default 10)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dtypes", nargs="+", default=list(DEFAULT_DTYPES), choices=list(DTYPES))
    parser.add_argument("--variants", nargs="+", default=list(MODELS[1:]), choices=list(MODELS[1:]))
    parser.add_argument("--proposals", type=int, default=PROPOSALS, help="fixed RPN proposals (default 1000)")
    parser.add_argument("--no-flops", action="store_true", help="skip the params and FLOP count")
    parser.add_argument("--out", type=Path, help=f"also write {MARKDOWN_NAME} and {JSON_NAME} into this folder")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; --device cpu runs the CPU smoke test.")
    repeats, warmup = rounds(args)
    size, proposals = (QUICK_SIZE, QUICK_PROPOSALS) if args.quick else (args.size, args.proposals)
    if repeats < 1 or warmup < 0 or proposals < 1:
        parser.error(f"--repeats and --proposals must be >= 1 and --warmup >= 0, got {repeats}, {proposals}, {warmup}.")
    # Fixed input sizes: on CUDA, let cuDNN pick its fastest convolution algorithms, as a deployed detector would.
    with cudnn_benchmark(True) if device.type == "cuda" else contextlib.nullcontext():
        report = run(
            device=device,
            size=size,
            dtypes=tuple(args.dtypes),
            variants=tuple(args.variants),
            warmup=warmup,
            repeats=repeats,
            proposals=proposals,
            use_flops=not args.no_flops,
        )
        # A CPU run only checks that the script works (tests/test_benchmarks.py); its title says so.
        title = f"## GPU latency: Mask R-CNN R50-FPN at {size[0]}x{size[1]}, batch 1 ({report['device_name']})"
        if device.type != "cuda":
            title += " — CPU run, not a GPU measurement"
        dtypes = [torch.float32] + [DTYPES[d] for d in args.dtypes if DTYPES[d] is not None]
        header = [*header_lines(title, quick=args.quick, device=device, dtypes=dtypes), *_backend_lines(device)]
    report["header"] = header
    markdown = to_markdown(report, header)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / MARKDOWN_NAME).write_text(markdown)
        (args.out / JSON_NAME).write_text(json.dumps(report, indent=1) + "\n")
    publish(markdown, SECTION, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
