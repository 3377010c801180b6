"""COCO-format detection data: validated loading, shorter-side resize and flips kept in step with boxes and masks."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection
from torchvision.transforms import v2

__all__ = [
    "DROP_REASONS",
    "Batch",
    "CocoDetectionDataset",
    "KeyBatchSampler",
    "collate",
    "describe_drops",
    "log_report",
    "epoch_batches",
    "read_image",
    "scale_targets",
]

logger = logging.getLogger(__name__)

# Why an annotation is left out of training, in the words the summary and the errors use.
DROP_REASONS = {
    "unknown_image": "image id not among the file's images",
    "unknown_category": "unknown category id",
    "malformed": "bbox is not 4 numbers",
    "not_finite": "NaN or infinite coordinates",
    "empty": "zero or negative width or height",
    "outside": "entirely outside its image",
}


def _drop_reason(ann: dict, images: dict, label_of: dict) -> str | None:
    """The key of :data:`DROP_REASONS` that rules ``ann`` out, or ``None`` for a usable box."""
    image = images.get(ann.get("image_id"))
    if image is None:
        return "unknown_image"
    if ann.get("category_id") not in label_of:
        return "unknown_category"
    box = ann.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        return "malformed"
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "not_finite"
    if w <= 0 or h <= 0:
        return "empty"
    width, height = image.get("width"), image.get("height")
    if width and height and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
        return "outside"
    return None


def describe_drops(dropped: dict[str, int]) -> str:
    """``{"empty": 2}`` -> ``"2 zero or negative width or height"``."""
    return ", ".join(f"{count} {DROP_REASONS[reason]}" for reason, count in dropped.items()) or "none"


def _pil_to_tensor(pil) -> torch.Tensor:
    return v2.functional.to_dtype(v2.functional.to_image(pil), torch.float32, scale=True)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a ``(3, H, W)`` float32 RGB tensor with values in [0, 1] (PIL decoding)."""
    from PIL import Image

    with Image.open(path) as pil:
        return _pil_to_tensor(pil.convert("RGB"))


def _require_pycocotools() -> None:
    try:
        import pycocotools  # noqa: F401
    except ImportError as error:
        raise ImportError("Training needs pycocotools: pip install 'srf_upsample[train]'.") from error


class CocoDetectionDataset(CocoDetection):
    """A COCO-format folder (images + instances json) as ``(image, target)`` pairs for torchvision detectors.

    Checks up front that the annotation file exists, that the set is not empty and that every image is on disk, and
    audits every annotation: boxes that cannot be trained on (see :data:`DROP_REASONS`) are left out and counted by
    reason in :attr:`report`; a file with no usable box, or with more than ``max_dropped_fraction`` of its boxes
    unusable, is a ValueError naming the file and the counts.
    Each item resizes the image so that its shorter side is ``min_size`` (longer side at most ``max_size``; ``None``
    keeps the original size) and flips it when the sampler asks, with boxes and masks transformed in step
    (transforms v2). Category ids are mapped to contiguous labels ``1..K`` (``category_ids[label - 1]`` maps back).
    A corrupt image yields ``None`` (see :func:`collate`), which the trainer counts.

    Args:
        root: folder of the images (``file_name`` in the json is relative to it).
        ann_file: the COCO instances json.
        min_size: target shorter side, or ``None`` for no resize.
        max_size: cap on the longer side.
        use_masks: also return instance masks (Mask R-CNN).
        category_ids: fix the label mapping (e.g. the training set's at evaluation); default the file's sorted ids.
        max_dropped_fraction: the largest share of non-crowd annotations that may be unusable; ``None``: no limit.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ann_file: str | os.PathLike,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        use_masks: bool = False,
        category_ids: Sequence[int] | None = None,
        max_dropped_fraction: float | None = None,
    ) -> None:
        _require_pycocotools()
        root, ann_file = str(root), str(ann_file)
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"Annotation file {ann_file!r} does not exist; pass --ann-file with a COCO json.")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Image folder {root!r} does not exist; pass --data-root with the images folder.")
        # pycocotools prints progress; keep the library quiet by going through CocoDetection as is.
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                super().__init__(root, ann_file)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{ann_file!r} is not a COCO instances file ({type(error).__name__}: {error}).") from error
        if not self.ids:
            raise ValueError(f"Dataset {ann_file!r} has no images; a COCO json with at least one image is needed.")
        missing = [
            self.coco.imgs[image_id]["file_name"]
            for image_id in self.ids
            if not os.path.isfile(os.path.join(root, self.coco.imgs[image_id]["file_name"]))
        ]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(self.ids)} images listed in {ann_file!r} are missing from {root!r}, "
                f"e.g. {missing[:5]}; check --data-root."
            )
        self.category_ids = list(category_ids) if category_ids is not None else sorted(self.coco.cats)
        if not self.category_ids:
            raise ValueError(f"Dataset {ann_file!r} has no categories.")
        self.label_of = {cat_id: label + 1 for label, cat_id in enumerate(self.category_ids)}
        self.report = self._audit(ann_file, max_dropped_fraction)
        self.min_size, self.max_size, self.use_masks = min_size, max_size, use_masks
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)

    def _audit(self, ann_file: str, max_dropped_fraction: float | None) -> dict:
        """Count the usable, crowd and unusable annotations (by reason); raise when too few are usable."""
        dropped: dict[str, int] = {}
        self.dropped_ids: set = set()
        crowd = 0
        for ann in self.coco.dataset.get("annotations", []):
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            reason = _drop_reason(ann, self.coco.imgs, self.label_of)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                self.dropped_ids.add(ann.get("id"))
        total = len(self.coco.dataset.get("annotations", []))
        candidates = total - crowd
        usable = candidates - sum(dropped.values())
        report = {"ann_file": ann_file, "annotations": total, "usable": usable, "crowd_ignored": crowd}
        report["dropped"] = dropped
        if usable == 0:
            raise ValueError(
                f"{ann_file!r} has no usable box: {total} annotation(s), {crowd} crowd (ignored), unusable: "
                f"{describe_drops(dropped)}. Fix the annotation file (bbox is [x, y, width, height] in pixels, "
                "category_id one of its 'categories'): a detector can neither learn from nor be scored on background "
                "alone."
            )
        if max_dropped_fraction is not None and sum(dropped.values()) > max_dropped_fraction * candidates:
            raise ValueError(
                f"{ann_file!r}: {sum(dropped.values())} of {candidates} annotations are unusable "
                f"({describe_drops(dropped)}), more than max_dropped_fraction={max_dropped_fraction:g}. Fix the "
                "file, or allow more with --set max_dropped_fraction=<share> to train on the usable ones."
            )
        return report

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.category_ids) + 1

    def __getitem__(self, key: int | tuple[int, bool]):  # type: ignore[override]
        """Return ``(image, target)``, or ``None`` for an unreadable image; ``key`` is an index or (index, flip)."""
        index, flip = key if isinstance(key, tuple) else (key, False)
        image_id = self.ids[index]
        try:
            pil = self._load_image(image_id)
            pil.load()
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for damaged files
            logger.debug("skipping unreadable image %s: %s", image_id, error)
            return None
        width, height = pil.size
        image = _pil_to_tensor(pil)
        anns = [
            ann
            for ann in self._load_target(image_id)
            if not ann.get("iscrowd", 0) and ann.get("id") not in self.dropped_ids
        ]
        boxes = torch.tensor([ann["bbox"] for ann in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of[ann["category_id"]] for ann in anns], dtype=torch.int64),
            "image_id": image_id,
        }
        if self.use_masks:
            masks = [torch.from_numpy(self.coco.annToMask(ann)) for ann in anns]
            target["masks"] = tv_tensors.Mask(
                torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
            )
        image = tv_tensors.Image(image)
        if self.min_size is not None:
            # The detectors' rule: shorter side to min_size unless the longer side would pass max_size.
            scale = self.min_size / min(height, width)
            if self.max_size is not None:
                scale = min(scale, self.max_size / max(height, width))
            size = [max(1, round(height * scale)), max(1, round(width * scale))]
            image = v2.functional.resize(image, size)
            target = {
                k: v2.functional.resize(v, size) if isinstance(v, (tv_tensors.BoundingBoxes, tv_tensors.Mask)) else v
                for k, v in target.items()
            }
        if flip:
            image = v2.functional.horizontal_flip(image)
            target = {
                k: v2.functional.horizontal_flip(v) if isinstance(v, (tv_tensors.BoundingBoxes, tv_tensors.Mask)) else v
                for k, v in target.items()
            }
        image, target = self.sanitize(image, target)
        target["orig_size"] = (height, width)
        # Which deterministic view of the dataset this is: stage 1 caches the frozen F's levels under it.
        target["dataset_key"] = (index, bool(flip))
        return image.as_subclass(torch.Tensor), {
            k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()
        }


def log_report(report: dict) -> None:
    """Log a dataset's annotation summary (:attr:`CocoDetectionDataset.report`): WARNING when boxes were left out."""
    log = logger.warning if report["dropped"] else logger.info
    log(
        "%s: %d annotation(s), %d usable, %d crowd (ignored), left out: %s",
        report["ann_file"],
        report["annotations"],
        report["usable"],
        report["crowd_ignored"],
        describe_drops(report["dropped"]),
    )


@dataclass
class Batch:
    """A collated batch: images (list of ``(3, H, W)``), targets, and how many items were skipped as corrupt."""

    images: list[torch.Tensor]
    targets: list[dict]
    num_skipped: int

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned memory (the DataLoader calls this with ``pin_memory=True``)."""
        pin = torch.utils.data._utils.pin_memory.pin_memory
        return Batch(pin(self.images), pin(self.targets), self.num_skipped)


def collate(items: Sequence) -> Batch:
    """Collate dataset items into lists (detectors take lists), dropping and counting unreadable images."""
    good = [item for item in items if item is not None]
    return Batch([image for image, _ in good], [target for _, target in good], len(items) - len(good))


def epoch_batches(
    num_items: int,
    batch_size: int,
    *,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    flip: bool = True,
) -> list[list[tuple[int, bool]]]:
    """The batches of one epoch for one rank: ``(index, flip)`` keys, a pure function of seed and epoch.

    Follows DistributedSampler (padded to a multiple of ``world_size``, rank ``r`` takes every ``world_size``-th
    index), so ranks see different images; the flips come from the same seeded generator, so a resumed run sees
    exactly the data the uninterrupted run would have.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist() if shuffle else list(range(num_items))
    flips = (torch.rand(num_items, generator=generator) < 0.5).tolist() if flip else [False] * num_items
    total = math.ceil(num_items / world_size) * world_size
    order = (order * math.ceil(total / num_items))[:total]
    mine = order[rank::world_size]
    keys = [(index, bool(flips[index])) for index in mine]
    return [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]


def scale_targets(
    targets: Sequence[dict], images: Sequence[torch.Tensor], low_images: Sequence[torch.Tensor]
) -> list[dict]:
    """Ground truth fitted to the low-resolution images: boxes scaled per axis, masks resized (nearest)."""
    out = []
    for target, image, low in zip(targets, images, low_images, strict=True):
        scale_y, scale_x = low.shape[-2] / image.shape[-2], low.shape[-1] / image.shape[-1]
        scaled = dict(target)
        boxes = target["boxes"]
        scaled["boxes"] = boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
        if "masks" in target:
            masks = target["masks"]
            if masks.shape[0]:
                masks = F.interpolate(masks[None].float(), size=low.shape[-2:], mode="nearest")[0].to(masks.dtype)
            else:
                masks = masks.new_zeros((0, *low.shape[-2:]))
            scaled["masks"] = masks
        out.append(scaled)
    return out


class KeyBatchSampler:
    """A DataLoader ``batch_sampler`` yielding the ``(index, flip)`` keys of every batch from batch ``start`` on.

    ``batches_of_epoch(epoch)`` gives each epoch's batches (:func:`epoch_batches`); the order depends only on the
    seed and the epoch, so a run resumed at batch ``start`` sees what the uninterrupted run saw, whatever the number
    of workers. Endless: the trainer stops after its last step.
    """

    def __init__(self, batches_of_epoch, start: int = 0) -> None:
        self.batches_of_epoch = batches_of_epoch
        self.start = start

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for _, keys in iterate_forever(self.batches_of_epoch, self.start):
            yield keys


def iterate_forever(batches_of_epoch, start_step: int) -> Iterator[tuple[int, list]]:
    """Yield ``(epoch, batch keys)`` from step ``start_step`` on, calling ``batches_of_epoch(epoch)`` per epoch."""
    epoch, step = 0, 0
    while True:
        batches = batches_of_epoch(epoch)
        if not batches:
            raise ValueError("An epoch has no batches; the dataset is empty for this rank.")
        for batch in batches:
            if step >= start_step:
                yield epoch, batch
            step += 1
        epoch += 1
