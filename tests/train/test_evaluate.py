"""evaluate_detector against known answers: detections chosen by hand go in, COCO's AP rules give the expected scores.

COCO's AP averages, over the IoU thresholds 0.50:0.05:0.95 and the categories, the precision interpolated at 101
recall points. When every detection of a category overlaps its own ground-truth box with the same IoU, each threshold
is either passed by all of them (precision 1 at every recall: AP 1 there) or by none (AP 0 there), so the AP is the
fraction of thresholds at or below that IoU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from srf_upsample.train.evaluate import evaluate_detector

# Non-contiguous COCO ids, as in COCO itself: training labels 1, 2 stand for categories 1, 7 (or 7, 1).
CATEGORIES = (1, 7)
# Every image has its own size, so the scripted detector can tell which image it was given. Boxes are COCO
# (x, y, width, height), 20x20 and apart from each other (IoU 0 across boxes).
IMAGES = {
    1: {"size": (40, 56), "boxes": [(1, (4, 6, 20, 20)), (7, (30, 10, 20, 20))]},
    2: {"size": (48, 64), "boxes": [(7, (8, 20, 20, 20)), (1, (36, 4, 20, 20))]},
    3: {"size": (56, 72), "boxes": [(1, (40, 30, 20, 20))]},
}
# Category 1 scores above category 7, so detections moved to category 1 by a wrong label rank below its own.
SCORES = {1: 0.9, 7: 0.8}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def l_shape(size: tuple[int, int], box: tuple[int, int, int, int], shift: int = 0) -> np.ndarray:
    """The box without its top-right quarter (300 pixels of 400), moved ``shift`` pixels right: a mask that is not
    its box, so a mask scored as a box would not match it exactly."""
    x, y, w, h = box
    mask = np.zeros(size, dtype=np.uint8)
    mask[y : y + h, x + shift : x + w + shift] = 1
    mask[y : y + h // 2, x + w // 2 + shift : x + w + shift] = 0
    return mask


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[Path, Path]:
    """A COCO folder with the boxes of IMAGES and an L-shaped mask (RLE) in each box; returns (images, json)."""
    root = tmp_path_factory.mktemp("coco_known")
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, image in IMAGES.items():
        height, width = image["size"]
        name = f"img_{image_id}.png"
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(root / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for category, box in image["boxes"]:
            mask = l_shape(image["size"], box)
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": list(box),
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                }
            )
    # A third category with no annotations: COCOeval reports -1 for it and leaves it out of the mean.
    categories = [{"id": 1, "name": "one"}, {"id": 3, "name": "unused"}, {"id": 7, "name": "seven"}]
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root, ann_file


class ScriptedDetector(nn.Module):
    """Stands in for a torchvision detector: returns the detections scripted for each image, found by its size.

    It has the ``transform`` evaluate_detector reconfigures (GeneralizedRCNNTransform's ``min_size``/``max_size``)
    and records what it saw, so the test can check that images arrive at their original size.
    """

    def __init__(self, detections: dict[tuple[int, int], dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(64, 64, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        self.detections = detections
        self.seen: list[tuple[tuple[int, int], tuple[int, ...], int, bool]] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            size = tuple(image.shape[-2:])
            self.seen.append((size, self.transform.min_size, self.transform.max_size, self.training))
            outputs.append({key: value.clone() for key, value in self.detections[size].items()})
        return outputs


def script(
    category_ids, *, shift: int = 0, relabel: dict[int, int] | None = None, masks: bool = False, mask_shift: int = 0
) -> ScriptedDetector:
    """Detections equal to the ground truth, boxes moved ``shift`` pixels right, categories changed by ``relabel``
    (before mapping to training labels, ``label = category_ids.index(category) + 1``), and with ``masks``, the
    L-shaped masks moved ``mask_shift`` pixels right as probabilities (0.6 inside, 0.4 outside)."""
    relabel = relabel or {}
    detections = {}
    for image in IMAGES.values():
        boxes, labels, scores, probabilities = [], [], [], []
        for category, (x, y, w, h) in image["boxes"]:
            boxes.append([x + shift, y, x + shift + w, y + h])  # torchvision's x1, y1, x2, y2
            labels.append(list(category_ids).index(relabel.get(category, category)) + 1)
            scores.append(SCORES[category])
            inside = torch.from_numpy(l_shape(image["size"], (x, y, w, h), mask_shift)).bool()
            probabilities.append(torch.where(inside, 0.6, 0.4)[None])
        output = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels),
            "scores": torch.tensor(scores),
        }
        if masks:
            output["masks"] = torch.stack(probabilities)
        detections[image["size"]] = output
    return ScriptedDetector(detections)


def evaluate(model: nn.Module, coco: tuple[Path, Path], category_ids=CATEGORIES, **kwargs) -> dict:
    return evaluate_detector(model, coco[0], coco[1], category_ids=list(category_ids), **kwargs)


@pytest.mark.parametrize("category_ids", [(1, 7), (7, 1)])
def test_ground_truth_as_detections_scores_one(coco, category_ids, tmp_path) -> None:
    model = script(category_ids)
    metrics = evaluate(model, coco, category_ids, output_dir=tmp_path, min_size=96, max_size=160)
    # All ground truth is small (300 or 400 pixels < 32**2): APs is the AP, and COCOeval's -1 ("no ground truth in
    # this size range") comes back unchanged for APm and APl.
    assert metrics["bbox"] == dict(zip(METRICS, (1.0, 1.0, 1.0, 1.0, -1.0, -1.0), strict=True))
    assert "segm" not in metrics and metrics["num_images"] == 3 and metrics["skipped_images"] == 0
    # The written detections are in COCO's (x, y, width, height) with the file's category ids, whatever the label
    # order: each one is exactly a ground-truth annotation.
    written = json.loads((tmp_path / "detections_bbox.json").read_text())
    expected = [
        (image_id, category, list(map(float, box)))
        for image_id, image in IMAGES.items()
        for category, box in image["boxes"]
    ]
    assert sorted((d["image_id"], d["category_id"], d["bbox"]) for d in written) == sorted(expected)
    assert json.loads((tmp_path / "metrics.json").read_text())["bbox"] == metrics["bbox"]
    # Images went in at their original size while the transform was set to min_size/max_size, in eval mode; the
    # transform and the training flag are restored afterwards.
    assert sorted(seen[0] for seen in model.seen) == sorted(image["size"] for image in IMAGES.values())
    assert all(seen[1:] == ((96,), 160, False) for seen in model.seen)
    assert (model.transform.min_size, model.transform.max_size, model.training) == ((64,), 64, True)


@pytest.mark.parametrize(
    ("shift", "iou", "expected"),
    [
        # IoU (20 - s) / (20 + s) for a 20x20 box moved s pixels along x.
        (1, 19 / 21, {"AP": 0.9, "AP50": 1.0, "AP75": 1.0}),  # 0.905: passes 0.50 .. 0.90, 9 of 10 thresholds
        (4, 16 / 24, {"AP": 0.4, "AP50": 1.0, "AP75": 0.0}),  # 0.667: passes 0.50 .. 0.65, 4 of 10
        (8, 12 / 28, {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}),  # 0.429: passes none
    ],
)
def test_shifted_boxes_score_the_fraction_of_thresholds_passed(coco, shift, iou, expected) -> None:
    thresholds = np.linspace(0.5, 0.95, 10)
    assert expected["AP"] == pytest.approx(np.mean(thresholds <= iou))  # the hand count above
    metrics = evaluate(script(CATEGORIES, shift=shift), coco)["bbox"]
    assert {name: metrics[name] for name in expected} == pytest.approx(expected)
    assert metrics["APs"] == pytest.approx(expected["AP"])


def test_wrong_label_scores_zero_for_that_category(coco) -> None:
    # Every category-7 box is reported as category 1: category 7 has no detection (AP 0); category 1 keeps its own
    # detections ranked first (higher scores), so its AP stays 1 and the extra false positives cost nothing.
    # The mean over the two categories with ground truth is 0.5.
    metrics = evaluate(script(CATEGORIES, relabel={7: 1}), coco)["bbox"]
    assert metrics["AP"] == pytest.approx(0.5) and metrics["AP50"] == pytest.approx(0.5)
    # Both categories swapped: no detection matches its category's ground truth anywhere.
    swapped = evaluate(script(CATEGORIES, relabel={1: 7, 7: 1}), coco)["bbox"]
    assert swapped["AP"] == 0.0 and swapped["AP50"] == 0.0


def test_ground_truth_masks_score_one(coco, tmp_path) -> None:
    # Probabilities 0.6 inside the L-shaped ground truth and 0.4 outside: thresholded at 0.5 they are the ground truth.
    metrics = evaluate(script(CATEGORIES, masks=True), coco, output_dir=tmp_path)
    assert metrics["segm"] == dict(zip(METRICS, (1.0, 1.0, 1.0, 1.0, -1.0, -1.0), strict=True))
    assert metrics["bbox"]["AP"] == 1.0
    written = json.loads((tmp_path / "detections_segm.json").read_text())
    assert sorted((d["image_id"], d["category_id"]) for d in written) == sorted(
        (image_id, category) for image_id, image in IMAGES.items() for category, _ in image["boxes"]
    )


def test_masks_score_by_mask_overlap_and_category(coco) -> None:
    # The L shape (300 px) moved 1 px right keeps 190 + 90 = 280 px: IoU 280 / 320 = 0.875, which passes
    # 0.50 .. 0.85, 8 of 10 thresholds. The boxes stay exact, so bbox AP is still 1.
    metrics = evaluate(script(CATEGORIES, masks=True, mask_shift=1), coco)
    assert metrics["segm"]["AP"] == pytest.approx(0.8) and metrics["segm"]["AP75"] == 1.0
    assert metrics["bbox"]["AP"] == 1.0
    # Category 7's masks reported as category 1, with reversed label order: segm AP 1 for category 1, 0 for 7.
    relabeled = evaluate(script((7, 1), masks=True, relabel={7: 1}), coco, category_ids=(7, 1))
    assert relabeled["segm"]["AP"] == pytest.approx(0.5) and relabeled["bbox"]["AP"] == pytest.approx(0.5)


@pytest.mark.parametrize(("shift", "relabel"), [(0, None), (4, None), (1, {7: 1}), (3, {1: 7})])
def test_per_image_detections_file_gives_pycocotools_ap(coco, tmp_path, shift, relabel) -> None:
    import gzip

    from srf_upsample.train import evaluate as evaluate_module
    from srf_upsample.train.experiment.detections import (
        DETECTIONS_NAME,
        average_precision,
        match_run,
        read_detections,
        read_ground_truth,
    )

    model = script(CATEGORIES, shift=shift, relabel=relabel)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    model.detections[IMAGES[3]["size"]] = empty  # an image without detections is still listed
    metrics = evaluate(model, coco, output_dir=tmp_path, step=17)
    with gzip.open(tmp_path / DETECTIONS_NAME, "rt") as f:
        raw = json.load(f)
    assert raw["ann_file"] == str(coco[1]) and raw["step"] == 17
    assert evaluate_module.DETECTIONS_NAME == DETECTIONS_NAME  # the reader's name
    assert [image["image_id"] for image in raw["images"]] == [1, 2, 3]
    assert raw["images"][2] == {"image_id": 3, "boxes": [], "scores": [], "labels": []}
    detections = read_detections(tmp_path / DETECTIONS_NAME)
    recomputed = average_precision(match_run(detections, read_ground_truth(coco[1])))
    assert recomputed == pytest.approx(metrics["bbox"]["AP"], abs=1e-12)
