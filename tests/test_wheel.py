"""The wheel: built from this tree, it ships the generators only and loads them offline once installed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from srf_upsample.hub import CONFIG_NAME, SAFE_WEIGHTS_NAME
from srf_upsample.train import shipped

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
MAX_WHEEL_BYTES = 25 * 10**6  # issue 33: the generators only (about 19 MB), not the 39 MB detector

# Runs in the interpreter that imports the installed wheel: it reports where the package came from and loads every
# shipped generator by its short name, plus the detector that is not shipped, so the test can check all of it.
_INSTALLED_CHECK = """
import json, sys
import safetensors.torch, torch
import srf_upsample
from srf_upsample import SRFUpsample
from srf_upsample.hub import list_shipped, shipped_weights_dir
from srf_upsample.train.shipped import load_shipped_detector

weights = sys.argv[1]
report = {"file": srf_upsample.__file__, "weights_dir": str(shipped_weights_dir()), "shipped": list_shipped()}
report["loaded"] = {}
for name in list_shipped():
    model = SRFUpsample.from_pretrained(name)
    stored = safetensors.torch.load_file(f"{weights}/{name}/model.safetensors")
    state = model.state_dict()
    same = set(state) == set(stored) and all(torch.equal(state[k], stored[k].to(state[k].dtype)) for k in stored)
    out = model(torch.randn(1, model.in_channels, 5, 7), scale_factor=2.0)
    report["loaded"][name] = {"same_weights": same, "shape": list(out.shape), "training": model.training}
try:
    load_shipped_detector()
except ValueError as error:
    report["detector_error"] = str(error)
print(json.dumps(report))
"""


def _generator_folders() -> list[str]:
    return sorted(
        p.name for p in WEIGHTS.iterdir() if (p / CONFIG_NAME).is_file() and (p / SAFE_WEIGHTS_NAME).is_file()
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built offline from this tree with the backend already installed (the test extra brings hatchling), the same
    # backend `pip wheel .` uses with build isolation.
    pytest.importorskip("hatchling", reason='the build backend comes with the test extra: pip install -e ".[test]"')
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*command, "-w", str(out), str(ROOT)], check=True, capture_output=True, text=True)
    (path,) = out.glob("srf_upsample-*.whl")
    return path


def test_wheel_ships_the_generators_only(wheel: Path) -> None:
    assert wheel.stat().st_size <= MAX_WHEEL_BYTES, f"{wheel.name} is {wheel.stat().st_size / 1e6:.1f} MB"
    prefix = "srf_upsample/_shipped_weights/"
    with zipfile.ZipFile(wheel) as archive:
        shipped_files = {n.removeprefix(prefix): archive.read(n) for n in archive.namelist() if n.startswith(prefix)}
    # Every generator folder of weights/ ships, file for file and byte for byte; nothing else from weights/ does
    # (pyproject.toml lists the folders, so a new generator must be added there).
    expected = {
        f"{name}/{file.name}": file.read_bytes()
        for name in _generator_folders()
        for file in sorted((WEIGHTS / name).iterdir())
        if file.is_file()
    }
    assert sorted(shipped_files) == sorted(expected)
    assert {k: _sha256(v) for k, v in shipped_files.items()} == {k: _sha256(v) for k, v in expected.items()}
    assert not any(shipped.DEFAULT_DETECTOR in name for name in shipped_files)


def test_installed_wheel_loads_every_generator_offline(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target)]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, text=True)
    # A clean environment run from an empty folder: the wheel's copy of the package comes first on sys.path (ahead
    # of this venv's editable install of the checkout), the Hub is offline and its cache empty, so every name must
    # resolve from the wheel's own files. torch and the other dependencies come from this venv.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(target),
        "PYTHONNOUSERSITE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", _INSTALLED_CHECK, str(WEIGHTS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).is_relative_to(target), report["file"]
    assert Path(report["weights_dir"]) == target / "srf_upsample" / "_shipped_weights"
    assert report["shipped"] == _generator_folders() == ["srf-lite-mobilenetv2-fpn", "srf-paper-mobilenetv2-fpn"]
    for name in report["shipped"]:
        assert report["loaded"][name] == {"same_weights": True, "shape": [1, 256, 10, 14], "training": False}
    # The detector is not in the wheel: asking for it says where it ships and how to get it.
    assert "ships with the repository" in report["detector_error"]
    assert "github.com/srf-upsample/srf_upsample" in report["detector_error"]


def test_detector_outside_the_checkout_names_the_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An installed wheel's weights folder holds the generators only; in a checkout the name resolves (test_weights).
    monkeypatch.setattr(shipped, "shipped_weights_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match=r"ships with the repository, not with the installed package"):
        shipped.load_shipped_detector()
    # Another missing name keeps the plain message.
    with pytest.raises(ValueError, match=r"is not a detector folder"):
        shipped.load_shipped_detector("no-such-detector")
