"""Picture of the DeepForest run: detections of the baseline and the SRF detectors on one validation tile, and their
P2 feature maps (as in the paper's Fig. 2).

Usage: ``python examples/deepforest/figure.py --run runs/deepforest/seed0 --out docs/images/deepforest_detections.png``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from srf_upsample import SRFUpsample, patch_fpn  # noqa: E402
from srf_upsample.hub import load_state_dict_strict, read_safetensors  # noqa: E402
from srf_upsample.train.data import read_image  # noqa: E402
from srf_upsample.train.models import build_detector  # noqa: E402
from srf_upsample.train.pyramid import prepare_batch  # noqa: E402

ARMS = {"baseline": "baseline", "SRF (paper G)": "srf_paper/stage3", "SRF (lite G)": "srf_lite/stage3"}
SCORE_THRESHOLD = 0.5


def load_run_detector(stage_dir: Path) -> nn.Module:
    """Rebuild the detector a trainer stage wrote (patched with its generator when it has one), in eval mode."""
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    config = manifest["config"]
    model = build_detector(
        config["detector"], config["backbone"], len(manifest["category_ids"]) + 1,
        min_size=config["min_size"], max_size=config["max_size"], anchor_sizes=config["anchor_sizes"],
        detector_kwargs=config.get("detector_kwargs"), frozen_batchnorm=True,
    )
    if manifest["stage"] != "baseline":
        patch_fpn(model, upsampler=SRFUpsample.from_pretrained(stage_dir / "generator"))
    state = read_safetensors(stage_dir / "checkpoint.safetensors")
    weights = {key.removeprefix("detector."): value for key, value in state.items() if key.startswith("detector.")}
    load_state_dict_strict(model, weights, source=f"{stage_dir}/checkpoint.safetensors")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/deepforest/seed0"))
    parser.add_argument("--tile", type=Path, default=Path(__file__).resolve().parents[1] / "data"
                        / "deepforest_val_tile.png")
    parser.add_argument("--out", type=Path, default=Path("docs/images/deepforest_detections.png"))
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    image = read_image(args.tile)
    arms = {title: args.run / sub for title, sub in ARMS.items() if (args.run / sub / "manifest.json").is_file()}
    fig, axes = plt.subplots(2, len(arms), figsize=(4.6 * len(arms), 9.4), squeeze=False)
    for column, (title, stage_dir) in enumerate(arms.items()):
        model = load_run_detector(stage_dir)
        output = model([image])[0]
        keep = output["scores"] >= SCORE_THRESHOLD
        ax = axes[0, column]
        ax.imshow(image.permute(1, 2, 0).numpy())
        for x0, y0, x1, y1 in output["boxes"][keep].tolist():
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", linewidth=1.2))
        ax.set_title(f"{title}: {int(keep.sum())} trees (score >= {SCORE_THRESHOLD})", fontsize=10)
        ax.axis("off")
        # The backbone sees the tile padded to a multiple of 64; show only the tile's own P2 pixels (stride 4).
        p2 = model.backbone(prepare_batch([image]))["0"][0, :, : -(-image.shape[-2] // 4), : -(-image.shape[-1] // 4)]
        axes[1, column].imshow(p2.abs().mean(0).numpy(), cmap="magma")
        axes[1, column].set_title(f"{title}: P2, mean |activation| over channels", fontsize=10)
        axes[1, column].axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
