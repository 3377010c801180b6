"""Train yolov8n with and without SRFUpsample on the DeepForest tiles with ultralytics' own trainer; report mAP.

The tiles come from ``examples/deepforest/prepare.py`` (COCO format, built from the ``deepforest==2.1.0`` wheel fetched
with ``pip download --no-deps``); this script converts them to YOLO format (one ``.txt`` per image, normalised
``class x_center y_center width height``), then trains twice from the same YAML and seed: plain, and patched with
``use_srf`` (one SRFUpsample per neck channel count). A few epochs on CPU: the point is that it runs end to end and
the patched checkpoint reloads with SRF inside, not the score.

Usage:
    pip install 'srf_upsample[ultralytics]'
    python examples/ultralytics_yolo.py --epochs 3 --imgsz 320 --fraction 0.5
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

# Offline: no update checks, no pip auto-install, no font download (plots off below).
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent / "deepforest"))


def coco_to_yolo(coco_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir/{images,labels}/{train,val}`` (images linked, not copied) and ``out_dir/data.yaml``."""
    for split in ("train", "val"):
        coco = json.loads((coco_dir / "annotations" / f"instances_{split}.json").read_text())
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
        boxes: dict[int, list[str]] = {image["id"]: [] for image in coco["images"]}
        sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
        for annotation in coco["annotations"]:
            x, y, w, h = annotation["bbox"]
            width, height = sizes[annotation["image_id"]]
            line = f"0 {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}"
            boxes[annotation["image_id"]].append(line)
        for image in coco["images"]:
            target = out_dir / "images" / split / image["file_name"]
            if not target.exists():
                target.symlink_to((coco_dir / split / image["file_name"]).resolve())
            label = out_dir / "labels" / split / (Path(image["file_name"]).stem + ".txt")
            label.write_text("\n".join(boxes[image["id"]]) + ("\n" if boxes[image["id"]] else ""))
    data = out_dir / "data.yaml"
    data.write_text(f"path: {out_dir.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: tree\n")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/deepforest"), help="COCO tiles from prepare.py")
    parser.add_argument("--yolo-dir", type=Path, default=Path("data/deepforest_yolo"))
    parser.add_argument("--runs", type=Path, default=Path("runs/ultralytics_yolo"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of the training tiles to use")
    parser.add_argument("--variant", default="lite", choices=["lite", "paper"], help="SRFUpsample configuration")
    args = parser.parse_args(argv)

    try:
        from ultralytics import YOLO
    except ImportError:
        print("This example needs ultralytics: pip install 'srf_upsample[ultralytics]'", file=sys.stderr)
        return 1
    from prepare import prepare

    from srf_upsample import SRFUpsample
    from srf_upsample.integrations.ultralytics import use_srf

    if not (args.data_dir / "annotations" / "instances_val.json").exists():
        prepare(args.data_dir, Path.home() / ".cache" / "srf_upsample" / "deepforest")
    data = coco_to_yolo(args.data_dir, args.yolo_dir)
    settings = {
        "data": str(data),
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "device": "cpu",
        "workers": 0,
        "plots": False,
        "amp": False,
        "seed": 0,
        "deterministic": True,
        "fraction": args.fraction,
        "project": str(args.runs.resolve()),
        "exist_ok": True,
        "verbose": False,
    }
    results = {}
    for name in ("baseline", "srf"):
        model = YOLO("yolov8n.yaml")
        if name == "srf":
            model = use_srf(model, functools.partial(SRFUpsample, variant=args.variant))
            print(model.srf_report)
        model.train(name=name, **settings)
        last = args.runs / name / "weights" / "last.pt"
        reloaded = YOLO(str(last))
        inside = sum(isinstance(m, SRFUpsample) for m in reloaded.model.modules())
        metrics = reloaded.val(
            data=str(data),
            imgsz=args.imgsz,
            batch=args.batch,
            device="cpu",
            plots=False,
            verbose=False,
            project=str(args.runs.resolve()),
            name=f"{name}_val",
            exist_ok=True,
        )
        results[name] = {
            "mAP50": float(metrics.box.map50),
            "mAP50-95": float(metrics.box.map),
            "srf_modules_in_checkpoint": inside,
            "checkpoint": str(last),
        }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
