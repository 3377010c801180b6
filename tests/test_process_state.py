"""The process-state guard of tests/conftest.py: what it names, and that it fails a test that leaks state."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _process_state import SEED, process_state, state_changes

TESTS = Path(__file__).resolve().parent

LEAKY_TESTS = """
import logging
import os

import pytest
import torch


def test_leaks_threads():
    torch.set_num_threads(torch.get_num_threads() + 1)


def test_clean():
    pass


def test_leaks_an_environment_variable():
    os.environ["SRF_GUARD_LEAK"] = "1"


@pytest.fixture(scope="module")
def leaky_fixture():
    os.environ["SRF_GUARD_FIXTURE_LEAK"] = "2"
    yield


def test_with_a_leaky_module_fixture(leaky_fixture):
    pass


def test_restores_what_it_changes(monkeypatch):
    monkeypatch.setenv("SRF_GUARD_RESTORED", "3")
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.WARNING)
    torch.rand(5)  # draws from the global generator: the guard puts its state back
"""


def test_state_changes_names_each_changed_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    logger = logging.getLogger("srf_upsample.test_process_state")
    threads, level, cwd = torch.get_num_threads(), logger.level, os.getcwd()
    before = process_state()
    monkeypatch.setenv("SRF_GUARD_NEW", "x")
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(threads + 1)
    logger.setLevel(logging.CRITICAL)
    try:
        after = process_state()
    finally:
        torch.set_num_threads(threads)
        logger.setLevel(level)
    assert state_changes(before, after) == sorted(
        [
            "environment variable SRF_GUARD_NEW: '<unset>' -> 'x'",
            f"logger 'srf_upsample.test_process_state': level {level} -> 50",
            f"os.getcwd(): {cwd!r} -> {str(tmp_path)!r}",
            f"torch.get_num_threads(): {threads} -> {threads + 1}",
        ]
    )
    assert state_changes(before, before) == []


def test_each_test_starts_from_the_fixed_torch_seed() -> None:
    expected = torch.rand(4, generator=torch.Generator().manual_seed(SEED))
    assert torch.equal(torch.rand(4), expected)


def test_the_guard_fails_tests_and_fixtures_that_leak_state(tmp_path: Path) -> None:
    for name in ("conftest.py", "_process_state.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SRF_GUARD"))}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:randomly", "-p", "no:cacheprovider"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    summary = {line.split(" - ")[0] for line in done.stdout.splitlines() if "test_leaky.py::" in line}
    lines = done.stdout.splitlines()

    def reported(*parts: str) -> bool:  # one line of the output holds every part
        return any(all(part in line for part in parts) for line in lines)

    assert {"PASSED test_leaky.py::test_clean", "PASSED test_leaky.py::test_restores_what_it_changes"} <= summary
    assert {
        f"ERROR test_leaky.py::{name}" for name in ("test_leaks_threads", "test_leaks_an_environment_variable")
    } <= summary
    assert reported("test_leaky.py::test_leaks_threads changed process-wide state", "torch.get_num_threads(): 1 -> 2")
    assert reported("test_leaky.py::test_leaks_an_environment_variable changed", "SRF_GUARD_LEAK: '<unset>' -> '1'")
    assert "ERROR test_leaky.py::test_with_a_leaky_module_fixture" in summary
    assert reported(
        "changed between test_leaky.py::test_leaks_an_environment_variable and this test",
        "SRF_GUARD_FIXTURE_LEAK: '<unset>' -> '2'",
    )
    assert "4 passed, 3 errors" in done.stdout, done.stdout[-3000:]
