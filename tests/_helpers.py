"""Helpers shared by test modules (tests/ is on sys.path under pytest's default import mode)."""

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from srf_upsample import SRFUpsample

# A generator small enough for patching tests (8 hidden channels, one residual block), built per channel count.
SMALL_SRF = functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1)


class NearestUpsample(nn.Module):
    """Reference upsampler: exactly what a nearest-mode call site computes, so a patched model must be unchanged."""

    def __init__(self, in_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor, size=None, scale_factor=None) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``, as ``F.interpolate(..., mode="nearest")``."""
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")


def give_trained_weights(module: SRFUpsample) -> SRFUpsample:
    """Give a generator the kind of weights training leaves, in place; returns it (its mode unchanged).

    Fresh BN (mean 0, var 1, weight 1, bias 0) is almost the identity, and with norm="none" the last conv of each
    residual block starts at zero (the block is the identity), so fusing, exporting or comparing routes of a fresh
    generator would prove little. BN layers get random statistics and affine parameters, the last convs random weights.
    """
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)
        if module.norm == "none":
            for block in module.body:
                nn.init.kaiming_normal_(block.last_conv.weight, a=module.negative_slope, nonlinearity="leaky_relu")
                nn.init.uniform_(block.last_conv.bias, -0.1, 0.1)
    return module


def trained_looking(
    variant: str = "paper", channels: int = 8, num_blocks: int = 1, *, norm: str = "none", deconv_kernel: int = 6
) -> SRFUpsample:
    """A small eval-mode generator (8 hidden channels) with trained-looking weights (:func:`give_trained_weights`)."""
    module = SRFUpsample(
        channels, hidden_channels=8, num_blocks=num_blocks, variant=variant, norm=norm, deconv_kernel=deconv_kernel
    )
    return give_trained_weights(module).eval()


def quick_results(main: Callable[[list[str]], int], folder: Path) -> str:
    """Run a benchmark's ``main`` in quick mode, writing into ``folder/RESULTS.md``; the text it wrote.

    The run must succeed (``main`` returns 0).
    """
    path = folder / "RESULTS.md"
    assert main(["--quick", "--results", str(path)]) == 0
    return path.read_text()


def generator_parity(module: nn.Module, path: Path, **options) -> list:
    """``check_generator_parity`` of an exported upsampler on one thread, asserted within ``PARITY_TOLERANCE``.

    ``options`` go to ``srf_upsample.export.check_generator_parity`` (``sizes``, ``fuse``, ...); returns its results.
    """
    from srf_upsample.export import PARITY_TOLERANCE, check_generator_parity

    results = check_generator_parity(module, path, num_threads=1, **options)
    assert max(r.rel_error for r in results) <= PARITY_TOLERANCE, [str(r) for r in results]
    return results


def backbone_parity(model: nn.Module, path: Path, **options) -> list:
    """``check_backbone_parity`` of an exported backbone on one thread, asserted within ``PARITY_TOLERANCE``.

    ``options`` go to ``srf_upsample.export.check_backbone_parity`` (``image_size``, ...); returns its results.
    """
    from srf_upsample.export import PARITY_TOLERANCE, check_backbone_parity

    results = check_backbone_parity(model, path, num_threads=1, **options)
    assert max(r.rel_error for r in results) <= PARITY_TOLERANCE, [str(r) for r in results]
    return results


# The schedule of a tiny experiment, and the values of its config (paths that are never read: runs are faked).
EXPERIMENT_SCHEDULE = {
    "max_iters": 4,
    "lr": 0.01,
    "milestones": [3],
    "warmup_iters": 1,
    "batch_size": 2,
    "eval_every": 2,
}


def experiment_values(**overrides) -> dict:
    """A tiny experiment config's values: Faster R-CNN R18 at 64 px, ``EXPERIMENT_SCHEDULE``, then ``overrides``."""
    return {
        "train_data_root": "train",
        "train_ann_file": "train.json",
        "val_data_root": "val",
        "val_ann_file": "val.json",
        "detector": {"detector": "fasterrcnn", "backbone": "resnet18", "min_size": 64, "max_size": 64},
        "schedule": EXPERIMENT_SCHEDULE,
        **overrides,
    }


def coco_box(number: int, bbox: list, image_id: int = 1, **extra) -> dict:
    """A COCO annotation ``number`` of category 1 on image ``image_id`` with ``bbox`` ([x, y, w, h]) and ``extra``."""
    return {"id": number, "image_id": image_id, "category_id": 1, "bbox": bbox, **extra}


def fake_coco(
    rng,
    images: list[dict],
    *,
    boxes_per_image: tuple[int, int],
    corner_max: float,
    sides: tuple[float, float],
    crowd_rate: float | None = None,
) -> dict:
    """A one-category ("tree") COCO ground truth: ``images`` (COCO image records), each with random boxes.

    Per image ``rng.integers(*boxes_per_image)`` boxes, corners uniform in ``[0, corner_max)``, sides uniform in
    ``sides``; with ``crowd_rate``, each box is a crowd box with that probability (one more draw per box).
    """
    annotations = []
    for image in images:
        for _ in range(int(rng.integers(*boxes_per_image))):
            x, y, w, h = (*rng.uniform(0, corner_max, 2), *rng.uniform(*sides, 2))
            crowd = 0 if crowd_rate is None else int(rng.random() < crowd_rate)
            box = {"image_id": image["id"], "category_id": 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd}
            annotations.append({"id": len(annotations) + 1, **box})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "tree"}]}


def fake_detections(rng, truth: dict, jitter: float, *, false_boxes: tuple[float, int] | None = None) -> list[dict]:
    """Per image of ``truth``: its boxes moved by normal noise (std ``jitter``), random scores (detections.json.gz).

    With ``false_boxes=(corner_max, most)``, each image also gets up to ``most`` false 30x30 boxes (corners uniform in
    ``[0, corner_max)``) and the scores are rounded to 2 decimals, so that they tie as real scores do.
    """
    images = []
    for image in truth["images"]:
        boxes = [a["bbox"] for a in truth["annotations"] if a["image_id"] == image["id"]]
        boxes = [[x + rng.normal(0, jitter), y + rng.normal(0, jitter), w, h] for x, y, w, h in boxes]
        if false_boxes is None:
            scores = [float(v) for v in rng.random(len(boxes))]
        else:
            corner_max, most = false_boxes
            boxes += [[*rng.uniform(0, corner_max, 2), 30.0, 30.0] for _ in range(int(rng.integers(0, most + 1)))]
            scores = [round(float(v), 2) for v in rng.random(len(boxes))]
        images.append({"image_id": image["id"], "boxes": boxes, "scores": scores, "labels": [1] * len(boxes)})
    return images
