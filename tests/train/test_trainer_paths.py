"""The trainer's own steps: the adversarial gradient reaches G and M, and the protocol's control arms run."""

import json

import pytest
import torch
from conftest import TINY, data_args

from srf_upsample import SRFUpsample
from srf_upsample.train.cli import main, parse_config
from srf_upsample.train.data import collate
from srf_upsample.train.loop import _Trainer
from srf_upsample.train.models import FixedInterpolation
from srf_upsample.train.run_folder import load_trained_detector, read_jsonl


@pytest.fixture(scope="module")
def stage1_dir(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("paths") / "s1"
    assert main(["stage1", *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", str(out)]) == 0
    return out


def _generator_grads(argv: list[str], weight: float, optimizer: str) -> list[torch.Tensor]:
    """G's gradients at the moment the trainer's ``optimizer`` steps, in one trainer step with lambda = weight."""
    config, _ = parse_config([*argv, "--set", f"adversarial_weight={weight}"])
    trainer = _Trainer(config)
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.build()
    trainer.wrap()
    captured: list[torch.Tensor] = []
    opt = trainer.optimizers[optimizer]
    original_step = opt.step

    def step(*args, **kwargs):
        captured.extend(p.grad.clone() for p in trainer.generator.parameters() if p.grad is not None)
        return original_step(*args, **kwargs)

    opt.step = step
    batch = collate([trainer.dataset[(0, False)], trainer.dataset[(1, False)]])
    torch.manual_seed(0)  # the same box sampling in both runs
    trainer.stage.step(trainer, batch.images, batch.targets)
    assert captured and all(torch.isfinite(g).all() for g in captured)
    return captured


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_adversarial_gradient_reaches_the_generator_through_the_trainer(stage, coco, stage1_dir, tmp_path):
    # With lambda > 0 the gradient on G must differ from lambda = 0: a detach of G's (or M's) output before D in
    # the trainer's G / M step makes them equal.
    argv = [stage, *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", str(tmp_path / stage)]
    if stage == "stage2":
        argv += ["--init", str(stage1_dir)]
    optimizer = "generator" if stage == "stage1" else "detector"
    without = _generator_grads(argv, 0.0, optimizer)
    with_adversarial = _generator_grads(argv, 1.0, optimizer)
    assert len(without) == len(with_adversarial)
    difference = sum((a - b).abs().sum() for a, b in zip(without, with_adversarial, strict=True))
    assert difference > 1e-6 * sum(g.abs().sum() for g in without)


def test_control_arms_bilinear_baseline_and_pretraining_without_generator(coco, tmp_path):
    # A 16-channel FPN: CPU bf16 backward through the default 256-channel one is slow (this test on one busy core:
    # 72 s at 256 channels, 15 s at 16).
    data = [*data_args(coco), "--set", "fpn_channels=16"]
    evaluation = ["--eval-ann-file", str(coco[1]), "--eval-data-root", str(coco[0])]
    # Arm B: bilinear FPN upsampling, trained in bf16 autocast, evaluated every step.
    assert (
        main(
            [
                "baseline",
                *data,
                *TINY,
                *evaluation,
                "--max-iters",
                "2",
                "--set",
                "interpolation=bilinear",
                "--amp",
                "bf16",
                "--eval-every",
                "1",
                "--output-dir",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert [record["step"] for record in read_jsonl(tmp_path / "b" / "eval.jsonl")] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["losses"]["loss"])) for r in read_jsonl(tmp_path / "b" / "log.jsonl"))
    detector, _ = load_trained_detector(tmp_path / "b")
    assert any(isinstance(m, FixedInterpolation) and m.mode == "bilinear" for m in detector.modules())
    # Arm C: stage-2 pre-training without G or D (M from the trained detector), then stage 3 reusing it.
    weights = str(tmp_path / "b" / "checkpoint.safetensors")
    assert (
        main(
            [
                "stage2",
                *data,
                *TINY,
                "--max-iters",
                "1",
                "--set",
                "use_generator=false",
                "--set",
                "init_from_extractor=true",
                "--extractor-weights",
                weights,
                "--output-dir",
                str(tmp_path / "c2"),
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "c2" / "manifest.json").read_text())
    assert manifest["has_generator"] is False and manifest["config"]["anchor_scale"] == 0.5
    assert "loss_d" not in read_jsonl(tmp_path / "c2" / "log.jsonl")[0]["losses"]
    reuse = ["--init", str(tmp_path / "c2"), "--reuse", "extractor", "--output-dir", str(tmp_path / "c3")]
    assert main(["stage3", *data, *TINY, "--max-iters", "1", *reuse]) == 0
    with pytest.raises(ValueError, match="--reuse extractor"):
        from srf_upsample.train.loop import fit

        fit(
            parse_config(
                [
                    "stage3",
                    *data,
                    *TINY,
                    "--max-iters",
                    "1",
                    "--init",
                    str(tmp_path / "c2"),
                    "--output-dir",
                    str(tmp_path / "c3g"),
                ]
            )[0]
        )


def test_narrow_fpn_runs_every_stage_and_reloads(coco, tmp_path, capsys):
    # fpn_channels (the CPU profile of examples/deepforest uses 64): G, D, the heads and the reloaded detector follow.
    data = data_args(coco)
    narrow = [*TINY, "--max-iters", "1", "--set", "fpn_channels=16"]
    assert main(["stage1", *data, *narrow, "--output-dir", str(tmp_path / "s1")]) == 0
    assert SRFUpsample.from_pretrained(str(tmp_path / "s1" / "generator")).in_channels == 16
    wide = [*TINY, "--max-iters", "1", "--init", str(tmp_path / "s1"), "--output-dir", str(tmp_path / "bad")]
    assert main(["stage2", *data, *wide]) == 2
    assert "judges 16-channel features but fpn_channels is 256" in capsys.readouterr().err
    assert main(["stage2", *data, *narrow, "--init", str(tmp_path / "s1"), "--output-dir", str(tmp_path / "s2")]) == 0
    evaluation = ["--eval-ann-file", str(coco[1]), "--eval-data-root", str(coco[0])]
    stage3 = [
        "stage3",
        *data,
        *narrow,
        *evaluation,
        "--init",
        str(tmp_path / "s2"),
        "--output-dir",
        str(tmp_path / "s3"),
    ]
    assert main([*stage3, "--reuse", "extractor"]) == 0
    detector, manifest = load_trained_detector(tmp_path / "s3")
    assert manifest["config"]["fpn_channels"] == 16 and detector.backbone.out_channels == 16
    assert read_jsonl(tmp_path / "s3" / "eval.jsonl")[-1]["step"] == 1
