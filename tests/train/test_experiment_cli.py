"""``srf-upsample experiment``: folds (random, by field, by regex, explicit pairs), refusals before anything is
written, arms by name, and two tiny runs through submitit's local executor."""

import json
from pathlib import Path

import pytest

from srf_upsample.train.experiment.cli import main
from srf_upsample.train.experiment.folds import make_folds, read_folds

# 12 images in 4 scenes of 3 (scene s -> images 3s+1 .. 3s+3, file names "scene<s>_<i>.png"); image i has i % 2 + 1
# boxes, except in scene 3 when ``empty_scene`` is set.
SCENES = 4


def _coco(path: Path, *, empty_scene: bool = False) -> Path:
    images, annotations = [], []
    for scene in range(SCENES):
        for i in range(3):
            image_id = 3 * scene + i + 1
            images.append({"id": image_id, "file_name": f"scene{scene}_{i}.png", "width": 64, "height": 64,
                           "scene": scene})  # fmt: skip
            if empty_scene and scene == SCENES - 1:
                continue
            for _ in range(image_id % 2 + 1):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [4, 4, 16, 16], "area": 256, "iscrowd": 0})  # fmt: skip
    dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "tree"}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataset))
    return path


def _parts(work: Path) -> list[tuple[list[int], list[int], int]]:
    """Each fold's (train ids, val ids, boxes in train + val) as written in ``work``."""
    parts = []
    for fold in read_folds(work):
        train, val = (json.loads(path.read_text()) for path in (fold.train_ann_file, fold.val_ann_file))
        ids = [sorted(image["id"] for image in part["images"]) for part in (train, val)]
        parts.append((*ids, len(train["annotations"]) + len(val["annotations"])))
    return parts


def _check_partition(parts, total_images: int = 12, total_boxes: int = 18) -> None:
    vals = [image for _, val, _ in parts for image in val]
    assert sorted(vals) == list(range(1, total_images + 1))  # every image in exactly one validation part
    for train, val, boxes in parts:
        assert sorted(train + val) == list(range(1, total_images + 1)) and not set(train) & set(val)
        assert boxes == total_boxes  # every box goes with its image


def test_random_split_is_seeded_and_validates_every_image_once(tmp_path):
    data = _coco(tmp_path / "all.json")
    make_folds(tmp_path / "a", ann_file=data, folds=3, seed=0)
    make_folds(tmp_path / "b", ann_file=data, folds=3, seed=0)
    make_folds(tmp_path / "c", ann_file=data, folds=3, seed=1)
    parts = _parts(tmp_path / "a")
    _check_partition(parts)
    assert [len(val) for _, val, _ in parts] == [4, 4, 4]
    assert parts == _parts(tmp_path / "b")  # the same seed, the same folds
    assert [val for _, val, _ in parts] != [val for _, val, _ in _parts(tmp_path / "c")]
    # The train and val files keep the COCO file's other keys.
    assert json.loads(read_folds(tmp_path / "a")[0].val_ann_file.read_text())["categories"] == [
        {"id": 1, "name": "tree"}
    ]


@pytest.mark.parametrize("split_by", ["field:scene", r"regex:^scene(\d+)_"])
def test_grouped_splits_keep_each_scene_on_one_side(tmp_path, split_by):
    data = _coco(tmp_path / "all.json")
    make_folds(tmp_path / "w", ann_file=data, folds=2, split_by=split_by, seed=3)
    parts = _parts(tmp_path / "w")
    _check_partition(parts)
    for _, val, _ in parts:
        scenes = {(image - 1) // 3 for image in val}
        assert sorted(val) == sorted(3 * s + i + 1 for s in scenes for i in range(3))  # whole scenes only
        assert len(scenes) == 2  # 4 scenes of 3 images dealt into 2 folds: 2 each


def test_field_and_regex_give_the_same_folds_for_the_same_groups(tmp_path):
    data = _coco(tmp_path / "all.json")
    make_folds(tmp_path / "f", ann_file=data, folds=4, split_by="field:scene", seed=5)
    make_folds(tmp_path / "r", ann_file=data, folds=4, split_by=r"regex:scene(\d)", seed=5)
    assert _parts(tmp_path / "f") == _parts(tmp_path / "r")


def test_explicit_pairs_are_copied_recorded_and_reused(tmp_path, capsys):
    full = json.loads(_coco(tmp_path / "all.json").read_text())
    files = []
    for fold in range(2):
        val_ids = {image["id"] for image in full["images"] if image["scene"] % 2 == fold}
        for part, keep in (("train", lambda i, v=val_ids: i not in v), ("val", lambda i, v=val_ids: i in v)):
            subset = {**full, "images": [im for im in full["images"] if keep(im["id"])]}
            subset["annotations"] = [a for a in full["annotations"] if keep(a["image_id"])]
            files.append(tmp_path / f"{part}{fold}.json")
            files[-1].write_text(json.dumps(subset))
    pairs = [f"{files[0]}:{files[1]}", f"{files[2]}:{files[3]}"]
    work = tmp_path / "w"
    assert main(["folds", "--work-dir", str(work), "--fold-files", *pairs]) == 0
    _check_partition(_parts(work))
    written = {path: path.read_bytes() for path in work.rglob("*") if path.is_file()}
    assert set(written) == {work / "folds.json"} | {work / f"fold{k}/annotations/instances_{p}.json" for k in (0, 1)
                                                    for p in ("train", "val")}  # fmt: skip
    assert json.loads((work / "fold1/annotations/instances_val.json").read_text()) == json.loads(files[3].read_text())
    # The same arguments again: the recorded folds, nothing rewritten; other arguments: refused, nothing changed.
    assert main(["folds", "--work-dir", str(work), "--fold-files", *pairs]) == 0
    assert main(["folds", "--work-dir", str(work), "--fold-files", pairs[0]]) == 2
    assert "already holds folds made with" in capsys.readouterr().err
    assert main(["folds", "--work-dir", str(work), "--data", str(tmp_path / "all.json"), "--folds", "2"]) == 2
    assert {path: path.read_bytes() for path in work.rglob("*") if path.is_file()} == written


def test_a_rerun_reuses_the_recorded_split_and_refuses_another(tmp_path, capsys):
    data = _coco(tmp_path / "all.json")
    work = tmp_path / "w"
    args = ["folds", "--work-dir", str(work), "--data", str(data), "--folds", "3", "--split-by", "field:scene"]
    assert main(args) == 0
    written = {path: path.read_bytes() for path in work.rglob("*") if path.is_file()}
    assert main(args) == 0
    for other in (["--folds", "2"], ["--split-seed", "1"], ["--split-by", "random"]):
        assert main([*args, *other]) == 2
        error = capsys.readouterr().err
        assert "already holds folds made with" in error and "another --work-dir" in error
    data.write_text(data.read_text().replace('"tree"', '"shrub"'))  # the same path, other contents
    assert main(args) == 2 and "already holds folds" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in work.rglob("*") if path.is_file()} == written


def _config(tmp_path: Path, name: str = "exp.json", **overrides) -> Path:
    from srf_upsample.train.synthetic import write_tiny_coco

    images, ann = write_tiny_coco(tmp_path / "tiny", num_images=2)
    values = {
        "train_data_root": str(images),
        "train_ann_file": str(ann),
        "val_data_root": str(images),
        "val_ann_file": str(ann),
        "detector": {"detector": "fasterrcnn", "backbone": "resnet18", "min_size": 64, "max_size": 64},
        "schedule": {"max_iters": 1, "lr": 0.01, "milestones": [1], "batch_size": 2, "eval_every": 1},
        "run": {"device": "cpu", "quiet": True},
        **overrides,
    }
    path = tmp_path / name
    path.write_text(json.dumps(values))
    return path


def _refusals(tmp_path):
    """(arguments, what the message must name) of every refused request; each writes nothing under ``tmp_path/w``."""
    data, empty = _coco(tmp_path / "all.json"), _coco(tmp_path / "empty.json", empty_scene=True)
    config, work = str(_config(tmp_path)), str(tmp_path / "w")
    split = ["folds", "--work-dir", work, "--data"]
    overlap = json.loads(data.read_text())
    overlap_anns = [ann for ann in overlap["annotations"] if ann["image_id"] <= 2]
    (tmp_path / "overlap_val.json").write_text(
        json.dumps({**overlap, "images": overlap["images"][:2], "annotations": overlap_anns})
    )
    run = ["run", "--config", config, "--work-dir", work, "--dry-run"]
    return [
        ([*split, str(data), "--folds", "5", "--split-by", "field:scene"], ["folds=5", "4 groups", "--folds 4"]),
        ([*split, str(data), "--folds", "13"], ["folds=13", "12 groups", "--folds 12"]),
        ([*split, str(data), "--folds", "1"], ["folds=1", "at least 2"]),
        ([*split, str(empty), "--folds", "4", "--split-by", "field:scene"], ["fold ", "has no box", "fewer folds"]),
        ([*split, str(data), "--folds", "2", "--split-by", "field:site"], ["'site'", "scene", "Name one of them"]),
        ([*split, str(data), "--folds", "2", "--split-by", "regex:^plot"], ["'scene0_0.png'", "does not match"]),
        ([*split, str(data), "--folds", "2", "--split-by", "cluster"], ["split_by='cluster'", "field:NAME"]),
        (
            ["folds", "--work-dir", work, "--fold-files", f"{data}:{tmp_path / 'overlap_val.json'}"],
            ["image ids [1, 2]", "both", "Remove them"],
        ),  # fmt: skip
        ([*run, "--arms", "A1", "A7"], ["'A7'", "known arms", "DySample"]),
        ([*run, "--arms", "A2-huge"], ["'A2-huge'", "lite"]),
        ([*run, "--seeds"], ["--seeds is empty", "--seeds 0 1 2"]),
        ([*run, "--folds", "3", "--fold-files", "a:b"], ["--folds 3", "--fold-files"]),
        (["report", "--work-dir", str(tmp_path), "--out", work], [str(tmp_path)]),
        (["report", "--work-dir", str(tmp_path), "--out", work, "--labels", "a", "b"], ["2 labels for 1 sources"]),
    ]


def test_every_refusal_names_the_value_and_the_fix_and_writes_nothing(tmp_path, capsys):
    for args, named in _refusals(tmp_path):
        assert main(args) == 2, args
        error = capsys.readouterr().err
        assert all(part in error for part in named), (args, error)
        assert not (tmp_path / "w").exists(), args


def test_a_work_folder_of_another_experiment_is_refused(tmp_path, capsys):
    work = tmp_path / "w"
    config = _config(tmp_path)
    assert main(["run", "--config", str(config), "--work-dir", str(work), "--summarize-only", "--seeds", "0"]) == 0
    record = (work / "experiment.json").read_bytes()
    other = _config(tmp_path, "other.json", schedule={"max_iters": 2, "lr": 0.01, "milestones": [1], "batch_size": 2})
    assert main(["run", "--config", str(other), "--work-dir", str(work), "--seeds", "0"]) == 2
    error = capsys.readouterr().err
    assert "holds another experiment" in error and "['schedule']" in error and "another --work-dir" in error
    data = _coco(tmp_path / "all.json")
    assert main(["run", "--config", str(config), "--work-dir", str(work), "--data", str(data), "--folds", "2"]) == 2
    assert "one-split experiment" in capsys.readouterr().err
    assert (work / "experiment.json").read_bytes() == record and not (work / "folds.json").exists()
    # More arms, variants and seeds on the same experiment widen its record instead.
    args = ["run", "--config", str(config), "--work-dir", str(work), "--summarize-only"]
    assert main([*args, "--seeds", "1", "--arms", "DySample", "A2-paper"]) == 0
    widened = json.loads((work / "experiment.json").read_text())
    assert widened["seeds"] == [0, 1] and {"DySample", "A2"} <= set(widened["config"]["arms"])
    assert "paper" in widened["config"]["variants"]
    # What trains is what this command asks for, not the whole record.
    capsys.readouterr()
    assert (
        main(["run", "--config", str(config), "--work-dir", str(work), "--dry-run", "--seeds", "1", "--arms", "B"]) == 0
    )
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["seed1/A1", "seed1/B"]


def test_folds_and_arms_plan_each_fold_on_its_own_files(tmp_path, capsys):
    data = _coco(tmp_path / "all.json")
    config = _config(tmp_path, train_ann_file=str(data), val_data_root=None, val_ann_file=None)
    work = tmp_path / "w"
    args = ["run", "--config", str(config), "--work-dir", str(work), "--folds", "2", "--seeds", "0", "1"]
    assert main([*args, "--arms", "B", "A2-lite", "--dry-run"]) == 0
    planned = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith(("seed", "shared"))]
    per_fold = ["seed0/A1", "seed0/B", "seed0/stage1-lite", "seed0/A2-lite"]
    per_fold += [name.replace("seed0", "seed1") for name in per_fold]
    assert sorted(planned) == sorted(per_fold * 2)  # A2-lite's stage 1 and each seed's A1 come along
    assert [fold.index for fold in read_folds(work)] == [0, 1]
    assert main([*args[:-2], "--seeds", "0", "--summarize-only", "--fold", "1"]) == 0
    record = json.loads((work / "fold1" / "experiment.json").read_text())["config"]
    assert record["val_ann_file"] == str(work / "fold1" / "annotations" / "instances_val.json")
    assert record["val_data_root"] == record["train_data_root"] and not (work / "fold0" / "experiment.json").exists()
    assert main([*args[:-2], "--seeds", "0", "--fold", "2", "--dry-run"]) == 2
    assert "has folds 0..1" in capsys.readouterr().err


@pytest.mark.slow
def test_submitit_local_executor_trains_two_tiny_runs(tmp_path):
    pytest.importorskip("submitit")
    config, work = _config(tmp_path), tmp_path / "w"
    args = ["run", "--config", str(config), "--work-dir", str(work), "--seeds", "0", "--arms", "A1", "B"]
    assert main([*args, "--launcher", "submitit", "--cluster", "local", "--jobs", "2"]) == 0
    results = json.loads((work / "results.json").read_text())
    assert results["states"] == {"seed0/A1": "done", "seed0/B": "done"}
    for arm in ("A1", "B"):
        final = json.loads((work / "seed0" / arm / "eval.jsonl").read_text().splitlines()[-1])["bbox"]["AP"]
        assert results["table"][arm]["AP"][0] == pytest.approx(100 * final)
    assert len(list((work / "submitit").glob("*/*_submitted.pkl"))) == 2  # one job per run
    assert main(args) == 0  # finished runs are skipped: nothing is submitted again
    # The report step reads the same work folder: B against A1 over the one seed.
    assert main(["report", "--work-dir", str(work), "--out", str(tmp_path / "report"), "--replicates", "20"]) == 0
    assert {"results.md", "results.json", "forest.png"} <= {path.name for path in (tmp_path / "report").iterdir()}


def test_a_job_appends_to_its_log_fails_loudly_and_requeues_the_same_command(tmp_path):
    import sys

    submitit = pytest.importorskip("submitit")
    from srf_upsample.train.experiment.launch import TrainingRun, distributed_command

    log = tmp_path / "train.log"
    log.write_text("earlier attempt\n")
    assert TrainingRun([sys.executable, "-c", "print('step 1')"], str(log))() == 0
    failing = TrainingRun([sys.executable, "-c", "print('step 2'); raise SystemExit(3)"], str(log))
    with pytest.raises(RuntimeError, match=f"exited with 3; see {log}"):
        failing()
    assert log.read_text() == "earlier attempt\nstep 1\nstep 2\n"  # appended, as a resumed run's log is
    requeued = failing.checkpoint()  # what submitit calls on preemption or timeout
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function == failing and requeued.function is not failing and requeued.args == ()
    command = ["python", "-m", "srf_upsample.cli", "train", "stage1", "--config", "c.json"]
    assert distributed_command(command, 4) == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
        "-m", "srf_upsample.cli", "train", "stage1", "--config", "c.json",
    ]  # fmt: skip
