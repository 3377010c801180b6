"""The committed copies of the DeepForest experiment: each fold's small run files packed into ``runs.tar.gz`` (no
weights, paths made relative to the checkout), its tables, its converged generators, the sections of
``benchmarks/RESULTS.md``, and the paired differences pooled over the committed folds.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

from generators import copy_generators, generators_text
from profiles import default_variants
from restore import EXPERIMENT_CONFIG_NAME

from srf_upsample.train.experiment import (
    DetectorSchedule,
    ExperimentConfig,
    load_experiment,
    plan_jobs,
    pool_paired,
    pooled_markdown,
    pooled_reading,
)
from srf_upsample.train.experiment.archive import ARCHIVE_NAME, open_runs, read_archive, write_archive
from srf_upsample.train.experiment.detections import DETECTIONS_NAME
from srf_upsample.train.experiment.summary import resampled_ap_of_runs
from srf_upsample.train.plots import plot_generator_curves
from srf_upsample.train.run_folder import DIVERGED_NAME, is_finished

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _relative_paths(data: bytes, name: str) -> bytes:
    """A small output with this checkout's folder taken out of its paths (JSON, and the detections' ann_file).

    Raises ValueError when a path outside the checkout remains (a data cache or work folder elsewhere on this
    machine), which a clone would not have.
    """
    if name.endswith(".json"):
        text = data.decode().replace(f"{REPO}/", "")
        _refuse_outside_paths(text, name)
        return text.encode()
    if name.endswith(DETECTIONS_NAME):
        text = gzip.decompress(data).decode().replace(f"{REPO}/", "")
        _refuse_outside_paths(text, name)
        return gzip.compress(text.encode(), mtime=0)
    return data


def _refuse_outside_paths(text: str, name: str) -> None:
    """Raise ValueError naming the first absolute path (a JSON string starting with "/") left in ``text``."""
    found = re.search(r'"(/[^"]*)"', text)
    if found:
        raise ValueError(
            f"{name} names {found.group(1)!r}, outside this checkout ({REPO}), which a clone would not have. Keep "
            "the data cache and the work folder inside the checkout (SRF_UPSAMPLE_DATA_CACHE=.cache/srf_upsample, "
            "--work-dir runs/...) for runs whose records are committed."
        )


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
        title = f"Converged generators: DeepForest{' CPU profile' if prefix else ''}, {where}"
        write_results_section(text, f"deepforest-{prefix.replace('_', '-')}{fold}-generators", title)


def fold_command(profile: str, split: str, fold: int, config: ExperimentConfig, *, named: bool) -> str:
    """The ``run.py`` command line a fold's table names (``--profile`` only when ``named``)."""
    command = "python examples/deepforest/run.py" + (f" --profile {profile}" if named else "")
    command += "" if split == "rows" else f" --split {split}"
    command += f" --fold {fold}" if fold else ""
    if config.variants != default_variants(profile):
        command += " --variants " + " ".join(config.variants)
    if "paper" in config.variant_seeds:
        command += " --paper-seeds " + " ".join(map(str, config.variant_seeds["paper"]))
    return command


def fold_header(command: str, seeds: list[int], where: str, counts: dict, schedule: DetectorSchedule) -> str:
    """The paragraph above a fold's table: its command, seeds, tiles and the one target schedule."""
    return (
        f"Command: `{command}` (seeds {seeds}; {where}: {counts['train']['tiles']} train tiles, "
        f"{counts['val']['tiles']} validation tiles with {counts['val']['boxes']} boxes). Every target detector: "
        f"{schedule.max_iters} iterations of {schedule.batch_size} images, lr {schedule.lr}, "
        f"warm-up {schedule.warmup_iters}, x0.1 at {schedule.milestones}, validation every "
        f"{schedule.eval_every}. AP in points (x100), mean ± sd over seeds."
    )


def publish_fold(work: Path, text: str, *, prefix: str, fold: str, where: str, split: str) -> None:
    """``--write-results``: the fold's committed copies, its curve picture and its section of RESULTS.md."""
    copy_small_outputs(work, RESULTS_DIR / f"{prefix}{fold}")
    if (work / "curves.png").is_file():
        shutil.copyfile(work / "curves.png", REPO / "docs" / "images" / f"deepforest_curves_{prefix}{fold}.png")
    title = f"Does SRF help? DeepForest{' CPU profile' if prefix else ''}, {where}"
    title += " (spatial k-fold experiment)" if split == "blocks" else ""
    write_results_section(text, f"deepforest-{prefix.replace('_', '-')}{fold}", title)


def publish_pooled(text: str, profile: str, split: str) -> None:
    """``--pool-folds --write-results``: the pooled table's section of RESULTS.md."""
    pooled_name = "pooled" if split == "rows" else f"{split}-pooled"
    title = "" if split == "rows" else "Does SRF help? The k-fold experiment pooled over spatial blocks"
    title += " (CPU profile)" if title and profile == "cpu" else ""
    write_results_section(text, f"deepforest-{'cpu-' if profile == 'cpu' else ''}{pooled_name}", title)
