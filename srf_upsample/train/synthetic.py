"""A tiny COCO-format dataset of random images and boxes, for smoke tests of the trainer and the GPU check."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .._checks import check_int, check_size_pair

__all__ = ["CATEGORIES", "write_tiny_coco"]

# Two categories with a gap in the ids (1 and 3), so that code mapping COCO ids to contiguous labels is exercised.
CATEGORIES = ({"id": 1, "name": "a"}, {"id": 3, "name": "b"})


def write_tiny_coco(
    root: str | Path,
    num_images: int = 4,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    *,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[Path, Path]:
    """Write random RGB images with 1-2 boxes (and polygon masks) each under ``root``; return (image dir, json).

    Image ``i`` is ``img_{i}.png`` with ``1 + i % 2`` boxes, each at least 8 px wide and inside the image, of category
    1 or 3 in turn. The same arguments always write the same files.

    Args:
        root: the folder to write ``images/`` and ``instances.json`` into (created if missing).
        num_images: how many images, all of ``size``; ignored when ``sizes`` is given.
        size: ``(H, W)`` of every image; at least 24 px per side so that a box fits.
        seed: seed of the pixels and boxes.
        sizes: one ``(H, W)`` per image, for images of different (e.g. odd) sizes.

    Returns:
        The image folder and the annotation file.

    Example:
        >>> image_dir, ann_file = write_tiny_coco(tmp_path, num_images=2)  # doctest: +SKIP
        >>> sorted(p.name for p in image_dir.iterdir())  # doctest: +SKIP
        ['img_0.png', 'img_1.png']
    """
    if sizes is None:
        check_int("num_images", num_images)
        sizes = [size] * num_images
    for image_size in sizes:
        check_size_pair("size", image_size, minimum=24)
    rng = np.random.default_rng(seed)
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, (height, width) in enumerate(sizes):
        pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        name = f"img_{index}.png"
        Image.fromarray(pixels).save(image_dir / name)
        images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
        for box_index in range(1 + index % 2):
            x, y = float(rng.integers(2, width // 2)), float(rng.integers(2, height // 2))
            w, h = float(rng.integers(8, width // 2 - 2)), float(rng.integers(8, height // 2 - 2))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": CATEGORIES[(index + box_index) % 2]["id"],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(CATEGORIES)}))
    return image_dir, ann_file
