"""Quickstart: patch a detector with a shipped SRF generator, run it on a real photo, and draw the paper's Fig. 2.

Runs offline with nothing but what ships with the package:
- ``weights/fasterrcnn-mobilenetv2-fpn-deepforest``: a torchvision Faster R-CNN (ImageNet MobileNetV2 + FPN) trained by
  our trainer on DeepForest's aerial tree-crown photos (MIT);
- ``weights/srf-paper-mobilenetv2-fpn`` and ``weights/srf-lite-mobilenetv2-fpn``: SRF generators trained (stage 1,
  SRF-GAN) against that detector's FPN;
- ``examples/data/deepforest_val_tile.png``: a held-out aerial photo (DeepForest, MIT).

(a) the detector as trained vs the same detector with its FPN upsampling replaced by the SRF generator;
(b) Fig. 2 of the paper: one P2 feature map of the photo, from the half-size photo's P2 upsampled by nearest,
bilinear, bicubic and SRF, next to the full-size photo's P2 (the target).

Usage: ``python examples/quickstart.py [--image PATH] [--out examples/output]``
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from srf_upsample import SRFUpsample, patch_fpn  # noqa: E402
from srf_upsample.train.data import read_image  # noqa: E402
from srf_upsample.train.fidelity import INTERPOLATIONS, feature_pairs, fidelity  # noqa: E402
from srf_upsample.train.shipped import load_shipped_detector  # noqa: E402

HERE = Path(__file__).resolve().parent
GENERATORS = {"SRF (paper G)": "srf-paper-mobilenetv2-fpn", "SRF (lite G)": "srf-lite-mobilenetv2-fpn"}
SCORE_THRESHOLD = 0.5


def draw_detections(image: torch.Tensor, results: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 5.3))
    for ax, (title, output) in zip(axes, results.items(), strict=True):
        ax.imshow(image.permute(1, 2, 0).numpy())
        keep = output["scores"] >= SCORE_THRESHOLD
        for x0, y0, x1, y1 in output["boxes"][keep].tolist():
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", linewidth=1.2))
        ax.set_title(f"{title}: {int(keep.sum())} trees (score >= {SCORE_THRESHOLD})")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_feature_maps(maps: dict[str, torch.Tensor], scores: dict[str, float], path: Path) -> None:
    target = maps["target P2 (full-size photo)"]
    low, high = target.min().item(), target.max().item()
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.6))
    for ax, (title, feature) in zip(axes, maps.items(), strict=True):
        ax.imshow(feature.numpy(), cmap="viridis", vmin=low, vmax=high)
        ax.set_title(title if title not in scores else f"{title}\nL1 {scores[title]:.3f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("P2 of FPN (one channel): half-size photo upsampled x2 vs the full-size photo's P2", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=HERE / "data" / "deepforest_val_tile.png")
    parser.add_argument("--out", type=Path, default=HERE / "output")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    image = read_image(args.image)

    # (a) The detector as users hold it, then patched: one shared SRF generator replaces its FPN's upsampling.
    detector, spec = load_shipped_detector()
    extractor = copy.deepcopy(detector.backbone)  # the unpatched F, for (b)
    results = {"as trained (nearest)": detector([image])[0]}
    generator = SRFUpsample.from_pretrained(GENERATORS["SRF (lite G)"])
    detector, report = patch_fpn(detector, upsampler=generator)
    print(report)
    results["patched with SRF (lite G)"] = detector([image])[0]
    draw_detections(image, results, args.out / "detections.png")
    for title, output in results.items():
        print(f"{title}: {int((output['scores'] >= SCORE_THRESHOLD).sum())} detections >= {SCORE_THRESHOLD}")

    # (b) Fig. 2: P2 of the half-size photo upsampled to P2 of the full-size photo.
    low, target = feature_pairs(extractor, image, ["0"])
    channel = int(target[0][0].flatten(1).var(dim=1).argmax())  # the most structured channel of the target
    methods = dict(INTERPOLATIONS)
    for title, name in GENERATORS.items():
        srf = SRFUpsample.from_pretrained(name)
        methods[title] = lambda x, size, g=srf: g(x, size=size)
    # F sees the photo padded to a multiple of 64; show only the photo's own P2 pixels (stride 4).
    rows, cols = -(-image.shape[-2] // 4), -(-image.shape[-1] // 4)
    maps = {"target P2 (full-size photo)": target[0][0, channel, :rows, :cols]}
    scores = {}
    for title, method in methods.items():
        maps[title] = method(low[0], tuple(target[0].shape[-2:]))[0, channel, :rows, :cols]
        scores[title] = fidelity(method, low, target)[0]["L1"]
    draw_feature_maps(maps, scores, args.out / "fig2_p2_features.png")
    print(
        "P2 L1 to the full-size photo's features (all channels):",
        ", ".join(f"{title} {value:.4f}" for title, value in scores.items()),
    )
    print(f"wrote {args.out / 'detections.png'} and {args.out / 'fig2_p2_features.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
