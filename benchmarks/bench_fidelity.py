"""Held-out feature fidelity of the shipped SRF generators vs nearest, bilinear and bicubic interpolation.

For each held-out image I: P_lr = F(I downsampled by 0.5), P_tr = F(I), with F the frozen extractor the generators
were trained against (the backbone + FPN of the detector shipped in ``weights/``). Each method upsamples P_lr level i
to the size of P_tr level i; we report L1 (Eq. 2's term), PSNR and cosine similarity per level, averaged over images.

Usage: ``python benchmarks/bench_fidelity.py --images DIR [--quick]`` (DIR: held-out photos, e.g. the DeepForest
validation tiles written by ``examples/deepforest/prepare.py``; without ``--images``, the held-out image committed with
the tests).

Any trained pair: ``--extractor RUN`` (a baseline / stage-2 / stage-3 run folder, or its ``checkpoint.safetensors``,
also one under ``checkpoints/step_N/``; default: the shipped detector) and ``--generator PATH`` (repeatable: a
``save_pretrained`` folder such as ``<stage-1 run>/generator``, or a shipped name; default: every shipped generator
when ``--extractor`` is not given, none otherwise). I_lr is made with ``--degradation`` (default bilinear) and images
are resized as the extractor's run trained (its ``min_size`` / ``max_size``), unchanged for the shipped one.

A guided generator (``variant="guided"``) is measured as stage 1 trains it: at every level but the FPN's finest it gets
the FPN lateral map of I_lr as guide (``fidelity.guided_feature_pairs`` with ``pyramid.guide_sources``); the
interpolations and the lite / paper generators never get one.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from _common import benchmark_parser, format_table, header_lines, publish
from torchvision.transforms import v2

from srf_upsample import SRFUpsample, list_shipped
from srf_upsample.train.data import read_image
from srf_upsample.train.fidelity import (
    FIDELITY_METRICS,
    INTERPOLATIONS,
    feature_pairs,
    fidelity,
    guided_feature_pairs,
)
from srf_upsample.train.models import level_keys
from srf_upsample.train.pyramid import guide_sources, lateral_blocks
from srf_upsample.train.run_folder import CHECKPOINT_NAME, MANIFEST_NAME, load_trained_detector
from srf_upsample.train.shipped import DEFAULT_DETECTOR, load_shipped_extractor

REPO = Path(__file__).resolve().parents[1]
LEVELS = ("P2", "P3", "P4", "P5")
EXTRACTOR_STAGES = ("baseline", "stage2", "stage3")


def load_images(folder: Path, limit: int | None, resize: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """The ``.png`` / ``.jpg`` images of ``folder`` (sorted), resized shorter side ``min_size`` when ``resize``."""
    if not folder.is_dir():
        raise ValueError(f"--images {str(folder)!r} is not a folder; pass a folder of held-out .png/.jpg images.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    if not paths:
        raise ValueError(f"No .png/.jpg images in {str(folder)!r}.")
    images = [read_image(p) for p in paths]
    if resize is None:
        return images
    min_size, max_size = resize
    out = []
    for image in images:
        height, width = image.shape[-2:]
        scale = min(min_size / min(height, width), max_size / max(height, width))
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        out.append(v2.functional.resize(image, size))  # as CocoDetectionDataset resizes for training
    return out


def load_extractor(value: str | None) -> tuple[torch.nn.Module, list[str], list[str], str, tuple[int, int] | None]:
    """F from ``--extractor``: ``(extractor, FPN keys, level names, label, (min_size, max_size) or None)``."""
    if value is None:
        return load_shipped_extractor(), ["0", "1", "2", "3"], list(LEVELS), f"weights/{DEFAULT_DETECTOR}", None
    path = Path(value)
    if path.is_file():
        if path.name != CHECKPOINT_NAME:
            raise ValueError(
                f"--extractor {value!r} is a file but not a trainer {CHECKPOINT_NAME}; pass a run folder or its "
                f"{CHECKPOINT_NAME}."
            )
        path = path.parent
    if not path.is_dir():
        raise ValueError(
            f"--extractor {value!r} does not exist; pass a baseline/stage2/stage3 run folder (with {MANIFEST_NAME} "
            f"and {CHECKPOINT_NAME}) or that {CHECKPOINT_NAME}."
        )
    if not (path / MANIFEST_NAME).is_file() or not (path / CHECKPOINT_NAME).is_file():
        raise ValueError(
            f"--extractor {value!r} is not a trained run: {str(path)!r} lacks {MANIFEST_NAME} or {CHECKPOINT_NAME}; "
            "pass the --output-dir of a baseline/stage2/stage3 run."
        )
    detector, manifest = load_trained_detector(path, expected=EXTRACTOR_STAGES)
    config = manifest["config"]
    levels = manifest.get("levels") or [2, 3, 4, 5]
    keys = level_keys(config["detector"], levels)
    extractor = detector.backbone.eval().requires_grad_(False)
    return extractor, keys, [f"P{level}" for level in levels], str(value), (config["min_size"], config["max_size"])


def load_generator(value: str, channels: int) -> SRFUpsample:
    """G from ``--generator``: a ``save_pretrained`` folder or a shipped name, checked against F's width."""
    path = Path(value)
    if not path.is_dir() and value not in list_shipped():
        raise ValueError(
            f"--generator {value!r} is neither a folder nor a shipped generator ({list_shipped()}); pass a "
            "save_pretrained folder, e.g. <stage-1 run>/generator."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(
            f"--generator {value!r} holds no config.json: not a save_pretrained folder (e.g. <stage-1 run>/generator)."
        )
    generator = SRFUpsample.from_pretrained(value).eval()
    if generator.in_channels != channels:
        raise ValueError(
            f"--generator {value!r} upsamples {generator.in_channels}-channel features but the extractor's FPN has "
            f"{channels} channels; pass the generator trained against this extractor."
        )
    return generator


def check_guided_generator(
    name: str, generator: torch.nn.Module, extractor: torch.nn.Module, keys: list[str], extractor_label: str
) -> None:
    """Check that F can give ``generator`` the guides stage 1 feeds it; nothing to check for an unguided one.

    A guided G (``accepts_guide``) is measured with, at each level of ``keys`` but the FPN's finest, the lateral map
    of I_lr (``pyramid.guide_sources``): F needs a torchvision FPN's ``fpn.inner_blocks`` (hooked by
    ``fidelity.guided_feature_pairs``) whose width is the generator's ``guide_channels``, and a level with a guide.
    Otherwise a ValueError naming the generator and what to pass, never a silent unguided measurement.
    """
    if not getattr(generator, "accepts_guide", False):
        return
    what = (
        f"generator {name!r} is a guided generator (variant='guided'), measured with the guide stage 1 feeds it: the "
        f"lateral map of the next-finer level of F's torchvision FPN (backbone.fpn.inner_blocks) on I_lr"
    )
    try:
        lateral_blocks(extractor)
    except ValueError as error:
        raise ValueError(
            f"{what}, but F ({extractor_label}, a {type(extractor).__name__}) has no fpn.inner_blocks to take it "
            "from; pass an extractor with a torchvision FPN (a baseline/stage2/stage3 run folder or the shipped "
            "detector), or a lite/paper generator."
        ) from error
    channels = getattr(extractor, "out_channels", None)
    if channels is not None and generator.guide_channels != channels:
        raise ValueError(
            f"{what}, but it takes {generator.guide_channels}-channel guides and F's FPN ({extractor_label}) has "
            f"{channels} channels; pass the guided generator trained against this extractor."
        )
    if all(source is None for source in guide_sources(keys)):
        raise ValueError(
            f"{what}, but F's levels ({extractor_label}: FPN keys {keys}) hold only the FPN's finest level, where it "
            "runs unguided; pass an extractor trained with a coarser level (e.g. levels [2, 3, 4, 5])."
        )


def generator_method(generator: torch.nn.Module):
    """``upsample(x, size, guide=None)`` for :func:`fidelity.fidelity`: ``generator`` with the guide when given."""
    return lambda x, size, guide=None: (
        generator(x, size=size) if guide is None else generator(x, size=size, guide=guide)
    )


def main(argv: list[str] | None = None) -> int:
    """Score the methods; gradients are off inside only (callers such as tests keep their autograd state)."""
    with torch.no_grad():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = benchmark_parser(__doc__, repeats=None, warmup=False, quick_help="one image, nothing written (smoke test)")
    parser.add_argument("--images", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument(
        "--extractor",
        default=None,
        help="F: a baseline/stage2/stage3 run folder or its checkpoint.safetensors (default: the shipped detector)",
    )
    parser.add_argument(
        "--generator",
        action="append",
        default=None,
        help="a save_pretrained generator folder or shipped name; repeatable (default: the shipped generators "
        "without --extractor)",
    )
    parser.add_argument("--degradation", default="bilinear", choices=list(INTERPOLATIONS), help="how I_lr is made")
    args = parser.parse_args(argv)
    # A quick run scores one image: not a result to keep.
    args.no_write = args.no_write or args.quick
    try:
        extractor, keys, level_names, extractor_label, resize = load_extractor(args.extractor)
        channels = extractor.out_channels
        names = args.generator if args.generator is not None else ([] if args.extractor else list_shipped())
        generators = {name: load_generator(name, channels) for name in names}
        for name, generator in generators.items():
            check_guided_generator(name, generator, extractor, keys, extractor_label)
        images = load_images(args.images, 1 if args.quick else args.limit, resize)
    except ValueError as error:
        parser.error(str(error))
    methods = dict(INTERPOLATIONS)
    for name, generator in generators.items():
        methods[name] = generator_method(generator)
    # The guided generators get the guides of stage 1; the other methods are measured exactly as before.
    guided = {name for name, generator in generators.items() if generator.accepts_guide}
    scores: dict[str, list[list[dict[str, float]]]] = {name: [] for name in methods}
    for image in images:
        if guided:
            low, target, guides = guided_feature_pairs(
                extractor, image, keys, guide_sources(keys), degradation=args.degradation
            )
        else:
            (low, target), guides = feature_pairs(extractor, image, keys, degradation=args.degradation), None
        for name, method in methods.items():
            scores[name].append(fidelity(method, low, target, guides if name in guided else None))
    rows = []
    for name, per_image in scores.items():
        for index, level in enumerate(level_names):
            cells = [statistics.mean(image[index][metric] for image in per_image) for metric in FIDELITY_METRICS]
            rows.append([name, level, f"{cells[0]:.4f}", f"{cells[1]:.2f}", f"{cells[2]:.4f}"])
        means = [
            statistics.mean(statistics.mean(im[i][m] for im in per_image) for i in range(len(level_names)))
            for m in FIDELITY_METRICS
        ]
        rows.append([name, "mean", f"{means[0]:.4f}", f"{means[1]:.2f}", f"{means[2]:.4f}"])
    table = format_table(["method", "level", "L1 (lower is better)", "PSNR dB", "cosine"], rows)
    try:
        images_label = str(args.images.resolve().relative_to(REPO))
    except ValueError:
        images_label = str(args.images)
    lines = [
        *header_lines(
            "## Held-out feature fidelity of the shipped generators", quick=args.quick, dtypes=[torch.float32]
        ),
        f"- {len(images)} held-out image(s) from `{images_label}`; F = the backbone + FPN of `{extractor_label}`"
        f"{'' if resize is None else f' (images resized as it trained: {resize[0]} / {resize[1]} px)'}; "
        f"I_lr = {args.degradation} x0.5",
        "- per level: the method's upsampling of F(I_lr) level i compared with F(I) level i, averaged over images",
        *(
            [
                f"- guided generator(s) {', '.join(f'`{name}`' for name in sorted(guided))}: given at every level but "
                "the FPN's finest the FPN lateral map of I_lr as guide, as stage 1 feeds it"
            ]
            if guided
            else []
        ),
        "",
        table,
    ]
    publish("\n".join(lines), "fidelity", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
