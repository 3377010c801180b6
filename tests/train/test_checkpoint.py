"""Checkpoints as one unit: a trainer killed (SIGKILL) at every phase of a checkpoint write resumes bit-identically.

Bit-identical holds on one machine at one thread count (float sums depend on how work is split across threads), so
every run here uses THREADS: the killed run is a subprocess with OMP_NUM_THREADS=THREADS, and the uninterrupted and
resumed runs in this process run under :func:`pinned_threads`.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import TINY, data_args

from srf_upsample.train.checkpoint import KILL_PHASES, TEST_KILL_ENV, checkpoint_steps
from srf_upsample.train.cli import main

REPO = Path(__file__).resolve().parents[2]
THREADS = 1  # the intra-op thread count of every run, in this process and in the killed subprocess


@contextlib.contextmanager
def pinned_threads(threads: int = THREADS) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)``, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _pinned_threads() -> Iterator[None]:
    with pinned_threads():
        yield


def _argv(coco, out: Path) -> list[str]:
    # Stage 1 writes every kind of part: weights, optimizer state, RNG, generator/ and discriminator/.
    return ["stage1", *data_args(coco), *TINY, "--max-iters", "3", "--checkpoint-every", "1", "--output-dir", str(out)]


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor a finished run leaves: weights, G and D folders, optimizer and scheduler state of the last step."""
    out = {f"weights/{k}": v for k, v in safetensors.torch.load_file(str(run / "checkpoint.safetensors")).items()}
    for folder in ("generator", "discriminator"):
        weights = safetensors.torch.load_file(str(run / folder / "model.safetensors"))
        out.update({f"{folder}/{k}": v for k, v in weights.items()})
    last = run / "checkpoints" / f"step_{checkpoint_steps(run)[0]:06d}"
    state = torch.load(last / "trainer_state.pt", weights_only=True)
    for name, opt in state["optimizers"].items():
        for index, values in opt["state"].items():
            out.update({f"optimizer/{name}/{index}/{k}": v for k, v in values.items() if isinstance(v, torch.Tensor)})
    return out


def _assert_same(resumed: Path, straight: Path) -> None:
    a, b = _tensors(resumed), _tensors(straight)
    assert a.keys() == b.keys()
    differing = [key for key in b if not torch.equal(a[key], b[key])]
    assert not differing, f"{len(differing)} of {len(b)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def straight(coco, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    with pinned_threads():  # module-scoped: set up before the autouse pin of the first test that needs it
        assert main(_argv(coco, out)) == 0
    return out


def _killed_run(coco, out: Path, phase: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), **{TEST_KILL_ENV: phase})
    command = [sys.executable, "-m", "srf_upsample.cli", "train", *_argv(coco, out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


@pytest.mark.parametrize("phase", [f"{phase}:2" for phase in KILL_PHASES] + ["manifest:1", "publish:3"])
def test_kill_at_each_phase_of_a_checkpoint_write_resumes_bit_identically(phase, coco, straight, tmp_path, caplog):
    out = tmp_path / "run"
    _killed_run(coco, out, phase)
    assert not (out / "manifest.json").is_file() or not json.loads((out / "manifest.json").read_text())["finished"]
    assert main(_argv(coco, out)) == 0  # resume as docs/training.md says: the same command again
    _assert_same(out, straight)
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert checkpoint_steps(out) == [3, 2]  # the last two complete checkpoints are kept
    assert not list((out / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("part", ["trainer_state.pt", "rng_state_0.pt", "checkpoint.safetensors", "manifest.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(part, coco, straight, tmp_path, caplog):
    out = tmp_path / "run"
    assert main([*_argv(coco, out), "--stop-after", "2"]) == 0
    damaged = out / "checkpoints" / "step_000002" / part
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # truncated
    with caplog.at_level("WARNING", logger="srf_upsample"):
        assert main(_argv(coco, out)) == 0
    assert "falling back" in caplog.text and "resuming" in caplog.text and "from step 1" in caplog.text
    _assert_same(out, straight)


def test_no_complete_checkpoint_is_a_clear_error(coco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_argv(coco, out), "--stop-after", "1", "--set", "keep_checkpoints=1"]) == 0
    state = out / "checkpoints" / "step_000001" / "trainer_state.pt"
    state.write_bytes(b"")
    assert main(_argv(coco, out)) == 2
    error = capsys.readouterr().err
    assert "none is complete" in error and "trainer_state.pt has 0 bytes" in error and "--no-resume" in error
    assert main([*_argv(coco, out), "--no-resume"]) == 0  # starting over deletes the damaged checkpoints
    assert checkpoint_steps(out) == [3, 2]


@pytest.mark.parametrize(
    "part", ["generator/model.safetensors", "discriminator/model.safetensors", "checkpoint.safetensors"]
)
def test_a_same_size_damage_is_caught_by_the_hash_and_falls_back(part, coco, straight, tmp_path, caplog):
    # One byte flipped in the middle of a tensor: the file keeps its size and still loads, so only the SHA-256 check
    # can tell; the parts under generator/ and discriminator/ are checked like the top-level ones.
    out = tmp_path / "run"
    assert main([*_argv(coco, out), "--stop-after", "2"]) == 0
    damaged = out / "checkpoints" / "step_000002" / part
    data = bytearray(damaged.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF
    damaged.write_bytes(bytes(data))
    safetensors.torch.load_file(str(damaged))  # still a loadable file of the same size
    with caplog.at_level("WARNING", logger="srf_upsample"):
        assert main(_argv(coco, out)) == 0
    assert f"{part} does not match its recorded SHA-256 (damaged)" in caplog.text
    assert "from step 1" in caplog.text
    _assert_same(out, straight)
