"""Every test starts from the same process state and must leave it as it found it.

An autouse guard snapshots the process-wide state a test could change (torch thread counts, default dtype, determinism,
grad/inference/anomaly modes, float32 matmul precision, cuDNN flags, environment variables, working directory, logging
levels and handlers, the matplotlib backend) before each test and fails the test, naming what changed, if the state is
not the same afterwards. It also fails a test whose starting state differs from the state the previous test left: such
a change was made between tests, by a module- or session-scoped fixture.

The global random number generators (torch, ``random``, numpy) are the exception: tests draw from them all the time, so
the guard reseeds them to a fixed seed before each test and restores their previous state after it. No test can then
depend on what an earlier test drew, whatever the order (pytest-randomly reseeds ``random`` and numpy again with its
own per-test seed; torch it leaves alone).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from _process_state import process_state, reseed, rng_states, set_rng_states, state_changes

_previous: tuple[str, dict[str, Any]] | None = None  # (node id, state) after the last guarded test


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n``), each worker gets an equal share of torch's threads, so the workers do not
    oversubscribe the cores; a run without ``-n`` keeps torch's default. Set before any test, so the guard sees it as
    every test's starting state."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, torch.get_num_threads() // int(workers)))


@pytest.fixture(autouse=True)
def _process_state_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    global _previous
    before = process_state()
    if _previous is not None and (between := state_changes(_previous[1], before)):
        previous_id, _previous = _previous[0], None  # report it once, at this test
        pytest.fail(
            f"process-wide state changed between {previous_id} and this test, by a module- or session-scoped fixture "
            "(set it and restore it inside the fixture or the test): " + "; ".join(between),
            pytrace=False,
        )
    rng = rng_states()
    reseed()
    try:
        yield
    finally:
        set_rng_states(rng)
    after = process_state()
    _previous = (request.node.nodeid, after)
    changed = state_changes(before, after)
    if changed:
        pytest.fail(
            f"{request.node.nodeid} changed process-wide state and did not restore it (restore it in the test or "
            "fixture, or fix the code it calls with try/finally): " + "; ".join(changed),
            pytrace=False,
        )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Name the test order at the end of the run (``-q`` hides pytest-randomly's header), so it can be replayed."""
    if config.pluginmanager.has_plugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"random test order: replay it with -p randomly --randomly-seed={seed}")
    else:
        terminalreporter.write_line("test order: as collected (pytest-randomly is off)")
