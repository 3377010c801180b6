"""A tiny COCO-format dataset in a temp folder, and tiny model sizes for the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from srf_upsample.train.synthetic import write_tiny_coco as make_coco

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


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def coco(tmp_path_factory) -> tuple[Path, Path]:
    return make_coco(tmp_path_factory.mktemp("coco"))


def data_args(coco: tuple[Path, Path]) -> list[str]:
    return ["--data-root", str(coco[0]), "--ann-file", str(coco[1])]
