"""The converged generators of a ``--split blocks`` fold: which runs train them, how far each got, and
continuing one that reached its iteration cap before the plateau criterion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from srf_upsample.train.experiment import select_jobs
from srf_upsample.train.plateau import evaluations_without_gain, plateau_step
from srf_upsample.train.run_folder import DISCRIMINATOR_DIR, GENERATOR_DIR, is_finished, read_jsonl

# The plateau criterion of G's held-out L1 (the trainer's plateau stop): 5 evaluations in a row without a 1 % gain.
PLATEAU = {"plateau_patience": 5, "plateau_min_delta": 0.01}
# A run that reached its cap short of the criterion continues at its final lr up to this multiple of the cap.
CONTINUE_FACTOR = 2


def generator_jobs(jobs: list) -> list:
    """``--generators-only``: the shared stage-1 runs and what they need (seed 0's A1, their F), nothing else."""
    return select_jobs(jobs, [job.name for job in jobs if job.name.startswith("shared/")])


def _run_minutes(run: Path) -> float:
    """A run's logged time in minutes: its training steps and its validations."""
    steps = sum(record["time"] for record in read_jsonl(run / "log.jsonl"))
    return (steps + sum(record.get("seconds", 0.0) for record in read_jsonl(run / "eval.jsonl"))) / 60


def generators_text(work: Path, command: str, where: str) -> str | None:
    """The converged generators of a ``--split blocks`` fold: how long each stage 1 ran, why it stopped,
    and G's held-out L1 per level at its last evaluation against nearest, bilinear and bicubic on the same tiles.
    ``None`` where no shared stage-1 run has evaluated G yet.
    """
    rows, levels, interpolations = [], None, None
    for run in sorted((work / "shared").glob("stage1-*")):
        records = [r for r in read_jsonl(run / "eval.jsonl") if "generator_l1" in r]
        fixed = next((r for r in records if "interpolation_l1" in r), None)
        if not records or fixed is None or not (run / "manifest.json").is_file():
            continue
        manifest = json.loads((run / "manifest.json").read_text())
        last, best = records[-1], min(records, key=lambda r: r["generator_l1_mean"])
        levels = levels or list(last["generator_l1"])
        state = "finished" if manifest.get("finished") else "running"
        stopped = manifest.get("stopped")
        ending = f"plateau stop at {stopped['step']}" if stopped else f"{state}; {_plateau_state(records)}"
        ending += _continued(manifest)
        total = manifest.get("config", {}).get("max_iters", "?")
        variant = run.name.removeprefix("stage1-")
        head = f"| {variant} | {last['step']} of {total} ({ending}) | {_run_minutes(run):.1f} |"
        rows.append(f"{head} G, step {last['step']} | " + _l1_cells(last["generator_l1"], last["generator_l1_mean"]))
        if best is not last:
            rows.append(
                f"| | | | G, best (step {best['step']}) | " + _l1_cells(best["generator_l1"], best["generator_l1_mean"])
            )
        interpolations = interpolations or fixed  # the same tiles and F for every run of the fold
    if not rows:
        return None
    for mode, values in interpolations["interpolation_l1"].items():
        rows.append(f"| (fixed) | | | {mode} | " + _l1_cells(values, interpolations["interpolation_l1_mean"][mode]))
    images = next(r for r in read_jsonl(next((work / "shared").glob("stage1-*")) / "eval.jsonl"))["heldout_images"]
    header = (
        f"Command: `{command}` ({where}). Stage 1 (SRF-GAN pre-training) against seed 0's A1, shared by every seed's "
        f"arms; G's held-out L1 (Eq. 2, mean absolute difference to F(I_hr)) on the fold's {images} validation tiles "
        "(which no detector trains on), every max_iters / 20 iterations. Plateau criterion: stop after 5 evaluations "
        "in a row none of which improves the best mean L1 by 1 % (relative); a resumed run re-derives it from "
        "eval.jsonl. Minutes: logged training steps and validations on one CPU thread (runs shared the machine's 2 "
        "cores with up to 3 others, so they overstate a run's cost alone)."
    )
    columns = " | ".join(levels) + " | mean |"
    table = [
        f"| variant | iterations | minutes | upsampler | {columns}",
        "|---|---|---|---|" + "---|" * (len(levels) + 1),
        *rows,
    ]
    return header + "\n\n" + "\n".join(table)


def _plateau_state(records: list[dict]) -> str:
    """How far the last evaluations are from the plateau criterion (for a run that reached max_iters)."""
    patience, min_delta = PLATEAU["plateau_patience"], PLATEAU["plateau_min_delta"]
    met = plateau_step(records, patience, min_delta)
    if met is not None:
        return f"plateau criterion met at step {met}"
    waited = evaluations_without_gain(records, min_delta)[-1][1]
    return f"{waited} of {patience} evaluations without a {min_delta:.0%} gain at the end"


def _l1_cells(per_level: dict, mean: float) -> str:
    return " | ".join(f"{per_level[level]:.4f}" for level in per_level) + f" | {mean:.4f} |"


def copy_generators(work: Path, target: Path) -> list[Path]:
    """Copy each finished shared stage-1 run's ``generator`` folder (``save_pretrained``) to ``target/generators``,
    and its ``discriminator`` to ``target/discriminators`` (stage 2 continues both: ``--restore`` needs them)."""
    copied = []
    for run in sorted((work / "shared").glob("stage1-*")):
        if not is_finished(run):
            continue
        for folder, kept_in in ((GENERATOR_DIR, "generators"), (DISCRIMINATOR_DIR, "discriminators")):
            if (run / folder).is_dir():
                destination = target / kept_in / run.name
                shutil.rmtree(destination, ignore_errors=True)
                shutil.copytree(run / folder, destination)
                copied.append(destination)
    return copied


def _continued(manifest: dict) -> str:
    """``"; continued from the N cap"`` for a run whose ``max_iters`` was raised on resume (else ``""``)."""
    for record in manifest.get("resumed_despite_changes", []):
        if "max_iters" in record.get("changes", {}):
            old, new = record["changes"]["max_iters"]
            return f"; continued at step {record['step']} from the {old} cap to at most {new} at its final lr"
    return ""


def runs_using(work: Path, run: Path) -> list[str]:
    """The arms of the fold (``seed*/<arm>``) whose config takes anything from ``run`` (its generator or weights)."""
    prefix = str(run.resolve())
    users = []
    for config_file in sorted(work.glob("seed*/*/run_config.json")):
        values = json.loads(config_file.read_text())
        if any(isinstance(values.get(key), str) and values[key].startswith(prefix) for key in ("generator", "init")):
            users.append(str(config_file.parent.relative_to(work)))
    return users


def continue_generators(work: Path, variants: list[str]) -> dict[str, str]:
    """Continue each variant's shared stage-1 run of the fold that reached its cap short of the plateau criterion.

    The run resumes from its last checkpoint at its final lr with ``max_iters`` raised to ``CONTINUE_FACTOR`` x the
    cap (``--resume-despite-changes``, recorded in its manifest) and stops at the criterion (the trainer's plateau
    stop) or the raised cap. A run that an arm already took its generator from is refused: that arm would then hold
    another G than the one reported. Returns variant -> ``"done"``, ``"converged"`` (nothing to do) or ``"failed"``.
    """
    states = {}
    for variant in variants:
        run = work / "shared" / f"stage1-{variant}"
        if not is_finished(run):
            raise ValueError(
                f"--continue-generators {variant}: {str(run)!r} holds no finished stage-1 run; train it first with "
                "--generators-only."
            )
        manifest = json.loads((run / "manifest.json").read_text())
        records = [record for record in read_jsonl(run / "eval.jsonl") if "generator_l1_mean" in record]
        if manifest.get("stopped") or plateau_step(records, PLATEAU["plateau_patience"], PLATEAU["plateau_min_delta"]):
            states[variant] = "converged"
            continue
        users = runs_using(work, run)
        if users:
            raise ValueError(
                f"--continue-generators {variant}: arms {users} already trained with the generator of {str(run)!r}; "
                "continuing it would change the G they were paired with. Report it as it is, or delete those arms' "
                "folders to retrain them with the continued G."
            )
        cap = int(manifest["config"]["max_iters"]) * CONTINUE_FACTOR
        command = [
            sys.executable,
            "-m",
            "srf_upsample.cli",
            "train",
            "stage1",
            "--config",
            str(run / "run_config.json"),
        ]
        command += ["--resume-despite-changes", "--set", f"max_iters={cap}"]
        print(" ".join(command), flush=True)
        states[variant] = "done" if subprocess.run(command, check=False).returncode == 0 else "failed"
    return states
