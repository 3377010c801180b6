"""``srf-upsample experiment``: plan, run (resumably) and summarise the protocol from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..run_folder import write_json
from .archive import open_runs
from .config import load_experiment
from .plan import plan_jobs
from .report import markdown_table, plot_curves
from .run import run_jobs
from .summary import summarize

__all__ = ["main"]

DESCRIPTION = (
    "The fair protocol as a command: every arm on one target schedule, over seeds, with a paired results table."
)


def main(argv: list[str] | None = None) -> int:
    """``srf-upsample experiment``: plan, run (resumably) and summarise the protocol; returns the exit code."""
    parser = argparse.ArgumentParser(prog="srf-upsample experiment", description=DESCRIPTION)
    parser.add_argument("--config", required=True, help="experiment JSON (see docs/experiment.md)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--summarize-only", action="store_true", help="only write the table from finished runs")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and stop")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_experiment(args.config)
    except (ValueError, TypeError, FileNotFoundError, json.JSONDecodeError) as error:
        print(f"srf-upsample experiment: error: {error}", file=sys.stderr)
        return 2
    jobs = plan_jobs(config, args.seeds, args.work_dir)
    if args.dry_run:
        for job in jobs:
            print(f"{job.name:24s} {job.stage:8s} needs {job.needs}")
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.work_dir / "experiment.json", {"config": config.to_dict(), "seeds": args.seeds})
    if args.summarize_only:
        states = {}
        with open_runs(args.work_dir) as runs_dir:  # the run folders, or their archive unpacked
            summary = summarize(plan_jobs(config, args.seeds, runs_dir), config)
    else:
        states = run_jobs(jobs, max_parallel=args.jobs)
        summary = summarize(jobs, config)
    summary["states"] = states
    write_json(args.work_dir / "results.json", summary)
    text = markdown_table(summary)
    (args.work_dir / "results.md").write_text(text + "\n", encoding="utf-8")
    if summary["curves"]:
        plot_curves(summary, args.work_dir / "curves.png")
    print(text)
    failed = [name for name, value in states.items() if value != "done"]
    if failed:
        print(f"not finished: {failed}", file=sys.stderr)
    return 1 if failed else 0
