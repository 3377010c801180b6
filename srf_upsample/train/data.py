"""COCO-format detection data: validated loading, shorter-side resize and flips kept in step with boxes and masks."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, VisionDataset
from torchvision.transforms import v2

from .coco import DROP_REASONS, CocoFile, coco_api, describe_drops, read_coco

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


def _pil_to_tensor(pil) -> torch.Tensor:
    return v2.functional.to_dtype(v2.functional.to_image(pil), torch.float32, scale=True)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a ``(3, H, W)`` float32 RGB tensor with values in [0, 1] (PIL decoding)."""
    from PIL import Image

    with Image.open(path) as pil:
        return _pil_to_tensor(pil.convert("RGB"))


class CocoDetectionDataset(CocoDetection):
    """A COCO-format folder (images + instances json) as ``(image, target)`` pairs for torchvision detectors.

    The annotation file is read once by :func:`~srf_upsample.train.coco.read_coco` (checked, normalised in memory,
    unusable boxes left out and counted); :attr:`coco` is pycocotools' index of that normalised dict, the one
    evaluation scores against. Checks up front that every image is on disk; :attr:`report` holds the reader's counts
    (filled in, recomputed, negatives, categories present and absent, left out by reason), for the run's manifest.
    Images without annotations are kept: they are true negatives.
    Each item resizes the image so that its shorter side is ``min_size`` (longer side at most ``max_size``; ``None``
    keeps the original size) and flips it when the sampler asks, with boxes and masks transformed in step
    (transforms v2). Category ids are mapped to contiguous labels ``1..K`` (``category_ids[label - 1]`` maps back).
    A corrupt image yields ``None`` (see :func:`collate`), which the trainer counts.

    Args:
        root: folder of the images (``file_name`` in the json is relative to it; sub-folders are fine).
        ann_file: the COCO instances json, or a :class:`~srf_upsample.train.coco.CocoFile` already read.
        min_size: target shorter side, or ``None`` for no resize.
        max_size: cap on the longer side.
        use_masks: also return instance masks (Mask R-CNN); every non-crowd annotation then needs a segmentation.
        category_ids: fix the label mapping (e.g. the training set's at evaluation); default the file's sorted ids.
        max_dropped_fraction: the largest share of non-crowd annotations that may be unusable; ``None``: no limit.
        area: ``"file"`` or ``"box"``, what sizes ground truth for APs/APm/APl (see ``read_coco``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ann_file: str | os.PathLike | CocoFile,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        use_masks: bool = False,
        category_ids: Sequence[int] | None = None,
        max_dropped_fraction: float | None = None,
        area: str = "file",
    ) -> None:
        root = str(root)
        if isinstance(ann_file, CocoFile):
            self.coco_file = ann_file
        else:
            self.coco_file = read_coco(ann_file, area=area, max_dropped_fraction=max_dropped_fraction)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Image folder {root!r} does not exist; pass --data-root with the images folder.")
        # torchvision's CocoDetection would read the file again through pycocotools: index the normalised dict.
        VisionDataset.__init__(self, root)
        self.coco = coco_api(self.coco_file)
        self.ids = sorted(self.coco.imgs)
        ann_file = self.coco_file.path
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
        self.category_ids = list(category_ids) if category_ids is not None else self.coco_file.category_ids
        if not self.category_ids:
            raise ValueError(f"Dataset {ann_file!r} has no categories.")
        self.label_of = {cat_id: label + 1 for label, cat_id in enumerate(self.category_ids)}
        counts = self.coco_file.counts
        if use_masks and counts["segmentation_missing"]:
            raise ValueError(
                f"{ann_file!r}: {counts['segmentation_missing']} of {counts['kept']} annotations have no "
                "segmentation, and use_masks (the maskrcnn detector) trains on masks. Add the masks, or train a "
                "box-only detector (--detector fasterrcnn)."
            )
        self.report = {
            "ann_file": ann_file,
            "area": self.coco_file.area,
            **counts,
            "usable": counts["kept"] - counts["crowd"],
            "crowd_ignored": counts["crowd"],
            "dropped": dict(self.coco_file.dropped),
        }
        self.min_size, self.max_size, self.use_masks = min_size, max_size, use_masks
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)

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
        # Crowd boxes are not trained on; at evaluation, categories the model has no label for are not targets.
        anns = [
            ann for ann in self._load_target(image_id) if not ann["iscrowd"] and ann["category_id"] in self.label_of
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
        "%s: %d image(s) (%d without boxes), %d annotation(s), %d usable, %d crowd (ignored), left out: %s; "
        "filled in: %d iscrowd, %d area; %d area(s) set from boxes; categories: %d present, %d absent",
        report["ann_file"],
        report["images"],
        report["negatives"],
        report["annotations"],
        report["usable"],
        report["crowd_ignored"],
        describe_drops(report["dropped"]),
        report["iscrowd_filled"],
        report["area_filled"],
        report["area_recomputed"],
        report["categories_present"],
        report["categories_absent"],
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
