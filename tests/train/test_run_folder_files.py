"""Known answers for the run folder's files: JSON and JSON lines, the manifest, fingerprints and the saved detector."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file as safetensors_load
from safetensors.torch import save_file

from srf_upsample import SRFUpsample
from srf_upsample.train import run_folder
from srf_upsample.train.config import TrainConfig
from srf_upsample.train.models import DetectorSpec, FixedInterpolation, patch_generator

SPEC = DetectorSpec(detector="fasterrcnn", backbone="resnet18", num_classes=3, min_size=64, max_size=64)


def _config(tmp_path, **values) -> TrainConfig:
    ann_file = tmp_path / "instances.json"
    if not ann_file.exists():
        ann_file.write_text('{"images": []}', encoding="utf-8")
    return TrainConfig(**{"stage": "baseline", "data_root": str(tmp_path), "ann_file": str(ann_file), **values})


def test_write_json_is_indented_replaces_atomically_and_reads_back(tmp_path):
    path = tmp_path / "values.json"
    run_folder.write_json(path, {"a": [1, 2.5, None], "b": "x"})
    assert path.read_text(encoding="utf-8") == json.dumps({"a": [1, 2.5, None], "b": "x"}, indent=2)
    run_folder.write_json(path, [3])
    assert run_folder.read_json(path) == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["values.json"]  # no temporary file left


def test_read_json_names_a_damaged_file_and_the_way_out(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"stage": "base', encoding="utf-8")
    with pytest.raises(ValueError, match="manifest.json' is not valid JSON") as error:
        run_folder.read_json(path)
    assert "newest complete checkpoint" in str(error.value) and "new --output-dir" in str(error.value)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="truncated or damaged"):
        run_folder.read_json(path)


def test_read_manifest_checks_presence_type_and_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no manifest.json; expected the output dir of a stage1 or stage2"):
        run_folder.read_manifest(tmp_path, ("stage1", "stage2"))
    (tmp_path / "manifest.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        run_folder.read_manifest(tmp_path, ("stage1",))
    run_folder.write_json(tmp_path / "manifest.json", {"stage": "baseline", "step": 4})
    with pytest.raises(ValueError, match="holds a 'baseline' checkpoint, but a stage2 or stage3 one"):
        run_folder.read_manifest(tmp_path, ("stage2", "stage3"))
    assert run_folder.read_manifest(tmp_path, ("stage2", "baseline")) == {"stage": "baseline", "step": 4}


def test_update_manifest_creates_then_merges(tmp_path):
    assert run_folder.update_manifest(tmp_path, {"stage": "stage1", "step": 1}) == {"stage": "stage1", "step": 1}
    merged = run_folder.update_manifest(tmp_path, {"step": 2, "finished": True})
    assert merged == {"stage": "stage1", "step": 2, "finished": True}
    assert run_folder.read_json(tmp_path / "manifest.json") == merged


def test_is_finished_reads_the_flag(tmp_path):
    assert run_folder.is_finished(tmp_path) is False  # no manifest
    run_folder.write_json(tmp_path / "manifest.json", {"stage": "stage1"})
    assert run_folder.is_finished(tmp_path) is False
    run_folder.write_json(tmp_path / "manifest.json", {"finished": 1})
    assert run_folder.is_finished(tmp_path) is True
    run_folder.write_json(tmp_path / "manifest.json", {"finished": False})
    assert run_folder.is_finished(tmp_path) is False


def test_read_jsonl_skips_blank_lines_and_a_missing_file_is_empty(tmp_path):
    path = tmp_path / "log.jsonl"
    assert run_folder.read_jsonl(path) == []
    path.write_text('{"step": 1}\n\n   \n{"step": 2, "loss": 0.5}\n', encoding="utf-8")
    assert run_folder.read_jsonl(path) == [{"step": 1}, {"step": 2, "loss": 0.5}]


def test_truncate_jsonl_keeps_records_up_to_and_including_the_last_step(tmp_path):
    path = tmp_path / "log.jsonl"
    run_folder.truncate_jsonl(path, 3)  # a missing file stays missing
    assert not path.exists()
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 2}, {"step": 3}, {"step": 4}, {"x": 1}]))
    run_folder.truncate_jsonl(path, 3)
    assert path.read_text(encoding="utf-8") == '{"step": 2}\n{"step": 3}\n{"x": 1}\n'  # no step reads as 0
    run_folder.truncate_jsonl(path, -1)
    assert path.read_text(encoding="utf-8") == ""


def test_file_sha256_matches_hashlib_across_block_boundaries(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * ((1 << 20) // 256 * 2 + 3)  # two 1 MiB blocks and a remainder
    path.write_bytes(data)
    assert run_folder.file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(b"")
    assert run_folder.file_sha256(path) == hashlib.sha256(b"").hexdigest()


def test_fingerprint_leaves_out_what_does_not_define_a_run_and_hashes_the_annotations(tmp_path):
    config = _config(tmp_path, lr=0.5, num_workers=3)
    values = run_folder.fingerprint(config)
    assert values["lr"] == 0.5 and values["stage"] == "baseline"
    assert not set(values) & TrainConfig.NOT_IN_FINGERPRINT
    assert {"num_workers", "output_dir", "resume"} <= TrainConfig.NOT_IN_FINGERPRINT
    expected = hashlib.sha256((tmp_path / "instances.json").read_bytes()).hexdigest()
    assert values["ann_file_sha256"] == expected
    missing = TrainConfig(stage="baseline", data_root=str(tmp_path), ann_file=str(tmp_path / "gone.json"))
    assert run_folder.fingerprint(missing)["ann_file_sha256"] is None


def test_check_run_folder_lists_differences_and_accepts_them_only_when_asked(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config = _config(tmp_path)
    saved = run_folder.fingerprint(config)
    assert run_folder.check_run_folder(run, config, saved) == {}  # an empty folder
    run_folder.write_json(run / "manifest.json", {"stage": "baseline", "step": 7, "fingerprint": saved})
    assert run_folder.check_run_folder(run, config, saved) == {}
    changed = {**saved, "lr": 0.5, "batch_size": saved["batch_size"] + 1}
    with pytest.raises(ValueError) as error:
        run_folder.check_run_folder(run, config, changed)
    message = str(error.value)
    assert "holds another run (baseline, step 7): 2 key(s)" in message
    assert (
        f"batch_size: {saved['batch_size']!r} there, {saved['batch_size'] + 1} now; lr: {saved['lr']!r} there, 0.5 now"
        in message
    )
    accepting = _config(tmp_path, resume_despite_changes=True)
    expected = {"batch_size": [saved["batch_size"], saved["batch_size"] + 1], "lr": [saved["lr"], 0.5]}
    assert run_folder.check_run_folder(run, accepting, changed) == expected
    assert run_folder.check_run_folder(run, _config(tmp_path, resume=False), changed) == {}  # starting over
    with pytest.raises(ValueError, match="holds a 'baseline' checkpoint, but a stage1 one"):
        run_folder.check_run_folder(run, _config(tmp_path, stage="stage1"), saved)


def test_check_run_folder_reads_an_old_manifests_config_without_its_unfingerprinted_keys(tmp_path):
    config = _config(tmp_path)
    run_folder.write_json(tmp_path / "manifest.json", {"stage": "baseline", "config": {"lr": 0.1, "num_workers": 9}})
    assert run_folder.check_run_folder(tmp_path, _config(tmp_path, resume_despite_changes=True), {"lr": 0.2}) == {
        "lr": [0.1, 0.2]
    }
    assert run_folder.check_run_folder(tmp_path, config, {"lr": 0.1, "num_workers": 0}) == {}


def test_detector_spec_of_reads_the_entry_or_rebuilds_it_from_an_old_config():
    assert run_folder.detector_spec_of({"detector": SPEC.to_dict()}) == SPEC
    old = {
        "config": {"detector": "fasterrcnn", "backbone": "resnet18", "min_size": 64, "backbone_weights": "w.pth"},
        "category_ids": [1, 5, 9],
    }
    spec = run_folder.detector_spec_of(old)
    assert (spec.num_classes, spec.frozen_batchnorm, spec.anchor_scale, spec.min_size) == (4, True, 1.0, 64)
    old["config"].update(backbone_weights=None, anchor_scale=0.5)
    spec = run_folder.detector_spec_of({**old, "detector": "not a mapping"})
    assert (spec.frozen_batchnorm, spec.anchor_scale) == (False, 0.5)


def _saved_run(tmp_path, stage: str, generator: torch.nn.Module | None = None, **manifest) -> torch.nn.Module:
    torch.manual_seed(3)
    detector = SPEC.build()
    if generator is not None:
        patch_generator(detector, generator)
    for parameter in detector.parameters():
        parameter.data.normal_()
    state = {f"detector.{key}": value.contiguous() for key, value in detector.state_dict().items()}
    save_file(state, tmp_path / "checkpoint.safetensors")
    run_folder.write_json(
        tmp_path / "manifest.json", {"stage": stage, "detector": SPEC.to_dict(), "config": {}, **manifest}
    )
    return detector


def test_load_trained_detector_restores_the_checkpoint_in_eval_mode(tmp_path):
    saved = _saved_run(tmp_path, "stage3", config={"interpolation": "bilinear"})
    detector, manifest = run_folder.load_trained_detector(tmp_path)
    assert manifest["stage"] == "stage3" and not detector.training
    loaded = detector.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in saved.state_dict().items())
    assert sum(isinstance(m, FixedInterpolation) and m.mode == "bilinear" for m in detector.modules()) == 1
    with pytest.raises(ValueError, match="but a baseline one is expected"):
        run_folder.load_trained_detector(tmp_path, expected=("baseline",))


def test_load_trained_detector_patches_the_runs_generator_in(tmp_path):
    generator = SRFUpsample(in_channels=256, hidden_channels=8, num_blocks=1)
    generator.save_pretrained(tmp_path / "generator")
    saved = _saved_run(tmp_path, "stage2", generator, has_generator=True)
    detector, _ = run_folder.load_trained_detector(tmp_path)
    patched = [m for m in detector.modules() if isinstance(m, SRFUpsample)]
    assert len(patched) == 1 and not any(isinstance(m, FixedInterpolation) for m in detector.modules())
    loaded = detector.state_dict()
    assert loaded.keys() == saved.state_dict().keys()
    assert all(torch.equal(loaded[key], value) for key, value in saved.state_dict().items())
    (tmp_path / "generator").rename(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="generator"):
        run_folder.load_trained_detector(tmp_path)


def test_messages_name_the_folder_they_are_about(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        run_folder.read_manifest(tmp_path, ("stage1",))
    assert str(error.value) == f"{str(tmp_path)!r} has no manifest.json; expected the output dir of a stage1 run."
    (tmp_path / "manifest.json").write_text("3", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        run_folder.read_manifest(tmp_path, ("stage1",))
    assert str(error.value) == f"{str(tmp_path / 'manifest.json')!r} must hold a JSON object, got int."
    run_folder.write_json(tmp_path / "manifest.json", {"stage": "stage1"})
    with pytest.raises(ValueError) as error:
        run_folder.read_manifest(tmp_path, ("stage2",))
    assert str(error.value) == (
        f"{str(tmp_path)!r} holds a 'stage1' checkpoint, but a stage2 one is expected here (progressive learning runs "
        "stage1 -> stage2 -> stage3)."
    )
    (tmp_path / "manifest.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        run_folder.read_json(tmp_path / "manifest.json")
    assert str(error.value).endswith(
        "the file is truncated or damaged. Restore it from the newest complete checkpoint (checkpoints/step_*/) or "
        "start the run again in a new --output-dir."
    )


def test_a_record_without_a_step_counts_as_step_zero(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"x": 1}\n{"step": 1}\n', encoding="utf-8")
    run_folder.truncate_jsonl(path, 0)
    assert path.read_text(encoding="utf-8") == '{"x": 1}\n'


def test_check_run_folder_message_in_full_and_a_manifest_with_neither_fingerprint_nor_config(tmp_path):
    config = _config(tmp_path)
    run_folder.write_json(tmp_path / "manifest.json", {"stage": "baseline", "step": 2, "fingerprint": {"lr": 0.1}})
    with pytest.raises(ValueError) as error:
        run_folder.check_run_folder(tmp_path, config, {"lr": 0.2})
    assert str(error.value) == (
        f"{str(tmp_path)!r} holds another run (baseline, step 2): 1 key(s) that define a run differ: lr: 0.1 there, "
        "0.2 now. Either train this config in a new --output-dir, or pass --resume-despite-changes to continue that "
        "run with these values (recorded in its manifest)."
    )
    run_folder.write_json(tmp_path / "manifest.json", {"stage": "baseline"})
    assert run_folder.check_run_folder(tmp_path, config, {"lr": 0.2}) == {}  # nothing saved to compare


def test_load_trained_detector_moves_to_the_device_and_names_a_checkpoint_that_does_not_fit(tmp_path):
    _saved_run(tmp_path, "baseline")
    detector, _ = run_folder.load_trained_detector(tmp_path, device="meta")
    assert {p.device.type for p in detector.parameters()} == {"meta"}
    state = safetensors_load(tmp_path / "checkpoint.safetensors")
    state.pop(next(iter(state)))
    save_file(state, tmp_path / "checkpoint.safetensors")
    with pytest.raises(ValueError, match=f"Cannot load the baseline checkpoint in {str(tmp_path)!r} into FasterRCNN"):
        run_folder.load_trained_detector(tmp_path)
