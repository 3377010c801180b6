"""Held-out feature fidelity of the shipped SRF generators vs nearest, bilinear and bicubic interpolation.

For each held-out image I: P_lr = F(I downsampled by 0.5), P_tr = F(I), with F the frozen extractor the generators
were trained against (the backbone + FPN of the detector shipped in ``weights/``). Each method upsamples P_lr level i
to the size of P_tr level i; we report L1 (Eq. 2's term), PSNR and cosine similarity per level, averaged over images.

Usage: ``python benchmarks/bench_fidelity.py --images DIR [--quick]`` (DIR: held-out photos, e.g. the DeepForest
validation tiles written by ``examples/deepforest/prepare.py``; without ``--images``, the held-out image committed with
the tests).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from _common import benchmark_parser, format_table, header_lines, publish

from srf_upsample import SRFUpsample, list_shipped
from srf_upsample.train.data import read_image
from srf_upsample.train.fidelity import FIDELITY_METRICS, INTERPOLATIONS, feature_pairs, fidelity
from srf_upsample.train.shipped import DEFAULT_DETECTOR, load_shipped_extractor

REPO = Path(__file__).resolve().parents[1]
LEVELS = ("P2", "P3", "P4", "P5")


def load_images(folder: Path, limit: int | None) -> list[torch.Tensor]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    if not paths:
        raise ValueError(f"No .png/.jpg images in {str(folder)!r}.")
    return [read_image(p) for p in paths]


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=None, warmup=False, quick_help="one image, nothing written (smoke test)")
    parser.add_argument("--images", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    args = parser.parse_args(argv)
    # A quick run scores one image: not a result to keep.
    args.no_write = args.no_write or args.quick
    torch.set_grad_enabled(False)
    extractor = load_shipped_extractor()
    images = load_images(args.images, 1 if args.quick else args.limit)
    methods = dict(INTERPOLATIONS)
    for name in list_shipped():
        generator = SRFUpsample.from_pretrained(name).eval()
        methods[name] = lambda x, size, g=generator: g(x, size=size)
    scores: dict[str, list[list[dict[str, float]]]] = {name: [] for name in methods}
    for image in images:
        low, target = feature_pairs(extractor, image, ["0", "1", "2", "3"])
        for name, method in methods.items():
            scores[name].append(fidelity(method, low, target))
    rows = []
    for name, per_image in scores.items():
        for index, level in enumerate(LEVELS):
            cells = [statistics.mean(image[index][metric] for image in per_image) for metric in FIDELITY_METRICS]
            rows.append([name, level, f"{cells[0]:.4f}", f"{cells[1]:.2f}", f"{cells[2]:.4f}"])
        means = [
            statistics.mean(statistics.mean(im[i][m] for im in per_image) for i in range(len(LEVELS)))
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
        f"- {len(images)} held-out image(s) from `{images_label}`; F = the shipped extractor "
        f"(the backbone + FPN of `weights/{DEFAULT_DETECTOR}`); I_lr = bilinear x0.5",
        "- per level: the method's upsampling of F(I_lr) level i compared with F(I) level i, averaged over images",
        "",
        table,
    ]
    publish("\n".join(lines), "fidelity", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
