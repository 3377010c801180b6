import json

import pytest
import safetensors.torch
import torch
from conftest import TINY, data_args, make_coco

from srf_upsample import FeaturePatchDiscriminator, SRFUpsample, srf_loss
from srf_upsample.train.cli import main, parse_config
from srf_upsample.train.loop import fit


@pytest.fixture(scope="module")
def stage_dirs(coco, tmp_path_factory):
    """Stages 1 -> 2 -> 3 for 2 iterations each (stage 3 on Mask R-CNN, with evaluation)."""
    root = tmp_path_factory.mktemp("stages")
    data = data_args(coco)
    assert main(["stage1", *data, *TINY, "--max-iters", "2", "--output-dir", str(root / "s1")]) == 0
    assert (
        main(["stage2", *data, *TINY, "--max-iters", "2", "--init", str(root / "s1"), "--output-dir", str(root / "s2")])
        == 0
    )
    tiny_mask = [*TINY, "--detector", "maskrcnn"]  # later flags win: G comes from stage 2 whatever the detector
    stage3 = ["stage3", *data, *tiny_mask, "--max-iters", "2", "--init", str(root / "s2")]
    assert main([*stage3, "--output-dir", str(root / "s3"), *_evaluation(coco)]) == 0
    return root


def _evaluation(coco) -> list[str]:
    return ["--eval-ann-file", str(coco[1]), "--eval-data-root", str(coco[0])]


def test_three_stages_write_checkpoints_and_generators(stage_dirs):
    for name, stage in (("s1", "stage1"), ("s2", "stage2"), ("s3", "stage3")):
        manifest = json.loads((stage_dirs / name / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["step"] == 2 and manifest["finished"]
        assert (stage_dirs / name / "checkpoint.safetensors").is_file()
        generator = SRFUpsample.from_pretrained(str(stage_dirs / name / "generator"))
        assert generator.hidden_channels == 8 and not generator.training
        lines = (stage_dirs / name / "log.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert (stage_dirs / "s1" / "discriminator" / "model.safetensors").is_file()
    # Manifests record what ran: stage 3 trained no D, and its G is the one loaded from stage 2.
    s3 = json.loads((stage_dirs / "s3" / "manifest.json").read_text())
    assert s3["config"]["discriminator_hidden_channels"] is None and s3["config"]["adversarial_weight"] is None
    assert s3["config"]["generator_hidden_channels"] == 8 and s3["config"]["generator_num_blocks"] == 1
    assert s3["detector"]["detector"] == "maskrcnn" and s3["modules"] == ["detector"]
    s2 = json.loads((stage_dirs / "s2" / "manifest.json").read_text())
    assert s2["config"]["discriminator_hidden_channels"] == [8, 8, 8] and s2["detector"]["anchor_scale"] == 0.5
    log = json.loads((stage_dirs / "s2" / "log.jsonl").read_text().splitlines()[-1])
    assert {"loss_d", "loss_int", "loss_srf", "loss_classifier"} <= set(log["losses"])


def test_stage3_evaluates_boxes_and_masks(stage_dirs, coco):
    metrics = json.loads((stage_dirs / "s3" / "metrics.json").read_text())
    for kind in ("bbox", "segm"):
        assert set(metrics[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    evaluate = ["evaluate", "--init", str(stage_dirs / "s3"), *_evaluation(coco), "--quiet", "--log-level", "WARNING"]
    assert main(evaluate) == 0


def test_stage_rejects_the_wrong_kind_of_checkpoint(stage_dirs, coco, tmp_path):
    config, _ = parse_config(
        [
            "stage3",
            *data_args(coco),
            *TINY,
            "--max-iters",
            "1",
            "--init",
            str(stage_dirs / "s1"),
            "--output-dir",
            str(tmp_path / "x"),
        ]
    )
    with pytest.raises(ValueError, match="'stage1' checkpoint, but a stage2 one is expected"):
        fit(config)
    # Resuming into an output dir written by another stage is refused too.
    config, _ = parse_config(
        ["baseline", *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", str(stage_dirs / "s2")]
    )
    with pytest.raises(ValueError, match="'stage2' checkpoint, but a baseline one"):
        fit(config)


def test_diverged_run_stops_and_says_so_until_it_restarts(coco, tmp_path):
    common = ["baseline", *data_args(coco), *TINY, "--output-dir", str(tmp_path / "run")]
    with pytest.raises(FloatingPointError, match="training diverged"):
        main([*common, "--max-iters", "6", "--lr", "1e12"])
    record = json.loads((tmp_path / "run" / "diverged.json").read_text())
    assert record["stage"] == "baseline" and record["loss"] == "loss" and 1 <= record["step"] <= 6
    # A fresh start of the run clears the record, and a finished run has none.
    assert main([*common, "--max-iters", "1", "--lr", "0.001"]) == 0
    assert not (tmp_path / "run" / "diverged.json").exists()


def test_killed_run_resumes_to_the_same_result(stage_dirs, coco, tmp_path):
    # Pins bit-identical resume: 2 steps, "killed", 2 more steps == 4 uninterrupted steps (weights, D, momentum),
    # with images decoded by DataLoader workers.
    common = [
        "stage2",
        *data_args(coco),
        *TINY,
        "--max-iters",
        "4",
        "--init",
        str(stage_dirs / "s1"),
        "--num-workers",
        "2",
    ]  # decoding in worker processes must not change the data order
    assert main([*common, "--output-dir", str(tmp_path / "a"), "--stop-after", "2"]) == 0
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["finished"] is False
    assert main([*common, "--output-dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "b")]) == 0
    resumed = safetensors.torch.load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    straight = safetensors.torch.load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # A run that dies before its first checkpoint starts over: its log keeps no records of the dead attempt.
    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoints")
    assert main([*common, "--output-dir", str(tmp_path / "b")]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_adversarial_gradient_reaches_the_generator():
    # The G step must not detach D's output: with lambda > 0 G's gradient changes, D is only not stepped.
    generator = SRFUpsample(8, hidden_channels=8, num_blocks=1)
    disc = FeaturePatchDiscriminator(8, hidden_channels=[8])
    low, target = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 10, 14)

    def grad(weight: float) -> torch.Tensor:
        generator.zero_grad()
        sr = generator(low, size=(10, 14))
        srf_loss([sr], [target], [disc(sr)], adversarial_weight=weight).backward()
        return generator.head[0].weight.grad.clone()

    assert not torch.allclose(grad(0.0), grad(1.0))


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    image_dir, ann_file = make_coco(tmp_path, num_images=4)
    (image_dir / "img_1.png").write_bytes(b"not a png")
    args = [
        "baseline",
        "--data-root",
        str(image_dir),
        "--ann-file",
        str(ann_file),
        *TINY,
        "--max-iters",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    result = fit(parse_config(args)[0])
    assert result.step == 2 and result.skipped_images >= 1
    last = json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[-1])
    assert last["skipped_images"] == result.skipped_images
    for index in range(4):
        (image_dir / f"img_{index}.png").write_bytes(b"broken")
    config = parse_config([*args[:-1], str(tmp_path / "out2")])[0]
    with pytest.raises(ValueError, match="No readable image"):
        fit(config)


def test_data_errors_are_clear(tmp_path, coco):
    from srf_upsample.train.data import CocoDetectionDataset

    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetectionDataset(coco[0], tmp_path / "missing.json")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="has no images"):
        CocoDetectionDataset(coco[0], empty)
    image_dir, ann_file = make_coco(tmp_path / "gone", num_images=3)
    (image_dir / "img_2.png").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 images .* missing .*img_2.png"):
        CocoDetectionDataset(image_dir, ann_file)
    assert (
        main(
            [
                "stage1",
                "--data-root",
                str(coco[0]),
                "--ann-file",
                str(tmp_path / "nope.json"),
                "--output-dir",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )


def test_boxes_and_masks_follow_resize_and_flip(coco):
    from srf_upsample.train.data import CocoDetectionDataset, scale_targets
    from srf_upsample.train.pyramid import downsample_images

    plain = CocoDetectionDataset(*coco, use_masks=True)
    image, target = CocoDetectionDataset(*coco, min_size=96, max_size=200, use_masks=True)[(0, True)]
    original = plain[0][1]
    assert image.shape[-2:] == (96, 96) and target["masks"].shape[-2:] == (96, 96)
    x1 = 64 - original["boxes"][0, 2]
    torch.testing.assert_close(target["boxes"][0, 0], x1 * 1.5)
    low = downsample_images([image], "bilinear")
    scaled = scale_targets([target], [image], low)[0]
    assert low[0].shape[-2:] == (48, 48) and scaled["masks"].shape[-2:] == (48, 48)
    torch.testing.assert_close(scaled["boxes"], target["boxes"] / 2)


def test_shipped_configs_load_and_flags_override(coco, tmp_path):
    config, _ = parse_config(
        [
            "stage1",
            "--config",
            "paper_stage1",
            *data_args(coco),
            "--output-dir",
            str(tmp_path),
            "--set",
            "lr=0.5",
            "--max-iters",
            "7",
        ]
    )
    assert (config.lr, config.max_iters, config.milestones, config.momentum) == (0.5, 7, [120000], 0.9)
    for name in ("paper_stage2", "paper_stage3", "cpu_stage1", "cpu_stage2", "cpu_stage3", "cpu_baseline"):
        stage = name.split("_")[1]
        extra = ["--init", str(tmp_path)] if stage in ("stage2", "stage3") else []
        config, _ = parse_config(
            [stage, "--config", name, *data_args(coco), "--output-dir", str(tmp_path / "o"), *extra]
        )
        assert config.stage == stage
    with pytest.raises(ValueError, match="Unknown config keys"):
        parse_config(["stage1", *data_args(coco), "--output-dir", str(tmp_path), "--set", "lrr=1"])
