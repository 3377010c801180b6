"""The catalogue of issue 30's bad inputs and the error each one gives now, as a markdown table.

Every case of issue 30's list (training CLI and library) is reproduced in this one process on tiny synthetic data
(64x64 images, 1-2 iterations, CPU, offline), and the script prints ``| case | error | message | written |``:

- **error**: for a CLI case, the exit code of ``srf-upsample train`` (called in-process through
  ``srf_upsample.cli.main``, the console script's entry point); for a library case, the exception type.
- **message**: what the user sees: the ``srf-upsample train: error: ...`` line the CLI prints on stderr, or
  ``str(exception)``. A case whose answer is a warning (the per-reason summary of unusable boxes) shows that log line.
- **written**: whether anything was written where the error happened (the output or model folder is compared, file by
  file, before and after; ``absent`` means the folder still does not exist).

Run it from the repository root (about 20 s on one CPU core)::

    python examples/error_messages.py

Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set, and the data and runs live in a temporary folder that is removed
at the end. On a machine with a GPU, the two "without a GPU" cases hide it (``torch.cuda.is_available`` returns
False for that call), and their row says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: nothing may reach the network

import torch  # noqa: E402
from torchvision.ops import FeaturePyramidNetwork  # noqa: E402

from srf_upsample import FeaturePatchDiscriminator, SRFUpsample, patch_fpn  # noqa: E402
from srf_upsample.cli import main as srf_upsample_main  # noqa: E402  (the srf-upsample console script)
from srf_upsample.train.synthetic import write_tiny_coco  # noqa: E402

# The smallest run the trainer accepts: 64-px images, R18-FPN, an 8-channel one-block G, an 8-channel D, CPU.
TINY = [
    "--detector", "fasterrcnn", "--backbone", "resnet18", "--min-size", "64", "--max-size", "64",
    "--batch-size", "2", "--device", "cpu", "--quiet", "--log-level", "WARNING",
    "--set", "generator_hidden_channels=8", "--set", "generator_num_blocks=1",
    "--set", "discriminator_hidden_channels=[8,8,8]", "--set", "warmup_iters=0", "--set", "milestones=[3]",
    "--allow-untrained-extractor",  # F is a random FPN here; real runs pass --extractor-weights
]  # fmt: skip


@dataclass
class Row:
    """One line of the table."""

    case: str
    error: str  # "exit 2" for the CLI, the exception type for the library, "warning (exit 0)" for a summary
    message: str
    written: str


@dataclass
class CliResult:
    """What one in-process ``srf-upsample train ...`` call left: exit code, stderr, stdout and log records."""

    code: int
    err: str
    out: str
    log: str

    def error_line(self) -> str:
        """The ``srf-upsample train: error: ...`` line, or the last stderr line when there is none."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line]
        return (errors or lines or ["(nothing on stderr)"])[-1]


class _Capture(logging.Handler):
    """Collects the ``srf_upsample`` log lines of one call (the CLI adds no handler when one is there)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


_LOG = _Capture()


def train(*argv: str) -> CliResult:
    """``srf-upsample train *argv`` in this process; a traceback escaping it is recorded as such, not raised."""
    _LOG.lines.clear()
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = srf_upsample_main(["train", *map(str, argv)])
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # noqa: BLE001 - an escaping exception is exactly what the catalogue must show
            traceback.print_exc(file=err)
            code = -1
    return CliResult(code, err.getvalue(), out.getvalue(), "\n".join(_LOG.lines))


def snapshot(folder: Path) -> dict[str, str] | None:
    """``{relative path: sha256 or "folder"}`` of everything under ``folder``; ``None`` when it does not exist."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(folder.rglob("*"))
    }


def written(folder: Path, before: dict[str, str] | None) -> str:
    """``nothing (absent)``, ``nothing (unchanged)``, or what changed in ``folder`` since ``before``."""
    after = snapshot(folder)
    if before is None and after is None:
        return "nothing (absent)"
    if after == before:
        return "nothing (unchanged)"
    before, after = before or {}, after or {}
    changed = sorted(k for k in after.keys() | before.keys() if before.get(k) != after.get(k))
    if not changed:
        return f"CHANGED: {folder.name}/ created (empty)"
    return f"CHANGED: {', '.join(changed[:4])}" + (f" (+{len(changed) - 4})" if len(changed) > 4 else "")


def cli_row(case: str, folder: Path, *argv: str) -> Row:
    """Run the CLI expecting an error; the row shows its exit code, its error line and what ``folder`` became."""
    before = snapshot(folder)
    result = train(*argv)
    error = f"exit {result.code}" + (" (traceback)" if "Traceback" in result.err else "")
    return Row(case, error, result.error_line(), written(folder, before))


def no_gpu() -> contextlib.AbstractContextManager:
    """Hide a GPU, if this machine has one, so that the "without a GPU" cases are the same everywhere."""
    if torch.cuda.is_available():
        return mock.patch.object(torch.cuda, "is_available", lambda: False)
    return contextlib.nullcontext()


def gpu_note() -> str:
    return " (GPU hidden)" if torch.cuda.is_available() else ""


def library_row(case: str, call: Callable[[], object], folder: Path | None = None, check=None) -> Row:
    """Call ``call`` expecting an exception; the row shows its type and message, and what ``folder`` became."""
    before = snapshot(folder) if folder is not None else None
    try:
        call()
    except Exception as error:  # noqa: BLE001
        kind, message = type(error).__name__, str(error)
        library = f"{os.sep}srf_upsample{os.sep}"
        origin = traceback.extract_tb(error.__traceback__)[-1].filename
        if library not in origin:  # raised from inside torch / huggingface_hub, not by a check of ours
            kind += f" (from {Path(origin).parent.name}/{Path(origin).name})"
    else:
        kind, message = "no error", "(the call succeeded)"
    if check is not None:
        where = check()
    elif folder is not None:
        where = written(folder, before)
    else:
        where = "n/a (no files)"
    return Row(case, kind, message, where)


# ---- data


def tiny_coco(root: Path, *, num_images: int = 4, seed: int = 0, edit: Callable[[dict], None] | None = None):
    """A tiny COCO set (random 64x64 images, 1-2 boxes each) under ``root``, its json changed by ``edit``."""
    image_dir, ann_file = write_tiny_coco(root, num_images=num_images, seed=seed)
    if edit is not None:
        data = json.loads(ann_file.read_text())
        edit(data)
        ann_file.write_text(json.dumps(data))
    return image_dir, ann_file


def bad_boxes(data: dict) -> None:
    """Five of the six boxes unusable, one per reason: negative/zero width or height, NaN, outside, unknown category."""
    anns = data["annotations"]
    anns[0]["bbox"][2] = -3.0  # negative width
    anns[1]["bbox"][3] = 0.0  # zero height
    anns[2]["bbox"][0] = math.nan
    anns[3]["bbox"] = [500.0, 500.0, 10.0, 10.0]  # outside the 64x64 image
    anns[4]["category_id"] = 99  # not in "categories"


def no_usable_box(data: dict) -> None:
    for ann in data["annotations"]:
        ann["bbox"][2] = 0.0


def data_args(coco) -> list[str]:
    return ["--data-root", str(coco[0]), "--ann-file", str(coco[1])]


# ---- the cases


def training_cases(tmp: Path) -> list[Row]:
    """The training CLI's cases of issue 30 (each on tiny data; three 1-step runs give the folders to misuse)."""
    rows: list[Row] = []
    coco = tiny_coco(tmp / "coco")
    other = tiny_coco(tmp / "other", num_images=3, seed=1)
    fresh = tmp / "never"  # a folder no case may create
    base = ["baseline", *data_args(coco), "--output-dir", fresh, "--quiet"]

    rows.append(cli_row("`--set lr=abc`", fresh, *base, "--set", "lr=abc"))
    with no_gpu():
        rows.append(cli_row(f"`--device cuda` without a GPU{gpu_note()}", fresh, *base, "--device", "cuda"))
    a_file = tmp / "file.txt"
    a_file.write_text("x")
    rows.append(cli_row("`--output-dir` is a file", a_file, "baseline", *data_args(coco), "--output-dir", a_file))

    # A finished 1-step baseline run, then misuses of its folder.
    run = tmp / "baseline"
    finished = ["baseline", *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", run]
    assert train(*finished).code == 0, "the finished baseline run failed"
    rows.append(
        cli_row(
            "same `--output-dir` as a finished run, other data and `--lr 0.5`",
            run,
            *finished,
            *data_args(other),
            "--lr",
            "0.5",
        )
    )
    truncated = tmp / "truncated"
    shutil.copytree(run, truncated)
    manifest = truncated / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    rows.append(
        cli_row("truncated `manifest.json` in the output dir", truncated, *finished[:-1], truncated),
    )

    # Stage 2 from a stage-1 run stopped after 1 of 2 steps; then that run's only checkpoint damaged.
    s1 = tmp / "stage1"
    stopped = ["stage1", *data_args(coco), *TINY, "--max-iters", "2", "--stop-after", "1", "--output-dir", s1]
    assert train(*stopped).code == 0, "the stopped stage-1 run failed"
    s2 = tmp / "stage2"
    stage2 = ["stage2", *data_args(coco), *TINY, "--max-iters", "1", "--init", s1, "--output-dir", s2]
    rows.append(cli_row("stage 2 `--init` from a stage-1 run stopped after 1 of 2 steps", s2, *stage2))
    (state,) = (s1 / "checkpoints").glob("step_*/trainer_state.pt")
    state.write_bytes(b"")
    resume = ["stage1", *data_args(coco), *TINY, "--max-iters", "2", "--output-dir", s1]  # the same run, to its end
    rows.append(cli_row("resume with no complete checkpoint (`trainer_state.pt` emptied)", s1, *resume))

    # Unusable boxes: over the allowed share (default max_dropped_fraction=0.1) is an error; allowed, a summary.
    bad = tiny_coco(tmp / "bad", edit=bad_boxes)
    out = tmp / "bad_run"
    bad_run = ["baseline", *data_args(bad), *TINY, "--max-iters", "1", "--output-dir", out]
    rows.append(cli_row("boxes negative/zero-width, NaN, outside, unknown category (5 of 6)", out, *bad_run))
    result = train(*bad_run, "--set", "max_dropped_fraction=1.0")
    summary = [line for line in result.log.splitlines() if "left out" in line]
    manifest_report = json.loads((out / "manifest.json").read_text()).get("data") if out.is_dir() else None
    rows.append(
        Row(
            "the same with `--set max_dropped_fraction=1.0`: the per-reason summary",
            f"warning (exit {result.code})",
            (summary or [result.error_line()])[0],
            f"trains; manifest 'data': {json.dumps(manifest_report)}" if manifest_report else "trains",
        )
    )

    for folder_name, name, edit in [
        ("no_usable_box", "annotation file with no usable box (every width 0)", no_usable_box),
        ("empty_list", 'annotation file with `"annotations": []`', lambda data: data.update(annotations=[])),
        ("no_key", "annotation file without an `annotations` key", lambda data: data.pop("annotations")),
    ]:
        folder = tmp / folder_name
        empty = tiny_coco(folder, num_images=2, edit=edit)
        out = folder / "run"
        rows.append(cli_row(name, out, "baseline", *data_args(empty), *TINY, "--max-iters", "1", "--output-dir", out))

    unannotated = tiny_coco(tmp / "unannotated", num_images=2, edit=lambda data: data.update(annotations=[]))
    evaluate = ["evaluate", "--init", run, "--eval-data-root", unannotated[0], "--eval-ann-file", unannotated[1]]
    rows.append(cli_row("`evaluate` on a set without annotations", run, *evaluate, "--device", "cpu", "--quiet"))
    out = tmp / "eval_run"
    eval_args = ["--eval-data-root", unannotated[0], "--eval-ann-file", unannotated[1]]
    rows.append(
        cli_row(
            "training with `--eval-ann-file` a set without annotations",
            out,
            *["baseline", *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", out, *eval_args],
        )
    )
    return rows


def library_cases(tmp: Path) -> list[Row]:
    """The library's cases of issue 30: loading generator folders, patching, calling a generator."""
    rows: list[Row] = []
    saved = tmp / "gen"
    SRFUpsample(4, hidden_channels=8, num_blocks=1).save_pretrained(saved)

    missing = "/missing/dir"
    rows.append(
        library_row(
            f"`SRFUpsample.from_pretrained('{missing}')`", lambda: SRFUpsample.from_pretrained(missing), Path(missing)
        )
    )
    with no_gpu():
        rows.append(
            library_row(
                f'`from_pretrained(folder, map_location="cuda")` without a GPU{gpu_note()}',
                lambda: SRFUpsample.from_pretrained(saved, map_location="cuda"),
                saved,
            )
        )

    def config_edit(name: str, change: Callable[[dict], object]) -> Path:
        folder = tmp / name
        shutil.copytree(saved, folder)
        config_file = folder / "config.json"
        config_file.write_text(json.dumps(change(json.loads(config_file.read_text()))))
        return folder

    def misspell(config: dict) -> dict:
        config["hiden_channels"] = config.pop("hidden_channels")
        return config

    misspelled = config_edit("misspelled", misspell)
    rows.append(
        library_row(
            "`config.json` with a misspelled key (`hiden_channels`)",
            lambda: SRFUpsample.from_pretrained(misspelled),
            misspelled,
        )
    )
    unknown = config_edit("unknown", lambda c: {**c, "dropout": 0.1})
    rows.append(
        library_row(
            "`config.json` with an unknown key (`dropout`)", lambda: SRFUpsample.from_pretrained(unknown), unknown
        )
    )
    as_list = config_edit("list", lambda c: [1, 2])
    rows.append(library_row("`config.json` that is a list", lambda: SRFUpsample.from_pretrained(as_list), as_list))

    disc = tmp / "disc"
    FeaturePatchDiscriminator(4, hidden_channels=[8, 8, 8]).save_pretrained(disc)
    rows.append(
        library_row(
            "a discriminator folder loaded as a generator",
            lambda: SRFUpsample.from_pretrained(disc),
            disc,
        )
    )

    def small_generator(channels: int) -> SRFUpsample:
        return SRFUpsample(channels, hidden_channels=8, num_blocks=1)

    fpn = FeaturePyramidNetwork([8, 16], 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation warning
        scripted = torch.jit.script(fpn)
    features = {"0": torch.rand(1, 8, 16, 16), "1": torch.rand(1, 16, 8, 8)}
    keys = set(scripted.state_dict())
    rows.append(
        library_row(
            "`patch_fpn` on a TorchScript module (with `example_inputs`)",
            lambda: patch_fpn(scripted, small_generator, example_inputs=(features,)),
            check=lambda: "nothing (module unchanged)" if set(scripted.state_dict()) == keys else "MODULE CHANGED",
        )
    )

    generator = SRFUpsample(4, hidden_channels=8, num_blocks=1).eval()
    x = torch.rand(1, 4, 8, 8)
    rows.append(
        library_row("`SRFUpsample` called with `size` as a tensor", lambda: generator(x, size=torch.tensor([16, 16])))
    )
    rows.append(
        library_row("`SRFUpsample` on an input of height 0", lambda: generator(torch.rand(1, 4, 0, 8), size=(16, 16)))
    )
    rows.append(library_row("`SRFUpsample` with `scale_factor=1e6`", lambda: generator(x, scale_factor=1e6)))
    return rows


def catalogue() -> list[Row]:
    """Every case of issue 30, in one process and one temporary folder; returns the table's rows."""
    torch.manual_seed(0)
    logger = logging.getLogger("srf_upsample")
    level = logger.level  # the CLI sets it from --log-level
    logger.addHandler(_LOG)
    try:
        with tempfile.TemporaryDirectory(prefix="srf_errors_") as name:
            tmp = Path(name)
            rows = training_cases(tmp / "train") + library_cases(tmp / "lib")
    finally:
        logger.removeHandler(_LOG)
        logger.setLevel(level)
    # The temporary folder's name changes from run to run: shown as <tmp>.
    for row in rows:
        for prefix in {name, os.path.realpath(name)}:
            row.message, row.written = row.message.replace(prefix, "<tmp>"), row.written.replace(prefix, "<tmp>")
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def markdown(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = ["| case | error | message | written |", "|---|---|---|---|"]
    lines += [f"| {_cell(r.case)} | {_cell(r.error)} | {_cell(r.message)} | {_cell(r.written)} |" for r in rows]
    return "\n".join(lines)


def main() -> list[Row]:
    """Print the table; returns its rows."""
    rows = catalogue()
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
