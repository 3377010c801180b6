"""The DeepForest reproduction (examples/deepforest/run.py --quick) end to end: every stage of the paper's protocol
runs through the bundled trainer on the real annotated tiles, writes and reloads its checkpoints, and the AP table is
built from pycocotools' output. No assertion on AP values (a few iterations)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srf_upsample import SRFUpsample

REPO = Path(__file__).resolve().parents[1]
CACHE = os.environ.get("SRF_UPSAMPLE_DATA_CACHE")


@pytest.mark.slow
@pytest.mark.skipif(
    not CACHE or not list(Path(CACHE, "deepforest").glob("deepforest-2.1.0-*.whl")),
    reason="needs the deepforest and mobilenet wheels pre-fetched into $SRF_UPSAMPLE_DATA_CACHE (.ci/run does it)",
)
def test_quick_reproduction_runs_every_stage(tmp_path):
    work = tmp_path / "work"
    command = [sys.executable, str(REPO / "examples/deepforest/run.py"), "--quick", "--work-dir", str(work),
               "--cache-dir", CACHE, "--no-results"]
    subprocess.run(command, check=True, cwd=REPO, timeout=900)
    seed = work / "seed0"
    stages = ["baseline"] + [f"srf_{v}/stage{i}" for v in ("paper", "lite") for i in (1, 2, 3)]
    for stage in stages:
        manifest = json.loads((seed / stage / "manifest.json").read_text())
        assert manifest["finished"], stage
        assert (seed / stage / "checkpoint.safetensors").stat().st_size > 0, stage
    for variant in ("paper", "lite"):
        for stage in (1, 2, 3):
            generator = SRFUpsample.from_pretrained(seed / f"srf_{variant}" / f"stage{stage}" / "generator")
            assert generator.variant == variant
    results = json.loads((work / "results.json").read_text())
    for arm, stage in {"baseline": "baseline", "srf_paper": "srf_paper/stage3", "srf_lite": "srf_lite/stage3"}.items():
        metrics = json.loads((seed / stage / "metrics.json").read_text())
        assert results["per_seed"]["0"][arm] == metrics
        assert results["table"][arm]["AP"][0] == pytest.approx(100 * metrics["bbox"]["AP"])
    assert "| srf_lite |" in (work / "results.md").read_text()
    assert (work / "detections.png").stat().st_size > 0
