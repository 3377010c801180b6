"""COCO evaluation of a detector with pycocotools: AP, AP50, AP75, APs, APm, APl for boxes and masks."""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .coco import CocoFile
from .data import CocoDetectionDataset, collate
from .models import disable_detector_resize, enable_detector_resize
from .run_folder import BOX_RESULTS_NAME, DETECTIONS_NAME, MASK_RESULTS_NAME, METRICS_NAME

__all__ = ["METRIC_NAMES", "evaluate_detector", "per_image_detections"]

logger = logging.getLogger(__name__)

# The first six numbers of COCOeval.stats, in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Per-image box detections of the latest evaluation, gzip-compressed JSON (experiment.detections reads them).


def per_image_detections(
    boxes: Sequence[dict], image_ids: Sequence[int], ann_file: str | os.PathLike, step: int | None
) -> dict[str, Any]:
    """COCO box results grouped per image, the ``detections.json.gz`` format of ``experiment.detections``.

    ``{"ann_file", "step", "images": [{"image_id", "boxes", "scores", "labels"}]}``: every evaluated image listed
    (empty lists where nothing was detected), in image-id order.

    ``boxes`` are COCO results (``bbox`` = ``[x, y, width, height]`` in the annotation file's pixels, unrounded, so
    AP recomputed from them is pycocotools' to the last digit); ``labels`` are the annotation file's category ids.
    """
    images = {int(i): {"image_id": int(i), "boxes": [], "scores": [], "labels": []} for i in image_ids}
    for result in boxes:
        image = images[int(result["image_id"])]
        image["boxes"].append(list(result["bbox"]))
        image["scores"].append(float(result["score"]))
        image["labels"].append(int(result["category_id"]))
    return {"ann_file": str(ann_file), "step": step, "images": [images[key] for key in sorted(images)]}


def _to_coco_results(
    outputs: Sequence[dict], targets: Sequence[dict], category_ids: Sequence[int]
) -> tuple[list, list]:
    from pycocotools import mask as mask_utils

    boxes_out, masks_out = [], []
    for output, target in zip(outputs, targets, strict=True):
        image_id = int(target["image_id"])
        boxes = output["boxes"].detach().cpu().clone()  # converted in place below; leave the output alone
        if boxes.numel():
            boxes[:, 2:] -= boxes[:, :2]  # COCO boxes are x, y, width, height
        scores = output["scores"].detach().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        for box, score, label in zip(boxes.tolist(), scores, labels, strict=True):
            boxes_out.append(
                {"image_id": image_id, "category_id": int(category_ids[label - 1]), "bbox": box, "score": float(score)}
            )
        if "masks" in output:
            binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            for mask, score, label in zip(binary, scores, labels, strict=True):
                rle = mask_utils.encode(np.asfortranarray(mask))
                rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
                masks_out.append(
                    {
                        "image_id": image_id,
                        "category_id": int(category_ids[label - 1]),
                        "segmentation": rle,
                        "score": float(score),
                    }
                )
    return boxes_out, masks_out


def _coco_eval(coco_gt, results: list, iou_type: str, image_ids: list[int]) -> dict[str, float]:
    from pycocotools.cocoeval import COCOeval

    if not results:
        logger.warning("no %s detections: every %s metric is 0", iou_type, iou_type)
        return dict.fromkeys(METRIC_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables; we log one summary instead
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes adds numpy fields to what it is given
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval reports -1 where a size range has no ground truth; keep it, it means "not defined".
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6], strict=True)}


def _warn_unscored_categories(coco_file: CocoFile, category_ids: Sequence[int]) -> None:
    """Warn when the evaluation file has boxes of categories the model has no label for (AP 0 for them)."""
    present = {ann["category_id"] for ann in coco_file.dataset["annotations"]}
    unknown = sorted(present - set(category_ids))
    if unknown:
        warnings.warn(
            f"{coco_file.path}: category ids {unknown} have boxes but are not among the model's categories "
            f"{list(category_ids)}: their AP is 0 and lowers the mean. Evaluate on a file with the training "
            "file's categories.",
            UserWarning,
            stacklevel=3,
        )


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    data_root: str | os.PathLike,
    ann_file: str | os.PathLike | CocoFile,
    *,
    category_ids: Sequence[int],
    output_dir: str | os.PathLike | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    quiet: bool = True,
    step: int | None = None,
    area: str = "file",
) -> dict[str, Any]:
    """Run ``model`` on a COCO-format set and score it with pycocotools.

    Images go in at their original size; the detector's own transform resizes them to ``min_size``/``max_size``
    and maps detections back, so the scores are in the annotation file's coordinates.

    Args:
        model: a torchvision detector (patched or not).
        data_root: the images folder.
        ann_file: the COCO instances json with the ground truth, or the :class:`~srf_upsample.train.coco.CocoFile`
            already read (``train`` reads the evaluation file once, before its first step). pycocotools scores
            against the normalised dict of ``read_coco``, never the raw file.
        category_ids: the training label mapping (label ``k`` is ``category_ids[k - 1]``).
        output_dir: if given, writes ``detections_bbox.json`` (and ``_segm``), ``metrics.json`` and the per-image
            detections ``detections.json.gz`` (:func:`per_image_detections`) there, replacing the previous
            evaluation's: after training they are the final evaluation's.
        min_size: shorter side at test time.
        max_size: longer-side cap at test time.
        batch_size: images per forward.
        device: where to run.
        quiet: hide the progress bar.
        step: the training step evaluated, recorded in ``detections.json.gz`` (``None``: not known).
        area: what sizes ground truth for APs/APm/APl when ``ann_file`` is a path: ``"file"`` (its ``area``) or
            ``"box"`` (each box's w*h); see ``read_coco``.

    Returns:
        ``{"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...}}`` (``segm`` only for detectors with masks).
    """
    dataset = CocoDetectionDataset(data_root, ann_file, category_ids=category_ids, area=area)
    ann_file = dataset.coco_file.path
    _warn_unscored_categories(dataset.coco_file, category_ids)
    was_training = model.training
    transform = model.transform
    old_sizes = transform.min_size, transform.max_size
    transform.min_size, transform.max_size = (min_size,), max_size
    enable_detector_resize(model)
    model.eval()
    outputs_all, targets_all, skipped = [], [], 0
    try:
        from tqdm.auto import tqdm

        indices = list(range(len(dataset)))
        for start in tqdm(range(0, len(indices), batch_size), desc="evaluate", disable=quiet):
            batch = collate([dataset[i] for i in indices[start : start + batch_size]])
            skipped += batch.num_skipped
            if not batch.images:
                continue
            outputs = model([image.to(device) for image in batch.images])
            outputs_all.extend({k: v.cpu() for k, v in output.items()} for output in outputs)
            targets_all.extend(batch.targets)
    finally:
        transform.min_size, transform.max_size = old_sizes
        disable_detector_resize(model)
        model.train(was_training)
    if skipped:
        logger.warning("evaluation skipped %d unreadable image(s)", skipped)
    if not targets_all:
        raise ValueError(f"No readable image in {str(ann_file)!r}; nothing to evaluate.")
    boxes, masks = _to_coco_results(outputs_all, targets_all, category_ids)
    image_ids = [int(t["image_id"]) for t in targets_all]
    metrics: dict[str, Any] = {"bbox": _coco_eval(dataset.coco, boxes, "bbox", image_ids)}
    has_masks = type(model).__name__ == "MaskRCNN" or any("masks" in o for o in outputs_all)
    missing = dataset.coco_file.counts["segmentation_missing"]
    if has_masks and missing:  # pycocotools' segm evaluation needs every ground-truth mask
        warnings.warn(
            f"{ann_file}: {missing} ground-truth annotation(s) have no segmentation; only box AP is computed.",
            UserWarning,
            stacklevel=2,
        )
        has_masks = False
    if has_masks:
        metrics["segm"] = _coco_eval(dataset.coco, masks, "segm", image_ids)
    metrics["num_images"] = len(image_ids)
    metrics["skipped_images"] = skipped
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / BOX_RESULTS_NAME, "w", encoding="utf-8") as f:
            json.dump(boxes, f)
        if has_masks:
            with open(output_dir / MASK_RESULTS_NAME, "w", encoding="utf-8") as f:
                json.dump(masks, f)
        with open(output_dir / METRICS_NAME, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        detections = per_image_detections(boxes, image_ids, ann_file, step)
        temporary = output_dir / (DETECTIONS_NAME + ".tmp")
        temporary.write_bytes(gzip.compress(json.dumps(detections).encode(), mtime=0))
        temporary.replace(output_dir / DETECTIONS_NAME)  # a reader never sees half a file
    logger.info(
        "COCO bbox AP %.4f AP50 %.4f AP75 %.4f", metrics["bbox"]["AP"], metrics["bbox"]["AP50"], metrics["bbox"]["AP75"]
    )
    return metrics
