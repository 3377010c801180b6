"""Turn DeepForest's real annotated aerial photos into a tiled COCO-format detection set with a spatial split.

Material: the PyPI wheel ``deepforest==2.1.0`` (MIT license, weecology/DeepForest) ships RGB aerial crops with
tree-crown boxes in VOC XML under ``deepforest/data/``. We fetch the wheel with ``pip download --no-deps`` into a cache
folder (its own dependencies are not installed), read the XML and write COCO JSON that torchvision and pycocotools read.

Split (spatial, no overlap between train and val tiles):
- ``2019_YELL_2_528000_4978000_image_crop2.png`` (2299x2472), fold 0: rows ``y < VAL_TOP`` are train (tiles with
  overlap), rows ``y >= VAL_TOP`` (the bottom 800) are validation (tiles without overlap). Fold 1 swaps the areas:
  the top 800 rows are validation, rows ``y >= VAL_ROWS`` train. No train tile reaches the validation area.
- ``2019_YELL_2_541000_4977000_image_crop.png``, ``OSBS_029.png``, ``SOAP_061.png``: train.
Boxes are clipped to each tile and dropped when less than ``MIN_VISIBLE`` of their area is inside it (slivers).

Usage: ``python examples/deepforest/prepare.py --out data/deepforest``
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


def prepare(out_dir: Path, cache_dir: Path, fold: int = 0) -> dict[str, dict[str, int]]:
    """Write ``out_dir/{train,val}/`` tiles and ``out_dir/annotations/instances_{train,val}.json``; returns counts.

    ``fold`` 0 holds out the bottom ``VAL_ROWS`` rows of the large crop, fold 1 the top ones.
    """
    if fold not in (0, 1):
        raise ValueError(f"fold must be 0 (bottom rows held out) or 1 (top rows held out), got {fold!r}.")
    data_dir = fetch_deepforest_data(cache_dir)
    coco = {split: {"images": [], "annotations": [], "categories": [CATEGORY]} for split in ("train", "val")}
    for name, role in SOURCES.items():
        image = Image.open(data_dir / f"{name}.png").convert("RGB")
        boxes = read_voc_boxes(data_dir / f"{name}.xml")
        width, height = image.size
        if role == "split":
            if fold == 0:
                regions = [("train", 0, height - VAL_ROWS, TRAIN_STRIDE), ("val", height - VAL_ROWS, height, TILE)]
            else:
                regions = [("val", 0, VAL_ROWS, TILE), ("train", VAL_ROWS, height, TRAIN_STRIDE)]
        else:
            regions = [("train", 0, height, TRAIN_STRIDE)]
        for split, top, bottom, stride in regions:
            for y0 in tile_origins(height, top, bottom, stride):
                for x0 in tile_origins(width, 0, width, stride):
                    tile_boxes = clip_boxes(boxes, x0, y0)
                    if not tile_boxes:
                        continue
                    file_name = f"{name}_{x0}_{y0}.png"
                    (out_dir / split).mkdir(parents=True, exist_ok=True)
                    image.crop((x0, y0, x0 + TILE, y0 + TILE)).save(out_dir / split / file_name)
                    image_id = len(coco[split]["images"]) + 1
                    coco[split]["images"].append(
                        {"id": image_id, "file_name": file_name, "width": TILE, "height": TILE}
                    )
                    for box in tile_boxes:
                        coco[split]["annotations"].append(
                            {
                                "id": len(coco[split]["annotations"]) + 1,
                                "image_id": image_id,
                                "category_id": CATEGORY["id"],
                                "bbox": [round(v, 2) for v in box],
                                "area": round(box[2] * box[3], 2),
                                "iscrowd": 0,
                            }
                        )
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, data in coco.items():
        (out_dir / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        small = sum(a["area"] < 32 * 32 for a in data["annotations"])
        counts[split] = {"tiles": len(data["images"]), "boxes": len(data["annotations"]), "small_boxes": small}
    (out_dir / "counts.json").write_text(json.dumps(counts, indent=2))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/deepforest"))
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "srf_upsample" / "deepforest")
    parser.add_argument("--fold", type=int, default=0, choices=[0, 1])
    args = parser.parse_args(argv)
    counts = prepare(args.out, args.cache_dir, args.fold)
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
