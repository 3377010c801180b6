"""Smoke tests for benchmarks/: each script's quick mode runs and writes its table; no timing is asserted."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from srf_upsample import CARAFE, DySample
from srf_upsample.upsample import VARIANTS

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _common  # noqa: E402
import bench_backbone_fpn  # noqa: E402
import bench_detectors  # noqa: E402
import bench_generator_train_step  # noqa: E402
import bench_upsamplers  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    # Several engineers write sections of one RESULTS.md: a write must leave every other byte alone.
    path = tmp_path / "RESULTS.md"
    _common.write_section("a", "first", path)
    _common.write_section("b", "other", path)
    path.write_text(path.read_text() + "\nhand-written note\n")
    _common.write_section("a", "second\nline", path)
    text = path.read_text()
    assert "<!-- a:start -->\nsecond\nline\n<!-- a:end -->" in text
    assert "first" not in text
    assert "<!-- b:start -->\nother\n<!-- b:end -->" in text
    assert text.endswith("hand-written note\n")


class FakeClock:
    """Stands in for ``time`` in _common: each timed callable advances the wall and CPU clocks by chosen amounts."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def advance(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def test_time_interleaved_reports_medians_and_paired_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    # The durations are set through a fake clock, so every statistic is known exactly: no real timing is asserted.
    clock = FakeClock()
    monkeypatch.setattr(_common, "time", clock)
    # Per timed round (after one warm-up round): base takes 1, 4, 2 s and other 3, 4, 8 s of wall time. The paired
    # ratios are 3, 1, 4 (median 3), which differs from the ratio of the medians (4 / 2 = 2): the ratio must pair
    # each round's times. CPU time is half the wall time for base and a quarter for other.
    durations = {"base": [9.0, 1.0, 4.0, 2.0], "other": [9.0, 3.0, 4.0, 8.0]}
    cpu_share = {"base": 0.5, "other": 0.25}
    calls: list[str] = []

    def timed(name: str) -> Callable[[], None]:
        def run() -> None:
            wall = durations[name][sum(call == name for call in calls)]
            calls.append(name)
            clock.advance(wall, wall * cpu_share[name])

        return run

    result = _common.time_interleaved(
        {"base": timed("base"), "other": timed("other")}, warmup=1, repeats=3, baseline="base"
    )
    assert calls == ["base", "other", "base", "other", "other", "base", "base", "other"]  # rotated each round
    assert result == {
        "base": {"median_s": 2.0, "min_s": 1.0, "cpu_median_s": 1.0, "ratio": 1.0, "cpu_ratio": 1.0},
        "other": {"median_s": 4.0, "min_s": 3.0, "cpu_median_s": 1.0, "ratio": 3.0, "cpu_ratio": 1.5},
    }
    # Without a baseline there is no ratio to report.
    calls.clear()
    alone = _common.time_interleaved({"base": timed("base")}, warmup=1, repeats=3)
    assert alone == {"base": {"median_s": 2.0, "min_s": 1.0, "cpu_median_s": 1.0}}


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| -")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_bench_upsamplers_quick_writes_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "RESULTS.md"
    # channels_last rows are left out to save time; test_fuse.py checks channels_last outputs.
    assert bench_upsamplers.main(["--quick", "--quiet", "--no-channels-last", "--results", str(path)]) == 0
    text = path.read_text()
    assert "<!-- upsamplers-cpu:start -->" in text and "<!-- upsamplers-cpu:end -->" in text
    assert "QUICK MODE" in text and "torch 2" in text
    rows = _table_rows(text)
    upsamplers = {"nearest", "bilinear", *VARIANTS}
    assert {row[3] for row in rows[1:]} == upsamplers
    assert len(rows) - 1 == len(upsamplers) * 3 * 2  # 3 pyramid steps, float32 and bfloat16
    assert "| float32  | P3->P2" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_detectors_quick_writes_its_tables(tmp_path: Path) -> None:
    # One detector and the lite variant only, to stay fast (most of the time goes to building and patching).
    path = tmp_path / "RESULTS.md"
    argv = ["--quick", "--quiet", "--detectors", "maskrcnn", "--variants", "lite", "--no-memory"]
    assert bench_detectors.main([*argv, "--results", str(path)]) == 0
    text = path.read_text()
    assert "<!-- detectors-cpu-maskrcnn:start -->" in text
    rows = _table_rows(text)
    labels = [row[2] for row in rows if row[0] == "maskrcnn"]
    assert labels == ["unpatched", "patched lite", "unpatched", "patched lite"]  # inference, then training


def test_bench_detectors_memory_child_reports_a_peak() -> None:
    # The peak-memory measurement runs in a fresh process; check that round trip once, on the smallest setting.
    memory = bench_detectors._memory("fasterrcnn", "lite", (64, 96), "cpu", True)
    assert memory["peak_mib"] >= memory["before_mib"] > 0


def test_machine_load_measures_instead_of_asserting() -> None:
    # The load written next to every table is measured by the script: the lines report numbers, not a claim.
    with _common.MachineLoad() as load:
        sum(range(10000))
    lines = load.lines()
    assert lines[0].startswith("- machine load, measured by the script")
    assert "shared" not in " ".join(lines)
    cores = load.other_cores()
    assert cores is None or cores >= 0.0


def test_bench_backbone_fpn_quick_writes_its_table(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    assert bench_backbone_fpn.main(["--quick", "--results", str(path)]) == 0
    text = path.read_text()
    assert "<!-- backbone-fpn-cpu:start -->" in text and "QUICK MODE" in text
    assert "machine load, measured by the script" in text
    labels = [row[0] for row in _table_rows(text)[1:]]
    assert labels == ["unpatched", "lite (reference pass)", "lite", "paper", "DySample", "CARAFE"]


def test_bench_backbone_fpn_counts_the_peers_uncounted_flops_from_shapes() -> None:
    # FlopCounterMode sees neither CARAFE's multiply-adds nor DySample's grid_sample; the script adds them by hand:
    # a 5x7 map to 10x14 with 8 channels is 2 * 25 * 8 * 140 FLOPs for CARAFE (k_up = 5), 2 * 4 * 8 * 140 for DySample.
    x = torch.rand(1, 8, 5, 7)
    assert bench_backbone_fpn.uncounted_flops(torch.nn.Sequential(CARAFE(8)), (x,)) == 2 * 25 * 8 * 140
    assert bench_backbone_fpn.uncounted_flops(torch.nn.Sequential(CARAFE(8, k_up=3)), (x,)) == 2 * 9 * 8 * 140
    assert bench_backbone_fpn.uncounted_flops(torch.nn.Sequential(DySample(8), DySample(8)), (x,)) == (
        2 * 4 * 8 * 140 + 2 * 4 * 8 * 560
    )


def test_bench_generator_train_step_quick_writes_its_table(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    assert bench_generator_train_step.main(["--quick", "--results", str(path)]) == 0
    text = path.read_text()
    assert "<!-- generator-train-step:start -->" in text and "QUICK MODE" in text
    rows = _table_rows(text)[1:]
    assert [row[0] for row in rows] == ["lite", "paper, body 8", "paper, body 16"]
    assert rows[0][3] == "1.0"  # lite against itself


def test_bench_gpu_latency_runs_on_cpu_at_a_tiny_size(tmp_path: Path) -> None:
    # The GPU latency script is first run on a lent GPU, with no chance to debug there: this runs every part of it on
    # the CPU (perf_counter instead of CUDA events). bf16 stands in for fp16 through the same autocast code, since CPU
    # fp16 convolutions are about 10x slower than fp32; 16 fixed proposals instead of 1000 keep the heads cheap.
    import json

    import bench_gpu_latency

    path = tmp_path / "RESULTS.md"
    argv = ["--device", "cpu", "--size", "32x64", "--repeats", "2", "--warmup", "1", "--proposals", "16"]
    argv += ["--dtypes", "fp32", "bf16", "--out", str(tmp_path), "--results", str(path)]
    assert bench_gpu_latency.main(argv) == 0
    report = json.loads((tmp_path / "gpu_latency.json").read_text())
    assert report["timer"] == "time.perf_counter" and report["image"] == [32, 64]
    parts = ("backbone + FPN", "whole detector")
    expected = [(d, p, m) for d in ("fp32", "bf16") for p in parts for m in bench_gpu_latency.MODELS]
    assert [(r["dtype"], r["part"], r["model"]) for r in report["results"]] == expected
    for entry in report["results"]:
        assert len(entry["samples_ms"]) == 2
        assert entry["min_ms"] <= entry["q1_ms"] <= entry["median_ms"] <= entry["q3_ms"] <= entry["max_ms"]
        if entry["model"] == "unpatched":
            assert entry["ratio"] == 1.0
    # The fixed head workload: no box survives box_score_thresh=1.01, so no mask head work in any model.
    assert report["detections"] == {d: dict.fromkeys(bench_gpu_latency.MODELS, 0) for d in ("fp32", "bf16")}
    costs = report["costs"]
    assert costs["unpatched"]["generator_params"] == 0 < costs["lite"]["generator_params"]
    assert costs["lite"]["generator_params"] < costs["paper"]["generator_params"]
    assert {c["rpn_proposals"] for c in costs.values()} == {16}
    base_flops = costs["unpatched"]["backbone_fpn_flops"]
    assert all(c["backbone_fpn_flops"] > base_flops for name, c in costs.items() if name != "unpatched")
    # The same markdown goes to --out and to the gpu-latency section of the results file.
    markdown = (tmp_path / "gpu_latency.md").read_text()
    assert markdown.rstrip() in path.read_text() and "<!-- gpu-latency:start -->" in path.read_text()
    assert "CPU run, not a GPU measurement" in markdown and "### Params and FLOPs" in markdown
    assert [tuple(row[:3]) for row in _table_rows(markdown)[1:13]] == expected
