"""Smoke test of benchmarks/bench_guided_cost.py in quick mode: it runs and writes its table (measures nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_guided_cost  # noqa: E402


def test_bench_guided_cost_quick_writes_its_table(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    assert bench_guided_cost.main(["--quick", "--results", str(path)]) == 0
    text = path.read_text()
    assert "QUICK MODE" in text and "| guided / lite" in text
    # The three top-down sites of the R50-FPN get their lateral map as guide.
    assert "| guided    | 75,104           | -      | -                | 3 " in text
