"""The example scripts' wiring, without training (each stage's command is captured, not run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from srf_upsample.train.config import load_config_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import train_on_coco  # noqa: E402


@pytest.mark.parametrize("paper", [False, True])
def test_train_on_coco_chains_the_four_stages_through_their_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, paper: bool
) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(train_on_coco, "train", lambda argv: commands.append(argv) or 0)
    argv = ["--train-images", "tr", "--train-ann", "tr.json", "--val-images", "va", "--val-ann", "va.json"]
    assert train_on_coco.main([*argv, "--out", str(tmp_path), *(["--paper"] if paper else [])]) == 0
    assert [command[0] for command in commands] == ["baseline", "stage1", "stage2", "stage3"]

    def value(command: list[str], flag: str) -> str | None:
        return command[command.index(flag) + 1] if flag in command else None

    for command in commands:
        load_config_file(value(command, "--config"))  # a shipped config name, or this raises
        assert value(command, "--output-dir") == str(tmp_path / command[0])
        assert value(command, "--data-root") == "tr"
    baseline, stage1, stage2, stage3 = commands
    f_weights = str(tmp_path / "baseline" / "checkpoint.safetensors")
    assert value(stage1, "--extractor-weights") == value(stage2, "--extractor-weights") == f_weights
    assert value(stage2, "--init") == str(tmp_path / "stage1")
    assert value(stage3, "--init") == str(tmp_path / "stage2")
    assert value(baseline, "--eval-data-root") == value(stage3, "--eval-data-root") == "va"
    assert value(stage1, "--eval-data-root") is None
