"""Shared helpers for the benchmark scripts: command-line flags, interleaved timing, environment notes, RESULTS.md.

Every script runs as ``python benchmarks/<script>.py`` (Python then puts ``benchmarks/`` first on ``sys.path``, so
``from _common import ...`` needs no path setup) or is imported by tests/test_benchmarks.py, which adds that folder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import hashlib
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch

__all__ = [
    "QUICK_NOTE",
    "RESULTS_PATH",
    "MachineLoad",
    "benchmark_parser",
    "command_line",
    "cudnn_benchmark",
    "environment_lines",
    "format_table",
    "header_lines",
    "interleaved_rounds",
    "logger_level",
    "machine_name",
    "parse_size",
    "publish",
    "rounds",
    "sync",
    "time_interleaved",
    "torch_threads",
    "write_section",
]

T = TypeVar("T")

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
QUICK_NOTE = " — QUICK MODE, not a measurement"


def parse_size(text: str) -> tuple[int, int]:
    """``"800x1216"`` -> ``(800, 1216)``, for ``--size``-style flags."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 800x1216, got {text!r}") from None
    return height, width


def benchmark_parser(
    description: str | None,
    *,
    repeats: int | None = 5,
    warmup: bool = True,
    quick_help: str = "tiny sizes and one round, for smoke tests",
    size: tuple[int, int] | None = None,
) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark shares.

    ``--quick`` (smoke-test sizes), ``--results`` (the markdown file to update), ``--no-write`` (print only) and,
    unless ``repeats`` is None, ``--repeats`` (timed rounds, default ``repeats``) and ``--warmup`` (untimed rounds);
    with ``size``, ``--size HxW`` (the image size, default ``size``) for the scripts that time one image.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if repeats is not None:
        parser.add_argument(
            "--repeats", type=int, default=repeats, help=f"timed interleaved rounds (default {repeats})"
        )
    if warmup:
        parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (default 1)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    if size is not None:
        parser.add_argument(
            "--size", type=parse_size, default=size, help=f"HxW of the image (default {size[0]}x{size[1]})"
        )
    return parser


def rounds(args: argparse.Namespace) -> tuple[int, int]:
    """``(repeats, warmup)`` from the parsed flags: one timed round and no warm-up in quick mode."""
    return (1, 0) if args.quick else (args.repeats, args.warmup)


def header_lines(
    title: str, *, quick: bool, device: torch.device | str = "cpu", dtypes: Sequence[torch.dtype] = ()
) -> list[str]:
    """The opening of a results section: title (marked in quick mode), the command, where and how it ran."""
    return [
        title + (QUICK_NOTE if quick else ""),
        "",
        f"Command: `{command_line()}`",
        "",
        *environment_lines(device, dtypes),
    ]


def publish(body: str, section: str, args: argparse.Namespace) -> None:
    """Print ``body`` and, unless ``--no-write``, write it as section ``section`` of ``--results``."""
    print(body, flush=True)
    if not args.no_write:
        write_section(section, body, args.results)


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels, so a timer read after it measures finished work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _setting(get: Callable[[], T], put: Callable[[T], object], value: T) -> Iterator[None]:
    """Run the body with ``put(value)`` in force, then ``put`` back what ``get`` read before it."""
    previous = get()
    put(value)
    try:
        yield
    finally:
        put(previous)


def torch_threads(threads: int) -> contextlib.AbstractContextManager[None]:
    """Run the body with ``torch.set_num_threads(threads)``; the previous count is back afterwards.

    A benchmark's ``main()`` is also called in-process (tests/test_benchmarks.py), so it must not leave the caller's
    thread count changed.
    """
    return _setting(torch.get_num_threads, torch.set_num_threads, threads)


def logger_level(name: str, level: int) -> contextlib.AbstractContextManager[None]:
    """Run the body with logger ``name`` at ``level``; its previous level is back afterwards."""
    logger = logging.getLogger(name)
    return _setting(lambda: logger.level, logger.setLevel, level)


def cudnn_benchmark(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Run the body with ``torch.backends.cudnn.benchmark = enabled``; the previous flag is back afterwards."""
    return _setting(
        lambda: torch.backends.cudnn.benchmark, functools.partial(setattr, torch.backends.cudnn, "benchmark"), enabled
    )


def interleaved_rounds(
    fns: dict[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    device: torch.device | str,
    measure: Callable[[Callable[[], object]], T],
) -> dict[str, list[T]]:
    """``repeats`` rounds of ``measure(fn)`` for every callable after ``warmup`` untimed rounds.

    Round r runs every callable once, in an order rotated by r, which spreads load from other processes over all
    candidates instead of one. ``measure`` calls ``fn`` once and returns what it timed.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
        sync(device)
    samples: dict[str, list[T]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(measure(fns[name]))
    return samples


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: torch.device | str = "cpu",
    baseline: str | None = None,
) -> dict[str, dict[str, float]]:
    """Time each callable ``repeats`` times, interleaved, after ``warmup`` untimed rounds.

    Interleaved as in :func:`interleaved_rounds`, which matters on a shared machine. For each candidate the result
    holds the median seconds and, when ``baseline`` names one of ``fns``, ``ratio``: the median over rounds of
    (candidate time / baseline time in the same round), a paired statistic that cancels slow drifts in machine load.

    ``cpu_median_s`` and ``cpu_ratio`` are the same for the process's CPU time (all its threads, ``time.process_time``).
    On a CPU shared with other jobs, wall time includes the time our threads waited for a core while CPU time does
    not, so the CPU-time ratio is the steadier estimate of relative compute cost there. On CUDA it is meaningless.
    """

    def wall_and_cpu_seconds(fn: Callable[[], object]) -> tuple[float, float]:
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        return time.perf_counter() - start, time.process_time() - cpu_start

    timings = interleaved_rounds(fns, warmup=warmup, repeats=repeats, device=device, measure=wall_and_cpu_seconds)
    samples = {name: [wall for wall, _ in pairs] for name, pairs in timings.items()}
    cpu_samples = {name: [cpu for _, cpu in pairs] for name, pairs in timings.items()}
    names = list(fns)
    results: dict[str, dict[str, float]] = {}
    for name in names:
        entry = {
            "median_s": statistics.median(samples[name]),
            "min_s": min(samples[name]),
            "cpu_median_s": statistics.median(cpu_samples[name]),
        }
        if baseline is not None:
            ratios = [t / b for t, b in zip(samples[name], samples[baseline], strict=True)]
            entry["ratio"] = statistics.median(ratios)
            cpu_ratios = [t / b for t, b in zip(cpu_samples[name], cpu_samples[baseline], strict=True)]
            entry["cpu_ratio"] = statistics.median(cpu_ratios) if all(cpu_samples[baseline]) else float("nan")
        results[name] = entry
    return results


def machine_name() -> str:
    """CPU model name from /proc/cpuinfo (lscpu's "Model name"), or platform.processor() elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment_lines(device: torch.device | str, dtypes: Sequence[torch.dtype] = ()) -> list[str]:
    """Lines describing where and how a benchmark ran, printed and written next to every table."""
    device = torch.device(device)
    lines = [
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_name()}, {os.cpu_count()} logical CPU cores, torch threads {torch.get_num_threads()}",
        f"- torch {torch.__version__}, python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]
    if device.type == "cuda":
        lines.append(f"- device: cuda ({torch.cuda.get_device_name(device)})")
    else:
        lines.append("- device: cpu")
    if dtypes:
        lines.append("- dtypes: " + ", ".join(str(dtype).replace("torch.", "") for dtype in dtypes))
    return lines


def _busy_cpu_seconds() -> float | None:
    # Busy time of all CPUs since boot (user + nice + system + irq + softirq + steal), from /proc/stat; None elsewhere.
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return None


def _other_running_processes() -> int | None:
    # Processes other than this one that are running or runnable (state R) right now, from /proc/<pid>/stat.
    if not Path("/proc").is_dir():
        return None
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError, IndexError):
            if entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "R":
                count += 1
    return count


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class MachineLoad:
    """Records how busy the machine was while a benchmark ran, measured, so the results say it instead of guessing.

    Use as a context manager around the timed work; ``lines()`` then gives the load averages (``os.getloadavg``)
    and the number of other running processes at the start and the end, and the CPU time that other processes used
    meanwhile: the machine's busy CPU time (``/proc/stat``, which counts processes that came and went) minus this
    process's own (threads and waited-for children). On a machine with ``os.cpu_count()`` cores, other processes
    using ``x`` cores on average leave ``cpu_count - x`` to the benchmark.
    """

    def __init__(self) -> None:
        self.start: dict[str, object] = {}
        self.end: dict[str, object] = {}

    @staticmethod
    def _snapshot() -> dict[str, object]:
        return {
            "wall": time.perf_counter(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "others_running": _other_running_processes(),
            "busy_cpu": _busy_cpu_seconds(),
            "own_cpu": _own_cpu_seconds(),
        }

    def __enter__(self) -> MachineLoad:
        self.start = self._snapshot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end = self._snapshot()

    def other_cores(self) -> float | None:
        """Average number of cores that other processes kept busy between enter and exit (None where unknown)."""
        if self.start.get("busy_cpu") is None or self.end.get("busy_cpu") is None:
            return None
        wall = self.end["wall"] - self.start["wall"]
        own = self.end["own_cpu"] - self.start["own_cpu"]
        others = self.end["busy_cpu"] - self.start["busy_cpu"] - own
        return max(0.0, others / wall) if wall > 0 else None

    def lines(self) -> list[str]:
        """Markdown list items describing the measured load."""

        def load(snapshot: dict[str, object]) -> str:
            values = snapshot.get("loadavg")
            return "n/a" if values is None else " / ".join(f"{v:.2f}" for v in values)

        wall = self.end["wall"] - self.start["wall"]
        lines = [
            f"- machine load, measured by the script (1 / 5 / 15 min load average): {load(self.start)} at the start, "
            f"{load(self.end)} at the end; other running processes: {self.start['others_running']} at the start, "
            f"{self.end['others_running']} at the end"
        ]
        cores = self.other_cores()
        if cores is not None:
            lines.append(
                f"- CPU time used by other processes during the {wall:.0f} s run: {cores * wall:.1f} s, "
                f"{cores:.2f} of {os.cpu_count()} cores on average (/proc/stat busy time minus this process's own)"
            )
        return lines


def command_line() -> str:
    """The command that ran this benchmark, as one could paste it into a shell from the repository root."""
    return " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv])


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; floats are printed as given (format them before)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


@contextlib.contextmanager
def _locked(path: Path):
    # Several scripts (and engineers) write sections of the same file; an advisory lock keeps their
    # read-modify-write cycles from interleaving. fcntl is POSIX-only; elsewhere we go without.
    # The lock file lives in the temp dir, keyed by the results file's absolute path, to keep the repo clean.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"{path.name}.{digest}.lock"
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_section(name: str, body: str, path: Path | str = RESULTS_PATH) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path`` with ``body``.

    Only that section changes; the rest of the file (other people's sections) is kept byte for byte. A missing
    section is appended at the end; a missing file is created.
    """
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    with _locked(path):
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        begin = text.find(start)
        finish = text.find(end, begin + len(start)) if begin >= 0 else -1
        if begin >= 0 and finish >= 0:
            text = text[:begin] + block + text[finish + len(end) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
