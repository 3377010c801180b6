"""Rebuild a fold's work folder from its committed results, so that a new machine continues the experiment.

The committed results keep each finished run's records (``runs.tar.gz``: manifest, logs, metrics, per-image
detections) and each fold's converged generators and their discriminators (``generators/stage1-<variant>``,
``discriminators/stage1-<variant>``), never a detector's weights. A
restored run therefore counts as finished; the arms that start from a shared generator (A2) can still train, and so
can stage 2 from a shared stage-1 run's generator and discriminator; a run that starts from a restored detector's
weights (stage 2 and A1+ from their seed's A1, A5 and C from their stage 2) is refused by the scheduler with the
reason (``srf_upsample.train.experiment.run.missing_inputs``).

Those runs can only continue as a whole new lineage: ``retrain_lineages`` leaves out a seed's A1 and every run that
descends from its weights, so that the scheduler retrains them together on this machine. Retraining A1 alone would
not do: CPU training is not always bit-reproducible across machines (seed 1's A1 of block 0, retrained on a second
machine, differed from its step-1 loss on), so a new A1 may have other weights than the one its committed
descendants started from, and the table would leave those descendants out (``summary.lineage_conflict``).
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

from srf_upsample.train.experiment.archive import ARCHIVE_NAME, read_archive
from srf_upsample.train.experiment.run import INPUT_KEYS, LINEAGE_KEY, RESTORED_NAME
from srf_upsample.train.run_folder import DISCRIMINATOR_DIR, GENERATOR_DIR, MANIFEST_NAME, write_json

__all__ = ["EXPERIMENT_CONFIG_NAME", "restore_runs"]

# The fold's experiment config: in its work folder (what --summarize-only reads) and in its committed results.
EXPERIMENT_CONFIG_NAME = "experiment_config.json"


def _lineage(files: dict[str, bytes]) -> dict:
    """The lineage a run's committed manifest records (``run.LINEAGE_KEY``), empty if none."""
    return json.loads(files.get(MANIFEST_NAME, b"{}")).get(LINEAGE_KEY) or {}


def lineage_runs(runs: dict[str, dict[str, bytes]], seed: int) -> set[str]:
    """The runs of ``seed`` that are its A1 or descend from that A1's weights, from their committed records.

    A run descends from a run when its manifest's lineage names that seed's A1 or when an input of its
    ``run_config.json`` (``--init``, ``--detector-weights``, ...) lies in a run folder already found.
    """
    a1 = f"seed{seed}/A1"
    candidates = {}  # each other run of the seed: the A1 its lineage names, and the folders its inputs lie in
    for run, files in runs.items():
        if run.startswith(f"seed{seed}/") and run != a1:
            inputs = json.loads(files.get("run_config.json", b"{}"))
            paths = [str(inputs[key]) + "/" for key in INPUT_KEYS if inputs.get(key)]
            candidates[run] = (_lineage(files).get("a1"), paths)
    found = {a1} if a1 in runs else set()
    grew = True
    while grew:
        grew = False
        for run, (lineage_a1, paths) in candidates.items():
            if run not in found and (
                lineage_a1 == a1 or any(f"/{source}/" in path for source in found for path in paths)
            ):
                found.add(run)
                grew = True
    return found


def restore_runs(work: Path, committed: Path, *, retrain_lineages: Collection[int] = ()) -> list[str]:
    """Write into ``work`` each finished run of ``committed/runs.tar.gz`` that ``work`` does not hold, and the
    committed ``experiment_config.json`` when ``work`` has none.

    A run ``work`` already holds (finished or in progress) is left as it is. A restored shared stage-1 run gets its
    committed generator and discriminator folders as ``generator/`` and ``discriminator/`` (what stage 2 reads).
    Each restored folder has a :data:`RESTORED_NAME` file saying where it came from.

    Args:
        work: the fold's work folder.
        committed: the fold's committed results folder.
        retrain_lineages: seeds whose A1 and its descendants (:func:`lineage_runs`) are not restored, so that they
            retrain as one lineage; a folder of theirs that an earlier restore wrote (no weights) is removed.

    Returns:
        The restored runs (``seed1/A1``, ``shared/stage1-lite``), sorted.

    Raises:
        FileNotFoundError: ``committed`` has no ``runs.tar.gz``.
        ValueError: a seed of ``retrain_lineages`` is the one whose A1 the shared stage-1 runs learned against.
    """
    archive = committed / ARCHIVE_NAME
    if not archive.is_file():
        raise FileNotFoundError(f"no committed runs to restore: {archive} does not exist.")
    runs: dict[str, dict[str, bytes]] = defaultdict(dict)
    for name, data in read_archive(archive).items():
        parts = name.split("/")
        if len(parts) == 3 and (parts[0].startswith("seed") or parts[0] == "shared"):
            runs[f"{parts[0]}/{parts[1]}"][parts[2]] = data
    for seed in retrain_lineages:
        shared = sorted(
            run
            for run, files in runs.items()
            if run.startswith("shared/") and _lineage(files).get("a1") == f"seed{seed}/A1"
        )
        if shared:
            raise ValueError(
                f"retrain_lineages: seed {seed}'s lineage cannot be retrained: the shared runs {shared} learned "
                f"against its A1's weights, so every arm built on them would descend from another A1 than the "
                f"retrained one and leave the table. Retrain the lineages of other seeds only."
            )
    retrained = set().union(*(lineage_runs(runs, seed) for seed in retrain_lineages))
    for run in sorted(retrained):
        if (work / run / RESTORED_NAME).is_file():
            shutil.rmtree(work / run)
    # The experiment's record (its variants and arms): a run here widens it rather than narrowing it to its flags.
    config = committed / EXPERIMENT_CONFIG_NAME
    if config.is_file() and not (work / config.name).is_file():
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config, work / config.name)
    restored = []
    for run, files in sorted(runs.items()):
        folder = work / run
        if run in retrained:
            continue
        manifest = json.loads(files.get(MANIFEST_NAME, b"{}"))
        if (folder / MANIFEST_NAME).is_file() or not manifest.get("finished"):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, data in files.items():
            (folder / file_name).write_bytes(data)
        for kept_in, folder_name in (("generators", GENERATOR_DIR), ("discriminators", DISCRIMINATOR_DIR)):
            if run.startswith("shared/") and (committed / kept_in / folder.name).is_dir():
                shutil.copytree(committed / kept_in / folder.name, folder / folder_name, dirs_exist_ok=True)
        write_json(folder / RESTORED_NAME, {"from": str(archive), "weights": False})
        restored.append(run)
    return restored
