"""Smoke test of benchmarks/bench_guided_cost.py in quick mode: it runs and writes its table (measures nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_guided_cost  # noqa: E402
from _helpers import quick_results  # noqa: E402


def test_bench_guided_cost_quick_writes_its_table(tmp_path: Path) -> None:
    text = quick_results(bench_guided_cost.main, tmp_path)
    assert "QUICK MODE" in text and "| guided / lite" in text
    # The three top-down sites of the R50-FPN get their lateral map as guide.
    assert "| guided    | 75,104           | -      | -                | 3 " in text
