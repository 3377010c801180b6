"""Folds of an experiment: one COCO file split into K (train, val) pairs, or K pairs the user gives, recorded once.

A split is made once per work folder and recorded in ``<work_dir>/folds.json`` with the fold files it wrote
(``<work_dir>/fold<k>/annotations/instances_{train,val}.json``). Asking again with the same arguments returns the
recorded folds and writes nothing; other split arguments on that folder are refused. Every check runs before anything
is written, so a refused split leaves the work folder as it was.

Ways to split (``split_by``):

- ``"random"``: images shuffled with ``seed`` and dealt out to the folds in turn;
- ``"field:NAME"``: images with the same value of the image record's ``NAME`` field (a scene, a site, a date) stay on
  one side of every fold;
- ``"regex:PATTERN"``: as ``field``, with the group taken from the file name: the first capture group of
  ``PATTERN`` (``re.search``), or the whole match when it has none.

Groups are shuffled with ``seed``, then each (largest first) goes to the fold with the fewest images so far.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..coco import CocoFile, read_coco, subset, write_coco

__all__ = ["FOLDS_NAME", "SPLIT_KINDS", "Fold", "group_images", "make_folds", "read_folds", "split_groups"]

# The record of a work folder's folds: the split's arguments and the files each fold trains and validates on.
FOLDS_NAME = "folds.json"
SPLIT_KINDS = ("random", "field:NAME", "regex:PATTERN")


@dataclass(frozen=True)
class Fold:
    """One fold: its index, its work sub-folder, and its training and validation COCO files."""

    index: int
    work_dir: Path
    train_ann_file: Path
    val_ann_file: Path


def _read_coco(path: str | os.PathLike) -> CocoFile:
    """A COCO file as the trainer reads it (:func:`~srf_upsample.train.coco.read_coco`: checked and normalised)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"COCO file {str(path)!r} does not exist; give the path of an annotation JSON file.")
    return read_coco(path)


def _sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def group_images(images: Sequence[dict[str, Any]], split_by: str = "random") -> dict[Any, list]:
    """The image ids of each group of ``images`` under ``split_by`` (see the module docstring), in file order.

    Shape:
        ``images``: COCO image records (``id``, ``file_name``, any other field); returns group -> image ids.

    Example:
        >>> images = [{"id": 1, "file_name": "siteA_0.png"}, {"id": 2, "file_name": "siteB_0.png"},
        ...           {"id": 3, "file_name": "siteA_1.png"}]
        >>> group_images(images, "regex:^(site[A-Z])_")
        {'siteA': [1, 3], 'siteB': [2]}
        >>> group_images(images)
        {1: [1], 2: [2], 3: [3]}
    """
    kind, _, argument = split_by.partition(":")
    if kind == "random" and not argument:
        return {image["id"]: [image["id"]] for image in images}
    if kind not in ("field", "regex") or not argument:
        raise ValueError(f"split_by={split_by!r} is not a way to split; use one of {list(SPLIT_KINDS)}.")
    groups: dict[Any, list] = {}
    if kind == "field":
        for image in images:
            if argument not in image:
                known = sorted({key for record in images for key in record})
                raise ValueError(
                    f"split_by={split_by!r}: image {image['id']} has no field {argument!r}; the image records have "
                    f"{known}. Name one of them, or group with regex:PATTERN on the file name."
                )
            value = image[argument]
            groups.setdefault(json.dumps(value) if isinstance(value, (list, dict)) else value, []).append(image["id"])
        return groups
    try:
        pattern = re.compile(argument)
    except re.error as error:
        raise ValueError(f"split_by={split_by!r}: {argument!r} is not a regular expression ({error}).") from None
    for image in images:
        match = pattern.search(str(image.get("file_name", "")))
        if match is None:
            raise ValueError(
                f"split_by={split_by!r}: file name {image.get('file_name')!r} (image {image['id']}) does not match "
                f"{argument!r}; give a pattern that matches every file name (its first group names the scene)."
            )
        groups.setdefault(match.group(1) if pattern.groups else match.group(0), []).append(image["id"])
    return groups


def split_groups(groups: dict[Any, list], folds: int, seed: int = 0) -> list[list]:
    """Deal ``groups`` (group -> image ids) into ``folds`` validation parts: the image ids of each, sorted.

    Groups are shuffled with ``seed``; then, largest first, each goes to the part with the fewest images (the lowest
    index on a tie), so no group is split and the parts differ by at most the largest group's size.

    Example:
        >>> split_groups({"a": [1, 2], "b": [3], "c": [4]}, 2)
        [[1, 2], [3, 4]]
    """
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ValueError(f"folds={folds!r}: a k-fold split needs an integer k of at least 2.")
    if folds > len(groups):
        raise ValueError(
            f"folds={folds} is more than the {len(groups)} groups of images to split; use --folds {len(groups)} or "
            "fewer, or group more finely."
        )
    order = sorted(groups, key=str)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda group: -len(groups[group]))  # stable: equal sizes keep their shuffled order
    parts: list[list] = [[] for _ in range(folds)]
    for group in order:
        min(parts, key=len).extend(groups[group])
    return [sorted(part, key=str) for part in parts]


def _box_count(dataset: dict[str, Any], image_ids: set) -> int:
    return sum(1 for ann in dataset["annotations"] if ann["image_id"] in image_ids)


def _check_pair(index: int, train: dict[str, Any], val: dict[str, Any], where: str) -> None:
    """Refuse a fold whose parts share an image id or whose validation part has no box."""
    shared = sorted({image["id"] for image in train["images"]} & {image["id"] for image in val["images"]}, key=str)
    if shared:
        raise ValueError(
            f"fold {index}{where}: image ids {shared[:5]}{' ...' if len(shared) > 5 else ''} are in both the training "
            "and the validation part; a fold validates on images it never trains on. Remove them from one part."
        )
    if not val["annotations"]:
        raise ValueError(
            f"fold {index}{where}: the validation part ({len(val['images'])} images) has no box, so AP cannot be "
            "measured on it; use fewer folds, another seed, or a grouping that spreads the boxes."
        )


def _request(
    ann_file: str | os.PathLike | None,
    folds: int | None,
    split_by: str,
    seed: int,
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]] | None,
) -> dict[str, Any]:
    """The split's arguments as recorded (absolute paths and the files' SHA-256, so a changed file is noticed)."""
    if pairs:
        if ann_file is not None or folds is not None:
            raise ValueError("Give either pairs (explicit fold files) or ann_file with folds, not both.")
        files = [(Path(train).resolve(), Path(val).resolve()) for train, val in pairs]
        for path in (path for pair in files for path in pair):
            if not path.is_file():
                raise ValueError(f"fold file {str(path)!r} does not exist; give TRAIN.json:VAL.json pairs of files.")
        return {"pairs": [[str(t), _sha256(t), str(v), _sha256(v)] for t, v in files]}
    if ann_file is None or folds is None:
        raise ValueError("Give ann_file and folds (a k-fold split of one COCO file), or pairs of fold files.")
    path = Path(ann_file).resolve()
    if not path.is_file():
        raise ValueError(f"COCO file {str(path)!r} does not exist; give the path of an annotation JSON file.")
    return {"ann_file": str(path), "sha256": _sha256(path), "folds": folds, "split_by": split_by, "seed": seed}


def read_folds(work_dir: str | os.PathLike) -> list[Fold] | None:
    """The folds recorded in ``work_dir`` (:data:`FOLDS_NAME`), or ``None`` when it has none."""
    work = Path(work_dir)
    record = work / FOLDS_NAME
    if not record.is_file():
        return None
    return [
        Fold(index, work / fold["work_dir"], work / fold["train"], work / fold["val"])
        for index, fold in enumerate(json.loads(record.read_text(encoding="utf-8"))["folds"])
    ]


def make_folds(
    work_dir: str | os.PathLike,
    *,
    ann_file: str | os.PathLike | None = None,
    folds: int | None = None,
    split_by: str = "random",
    seed: int = 0,
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]] | None = None,
) -> list[Fold]:
    """Split ``ann_file`` into ``folds`` folds (or take ``pairs``) and write them into ``work_dir``, once.

    Args:
        work_dir: the experiment's work folder; fold ``k`` trains in ``work_dir/fold<k>``.
        ann_file: the one COCO file to split (every image is validated on in exactly one fold).
        folds: how many folds (at least 2, at most the number of groups).
        split_by: ``"random"``, ``"field:NAME"`` or ``"regex:PATTERN"`` (module docstring).
        seed: seed of the shuffle.
        pairs: instead of a split, explicit ``(train, val)`` COCO files, one pair per fold; they are copied.

    Returns:
        The folds, in order.

    Raises:
        ValueError: a bad argument (naming it and its fix), a fold whose validation part has no box, an image in
            both parts of a fold, or ``work_dir`` holding folds made with other arguments. Nothing is written then.

    Example:
        >>> import tempfile
        >>> from srf_upsample.train.synthetic import write_tiny_coco
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _, coco = write_tiny_coco(Path(tmp) / "data", num_images=4, size=(24, 24))
        ...     folds = make_folds(Path(tmp) / "exp", ann_file=coco, folds=2)
        ...     [len(json.loads(fold.val_ann_file.read_text())["images"]) for fold in folds]
        [2, 2]
    """
    work = Path(work_dir)
    request = _request(ann_file, folds, split_by, seed, pairs)
    record = work / FOLDS_NAME
    if record.is_file():
        recorded = json.loads(record.read_text(encoding="utf-8"))["split"]
        if recorded != request:
            raise ValueError(
                f"work_dir {str(work)!r} already holds folds made with {recorded}, not {request}; rerun with the "
                "recorded split arguments (or none, to use them), or choose another --work-dir."
            )
        return read_folds(work)
    written: list[tuple[CocoFile, CocoFile]] = []
    if pairs:
        for index, (train_file, _, val_file, _) in enumerate(request["pairs"]):
            train, val = _read_coco(train_file), _read_coco(val_file)
            _check_pair(index, train.dataset, val.dataset, f" ({train_file} : {val_file})")
            written.append((train, val))
    else:
        coco_file = _read_coco(request["ann_file"])  # read_coco refuses an image id given twice
        ids = [image["id"] for image in coco_file.dataset["images"]]
        parts = split_groups(group_images(coco_file.dataset["images"], split_by), folds, seed)
        for index, part in enumerate(parts):
            val_ids = set(part)
            val, train = subset(coco_file, val_ids), subset(coco_file, [i for i in ids if i not in val_ids])
            _check_pair(index, train.dataset, val.dataset, f" of split_by={split_by!r}, seed {seed}")
            written.append((train, val))
    entries = []
    for index, (train, val) in enumerate(written):
        folder = work / f"fold{index}"
        files = {"train": folder / "annotations" / "instances_train.json"}
        files["val"] = folder / "annotations" / "instances_val.json"
        for part, coco_file in (("train", train), ("val", val)):
            write_coco(coco_file, files[part])
        entries.append(
            {
                "work_dir": folder.name,
                **{part: path.relative_to(work).as_posix() for part, path in files.items()},
                "train_images": len(train.dataset["images"]),
                "val_images": len(val.dataset["images"]),
                "val_boxes": len(val.dataset["annotations"]),
            }
        )
    record.write_text(json.dumps({"split": request, "folds": entries}, indent=2) + "\n", encoding="utf-8")
    return read_folds(work)
