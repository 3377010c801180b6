"""One compressed archive of an experiment's small run files (logs, manifests, detections), read back as folders.

A results folder keeps ``results.md``, ``results.json`` and the experiment config readable, and every run's small
files in ``runs.tar.gz`` instead of hundreds of loose files. The archive is deterministic (sorted members, no
times or owners), so packing the same files again gives the same bytes and git sees no change.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["ARCHIVE_NAME", "open_runs", "read_archive", "write_archive"]

ARCHIVE_NAME = "runs.tar.gz"


def read_archive(path: str | os.PathLike) -> dict[str, bytes]:
    """Every file of the archive at ``path``, by its relative path."""
    with tarfile.open(path, "r:gz") as archive:
        return {member.name: archive.extractfile(member).read() for member in archive.getmembers() if member.isfile()}


def write_archive(path: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (relative path -> bytes) as a deterministic ``.tar.gz`` at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(files):
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise ValueError(f"Archive members are relative paths inside the folder, got {name!r}.")
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
                archive.addfile(info, io.BytesIO(files[name]))
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(path)  # readers never see half an archive
    return path


@contextlib.contextmanager
def open_runs(work_dir: str | os.PathLike) -> Iterator[Path]:
    """The folder that holds the runs of ``work_dir``: itself, or its ``runs.tar.gz`` unpacked to a temporary one.

    Raises ValueError when both exist (loose ``seed*`` folders beside an archive), since it is unclear which holds
    the runs: pack the loose ones into the archive first.
    """
    work_dir = Path(work_dir)
    archive = work_dir / ARCHIVE_NAME
    if not archive.is_file():
        yield work_dir
        return
    loose = sorted(path.name for path in work_dir.glob("seed*") if path.is_dir())
    if loose:
        raise ValueError(f"{str(work_dir)!r} has both {ARCHIVE_NAME} and loose run folders {loose}; pack them first.")
    with tempfile.TemporaryDirectory(prefix="srf_runs_") as folder:
        with tarfile.open(archive, "r:gz") as opened:
            opened.extractall(folder, filter="data")
        yield Path(folder)
