"""Train SRF on your own COCO-format data: the baseline (F), the paper's three stages, then evaluate.

Your data: a folder of images and a COCO ``instances`` JSON for training, the same for validation. Nothing is
downloaded: pass local ImageNet weights for the backbone (e.g. torchvision's ``mobilenet_v2-b0353104.pth``).

Usage::

    python examples/train_on_coco.py --train-images train/ --train-ann train.json \\
        --val-images val/ --val-ann val.json --backbone-weights mobilenet_v2-b0353104.pth --out runs/my_srf

Equivalent to four ``srf-upsample train`` commands (printed as they run): the baseline detector first, whose trained
FPN is the target F of stages 1 and 2 (section 3.2), then stages 1 -> 2 -> 3. See ``docs/training.md`` for every
option, and ``srf-upsample experiment`` (``docs/experiment.md``) to compare with and without SRF fairly.
Add ``--paper`` for the paper's full schedules (GPU-sized) instead of the CPU ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srf_upsample.train.cli import main as train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", required=True)
    parser.add_argument("--train-ann", required=True)
    parser.add_argument("--val-images", required=True)
    parser.add_argument("--val-ann", required=True)
    parser.add_argument("--backbone", default="mobilenet_v2", choices=["mobilenet_v2", "resnet18", "resnet50"])
    parser.add_argument("--backbone-weights", default=None, help="local ImageNet weights of the backbone")
    parser.add_argument("--detector", default="fasterrcnn", choices=["fasterrcnn", "maskrcnn", "retinanet", "fcos"])
    parser.add_argument("--out", type=Path, default=Path("runs/my_srf"))
    parser.add_argument("--paper", action="store_true", help="the paper's schedules instead of the CPU ones")
    args = parser.parse_args(argv)
    prefix = "paper" if args.paper else "cpu"
    common = [
        "--detector",
        args.detector,
        "--backbone",
        args.backbone,
        "--data-root",
        args.train_images,
        "--ann-file",
        args.train_ann,
    ]
    if args.backbone_weights:
        common += ["--backbone-weights", args.backbone_weights]
    val = ["--eval-data-root", args.val_images, "--eval-ann-file", args.val_ann]
    trained_f = ["--extractor-weights", str(args.out / "baseline" / "checkpoint.safetensors")]

    def stage_args(name: str, *extra: str) -> list[str]:
        return [name, "--config", f"{prefix}_{name}", *common, *extra, "--output-dir", str(args.out / name)]

    stages = [
        stage_args("baseline", *val),
        stage_args("stage1", *trained_f),
        stage_args("stage2", *trained_f, "--init", str(args.out / "stage1")),
        stage_args("stage3", *val, "--init", str(args.out / "stage2")),
    ]
    for stage in stages:
        print("+ srf-upsample train", " ".join(stage), flush=True)
        code = train(stage)
        if code:
            return code
    print(
        f"generator: {args.out / 'stage3' / 'generator'} (SRFUpsample.from_pretrained / patch_fpn accept it); "
        f"COCO AP: {args.out / 'stage3' / 'metrics.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
