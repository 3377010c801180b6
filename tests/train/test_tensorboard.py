"""--tensorboard: every record RunLog writes is read back from the event file, once per step, resume included."""

import json
import shutil
import sys
import time

import pytest
from conftest import TINY, data_args

from srf_upsample.train.cli import main, parse_config
from srf_upsample.train.loop import fit
from srf_upsample.train.run_log import RunLog

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] as TensorBoard shows them (events purged by a resume left out)."""
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _baseline(coco, output_dir, *extra: str) -> list[str]:
    return [
        "baseline",
        *data_args(coco),
        *TINY,
        # Fewer sampled boxes than torchvision's 512 per image: the box head's backward is most of a tiny step.
        "--set",
        'detector_kwargs={"box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 64}',
        "--max-iters",
        "3",
        "--eval-every",
        "1",
        "--eval-ann-file",
        str(coco[1]),
        "--eval-data-root",
        str(coco[0]),
        "--output-dir",
        str(output_dir),
        *extra,
    ]


def _wait_for_next_second() -> None:
    # Event files are named by the second they were opened in, and TensorBoard reads them in name order: a resumed
    # writer opened in the same second as the first one might sort before it, which real runs never do.
    time.sleep(1.01 - time.time() % 1)


def test_training_and_evaluation_records_are_read_back(coco, tmp_path):
    run = tmp_path / "run"
    assert main([*_baseline(coco, run, "--tensorboard", "--checkpoint-every", "1", "--stop-after", "2")]) == 0
    # Killed while writing step 2's checkpoint: the resume starts from step 1, so step 2 (a training record and an
    # evaluation) is written a second time. TensorBoard must show it once (purge_step), as log.jsonl does.
    newest = sorted((run / "checkpoints").iterdir())[-1]
    assert newest.name.endswith("2")
    shutil.rmtree(newest)
    _wait_for_next_second()
    assert main(_baseline(coco, run, "--tensorboard")) == 0

    folder = run / "tensorboard" / "baseline"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one per attempt, in the stage's run folder
    scalars = _scalars(folder)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evaluations = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3]
    assert [record["step"] for record in evaluations] == [1, 2, 3]

    train_tags = {f"train/{name}" for name in log[0]["losses"]} | {"train/lr", "train/time", "train/skipped_images"}
    assert {"train/loss", "train/loss_classifier", "train/loss_box_reg"} <= train_tags
    eval_tags = {f"eval/bbox/{name}" for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    eval_tags |= {"eval/num_images", "eval/skipped_images", "eval/seconds"}
    assert set(scalars) == train_tags | eval_tags
    for tag in train_tags | eval_tags:
        assert [step for step, _ in scalars[tag]] == [1, 2, 3], tag
    # The values are those of the JSON lines.
    for record in log:
        step = record["step"]
        assert dict(scalars["train/loss"])[step] == pytest.approx(record["losses"]["loss"], rel=1e-6)
        assert dict(scalars["train/lr"])[step] == pytest.approx(record["lr"], rel=1e-6)
    for record in evaluations:
        assert dict(scalars["eval/bbox/AP"])[record["step"]] == pytest.approx(record["bbox"]["AP"], abs=1e-6)
        assert dict(scalars["eval/seconds"])[record["step"]] == pytest.approx(record["seconds"], rel=1e-6)


def test_tensorboard_is_off_by_default_and_not_in_the_fingerprint(coco, tmp_path):
    run = tmp_path / "run"
    assert main([*_baseline(coco, run, "--max-iters", "1")]) == 0
    assert not (run / "tensorboard").exists() and (run / "eval.jsonl").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["tensorboard"] is False and "tensorboard" not in manifest["fingerprint"]
    # Switching it on is no change that blocks resuming: the finished run evaluates again, now also to TensorBoard.
    assert main([*_baseline(coco, run, "--max-iters", "1", "--tensorboard")]) == 0
    scalars = _scalars(run / "tensorboard" / "baseline")
    assert scalars["eval/bbox/AP"][0][0] == 1 and not any(tag.startswith("train/") for tag in scalars)


def test_generator_fidelity_records_are_flattened(tmp_path):
    # Nested fidelity records (stages 1 and 2) become one tag per level and interpolation.
    run_log = RunLog(tmp_path, tensorboard=True, stage="stage1")
    run_log.train({"step": 1, "losses": {"loss_g": 0.5, "loss_int": 0.25}, "lr": 0.01, "time": 0.1})
    run_log.evaluation(
        {
            "step": 1,
            "generator_l1": {"P2": 0.3, "P3": 0.2},
            "generator_l1_mean": 0.25,
            "interpolation_l1": {"bilinear": {"P2": 0.4}},
            "finished": True,  # not a number: left out
            "seconds": 1.5,
        }
    )
    run_log.close()
    scalars = _scalars(tmp_path / "tensorboard" / "stage1")
    assert scalars == {
        "train/loss_g": [(1, 0.5)],
        "train/loss_int": [(1, 0.25)],
        "train/lr": [(1, pytest.approx(0.01))],
        "train/time": [(1, pytest.approx(0.1))],
        "eval/generator_l1/P2": [(1, pytest.approx(0.3))],
        "eval/generator_l1/P3": [(1, pytest.approx(0.2))],
        "eval/generator_l1_mean": [(1, 0.25)],
        "eval/interpolation_l1/bilinear/P2": [(1, pytest.approx(0.4))],
        "eval/seconds": [(1, 1.5)],
    }
    # Only the main process writes.
    RunLog(tmp_path / "other", enabled=False, tensorboard=True).train({"step": 1, "losses": {"loss": 1.0}})
    assert not (tmp_path / "other").exists()


def test_missing_tensorboard_is_a_clear_error_before_training(coco, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    config, _ = parse_config(_baseline(coco, tmp_path / "run", "--tensorboard"))
    with pytest.raises(ImportError, match=r"pip install 'srf_upsample\[tensorboard\]'.*or train without --tensorboard"):
        fit(config)
    assert not (tmp_path / "run").exists()  # nothing written, not even the folder
    # The CLI prints it as one line, exit code 2, no traceback.
    assert main(_baseline(coco, tmp_path / "run", "--tensorboard")) == 2
    error = capsys.readouterr().err
    assert error.startswith("srf-upsample train: error: tensorboard=True") and "Traceback" not in error
    assert not (tmp_path / "run").exists()
    with pytest.raises(TypeError, match="tensorboard must be True or False, got 'yes'"):
        RunLog(tmp_path, tensorboard="yes")
