"""Known answers for one checkpoint in process: what it holds, how it is published and pruned, and why one is skipped.

The kill tests (test_checkpoint.py) train in a subprocess; these call the writer and reader directly, so each
check of ``_verify`` and ``_load_step`` is reached on its own (not masked by an earlier one).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal

import pytest
import safetensors.torch
import torch
from torch import nn

from srf_upsample import SRFUpsample
from srf_upsample.train import checkpoint
from srf_upsample.train.checkpoint import (
    TEST_KILL_ENV,
    TrainingState,
    checkpoint_steps,
    choose_checkpoint,
    clear_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _state(seed: int) -> TrainingState:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # momentum buffers exist
    scheduler.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainingState({"model": model}, {"model": optimizer}, {"model": scheduler}, scaler)


def _generator(seed: int) -> SRFUpsample:
    torch.manual_seed(seed)
    return SRFUpsample(in_channels=4, hidden_channels=4, num_blocks=1)


def _save(run, step: int, seed: int = 0, keep: int = 2, **kwargs) -> TrainingState:
    state = _state(seed)
    counters = {"step": step, "batch_cursor": step * 2, "skipped_images": 1}
    save_checkpoint(
        run, state, counters, folders={"generator": _generator(seed)}, record={"stage": "x"}, keep=keep, **kwargs
    )
    return state


def _step(run, step: int):
    return run / "checkpoints" / f"step_{step:06d}"


def test_a_checkpoint_round_trips_weights_optimizer_scheduler_counters_and_rng(tmp_path):
    saved = _save(tmp_path, 3, seed=1)
    restored = _state(seed=2)
    assert load_checkpoint(tmp_path, restored) == {"step": 3, "batch_cursor": 6, "skipped_images": 1}
    for key, value in saved.modules["model"].state_dict().items():
        assert torch.equal(restored.modules["model"].state_dict()[key], value)
    momentum = restored.optimizers["model"].state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, saved.optimizers["model"].state_dict()["state"][0]["momentum_buffer"])
    assert restored.schedulers["model"].state_dict()["last_epoch"] == 1
    assert restored.optimizers["model"].param_groups[0]["lr"] == pytest.approx(0.05)


def test_rng_state_restored_is_the_saved_one(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    state = _state(0)
    torch.manual_seed(123)
    random.seed(123)
    save_checkpoint(tmp_path, state, {"step": 1, "batch_cursor": 0, "skipped_images": 0}, folders={}, record={})
    after_torch, after_python = torch.rand(3), random.random()
    torch.manual_seed(999)
    random.seed(999)
    load_checkpoint(tmp_path, _state(0))
    assert torch.equal(torch.rand(3), after_torch) and random.random() == after_python


def test_layout_manifest_parts_and_published_hard_links(tmp_path):
    _save(tmp_path, 7)
    folder = _step(tmp_path, 7)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 7 and manifest["stage"] == "x"
    names = sorted(manifest["parts"])
    assert names == [
        "checkpoint.safetensors",
        "generator/README.md",
        "generator/config.json",
        "generator/model.safetensors",
        "rng_state_0.pt",
        "trainer_state.pt",
    ]
    for name, part in manifest["parts"].items():
        assert part["bytes"] == (folder / name).stat().st_size
        assert part["sha256"] == checkpoint.file_sha256(folder / name)
    with safetensors.safe_open(str(folder / "checkpoint.safetensors"), framework="pt") as f:
        assert f.metadata() == {"step": "7"} and sorted(f.keys()) == ["model.bias", "model.weight"]
    assert os.path.samefile(folder / "checkpoint.safetensors", tmp_path / "checkpoint.safetensors")
    assert os.path.samefile(folder / "generator" / "model.safetensors", tmp_path / "generator" / "model.safetensors")
    assert not any(p.name.endswith((".tmp", ".old")) for p in tmp_path.rglob("*"))
    assert torch.load(folder / "trainer_state.pt", weights_only=True)["scaler"] == {}  # a disabled scaler


def test_publishing_replaces_the_previous_top_level_files(tmp_path):
    _save(tmp_path, 1, seed=1)
    _save(tmp_path, 2, seed=2)
    assert os.path.samefile(_step(tmp_path, 2) / "checkpoint.safetensors", tmp_path / "checkpoint.safetensors")
    published = SRFUpsample.from_pretrained(str(tmp_path / "generator"))
    for key, value in _generator(2).state_dict().items():
        assert torch.equal(published.state_dict()[key], value)


def test_keep_prunes_to_the_newest_and_steps_list_newest_first(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=3)
    assert checkpoint_steps(tmp_path) == [4, 3, 2]
    (tmp_path / "checkpoints" / "step_000009.tmp").mkdir()  # a write that died before its rename
    (tmp_path / "checkpoints" / "step_000010").write_text("")  # not a folder
    (tmp_path / "checkpoints" / "notes").mkdir()
    assert checkpoint_steps(tmp_path) == [4, 3, 2]
    _save(tmp_path, 5, keep=1)
    assert checkpoint_steps(tmp_path) == [5]
    assert checkpoint_steps(tmp_path / "nothing") == []
    clear_checkpoints(tmp_path)
    assert not (tmp_path / "checkpoints").exists() and checkpoint_steps(tmp_path) == []


def test_saving_a_committed_step_again_rewrites_nothing_but_publishes_and_prunes(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "checkpoint.safetensors").unlink()
    before = (_step(tmp_path, 2) / "manifest.json").stat().st_mtime_ns
    _save(tmp_path, 2, seed=9, keep=1)
    assert (_step(tmp_path, 2) / "manifest.json").stat().st_mtime_ns == before
    assert os.path.samefile(_step(tmp_path, 2) / "checkpoint.safetensors", tmp_path / "checkpoint.safetensors")
    assert checkpoint_steps(tmp_path) == [2]


def test_a_stale_staging_folder_is_replaced(tmp_path):
    staged = tmp_path / "checkpoints" / "step_000001.tmp"
    staged.mkdir(parents=True)
    (staged / "leftover.bin").write_bytes(b"x")
    _save(tmp_path, 1)
    assert "leftover.bin" not in json.loads((_step(tmp_path, 1) / "manifest.json").read_text())["parts"]
    assert not staged.exists()


def test_barrier_is_called_three_times_and_a_non_main_rank_writes_only_its_rng(tmp_path):
    calls = []
    _save(tmp_path, 1, barrier=lambda: calls.append(1))
    assert len(calls) == 3
    staged = tmp_path / "checkpoints" / "step_000002.tmp"
    staged.mkdir()
    _save(tmp_path, 2, rank=1, is_main=False)
    assert sorted(p.name for p in staged.iterdir()) == ["rng_state_1.pt"] and checkpoint_steps(tmp_path) == [1]


def _damage_and_choose(run, damage) -> list[str]:
    _save(run, 1)
    _save(run, 2)
    damage(_step(run, 2))
    step, skipped = choose_checkpoint(run)
    assert step == 1
    return skipped


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite_manifest(folder, **changes):
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: (f / "manifest.json").unlink(), "it has no manifest.json"),
        (lambda f: (f / "manifest.json").write_text("{"), "its manifest.json is not valid JSON"),
        (lambda f: _rewrite_manifest(f, step=3), "its manifest.json is for step 3, not 2"),
        (lambda f: _rewrite_manifest(f, parts=[]), "its manifest.json is for step 2, not 2"),
        (lambda f: (f / "trainer_state.pt").unlink(), "trainer_state.pt is missing"),
        (
            lambda f: (f / "generator" / "config.json").write_text("{}"),
            "generator/config.json has 2 bytes, the checkpoint recorded",
        ),
        (
            lambda f: _flip_last_byte(f / "generator" / "model.safetensors"),
            "generator/model.safetensors does not match its recorded SHA-256 (damaged)",
        ),
        (lambda f: _flip_last_byte(f / "rng_state_0.pt"), "rng_state_0.pt does not match its recorded SHA-256"),
    ],
)
def test_each_check_of_a_checkpoint_names_its_reason(tmp_path, damage, reason):
    (skipped,) = _damage_and_choose(tmp_path, damage)
    assert skipped.startswith(f"step 2: {reason}")


def test_an_intact_newest_checkpoint_is_chosen_with_nothing_skipped(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    assert choose_checkpoint(tmp_path) == (2, [])
    assert choose_checkpoint(tmp_path / "none") == (None, [])


def _rehash(folder, name):
    """Record a rewritten part's size and SHA-256 in the checkpoint's manifest (so that only its content tells)."""
    parts = json.loads((folder / "manifest.json").read_text())["parts"]
    parts[name] = {"bytes": (folder / name).stat().st_size, "sha256": checkpoint.file_sha256(folder / name)}
    _rewrite_manifest(folder, parts=parts)


def _retag_trainer_state(folder, step):
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    torch.save({**state, "step": step}, folder / "trainer_state.pt")
    _rehash(folder, "trainer_state.pt")


def test_a_part_from_another_step_falls_back_with_a_warning(tmp_path, caplog):
    _save(tmp_path, 1, seed=1)
    _save(tmp_path, 2, seed=2)
    _retag_trainer_state(_step(tmp_path, 2), 1)  # consistent hashes: only the part's own step tells
    restored = _state(5)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        counters = load_checkpoint(tmp_path, restored)
    assert counters["step"] == 1
    for key, value in _state(1).modules["model"].state_dict().items():
        assert torch.equal(restored.modules["model"].state_dict()[key], value)
    messages = [record.getMessage() for record in caplog.records]
    assert any("step 2: ValueError: its parts are from other steps ({'trainer_state.pt': 1})" in m for m in messages)
    assert messages[-1].endswith("from step 1, the newest complete checkpoint")


def test_load_falls_back_past_a_damaged_older_candidate_too(tmp_path, caplog):
    for step in (1, 2, 3):
        _save(tmp_path, step, seed=step, keep=3)
    _retag_trainer_state(_step(tmp_path, 3), 1)
    (_step(tmp_path, 2) / "trainer_state.pt").unlink()
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert load_checkpoint(tmp_path, _state(0))["step"] == 1
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "step 3: ValueError" in text and "step 2: trainer_state.pt is missing" in text


def test_no_complete_checkpoint_is_an_error_and_no_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path, _state(0)) is None
    _save(tmp_path, 1)
    (_step(tmp_path, 1) / "checkpoint.safetensors").unlink()
    with pytest.raises(ValueError) as error:
        load_checkpoint(tmp_path, _state(0))
    assert "has checkpoints but none is complete (step 1: checkpoint.safetensors is missing)" in str(error.value)
    assert "--no-resume" in str(error.value) and "new --output-dir" in str(error.value)


def test_a_step_chosen_by_the_main_process_is_loaded_as_given(tmp_path, caplog):
    _save(tmp_path, 1, seed=1)
    _save(tmp_path, 2, seed=2)
    restored = _state(5)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert load_checkpoint(tmp_path, restored, step=1, skipped=["step 2: chosen elsewhere"])["step"] == 1
    assert any("chosen elsewhere" in record.getMessage() for record in caplog.records)


def test_a_rank_without_its_rng_file_loads_and_warns(tmp_path, caplog):
    _save(tmp_path, 1)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert load_checkpoint(tmp_path, _state(0), rank=3)["step"] == 1
    assert any("has no RNG state for rank 3" in record.getMessage() for record in caplog.records)


def test_the_scaler_state_is_saved_and_restored_when_enabled(monkeypatch):
    state = _state(0)
    calls = []
    monkeypatch.setattr(state.scaler, "is_enabled", lambda: True)
    monkeypatch.setattr(state.scaler, "state_dict", lambda: {"scale": 8.0})
    monkeypatch.setattr(state.scaler, "load_state_dict", calls.append)
    saved = state.trainer_state({"step": 4})
    assert saved["scaler"] == {"scale": 8.0} and saved["step"] == 4
    state.load_trainer_state(saved)
    state.load_trainer_state({**saved, "scaler": {}})
    assert calls == [{"scale": 8.0}]


@pytest.mark.parametrize(
    ("wanted", "phase", "step", "expected"),
    [
        ("", "weights", 2, False),
        ("weights", "weights", 2, True),
        ("weights", "rng", 2, False),
        ("weights:2", "weights", 2, True),
        ("weights:3", "weights", 2, False),
    ],
)
def test_the_test_kill_switch_matches_phase_and_step(monkeypatch, wanted, phase, step, expected):
    monkeypatch.setenv(TEST_KILL_ENV, wanted)
    assert checkpoint._kill_requested(phase, step) is expected


def test_publishing_copies_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError("no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    _save(tmp_path, 1)
    top, kept = tmp_path / "checkpoint.safetensors", _step(tmp_path, 1) / "checkpoint.safetensors"
    assert not os.path.samefile(top, kept) and top.read_bytes() == kept.read_bytes()


@pytest.mark.parametrize("phase", checkpoint.KILL_PHASES)
def test_each_kill_phase_fires_once_at_its_point_of_the_write(tmp_path, monkeypatch, phase):
    """The test hook: SIGKILL (recorded here, not sent) at ``phase`` of step 2 only, with what is on disk then."""
    kills = []

    def record_kill(pid, sig):
        staged = _step(tmp_path, 2).with_name("step_000002.tmp")
        on_disk = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*")) if staged.is_dir() else None
        kills.append((pid, sig, on_disk, _step(tmp_path, 2).is_dir(), (tmp_path / "checkpoint.safetensors").exists()))

    monkeypatch.setattr(os, "kill", record_kill)
    monkeypatch.setenv(TEST_KILL_ENV, f"{phase}:2")
    _save(tmp_path, 1)
    assert kills == []  # another step
    _save(tmp_path, 2)
    ((pid, sig, on_disk, committed, published),) = kills
    assert (pid, sig) == (os.getpid(), signal.SIGKILL)
    before_commit = {
        "rng": ["rng_state_0.pt"],
        "weights_partial": ["checkpoint.safetensors", "rng_state_0.pt"],
        "weights": ["checkpoint.safetensors", "rng_state_0.pt"],
        "trainer_state": ["checkpoint.safetensors", "rng_state_0.pt", "trainer_state.pt"],
        "folders": [
            "checkpoint.safetensors",
            "generator",
            "generator/README.md",
            "generator/config.json",
            "generator/model.safetensors",
            "rng_state_0.pt",
            "trainer_state.pt",
        ],
    }
    if phase in before_commit:
        assert on_disk == before_commit[phase] and not committed
    elif phase == "manifest":
        assert "manifest.json" in on_disk and not committed
    else:
        assert on_disk is None and committed  # renamed into place
    assert published  # step 1's weights, or step 2's after "publish"


def test_the_weights_partial_phase_leaves_half_the_weights_file(tmp_path, monkeypatch):
    _save(tmp_path / "whole", 2)
    size = (_step(tmp_path / "whole", 2) / "checkpoint.safetensors").stat().st_size
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)
    monkeypatch.setenv(TEST_KILL_ENV, "weights_partial:2")
    _save(tmp_path / "cut", 2)
    assert (_step(tmp_path / "cut", 2) / "checkpoint.safetensors").stat().st_size == size // 2
    # Its manifest recorded the cut file, so only the step tag inside the weights tells (not readable: safetensors).
    assert choose_checkpoint(tmp_path / "cut") == (2, [])


def test_fsync_opens_folders_with_o_directory_and_files_read_only(tmp_path, monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *a: opened.append(flags) or real_open(path, flags, *a))
    (tmp_path / "f").write_text("x")
    checkpoint._fsync(tmp_path)
    checkpoint._fsync(tmp_path / "f")
    assert opened == [os.O_RDONLY | os.O_DIRECTORY, os.O_RDONLY]


def test_the_rng_file_holds_its_step_and_no_cuda_state_without_a_gpu(tmp_path):
    _save(tmp_path, 4)
    rng = torch.load(_step(tmp_path, 4) / "rng_state_0.pt", weights_only=True)
    assert sorted(rng) == ["cuda", "python", "step", "torch"] and rng["step"] == 4
    if not torch.cuda.is_available():
        assert rng["cuda"] is None


def test_an_rng_file_of_another_step_falls_back(tmp_path, caplog):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    folder = _step(tmp_path, 2)
    rng = torch.load(folder / "rng_state_0.pt", weights_only=False)
    torch.save({**rng, "step": 1}, folder / "rng_state_0.pt")
    _rehash(folder, "rng_state_0.pt")
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert load_checkpoint(tmp_path, _state(0))["step"] == 1
    assert (
        f"checkpoint {tmp_path} is incomplete or damaged (step 2: ValueError: its parts are from other steps "
        "({'rng_state_0.pt': 1})); falling back to an older one"
    ) in [record.getMessage() for record in caplog.records]


def test_clearing_a_run_without_checkpoints_is_fine(tmp_path):
    clear_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_two_checkpoints_are_kept_by_default(tmp_path):
    for step in (1, 2, 3):
        state = _state(0)
        counters = {"step": step, "batch_cursor": 0, "skipped_images": 0}
        save_checkpoint(tmp_path, state, counters, folders={}, record={})
    assert checkpoint_steps(tmp_path) == [3, 2]


def test_publishing_clears_leftovers_of_a_publish_that_died(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / "generator.tmp").mkdir()
    (tmp_path / "generator.tmp" / "stale.bin").write_bytes(b"x")
    (tmp_path / "generator.old").mkdir()
    (tmp_path / "generator.old" / "stale.bin").write_bytes(b"x")
    _save(tmp_path, 2, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "checkpoints", "generator"]
    assert os.path.samefile(
        _step(tmp_path, 2) / "generator" / "model.safetensors", tmp_path / "generator" / "model.safetensors"
    )


def test_a_trainer_state_rewritten_with_the_same_values_still_loads(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    _retag_trainer_state(_step(tmp_path, 2), 2)
    assert load_checkpoint(tmp_path, _state(0))["step"] == 2


@pytest.mark.parametrize("name", ["trainer_state.pt", "rng_state_0.pt"])
def test_a_file_holding_more_than_tensors_and_plain_values_is_refused(tmp_path, caplog, name):
    import datetime

    _save(tmp_path, 1)
    _save(tmp_path, 2)
    folder = _step(tmp_path, 2)
    values = torch.load(folder / name, weights_only=True)
    torch.save({**values, "when": datetime.date(2026, 1, 1)}, folder / name)
    _rehash(folder, name)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert load_checkpoint(tmp_path, _state(0))["step"] == 1  # weights_only: not unpickled
    assert any("step 2: UnpicklingError" in record.getMessage() for record in caplog.records)


def test_weights_that_do_not_fit_name_the_checkpoint_folder(tmp_path, caplog):
    _save(tmp_path, 1)
    wide = TrainingState({"model": nn.Linear(3, 5)}, {}, {}, torch.amp.GradScaler("cpu", enabled=False))
    with pytest.raises(ValueError) as error:
        load_checkpoint(tmp_path, wide)
    message = str(error.value)
    assert message.startswith(f"{str(tmp_path)!r} has checkpoints but none is complete (step 1: ValueError: ")
    assert f"model weights of {_step(tmp_path, 1)}" in message
    assert message.endswith("Start the run over with --no-resume (it deletes them) or use a new --output-dir.")


def test_two_reasons_are_joined_in_the_error(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    for step in (1, 2):
        (_step(tmp_path, step) / "trainer_state.pt").unlink()
    with pytest.raises(ValueError) as error:
        load_checkpoint(tmp_path, _state(0))
    assert "(step 2: trainer_state.pt is missing; step 1: trainer_state.pt is missing)." in str(error.value)


def test_a_given_step_is_loaded_even_when_a_newer_one_is_intact(tmp_path):
    _save(tmp_path, 1, seed=1)
    _save(tmp_path, 2, seed=2)
    restored = _state(5)
    assert load_checkpoint(tmp_path, restored, step=1)["step"] == 1
    assert torch.equal(restored.modules["model"].weight, _state(1).modules["model"].weight)


def test_the_warnings_in_full_and_each_failed_step_once(tmp_path, caplog):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    _retag_trainer_state(_step(tmp_path, 2), 1)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        load_checkpoint(tmp_path, _state(0))
    assert [record.getMessage() for record in caplog.records] == [
        f"checkpoint {tmp_path} is incomplete or damaged (step 2: ValueError: its parts are from other steps "
        "({'trainer_state.pt': 1})); falling back to an older one",
        f"resuming {tmp_path} from step 1, the newest complete checkpoint",
    ]
    caplog.clear()
    _save(tmp_path / "few", 1)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        load_checkpoint(tmp_path / "few", _state(0), rank=2)
    assert [record.getMessage() for record in caplog.records] == [
        f"{_step(tmp_path / 'few', 1)} has no RNG state for rank 2 (more processes than when it was written)"
    ]
