"""examples/error_messages.py (issue 30's catalogue) runs, and every case still ends in the error it should."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "error_messages.py"

# Issue 30's cases by the start of their row, and the error each must give: "exit 2" with one error line for the
# training CLI, the exception type (raised by srf_upsample's own checks) for the library.
EXPECTED = {
    "`--set lr=abc`": "exit 2",
    "`--device cuda` without a GPU": "exit 2",
    "`--output-dir` is a file": "exit 2",
    "same `--output-dir` as a finished run": "exit 2",
    "truncated `manifest.json`": "exit 2",
    "stage 2 `--init` from a stage-1 run stopped": "exit 2",
    "resume with no complete checkpoint": "exit 2",
    "boxes negative/zero-width, NaN, outside, unknown category": "exit 2",
    "the same with `--set max_dropped_fraction=1.0`": "warning (exit 0)",
    "annotation file with no usable box": "exit 2",
    'annotation file with `"annotations": []`': "exit 2",
    "annotation file without an `annotations` key": "exit 2",
    "`evaluate` on a set without annotations": "exit 2",
    "training with `--eval-ann-file` a set without annotations": "exit 2",
    "`SRFUpsample.from_pretrained('/missing/dir')`": "ValueError",
    '`from_pretrained(folder, map_location="cuda")` without a GPU': "ValueError",
    "`config.json` with a misspelled key": "ValueError",
    "`config.json` with an unknown key": "ValueError",
    "`config.json` that is a list": "ValueError",
    "a discriminator folder loaded as a generator": "ValueError",
    "`patch_fpn` on a TorchScript module": "TypeError",
    "`SRFUpsample` called with `size` as a tensor": "TypeError",
    "`SRFUpsample` on an input of height 0": "ValueError",
    "`SRFUpsample` with `scale_factor=1e6`": "ValueError",
}
# Rows that are not an error: the per-reason summary of a run that was allowed to drop boxes.
NOT_AN_ERROR = {"the same with `--set max_dropped_fraction=1.0`"}


def test_every_case_of_issue_30_ends_in_its_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the script sets it if unset; restored after the test
    spec = importlib.util.spec_from_file_location("error_messages", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    rows = module.main()
    table = capsys.readouterr().out
    assert table.startswith("| case | error | message | written |")
    assert len(rows) == len(EXPECTED)
    for row in rows:
        (start,) = [start for start in EXPECTED if row.case.startswith(start)]
        assert row.error == EXPECTED[start], row
        assert row.message and "Traceback" not in row.message, row
        if row.error == "exit 2":
            assert row.message.startswith("srf-upsample train: error: "), row
        if start in NOT_AN_ERROR:
            assert "left out: 2 zero or negative width or height, 1 NaN" in row.message, row
        else:  # the evaluation set too is checked before anything is written
            assert row.written.startswith(("nothing", "n/a")), row
        assert f"| {row.case} | {row.error} |" in table
