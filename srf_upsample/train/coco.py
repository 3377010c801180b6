"""One reader for users' COCO annotation files: validated, normalised in memory, shared by training and evaluation.

Training (:class:`~srf_upsample.train.data.CocoDetectionDataset`), evaluation (pycocotools' ``COCO`` built by
:func:`coco_api`) and fold splitting (:func:`subset`, :func:`write_coco`) all start from the :class:`CocoFile` that
:func:`read_coco` returns, so evaluation never sees an annotation that training did not. The user's file is never
rewritten.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._checks import check_choice, check_number

__all__ = [
    "AREAS",
    "DROP_REASONS",
    "CocoFile",
    "coco_api",
    "describe_drops",
    "read_coco",
    "subset",
    "write_coco",
]

logger = logging.getLogger(__name__)

AREAS = ("file", "box")  # "file": the file's ``area`` sizes ground truth (COCO's meaning); "box": each box's w*h
# Why an annotation is left out, in the words the summary and the errors use.
DROP_REASONS = {
    "unknown_image": "image id not among the file's images",
    "unknown_category": "unknown category id",
    "malformed": "bbox is not 4 numbers",
    "not_finite": "NaN or infinite coordinates",
    "empty": "zero or negative width or height",
    "outside": "entirely outside its image",
}
_NUMBER_TYPES = (int, float)
_FIX = "Fix the annotation file (bbox is [x, y, width, height] in pixels, category_id one of its 'categories')"


@dataclass(frozen=True)
class CocoFile:
    """A COCO instances file as read by :func:`read_coco`: checked, normalised, with counts of what was changed.

    Attributes:
        path: the file read.
        dataset: the normalised COCO dict (treat as read-only): every kept annotation has an int ``id``,
            ``image_id`` and ``category_id``, a 4-float ``bbox``, ``iscrowd`` 0 or 1 and a float ``area``.
        label_of_category: file category id -> contiguous label ``1..K`` (0 is the background), sorted by id.
        category_of_label: the inverse mapping (label -> file category id).
        counts: ``images``, ``annotations`` (in the file), ``kept``, ``negatives`` (images without a kept
            annotation), ``crowd``, ``iscrowd_filled``, ``area_filled``, ``area_recomputed``, ``area_disagreeing``,
            ``area_is_image_area``, ``annotation_ids_renumbered``, ``segmentation_missing``, ``categories``,
            ``categories_present``, ``categories_absent``, ``dropped``.
        dropped: annotations left out, by key of :data:`DROP_REASONS`.
        area: which area sizes ground truth (``"file"`` or ``"box"``).
    """

    path: str
    dataset: dict[str, Any]
    label_of_category: dict[int, int]
    category_of_label: dict[int, int]
    counts: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    area: str = "file"

    @property
    def category_ids(self) -> list[int]:
        """The file's category ids in label order (``category_ids[label - 1]``)."""
        return [self.category_of_label[label] for label in sorted(self.category_of_label)]


def describe_drops(dropped: dict[str, int]) -> str:
    """``{"empty": 2}`` -> ``"2 zero or negative width or height"``."""
    return ", ".join(f"{count} {DROP_REASONS[reason]}" for reason, count in dropped.items()) or "none"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES  # not bool, a subclass of int


def _load_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file {path!r} does not exist; pass --ann-file with a COCO json.")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Annotation file {path!r} is not JSON ({error}); pass a COCO instances json (--ann-file)."
        ) from None
    if not isinstance(values, dict):
        raise ValueError(
            f"Annotation file {path!r} holds a JSON {type(values).__name__}, not an object with 'images', "
            "'annotations' and 'categories'; pass a COCO instances json."
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(values.get(key), list):
            found = "missing" if key not in values else f"a {type(values[key]).__name__}"
            raise ValueError(
                f"Annotation file {path!r}: {key!r} must be a list, got {found}; a COCO instances json has "
                "'images', 'annotations' and 'categories' lists (write [] for an empty one)."
            )
    return values


def _index(path: str, entries: list, kind: str, required: dict[str, type]) -> dict[int, dict]:
    """Entries of ``images`` or ``categories`` by id; a missing field or a repeated id is a ValueError."""
    by_id: dict[int, dict] = {}
    for position, entry in enumerate(entries):
        for key, kind_of in required.items():
            value = entry.get(key) if isinstance(entry, dict) else None
            if not (_is_int(value) if kind_of is int else isinstance(value, kind_of)):
                raise ValueError(
                    f"Annotation file {path!r}: {kind}[{position}] needs {key!r} as {kind_of.__name__}, got "
                    f"{value!r}; fix that entry."
                )
        if entry["id"] in by_id:
            raise ValueError(
                f"Annotation file {path!r}: {kind} id {entry['id']} appears twice ({kind}[{position}]); ids must be "
                "unique: renumber the duplicates (and their annotations)."
            )
        by_id[entry["id"]] = entry
    return by_id


def _drop_reason(ann: Any, images: dict, categories: dict) -> str | None:
    """The key of :data:`DROP_REASONS` that rules ``ann`` out, or ``None`` for a usable box."""
    if not isinstance(ann, dict):
        return "malformed"
    image = images.get(ann.get("image_id")) if _is_int(ann.get("image_id")) else None
    if image is None:
        return "unknown_image"
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in categories:
        return "unknown_category"
    box = ann.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(type(v) in _NUMBER_TYPES for v in box):
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


def _polygon_area(segmentation: Any) -> float | None:
    """The summed shoelace area of a polygon segmentation, or ``None`` if it is not a list of polygons."""
    if not isinstance(segmentation, list) or not segmentation:
        return None
    total = 0.0
    for polygon in segmentation:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
            return None
        xs, ys = polygon[0::2], polygon[1::2]
        corners = zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1], strict=True)  # each corner and the next
        try:
            total += abs(sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in corners)) / 2
        except TypeError:  # a coordinate that is not a number
            return None
    return total


def _area_disagrees(area: float, ann: dict, tolerance: float) -> bool:
    """Whether ``area`` is off its polygon's area (or, without a segmentation, its box's) by more than tolerance.

    A mask lies inside its box, so an area above the box's is always off; an RLE mask is checked only for that.
    """
    box_area = ann["bbox"][2] * ann["bbox"][3]
    if area > box_area * (1 + tolerance):
        return True
    segmentation = ann.get("segmentation")
    reference = box_area if not segmentation else _polygon_area(segmentation)
    return reference is not None and abs(area - reference) > tolerance * reference


def _normalise(ann: dict, image: dict, area: str, tolerance: float, counts: dict[str, int]) -> dict:
    """A copy of a usable annotation with ``iscrowd``, ``area`` and ``bbox`` in the normalised form."""
    out = dict(ann)
    out["bbox"] = [float(v) for v in ann["bbox"]]
    if "iscrowd" not in ann:
        counts["iscrowd_filled"] += 1
    elif isinstance(ann["iscrowd"], str) or ann["iscrowd"] not in (0, 1):  # "0" would read as a crowd box
        raise ValueError(f"annotation {ann.get('id')!r} has iscrowd {ann['iscrowd']!r}; iscrowd must be 0 or 1.")
    out["iscrowd"] = 1 if ann.get("iscrowd") else 0
    box_area = out["bbox"][2] * out["bbox"][3]
    file_area = ann.get("area")
    if file_area is None:
        counts["area_filled"] += 1
        out["area"] = box_area
    else:
        if not _is_number(file_area) or not math.isfinite(file_area):
            raise ValueError(
                f"annotation {ann.get('id')!r} has area {file_area!r}; area must be a finite number (or absent, "
                "to be computed from the box)."
            )
        if _area_disagrees(float(file_area), out, tolerance):
            counts["area_disagreeing"] += 1
            image_area = (image.get("width") or 0) * (image.get("height") or 0)
            if image_area and abs(file_area - image_area) <= tolerance * image_area:
                counts["area_is_image_area"] += 1
        out["area"] = float(file_area)
        if area == "box":
            counts["area_recomputed"] += 1
            out["area"] = box_area
    if not ann.get("segmentation"):
        counts["segmentation_missing"] += 1
    return out


def _area_warning(path: str, counts: dict[str, int], tolerance: float) -> str:
    total = counts["kept"] - counts["area_filled"]
    disagreeing, image = counts["area_disagreeing"], counts["area_is_image_area"]
    if image == disagreeing:
        what = f"{image} of {total} areas are the image area"
    else:
        what = f"{disagreeing} of {total} areas disagree with their box (or polygon) by more than {tolerance:.0%}" + (
            f", {image} of them the image area" if image else ""
        )
    return (
        f"{path}: APs/APm/APl use the file's area: {what}; pass --area box (area='box') to size by the boxes, or fix "
        "the areas in the file."
    )


def _structure_counts(dataset: dict[str, Any], counts: dict[str, int]) -> None:
    """Fill the counts that follow from the kept annotations: negatives and categories present or absent."""
    with_boxes = {ann["image_id"] for ann in dataset["annotations"]}
    present = {ann["category_id"] for ann in dataset["annotations"]}
    counts["images"] = len(dataset["images"])
    counts["kept"] = len(dataset["annotations"])
    counts["negatives"] = sum(image["id"] not in with_boxes for image in dataset["images"])
    counts["crowd"] = sum(ann["iscrowd"] for ann in dataset["annotations"])
    counts["categories"] = len(dataset["categories"])
    counts["categories_present"] = sum(category["id"] in present for category in dataset["categories"])
    counts["categories_absent"] = counts["categories"] - counts["categories_present"]


def read_coco(
    path: str | os.PathLike,
    *,
    area: str = "file",
    area_tolerance: float = 0.2,
    max_dropped_fraction: float | None = 0.0,
) -> CocoFile:
    """Read, check and normalise a COCO instances file (in memory; the file is not changed).

    Filled in: a missing ``iscrowd`` (0), a missing ``area`` (the box's w*h), missing or repeated annotation ids
    (all renumbered 1..N). Warned about: file areas that disagree with their polygon (or, without a segmentation,
    their box) by more than ``area_tolerance``; pycocotools takes APs/APm/APl's size class from them. Left out and
    counted: annotations of :data:`DROP_REASONS`. Refused (ValueError): a file that is not JSON, lacks the
    ``images``/``annotations``/``categories`` lists, repeats an image or category id, has no usable box, or has more
    than ``max_dropped_fraction`` of its non-crowd annotations unusable.

    Args:
        path: the COCO instances json.
        area: ``"file"`` keeps the file's ``area`` (COCO's meaning: the mask's area); ``"box"`` sets every area to
            its box's w*h, so APs/APm/APl size by the boxes.
        area_tolerance: relative difference above which a file area counts as disagreeing.
        max_dropped_fraction: the largest share of non-crowd annotations that may be left out; ``None``: no limit.

    Returns:
        The normalised file with its label mapping and counts.

    Example:
        >>> import json, tempfile
        >>> box = {"id": 1, "image_id": 10**12, "category_id": 7, "bbox": [0, 0, 4, 5]}
        >>> images = [{"id": 10**12, "file_name": "x/a.png"}, {"id": 3, "file_name": "b.png"}]
        >>> values = {"images": images, "annotations": [box], "categories": [{"id": 7, "name": "seven"}]}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "a.json")
        ...     with open(path, "w") as f:
        ...         json.dump(values, f)
        ...     coco = read_coco(path)
        >>> coco.label_of_category, coco.dataset["annotations"][0]["area"], coco.counts["negatives"]
        ({7: 1}, 20.0, 1)
    """
    path = str(path)
    check_choice("area", area, AREAS)
    check_number("area_tolerance", area_tolerance, minimum=0)
    if max_dropped_fraction is not None:
        check_number("max_dropped_fraction", max_dropped_fraction, minimum=0, maximum=1)
    values = _load_json(path)
    images = _index(path, values["images"], "images", {"id": int, "file_name": str})
    categories = _index(path, values["categories"], "categories", {"id": int})
    counts = dict.fromkeys(
        ("iscrowd_filled", "area_filled", "area_recomputed", "area_disagreeing", "area_is_image_area"), 0
    )
    counts.update(annotations=len(values["annotations"]), segmentation_missing=0)
    dropped: dict[str, int] = {}
    kept = []
    for ann in values["annotations"]:
        reason = _drop_reason(ann, images, categories)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        try:
            kept.append(_normalise(ann, images[ann["image_id"]], area, area_tolerance, counts))
        except ValueError as error:
            raise ValueError(f"Annotation file {path!r}: {error}") from None
    ids = [ann.get("id") for ann in kept]
    counts["annotation_ids_renumbered"] = 0
    if not all(_is_int(i) for i in ids) or len(set(ids)) != len(ids):  # pycocotools indexes annotations by id
        counts["annotation_ids_renumbered"] = len(kept)
        for number, ann in enumerate(kept, start=1):
            ann["id"] = number
    dataset = {**values, "images": list(values["images"]), "annotations": kept}
    counts["dropped"] = sum(dropped.values())
    _structure_counts(dataset, counts)
    _refuse_unusable(path, counts, dropped, max_dropped_fraction)
    if area == "file" and counts["area_disagreeing"]:
        warnings.warn(_area_warning(path, counts, area_tolerance), UserWarning, stacklevel=2)
    labels = {category_id: label for label, category_id in enumerate(sorted(categories), start=1)}
    logger.debug("read %s: %s", path, counts)
    return CocoFile(
        path=path,
        dataset=dataset,
        label_of_category=labels,
        category_of_label={label: category_id for category_id, label in labels.items()},
        counts=counts,
        dropped=dropped,
        area=area,
    )


def _refuse_unusable(path: str, counts: dict[str, int], dropped: dict[str, int], fraction: float | None) -> None:
    usable = counts["kept"] - counts["crowd"]
    candidates = usable + counts["dropped"]
    if counts["images"] == 0:
        raise ValueError(f"{path!r} has no images; a COCO json with at least one image is needed.")
    if usable == 0:
        raise ValueError(
            f"{path!r} has no usable box: {counts['annotations']} annotation(s), {counts['crowd']} crowd (ignored), "
            f"unusable: {describe_drops(dropped)}. {_FIX}: a detector can neither learn from nor be scored on "
            "background alone."
        )
    if fraction is not None and counts["dropped"] > fraction * candidates:
        raise ValueError(
            f"{path!r}: {counts['dropped']} of {candidates} annotations are unusable ({describe_drops(dropped)}), "
            f"more than max_dropped_fraction={fraction:g}. {_FIX}, or allow more with --set "
            "max_dropped_fraction=<share> to train on the usable ones."
        )


def coco_api(coco_file: CocoFile):
    """Build pycocotools' ``COCO`` from the normalised dict, without reading the file again.

    It indexes copies of the annotations: COCOeval writes into each (``ignore``); the :class:`CocoFile` stays as read.

    Example:
        >>> import json, tempfile
        >>> box = {"image_id": 5, "category_id": 3, "bbox": [1, 2, 10, 20]}  # no id, iscrowd or area
        >>> values = {"images": [{"id": 5, "file_name": "a.png"}], "annotations": [box], "categories": [{"id": 3}]}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "a.json")
        ...     with open(path, "w") as f:
        ...         json.dump(values, f)
        ...     api = coco_api(read_coco(path))
        >>> api.loadAnns(api.getAnnIds(imgIds=[5]))[0]
        {'image_id': 5, 'category_id': 3, 'bbox': [1.0, 2.0, 10.0, 20.0], 'iscrowd': 0, 'area': 200.0, 'id': 1}
    """
    try:
        from pycocotools.coco import COCO
    except ImportError as error:
        raise ImportError("Reading COCO files needs pycocotools: pip install 'srf_upsample[train]'.") from error
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        api = COCO()
        api.dataset = {**coco_file.dataset, "annotations": [dict(ann) for ann in coco_file.dataset["annotations"]]}
        api.createIndex()
    return api


def subset(coco_file: CocoFile, image_ids: Iterable[int]) -> CocoFile:
    """The same file restricted to ``image_ids`` (in the file's order), with every category and the same labels.

    Counts of the subset are its own images, kept annotations, negatives and categories present; what was filled in
    is counted over the whole file only.
    """
    wanted = list(image_ids)
    known = {image["id"] for image in coco_file.dataset["images"]}
    unknown = sorted(set(wanted) - known, key=str)
    if unknown:
        raise ValueError(
            f"image_ids holds {len(unknown)} id(s) not in {coco_file.path!r}, e.g. {unknown[:5]}; pass ids of its "
            "'images'."
        )
    if len(set(wanted)) != len(wanted):
        raise ValueError("image_ids repeats an id; pass each image once.")
    chosen = set(wanted)
    dataset = {
        **coco_file.dataset,
        "images": [image for image in coco_file.dataset["images"] if image["id"] in chosen],
        "annotations": [ann for ann in coco_file.dataset["annotations"] if ann["image_id"] in chosen],
    }
    counts: dict[str, int] = {"annotations": len(dataset["annotations"]), "dropped": 0}
    _structure_counts(dataset, counts)
    return replace(coco_file, dataset=dataset, counts=counts, dropped={})


def write_coco(coco_file: CocoFile, path: str | os.PathLike) -> Path:
    """Write the normalised dict as a COCO json (atomically: a reader never sees half a file); returns the path."""
    path = Path(path)
    if os.path.abspath(path) == os.path.abspath(coco_file.path):
        raise ValueError(f"path {str(path)!r} is the file that was read; write the normalised copy elsewhere.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(coco_file.dataset), encoding="utf-8")
    temporary.replace(path)
    return path
