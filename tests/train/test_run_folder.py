"""A run folder belongs to one run, data is validated out loud, and bad arguments end in clear errors."""

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, data_args, make_coco

from srf_upsample.train import run_folder
from srf_upsample.train.cli import main, parse_config
from srf_upsample.train.data import CocoDetectionDataset
from srf_upsample.train.stages import stage_for

PACKAGE = Path(run_folder.__file__).resolve().parents[1]


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module's code (docstrings left out), with their line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bodies = [node.body for node in ast.walk(tree) if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)]
    docstrings = {id(body[0].value) for body in bodies if body and isinstance(body[0], ast.Expr)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_every_run_folder_file_name_is_written_once_in_run_folder():
    names = {getattr(run_folder, name) for name in run_folder.__all__ if name.endswith("_NAME")}
    assert {"manifest.json", "eval.jsonl", "detections.json.gz", "run_config.json", "metrics.json"} <= names
    elsewhere = [
        f"{path.relative_to(PACKAGE)}:{line} {value!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "run_folder.py"
        for line, value in _string_constants(path)
        if value in names
    ]
    assert elsewhere == []
    # The scan finds a literal where there is one: run_folder.py itself holds each name once.
    here = [value for _, value in _string_constants(Path(run_folder.__file__)) if value in names]
    assert sorted(here) == sorted(names)


def test_resuming_another_run_is_refused_with_the_differing_keys(coco, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["baseline", *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", str(out)]
    assert main(base) == 0
    before = (out / "manifest.json").read_text()
    other_data = make_coco(tmp_path / "other", num_images=3, seed=1)
    other = ["--data-root", str(other_data[0]), "--ann-file", str(other_data[1])]
    assert main([*base, *other, "--lr", "0.5"]) == 2
    error = capsys.readouterr().err
    for key in ("ann_file", "ann_file_sha256", "data_root", "lr"):
        assert f"{key}:" in error
    assert "a new --output-dir" in error and "--resume-despite-changes" in error
    assert (out / "manifest.json").read_text() == before  # nothing written
    # What does not define the run may change; the explicit switch continues and is recorded.
    assert main([*base, "--num-workers", "1"]) == 0
    assert main([*base, "--lr", "0.5", "--resume-despite-changes"]) == 0
    record = json.loads((out / "manifest.json").read_text())["resumed_despite_changes"]
    assert record == [{"step": 1, "changes": {"lr": [0.02, 0.5]}}]


def test_init_from_an_unfinished_run_is_refused(coco, tmp_path):
    s1 = tmp_path / "s1"
    stopped = ["stage1", *data_args(coco), *TINY, "--max-iters", "2", "--stop-after", "1", "--output-dir", str(s1)]
    assert main(stopped) == 0
    argv = ["stage2", *data_args(coco), *TINY, "--max-iters", "1", "--init", str(s1), "--output-dir", str(tmp_path)]
    config, _ = parse_config(argv[:-1] + [str(tmp_path / "s2")])
    with pytest.raises(ValueError, match=r"stopped at step 1 of 2: it has not finished.*--allow-unfinished-init"):
        stage_for(config).read_init()
    config, _ = parse_config([*argv[:-1], str(tmp_path / "s2"), "--allow-unfinished-init"])
    assert stage_for(config).read_init()["step"] == 1


def _bad_annotations(tmp_path):
    image_dir, ann_file = make_coco(tmp_path, num_images=4)
    data = json.loads(ann_file.read_text())
    anns = data["annotations"]
    anns[0]["bbox"][2] = -3.0  # negative width
    anns[1]["bbox"][3] = 0.0  # zero height
    anns[2]["bbox"][0] = math.nan
    anns[3]["bbox"] = [500.0, 500.0, 10.0, 10.0]  # outside the 64x64 image
    anns[4]["category_id"] = 99
    ann_file.write_text(json.dumps(data))
    return image_dir, ann_file, len(anns)


def test_unusable_boxes_are_counted_by_reason_and_too_many_are_an_error(tmp_path):
    image_dir, ann_file, total = _bad_annotations(tmp_path)
    with pytest.raises(ValueError, match=r"instances.json.*5 of 6 annotations are unusable.*max_dropped_fraction"):
        CocoDetectionDataset(image_dir, ann_file, max_dropped_fraction=0.1)
    dataset = CocoDetectionDataset(image_dir, ann_file, max_dropped_fraction=1.0)
    assert dataset.report["usable"] == total - 5
    assert dataset.report["dropped"] == {"empty": 2, "not_finite": 1, "outside": 1, "unknown_category": 1}
    kept = sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset)))
    assert kept == total - 5 and all(torch.isfinite(dataset[i][1]["boxes"]).all() for i in range(len(dataset)))


def test_a_set_without_usable_boxes_is_an_error_for_training_and_evaluation(tmp_path, coco):
    image_dir, ann_file = make_coco(tmp_path, num_images=2)
    data = json.loads(ann_file.read_text())
    data["annotations"] = []
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances.json' has no usable box: 0 annotation"):
        CocoDetectionDataset(image_dir, ann_file)
    from srf_upsample.train.evaluate import evaluate_detector
    from srf_upsample.train.models import build_detector

    with pytest.raises(ValueError, match="has no usable box"):
        evaluate_detector(build_detector("fasterrcnn", "resnet18", 3), image_dir, ann_file, category_ids=[1, 3])


def test_argument_errors_are_clear_and_write_nothing(coco, tmp_path, capsys):
    out = tmp_path / "never"
    base = ["baseline", *data_args(coco), "--output-dir", str(out), "--quiet"]
    assert main([*base, "--set", "lr=abc"]) == 2
    assert "lr must be a number, got 'abc' (str)" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 2
        assert "CUDA is not available here: pass 'cpu'" in capsys.readouterr().err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["baseline", *data_args(coco), "--output-dir", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not out.exists()


def test_a_truncated_manifest_is_named(coco, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["baseline", *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", str(out)]
    assert main(base) == 0
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    assert main(base) == 2
    assert f"{str(manifest)!r} is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(("fraction", "accepted"), [(0.25, True), (0.24, False)])
def test_crowd_boxes_are_counted_apart_and_left_out_of_the_dropped_share(tmp_path, fraction, accepted):
    # 6 annotations: 2 crowd, 1 unusable (negative width), 3 usable. The share is of non-crowd annotations:
    # 1 of 4 = 0.25 exactly, which a limit of 0.25 accepts ("the largest share that may be unusable") and 0.24 not;
    # counted over all 6 it would be 1/6 and pass both.
    image_dir, ann_file = make_coco(tmp_path, num_images=4)
    data = json.loads(ann_file.read_text())
    assert len(data["annotations"]) == 6
    data["annotations"][0]["iscrowd"] = 1
    data["annotations"][1]["iscrowd"] = 1
    data["annotations"][2]["bbox"][2] = -3.0
    ann_file.write_text(json.dumps(data))
    if not accepted:
        with pytest.raises(ValueError, match=r"1 of 4 annotations are unusable .*max_dropped_fraction=0.24"):
            CocoDetectionDataset(image_dir, ann_file, max_dropped_fraction=fraction)
        return
    dataset = CocoDetectionDataset(image_dir, ann_file, max_dropped_fraction=fraction)
    assert (dataset.report["usable"], dataset.report["crowd_ignored"], dataset.report["dropped"]) == (
        3,
        2,
        {"empty": 1},
    )
    assert sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset))) == 3  # crowd boxes are not trained on
