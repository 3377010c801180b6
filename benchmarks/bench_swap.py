"""The inference-time swap: a trained detector as trained, then with its FPN upsampling swapped, no fine-tuning.

The same detector weights are scored (COCO AP on held-out images) once per upsampling: its own nearest upsampling
("nearest (as trained)"), the fixed interpolations of ``--interpolations`` (default bilinear), and each
``--generator`` (a ``save_pretrained`` folder such as ``<stage-1 run>/generator``, or a shipped name) patched into
every top-down FPN site with one G shared, as the trainer's stages 2 and 3 patch it (``models.patch_generator``). A
guided generator (issue 34) gets each site's lateral map as guide; the table says at how many sites, and a site
without one is an error, not an unguided pass.

Usage: ``python benchmarks/bench_swap.py --data-root DIR --ann-file FILE [--detector NAME_OR_DIR]
[--generator NAME_OR_DIR ...]``. ``--detector``: a detector folder or shipped name (default: the shipped DeepForest
one, whose generators are the shipped ``srf-*-mobilenetv2-fpn``), or a baseline run folder (an A1 of
``examples/deepforest/run.py``: the F its shared stage-1 generators trained against). A generator is meaningful here
only on the detector whose FPN it was trained against.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from _common import benchmark_parser, format_table, header_lines, publish

from srf_upsample import SRFUpsample
from srf_upsample.train.evaluate import evaluate_detector
from srf_upsample.train.models import INTERPOLATION_MODES, patch_generator, set_fpn_interpolation
from srf_upsample.train.run_folder import MANIFEST_NAME, detector_spec_of, load_trained_detector
from srf_upsample.train.shipped import DEFAULT_DETECTOR, load_shipped_detector

AS_TRAINED = "nearest (as trained)"


def _category_ids(ann_file: Path) -> list[int]:
    """The annotation file's category ids, sorted (the trainer's label mapping)."""
    try:
        categories = json.loads(ann_file.read_text())["categories"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"--ann-file {str(ann_file)!r} is not a COCO instances file with categories ({error})."
        ) from None
    return sorted(int(category["id"]) for category in categories)


def load_detector(value: str) -> tuple[torch.nn.Module, dict]:
    """A fresh detector from ``--detector`` (eval mode) and ``{"min_size", "max_size", "fpn_channels", ...}``.

    ``value`` is a detector folder / shipped name (``load_shipped_detector``) or a baseline run folder of the trainer
    trained with its own nearest upsampling (e.g. ``runs/deepforest_cpu_block0/seed0/A1``, the F its stage-1
    generators trained against); for a run, ``"category_ids"`` is its label mapping.
    """
    path = Path(value)
    if not (path / MANIFEST_NAME).is_file():
        return load_shipped_detector(value)
    detector, manifest = load_trained_detector(path, expected=("baseline",))
    config = manifest["config"]
    if config.get("interpolation", "nearest") != "nearest" or config.get("upsampler", "interpolate") != "interpolate":
        raise ValueError(
            f"--detector {value!r} is a baseline trained with {config.get('interpolation')!r} / "
            f"{config.get('upsampler')!r} upsampling, not its FPN's own nearest one: pass an A1 run (the F of stage 1)."
        )
    spec = {**detector_spec_of(manifest).to_dict(), "category_ids": manifest["category_ids"]}
    return detector, spec


def swapped_detector(detector_name: str, method: str, generator: SRFUpsample | None) -> torch.nn.Module:
    """A fresh copy of the detector (eval mode) with ``method``'s upsampling, or ``generator`` patched in."""
    detector, _ = load_detector(detector_name)
    if generator is not None:
        patch_generator(detector, generator)  # a guided G: every site guided, or a ValueError
    elif method != AS_TRAINED:
        set_fpn_interpolation(detector, method)
    return detector.eval()


class GuideCounter:
    """Counts ``generator``'s calls, and those given a guide, while the detector runs (a forward hook)."""

    def __init__(self, generator: SRFUpsample) -> None:
        self.calls = self.guided = 0
        self.handle = generator.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args, kwargs, output) -> None:
        self.calls += 1
        self.guided += kwargs.get("guide") is not None


def main(argv: list[str] | None = None) -> int:
    """Score each upsampling of the detector; prints (and unless ``--no-write`` writes) the table."""
    parser = benchmark_parser(__doc__, repeats=None, warmup=False, quick_help="the first 2 images, nothing written")
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        help="shipped detector name, detector folder, or baseline (A1) run folder: the F the generators trained on",
    )
    parser.add_argument("--data-root", type=Path, required=True, help="the held-out images")
    parser.add_argument("--ann-file", type=Path, required=True, help="their COCO instances json")
    parser.add_argument(
        "--interpolations",
        nargs="*",
        default=["bilinear"],
        choices=[mode for mode in INTERPOLATION_MODES if mode != "nearest"],
        help="fixed interpolations swapped in (default: bilinear)",
    )
    parser.add_argument(
        "--generator", action="append", default=[], help="a save_pretrained generator folder or shipped name"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--section", default="swap-deepforest", help="the RESULTS.md section written")
    args = parser.parse_args(argv)
    args.no_write = args.no_write or args.quick
    try:
        _, spec = load_detector(args.detector)
        category_ids = spec.get("category_ids") or _category_ids(args.ann_file)
        generators = {name: SRFUpsample.from_pretrained(name) for name in args.generator}
        channels = spec.get("fpn_channels", 256)
        for name, generator in generators.items():
            if generator.in_channels != channels:
                raise ValueError(
                    f"--generator {name!r} upsamples {generator.in_channels}-channel features but the detector's FPN "
                    f"has {channels}: pass a generator trained against this detector's FPN."
                )
    except ValueError as error:
        parser.error(str(error))
    ann_file = args.ann_file
    scratch = tempfile.TemporaryDirectory()
    if args.quick:  # the first 2 images of the annotation file
        data = json.loads(ann_file.read_text())
        keep = {image["id"] for image in data["images"][:2]}
        data["images"] = [image for image in data["images"] if image["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        ann_file = Path(scratch.name) / "instances.json"
        ann_file.write_text(json.dumps(data))
    methods: dict[str, SRFUpsample | None] = {AS_TRAINED: None, **dict.fromkeys(args.interpolations), **generators}
    rows = []
    for method, generator in methods.items():
        try:
            detector = swapped_detector(args.detector, method, generator)
        except ValueError as error:
            parser.error(f"{method}: {error}")
        counter = GuideCounter(generator) if generator is not None else None
        metrics = evaluate_detector(
            detector.to(args.device),
            args.data_root,
            ann_file,
            category_ids=category_ids,
            min_size=spec["min_size"],
            max_size=spec["max_size"],
            device=args.device,
        )
        box = metrics["bbox"]
        label = method if generator is None else f"{method} ({generator.variant} G)"
        guided = "-" if counter is None else f"{counter.guided} of {counter.calls}"
        rows.append([label, guided, f"{100 * box['AP']:.1f}", f"{100 * box['AP50']:.1f}", f"{100 * box['AP75']:.1f}"])
    images = len(json.loads(ann_file.read_text())["images"])
    lines = [
        *header_lines(
            "## Inference-time swap: the detector as trained, its FPN upsampling replaced, no fine-tuning",
            quick=args.quick,
            device=args.device,
            dtypes=[torch.float32],
        ),
        f"- detector `{args.detector}` (weights unchanged), {images} held-out image(s) of `{args.ann_file}`, "
        f"evaluated at min_size {spec['min_size']} / max_size {spec['max_size']}; COCO box AP in %",
        "- generators patched into every top-down FPN site, one G shared (the trainer's `patch_generator`); "
        "G calls given a guide: a guided G gets the site's lateral map at each of them",
        "",
        format_table(["upsampling", "G calls with a guide", "AP", "AP50", "AP75"], rows),
    ]
    scratch.cleanup()
    publish("\n".join(lines), args.section, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
