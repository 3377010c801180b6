"""``srf-upsample experiment``: split data into folds, train the arms over seeds (here or on a cluster), report.

Subcommands: ``folds`` (write the folds of one COCO file into a work folder), ``run`` (train every run of the
experiment, resumably, in each fold; the folds can be made here too) and ``report`` (intervals, tables and a forest
plot over the finished runs of one or several work folders). Without a subcommand the arguments are ``run``'s.
Everything a command is given is checked before anything is written or trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..run_folder import write_json
from .archive import open_runs
from .config import EXPERIMENT_RECORD, ExperimentConfig, load_experiment, widen_experiment, write_experiment
from .folds import FOLDS_NAME, Fold, make_folds, read_folds
from .launch import LAUNCHERS, LocalLauncher, SubmititLauncher
from .plan import check_arm_names, plan_jobs, select_arms
from .report import markdown_table, plot_curves
from .run import run_jobs
from .summary import summarize

__all__ = ["main"]

DESCRIPTION = (
    "The fair protocol as a command: every arm on one target schedule, over seeds and folds, with paired results."
)
COMMANDS = ("folds", "run", "report")


class _Refused(ValueError):
    """A request refused before anything was written: its message names the value and the fix."""


def _add_fold_arguments(parser: argparse.ArgumentParser, *, data_help: str) -> None:
    group = parser.add_argument_group("folds (recorded in the work folder; a rerun reuses them)")
    group.add_argument("--data", type=Path, default=None, help=data_help)
    group.add_argument("--folds", type=int, default=None, metavar="K", help="split --data into K folds")
    group.add_argument(
        "--split-by",
        default="random",
        metavar="HOW",
        help="random (default), field:NAME (images sharing the image record's NAME stay on one side) or "
        "regex:PATTERN (the same, grouped by PATTERN's first group in the file name)",
    )
    group.add_argument("--split-seed", type=int, default=0, help="seed of the split's shuffle")
    group.add_argument(
        "--fold-files",
        nargs="+",
        default=None,
        metavar="TRAIN:VAL",
        help="explicit folds instead: one TRAIN.json:VAL.json pair of COCO files per fold",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srf-upsample experiment", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", metavar="{folds,run,report}")
    folds = commands.add_parser("folds", help="write the folds of one COCO file (or given pairs) into --work-dir")
    folds.add_argument("--work-dir", required=True, type=Path)
    _add_fold_arguments(folds, data_help="the one COCO file to split")

    run = commands.add_parser("run", help="train every run of the experiment (resumably) and write its tables")
    run.add_argument("--config", required=True, help="experiment JSON (see docs/experiment.md)")
    run.add_argument("--work-dir", required=True, type=Path)
    run.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    run.add_argument(
        "--arms",
        nargs="+",
        default=None,
        metavar="ARM",
        help="train these arms now (and each seed's A1): registry names (A1, B, DySample, A2 for every variant) or "
        "an arm with one variant (A2-lite); the work folder's table keeps the arms trained before",
    )
    run.add_argument("--variants", nargs="+", default=None, help="generator variants (default: the config's)")
    run.add_argument("--fold", type=int, nargs="+", default=None, help="train only these folds (default: all)")
    _add_fold_arguments(run, data_help="the COCO file to split (default: the config's train_ann_file)")
    where = run.add_argument_group("where runs train")
    where.add_argument("--launcher", default="local", choices=LAUNCHERS, help="local processes or submitit jobs")
    where.add_argument("--jobs", type=int, default=None, help="runs at the same time (default: 1 local, all ready)")
    where.add_argument("--gpus-per-run", type=int, default=0, help="more than 1: the run trains under torchrun")
    where.add_argument("--cluster", default=None, choices=("slurm", "local"), help="submitit executor (default: auto)")
    where.add_argument("--partition", default=None, help="Slurm partition")
    where.add_argument("--cpus-per-run", type=int, default=2)
    where.add_argument("--timeout-min", type=int, default=240, help="job time limit; a longer run is requeued")
    where.add_argument("--mem-gb", type=int, default=None)
    where.add_argument("--slurm", nargs="+", default=[], metavar="KEY=VALUE", help="more Slurm settings")
    where.add_argument("--submitit-dir", type=Path, default=None, help="submitit's logs (default: WORK/submitit)")
    run.add_argument("--summarize-only", action="store_true", help="only write the tables from finished runs")
    run.add_argument("--dry-run", action="store_true", help="print the planned runs and stop")
    run.add_argument("--log-level", default="INFO")

    report = commands.add_parser("report", help="intervals, tables and a forest plot over finished runs")
    report.add_argument("--work-dir", required=True, type=Path, nargs="+", help="work folders (or their folds)")
    report.add_argument("--out", required=True, type=Path, help="where results.md/json and forest.png go")
    report.add_argument("--labels", nargs="+", default=None, help="one label per source (default: folder names)")
    report.add_argument("--replicates", type=int, default=1000, help="bootstrap resamples")
    report.add_argument("--level", type=float, default=0.95, help="interval level")
    report.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    return parser


def _folds(args: argparse.Namespace, default_data: str | None) -> list[Fold] | None:
    """The folds of the request (made and recorded now if asked for), the recorded ones, or None (one split)."""
    if args.folds is not None and args.fold_files:
        raise _Refused(f"--folds {args.folds} and --fold-files: give one of them (a split, or explicit pairs).")
    if args.fold_files:
        pairs = []
        for pair in args.fold_files:
            train, sep, val = pair.rpartition(":")
            if not sep or not train or not val:
                raise _Refused(f"--fold-files: {pair!r} is not TRAIN.json:VAL.json; give one pair per fold.")
            pairs.append((train, val))
        return make_folds(args.work_dir, pairs=pairs)
    if args.folds is not None:
        data = args.data or default_data
        if not data:
            raise _Refused("--folds needs the COCO file to split: give --data FILE (or train_ann_file in --config).")
        return make_folds(args.work_dir, ann_file=data, folds=args.folds, split_by=args.split_by, seed=args.split_seed)
    if args.data is not None:
        raise _Refused(f"--data {str(args.data)!r} without --folds K: say how many folds to split it into.")
    return read_folds(args.work_dir)


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    values = json.loads(Path(args.config).read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise _Refused(f"--config {args.config!r} holds no JSON object; see docs/experiment.md for its keys.")
    if args.variants:
        values["variants"] = list(args.variants)
    if args.arms is not None:
        heads = check_arm_names(args.arms)
        values["arms"] = heads
        variants = [name.partition("-")[2] for name in args.arms if name.partition("-")[2] and name not in heads]
        if variants and not args.variants:
            values["variants"] = list(dict.fromkeys([*values.get("variants", []), *variants]))
    return values


def _fold_config(values: dict[str, Any], fold: Fold | None) -> ExperimentConfig:
    if fold is None:
        missing = [key for key in ("val_data_root", "val_ann_file") if not values.get(key)]
        if missing:
            raise _Refused(
                f"the config has no {missing}: give the validation set, or split the training file into folds "
                "(--folds K, or --fold-files TRAIN.json:VAL.json ...)."
            )
        return load_experiment(values)
    root = values.get("train_data_root")
    if not root:
        raise _Refused("the config has no train_data_root: with folds it is the image folder of the fold files.")
    fold_values = {**values, "train_ann_file": str(fold.train_ann_file), "val_ann_file": str(fold.val_ann_file)}
    return load_experiment({**fold_values, "val_data_root": values.get("val_data_root") or root})


def _launcher(args: argparse.Namespace) -> Any:
    if args.launcher == "local":
        return LocalLauncher(gpus=args.gpus_per_run)
    slurm = {}
    for item in args.slurm:
        key, sep, value = item.partition("=")
        if not sep:
            raise _Refused(f"--slurm {item!r} is not KEY=VALUE (e.g. --slurm account=myproj qos=normal).")
        slurm[key] = value
    folder = args.submitit_dir or args.work_dir / "submitit"
    return SubmititLauncher(
        folder,
        cluster=args.cluster,
        partition=args.partition,
        gpus=args.gpus_per_run,
        cpus=args.cpus_per_run,
        timeout_min=args.timeout_min,
        mem_gb=args.mem_gb,
        slurm=slurm,
    )


def _table(work: Path, jobs: list, config: ExperimentConfig, states: dict[str, str]) -> str:
    summary = summarize(jobs, config)
    summary["states"] = states
    write_json(work / "results.json", summary)
    text = markdown_table(summary)
    (work / "results.md").write_text(text + "\n", encoding="utf-8")
    if summary["curves"]:
        plot_curves(summary, work / "curves.png")
    return text


def _run(args: argparse.Namespace) -> int:
    if not args.seeds:
        raise _Refused("--seeds is empty: give at least one seed (e.g. --seeds 0 1 2).")
    values = _config_values(args)
    paths = ("train_data_root", "train_ann_file", "val_data_root", "val_ann_file")
    load_experiment({**values, **{key: values.get(key) or "-" for key in paths}})  # arms, variants, schedule
    if (args.folds is not None or args.fold_files) and (args.work_dir / EXPERIMENT_RECORD).is_file():
        raise _Refused(
            f"work_dir {str(args.work_dir)!r} holds a one-split experiment ({EXPERIMENT_RECORD}), not folds; "
            "choose another --work-dir for the k-fold experiment."
        )
    folds = _folds(args, values.get("train_ann_file"))
    selected = [fold for fold in folds if args.fold is None or fold.index in args.fold] if folds else [None]
    if args.fold is not None and (not folds or len(selected) != len(set(args.fold))):
        known = f"folds 0..{len(folds) - 1}" if folds else "no folds"
        raise _Refused(f"--fold {args.fold}: {args.work_dir} has {known}; name some of those (or leave --fold out).")
    plans = []  # every fold's request and its grown record, checked against its folder before anything trains
    for fold in selected:
        work = fold.work_dir if fold else args.work_dir
        requested = _fold_config(values, fold)
        plans.append((work, requested, *widen_experiment(work, requested, args.seeds)))
    launcher = None if args.dry_run or args.summarize_only else _launcher(args)
    jobs_at_once = args.jobs or (1 if args.launcher == "local" else 10**6)
    trains = []  # (work, the runs to train now): what this command asked for, not the whole record
    for work, requested, *_ in plans:
        jobs = plan_jobs(requested, args.seeds, work)
        trains.append((work, select_arms(jobs, args.arms) if args.arms is not None else jobs))
        if args.dry_run:
            for job in trains[-1][1]:
                print(f"{job.name:28s} {job.stage:9s} needs {','.join(job.needs) or '-'}")
    if args.dry_run:
        return 0
    for work, _, config, seeds in plans:
        write_experiment(work, config, seeds)
    if args.summarize_only:
        states = [{} for _ in plans]
    elif args.launcher == "submitit" and len(trains) > 1:  # a cluster takes every fold's runs at once
        with ThreadPoolExecutor(len(trains)) as pool:
            states = list(
                pool.map(lambda item: run_jobs(item[1], max_parallel=jobs_at_once, launcher=launcher), trains)
            )
    else:
        states = [run_jobs(jobs, max_parallel=jobs_at_once, launcher=launcher) for _, jobs in trains]
    failed = []
    for (work, _, config, seeds), fold_states in zip(plans, states, strict=True):
        if args.summarize_only:
            with open_runs(work) as runs_dir:  # the run folders, or their archive unpacked
                text = _table(work, plan_jobs(config, seeds, runs_dir), config, fold_states)
        else:
            text = _table(work, plan_jobs(config, seeds, work), config, fold_states)
        print(f"{work}:\n{text}" if folds else text)
        failed += [name for name, value in fold_states.items() if value != "done"]
    if failed:
        print(f"not finished: {failed}", file=sys.stderr)
    if folds:
        print(f"report over the folds: srf-upsample experiment report --work-dir {args.work_dir} --out REPORT_DIR")
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    sources = []
    for work in args.work_dir:
        folds = read_folds(work)
        sources += [fold.work_dir for fold in folds] if folds else [work]
    if args.labels is not None and len(args.labels) != len(sources):
        raise _Refused(f"--labels: {len(args.labels)} labels for {len(sources)} sources {[str(s) for s in sources]}.")
    try:
        from .readout import report_experiment
    except ImportError:
        raise _Refused("report needs srf_upsample.train.experiment.readout, which this install lacks.") from None
    report_experiment(
        sources, args.out, labels=args.labels, replicates=args.replicates, level=args.level, seed=args.seed
    )
    print(f"wrote {args.out / 'results.md'}, results.json and forest.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``srf-upsample experiment [folds|run|report] ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]  # the form without a subcommand is run's
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        if args.command == "folds":
            folds = _folds(args, None)
            if not folds:
                raise _Refused(
                    f"folds: give --data FILE --folds K or --fold-files; {args.work_dir} has no {FOLDS_NAME}."
                )
            for fold in folds:
                print(f"fold {fold.index}: train {fold.train_ann_file}  val {fold.val_ann_file}")
            return 0
        return _run(args) if args.command == "run" else _report(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, json.JSONDecodeError) as error:
        print(f"srf-upsample experiment {args.command}: error: {error}", file=sys.stderr)
        return 2
