"""Stages as objects: the CLI, the loop and the run folder learn what a stage is from its class alone."""

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
from conftest import TINY, data_args

from srf_upsample.train import stage_configs, stages
from srf_upsample.train.cli import _parser, main, parse_config
from srf_upsample.train.models import DetectorSpec
from srf_upsample.train.run_folder import load_trained_detector
from srf_upsample.train.stages import StageModules


def test_every_stage_describes_itself_in_the_cli_help():
    help_text = _parser().format_help()
    for name, cls in stage_configs.STAGE_CONFIGS.items():
        assert cls.stage == name and cls.HELP
        assert f"{name:<9} {cls.HELP}" in help_text


def test_the_trainer_package_hands_on_its_public_face():
    import srf_upsample.train as train
    from srf_upsample.train import loop

    assert sorted(train.__all__) == sorted(
        ["STAGES", "STAGE_CONFIGS", "FitResult", "Stage", "StageModules", "TrainConfig", "build_config", "fit"]
        + ["load_config_file"]
    )
    assert train.fit is loop.fit and train.STAGES is stages.STAGES and train.build_config is stage_configs.build_config


def test_every_training_stage_has_its_settings_and_its_behaviour_under_one_name():
    assert set(stages.STAGES) == set(stage_configs.STAGE_CONFIGS) - {"evaluate"}
    for name, stage in stages.STAGES.items():
        config = stage_configs.STAGE_CONFIGS[name]
        assert issubclass(stage, stages.Stage) and not hasattr(config, "step") and not hasattr(config, "build")


def test_a_config_of_no_training_stage_has_no_stage(tmp_path):
    config = stage_configs.build_config("evaluate", {"init": str(tmp_path), "eval_ann_file": "val.json"})
    with pytest.raises(ValueError, match=r"stage 'evaluate' is not a training stage; train one of \['stage1'"):
        stages.stage_for(config)


@dataclass(frozen=True)
class _FrozenBodyConfig(stage_configs.BaselineConfig):
    """A stage the package does not have: the baseline with its backbone body frozen (only FPN and heads train)."""

    HELP: ClassVar[str] = "the baseline with a frozen backbone body"
    stage: str = "frozen_body"


class _FrozenBody(stages.Baseline):
    def build(self, num_classes: int) -> StageModules:
        built = super().build(num_classes)
        built.modules["detector"].backbone.body.requires_grad_(False)
        return built


def test_a_new_stage_is_a_config_and_a_stage(coco, tmp_path, monkeypatch):
    # Pins the extension point: a config class in STAGE_CONFIGS and a Stage in STAGES under one name; the CLI, the
    # loop, the checkpoint and the run folder need no change.
    monkeypatch.setitem(stage_configs.STAGE_CONFIGS, "frozen_body", _FrozenBodyConfig)
    monkeypatch.setitem(stages.STAGES, "frozen_body", _FrozenBody)
    out = tmp_path / "frozen"
    argv = ["frozen_body", *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", str(out)]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "frozen_body" and manifest["finished"] and manifest["modules"] == ["detector"]
    detector, _ = load_trained_detector(out, expected=("frozen_body",))  # rebuilt from the run folder alone
    assert not detector.training
    assert "frozen_body" in _parser().format_help()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lr=abc", r"lr must be a number, got 'abc' \(str\)"),
        ("max_iters=2.5", r"max_iters must be an int, got 2.5"),
        ("levels=3", r"levels must be a JSON list of ints or null, got 3"),
        ("use_flip=yes", r"use_flip must be true or false, got 'yes'"),
    ],
)
def test_values_of_the_wrong_type_are_named(setting, message, coco, tmp_path):
    argv = ["baseline", *data_args(coco), "--output-dir", str(tmp_path / "o"), "--set", setting]
    with pytest.raises(ValueError, match=message):
        parse_config(argv)


def test_stage_only_fields_belong_to_their_stage(coco, tmp_path):
    fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in stage_configs.STAGE_CONFIGS.items()}
    assert "reuse" in fields["stage3"] and "reuse" not in fields["baseline"]
    assert "use_generator" in fields["stage2"] and "use_generator" not in fields["stage3"]
    assert "interpolation" in fields["baseline"] and "interpolation" not in fields["stage2"]
    with pytest.raises(ValueError, match="--reuse does not apply to baseline"):
        parse_config(["baseline", *data_args(coco), "--output-dir", str(tmp_path), "--reuse", "extractor"])
    with pytest.raises(ValueError, match="interpolation must be one of"):
        parse_config(["baseline", *data_args(coco), "--output-dir", str(tmp_path), "--set", "interpolation=area"])


def test_detector_spec_has_one_set_of_defaults():
    spec = DetectorSpec.from_values({"detector": "fasterrcnn", "backbone": "resnet18", "num_classes": 3, "lr": 0.1})
    assert (spec.min_size, spec.max_size, spec.fpn_channels, spec.anchor_scale) == (800, 1333, 256, 1.0)
    assert DetectorSpec.from_values(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"needs \['num_classes'\]"):
        DetectorSpec.from_values({"detector": "fasterrcnn", "backbone": "resnet18"})


def test_stage3_with_a_new_generator_trains_it_from_the_detection_loss(coco, tmp_path):
    # Arm E2E of the experiment (issue 32): stage 3 only, G built from the generator_* settings, no --init.
    out = tmp_path / "e2e"
    argv = ["stage3", *data_args(coco), *TINY, "--max-iters", "1", "--output-dir", str(out)]
    with pytest.raises(ValueError, match="needs --init"):
        parse_config(argv)
    with pytest.raises(ValueError, match="use_new_generator builds G afresh"):
        parse_config([*argv, "--set", "use_new_generator=true", "--init", str(tmp_path)])
    assert main([*argv, "--set", "use_new_generator=true", "--set", "generator_variant=lite"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["has_generator"] and manifest["config"]["generator_variant"] == "lite"
    detector, _ = load_trained_detector(out)
    assert any(type(m).__name__ == "SRFUpsample" for m in detector.modules())
