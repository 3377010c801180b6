"""Per-image detections of a run, matched to the ground truth as pycocotools does, for AP on resampled images.

Matched once, AP can be recomputed on any multiset of validation images (the paired bootstrap's resamples) without
running COCOeval again.

A run keeps the detections of its final validation in ``detections.json.gz`` (gzip-compressed JSON)::

    {"ann_file": "<the COCO ground-truth file it was validated on>", "step": 400,
     "images": [{"image_id": 3, "boxes": [[x, y, w, h], ...], "scores": [0.98, ...], "labels": [1, ...]}, ...]}

``images`` lists every validated image, those without detections too (empty lists); ``boxes`` are COCO
``[x, y, width, height]`` in the annotation file's pixels, ``labels`` the annotation file's category ids.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..run_folder import DETECTIONS_NAME

__all__ = [
    "DETECTIONS_NAME",  # the file this module reads; defined with the run folder's other names (run_folder.py)
    "ImageMatches",
    "average_precision",
    "match_run",
    "read_detections",
    "read_ground_truth",
    "resampled_ap",
]

# COCOeval's bbox defaults: IoU 0.50:0.05:0.95, 101 recall points, 100 detections per image, every area.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class ImageMatches:
    """One image and category, matched at every IoU threshold (COCOeval.evaluateImg for area 'all', 100 dets).

    Args:
        scores: the kept detections' scores, highest first, shape ``(D,)``.
        matched: ``(T, D)``, whether each detection matched a ground-truth box at each IoU threshold.
        ignored: ``(T, D)``, whether it matched an ignored (crowd) box: neither true nor false positive.
        num_ground_truth: boxes that are not ignored.
    """

    scores: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    num_ground_truth: int


def read_detections(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``detections.json.gz`` file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        values = json.load(f)
    if not isinstance(values, dict) or "images" not in values or "ann_file" not in values:
        raise ValueError(f"{str(path)!r} is not a detections file: it needs 'ann_file' and 'images' (see its format).")
    for image in values["images"]:
        lengths = {len(image[key]) for key in ("boxes", "scores", "labels")}
        if len(lengths) != 1:
            raise ValueError(f"{str(path)!r}: image {image['image_id']} has unequal boxes, scores and labels.")
    return values


def read_ground_truth(path: str | os.PathLike) -> dict[str, Any]:
    """The COCO annotation file's boxes per (image id, category id): ``{"boxes", "crowd", "areas"}`` arrays."""
    from ..coco import read_coco

    # As evaluation reads it (coco.read_coco, the same boxes left out); areas are not used here, so no area warning.
    values = read_coco(path, area="box", max_dropped_fraction=None).dataset
    by_key: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for annotation in values["annotations"]:
        by_key.setdefault((annotation["image_id"], annotation["category_id"]), []).append(annotation)
    return {
        "image_ids": sorted(image["id"] for image in values["images"]),
        "category_ids": sorted(category["id"] for category in values["categories"]),
        "boxes": {
            key: (
                np.array([a["bbox"] for a in items], dtype=float).reshape(-1, 4),
                np.array([bool(a.get("iscrowd", 0)) for a in items]),
            )
            for key, items in by_key.items()
        },
    }


def _iou(detections: np.ndarray, ground_truth: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h]`` boxes, ``(D, G)``; against a crowd box, the intersection over the detection's area."""
    dx0, dy0 = detections[:, None, 0], detections[:, None, 1]
    dx1, dy1 = dx0 + detections[:, None, 2], dy0 + detections[:, None, 3]
    gx0, gy0 = ground_truth[None, :, 0], ground_truth[None, :, 1]
    gx1, gy1 = gx0 + ground_truth[None, :, 2], gy0 + ground_truth[None, :, 3]
    inter = np.clip(np.minimum(dx1, gx1) - np.maximum(dx0, gx0), 0, None) * np.clip(
        np.minimum(dy1, gy1) - np.maximum(dy0, gy0), 0, None
    )
    area_d = (detections[:, 2] * detections[:, 3])[:, None]
    area_g = (ground_truth[:, 2] * ground_truth[:, 3])[None, :]
    union = np.where(crowd[None, :], area_d, area_d + area_g - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match_image(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> ImageMatches:
    """COCOeval.evaluateImg's greedy matching, highest score first, for one image and category."""
    order = np.argsort(-scores, kind="mergesort")[:MAX_DETECTIONS]
    boxes, scores = boxes[order], scores[order]
    gt_order = np.argsort(crowd, kind="mergesort")  # COCO puts ignored ground truth last
    gt, crowd = gt[gt_order], crowd[gt_order]
    ious = _iou(boxes, gt, crowd) if len(boxes) and len(gt) else np.zeros((len(boxes), len(gt)))
    matched = np.zeros((len(IOU_THRESHOLDS), len(boxes)), dtype=bool)
    ignored = np.zeros_like(matched)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gt), dtype=bool)
        for d in range(len(boxes)):
            best, best_iou = -1, min(threshold, 1 - 1e-10)
            for g in range(len(gt)):
                if taken[g] and not crowd[g]:
                    continue
                if best > -1 and not crowd[best] and crowd[g]:
                    break  # a real match beats any crowd box, which come last
                if ious[d, g] < best_iou:
                    continue
                best, best_iou = g, ious[d, g]
            if best > -1:
                taken[best] = True
                matched[t, d] = True
                ignored[t, d] = crowd[best]
    return ImageMatches(scores, matched, ignored, int(np.count_nonzero(~crowd)))


def match_run(detections: dict[str, Any], ground_truth: dict[str, Any]) -> list[dict[int, ImageMatches]]:
    """Per validated image (in image-id order, as COCOeval), the matches of each category with boxes or detections."""
    images = {image["image_id"]: image for image in detections["images"]}
    unknown = sorted(set(images) - set(ground_truth["image_ids"]))
    if unknown:
        raise ValueError(f"Detections of images {unknown[:5]} that the ground truth does not have.")
    empty = (np.zeros((0, 4)), np.zeros(0, dtype=bool))
    result = []
    for image_id in sorted(images):
        image = images[image_id]
        labels = np.array(image["labels"], dtype=int)
        per_category = {}
        for category in ground_truth["category_ids"]:
            gt, crowd = ground_truth["boxes"].get((image_id, category), empty)
            mask = labels == category
            if not len(gt) and not mask.any():
                continue  # COCOeval skips an image and category with neither
            boxes = np.array(image["boxes"], dtype=float).reshape(-1, 4)[mask]
            scores = np.array(image["scores"], dtype=float)[mask]
            per_category[category] = _match_image(boxes, scores, gt, crowd)
        result.append(per_category)
    return result


def average_precision(images: Sequence[dict[int, ImageMatches]], indices: Sequence[int] | None = None) -> float:
    """COCO AP (IoU 0.50:0.95, area 'all', 100 detections) over ``images[indices]``, duplicates counted again.

    Equal to pycocotools' ``stats[0]`` on the images once each (COCOeval.accumulate, then the mean over IoU
    thresholds, recall points and categories with ground truth).
    """
    chosen = [images[i] for i in (range(len(images)) if indices is None else indices)]
    categories = sorted({category for image in chosen for category in image})
    precisions = []
    for category in categories:
        entries = [image[category] for image in chosen if category in image]
        num_ground_truth = sum(entry.num_ground_truth for entry in entries)
        if num_ground_truth == 0:
            continue  # no ground truth: COCO leaves the category out (-1)
        scores = np.concatenate([entry.scores for entry in entries])
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate([entry.matched for entry in entries], axis=1)[:, order]
        ignored = np.concatenate([entry.ignored for entry in entries], axis=1)[:, order]
        true_positives = np.cumsum(matched & ~ignored, axis=1, dtype=float)
        false_positives = np.cumsum(~matched & ~ignored, axis=1, dtype=float)
        for tp, fp in zip(true_positives, false_positives, strict=True):
            q = np.zeros(len(RECALL_THRESHOLDS))
            if len(tp):
                recall = tp / num_ground_truth
                precision = tp / (fp + tp + np.spacing(1))
                precision = np.maximum.accumulate(precision[::-1])[::-1]  # COCO's interpolated precision
                positions = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
                inside = positions < len(tp)
                q[inside] = precision[positions[inside]]
            precisions.append(q)
    return float(np.mean(precisions)) if precisions else -1.0


def resampled_ap(runs: Mapping[Any, Sequence[dict[int, ImageMatches]]], indices: np.ndarray) -> dict[Any, np.ndarray]:
    """Each run's AP, in points (x100), on each row of ``indices`` (``(replicates, images)`` resampled images).

    Every run must have been validated on the same images (one fold), so that a resample pairs their detections.
    """
    sizes = {key: len(images) for key, images in runs.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Runs validated on different numbers of images cannot be paired: {sizes}.")
    return {key: np.array([100 * average_precision(images, row) for row in indices]) for key, images in runs.items()}
