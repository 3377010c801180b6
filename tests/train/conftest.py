"""A tiny COCO-format dataset in a temp folder, and tiny model sizes for the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tiny everything: 64x64 images, R18-FPN, an 8-channel one-block generator, an 8-channel discriminator.
TINY = [
    "--detector",
    "fasterrcnn",
    "--backbone",
    "resnet18",
    "--min-size",
    "64",
    "--max-size",
    "64",
    "--batch-size",
    "2",
    "--device",
    "cpu",
    "--quiet",
    "--log-level",
    "WARNING",
    "--set",
    "generator_hidden_channels=8",
    "--set",
    "generator_num_blocks=1",
    "--set",
    "discriminator_hidden_channels=[8,8,8]",
    "--set",
    "warmup_iters=0",
    "--set",
    "milestones=[3]",
    "--allow-untrained-extractor",  # F is a random FPN here; real runs pass --extractor-weights
]


def make_coco(root: Path, num_images: int = 4, size: tuple[int, int] = (64, 64), seed: int = 0) -> tuple[Path, Path]:
    """Write ``num_images`` random images with 1-2 boxes (and polygon masks) each; returns (image dir, json)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    height, width = size
    for index in range(num_images):
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
                    "category_id": 1 + (index + box_index) % 2 * 2,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    ann_file = root / "instances.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}],
            }
        )
    )
    return image_dir, ann_file


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def coco(tmp_path_factory) -> tuple[Path, Path]:
    return make_coco(tmp_path_factory.mktemp("coco"))


def data_args(coco: tuple[Path, Path]) -> list[str]:
    return ["--data-root", str(coco[0]), "--ann-file", str(coco[1])]
