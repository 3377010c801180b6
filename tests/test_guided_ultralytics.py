"""The guided generator in ultralytics necks: patched by swapping nn.Upsample, so it runs (and is reported) unguided."""

from __future__ import annotations

import functools
import os
import tempfile

import pytest
import torch

# As in tests/test_ultralytics.py: no network checks, no pip auto-install, settings in a throw-away folder.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_config_"))
ultralytics = pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402

from srf_upsample import SRFUpsample  # noqa: E402
from srf_upsample.integrations.ultralytics import use_srf  # noqa: E402

GUIDED = functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1, variant="guided")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_environ():
    """Put os.environ back as it was: ``YOLO(...)`` sets CUBLAS_WORKSPACE_CONFIG for good."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_use_srf_with_the_guided_variant_runs_unguided_and_says_so() -> None:
    model = use_srf(YOLO("yolov8n.yaml"), GUIDED)
    report = model.srf_report
    assert len(report.replaced) == 2 and not report.guided
    assert all("patched without fx" in site.guide_reason for site in report.replaced)
    network = model.model.eval()
    with torch.no_grad():
        network(torch.rand(1, 3, 64, 96))
