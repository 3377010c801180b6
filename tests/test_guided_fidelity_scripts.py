"""The scripts that measure generators on F's features feed a guided G its stage-1 guide, and never run it unguided.

bench_fidelity.py, bench_train_eval_gap.py and examples/deepforest/ship_weights.py (``fidelity_table``) measure a
guided G (``variant="guided"``) with, at P3-P5, the FPN lateral map of I_lr (``fidelity.guided_feature_pairs``), as
stage 1 trains it: with a non-zero guide branch their numbers are those of the guided pass, not of the unguided one.
The interpolations and the shipped lite generator keep their numbers. Where F has no FPN to hook, a ValueError names
the generator. One held-out 256 px tile and the shipped extractor: a few seconds per test.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from srf_upsample import SRFUpsample
from srf_upsample.train.fidelity import INTERPOLATIONS, feature_pairs, fidelity, guided_feature_pairs
from srf_upsample.train.pyramid import guide_sources
from srf_upsample.train.shipped import load_shipped_extractor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "examples" / "deepforest"))

import bench_fidelity  # noqa: E402
import bench_train_eval_gap  # noqa: E402
import ship_weights  # noqa: E402

IMAGES = REPO / "tests" / "data"
KEYS = ["0", "1", "2", "3"]
LITE = "srf-lite-mobilenetv2-fpn"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _guided_folder(path: Path, norm: str = "none") -> Path:
    """A saved 256-channel guided G whose guide branch (zero at init) and residual blocks are non-zero."""
    generator = SRFUpsample(256, variant="guided", norm=norm)
    with torch.no_grad():
        nn.init.normal_(generator.guide.modulation.weight, std=0.3)
        nn.init.uniform_(generator.guide.modulation.bias, -0.1, 0.1)
        for block in generator.body:
            nn.init.normal_(block.last_conv.weight, std=0.3)
    generator.save_pretrained(path)
    return path


def _pairs() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
    """(P_lr, P_tr, guides) of the held-out tile under the shipped F, as stage 1 computes them."""
    (image,) = bench_fidelity.load_images(IMAGES, None)
    return guided_feature_pairs(load_shipped_extractor(), image, KEYS, guide_sources(KEYS))


def _l1(generator: nn.Module, low, target, guides=None) -> list[float]:
    method = bench_fidelity.generator_method(generator)
    return [row["L1"] for row in fidelity(method, low, target, guides)]


def _table(text: str) -> dict[tuple[str, str], list[str]]:
    """``(method, level) -> [cells]`` of the markdown table in ``text``."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return {(row[0], row[1]): row[2:] for row in rows if len(row) > 2 and row[1] in ("P2", "P3", "P4", "P5", "mean")}


def test_bench_fidelity_feeds_a_guided_generator_its_guide(tmp_path, capsys):
    folder = str(_guided_folder(tmp_path / "guided"))
    argv = ["--quick", "--no-write", "--generator", LITE, "--generator", folder]
    assert bench_fidelity.main(argv) == 0
    table = _table(capsys.readouterr().out)
    low, target, guides = _pairs()
    generator = SRFUpsample.from_pretrained(folder).eval()
    with torch.no_grad():
        guided, unguided = _l1(generator, low, target, guides), _l1(generator, low, target)
        lite = _l1(SRFUpsample.from_pretrained(LITE).eval(), low, target)
    # The interpolations: measured on feature_pairs as before (the same P_lr and P_tr).
    (image,) = bench_fidelity.load_images(IMAGES, None)
    plain_low, plain_target = feature_pairs(load_shipped_extractor(), image, KEYS)
    bilinear = [row["L1"] for row in fidelity(INTERPOLATIONS["bilinear"], plain_low, plain_target)]
    for index, level in enumerate(("P2", "P3", "P4", "P5")):
        assert table[(folder, level)][0] == f"{guided[index]:.4f}"
        assert table[(LITE, level)][0] == f"{lite[index]:.4f}"  # the lite generator: measured as before
        assert table[("bilinear", level)][0] == f"{bilinear[index]:.4f}"
    # P2 is the FPN's finest level: no guide there, as in stage 1. P3-P5: the guided pass, not the unguided one.
    assert guided[0] == unguided[0]
    for index in (1, 2, 3):
        assert f"{guided[index]:.4f}" != f"{unguided[index]:.4f}"


def test_bench_fidelity_refuses_a_guided_generator_without_an_fpn(tmp_path, monkeypatch, capsys):
    folder = str(_guided_folder(tmp_path / "guided"))
    generator = SRFUpsample.from_pretrained(folder)
    with pytest.raises(ValueError, match=rf"generator {re.escape(repr(folder))} is a guided generator.*no fpn"):
        bench_fidelity.check_guided_generator(folder, generator, nn.Identity(), KEYS, "F")
    bench_fidelity.check_guided_generator(LITE, SRFUpsample.from_pretrained(LITE), nn.Identity(), KEYS, "F")
    # Through the command line: argparse's error (exit status 2) with the same message.
    no_fpn = nn.Identity()
    no_fpn.out_channels = 256
    monkeypatch.setattr(bench_fidelity, "load_extractor", lambda value: (no_fpn, KEYS, ["P2"] * 4, "no-fpn", None))
    with pytest.raises(SystemExit):
        bench_fidelity.main(["--quick", "--no-write", "--generator", folder])
    assert "is a guided generator" in capsys.readouterr().err


def test_bench_train_eval_gap_feeds_a_guided_generator_its_guide(tmp_path, capsys):
    # With BatchNorm the residual changes between the modes, and the guide's modulation scales that change.
    folder = str(_guided_folder(tmp_path / "guided", norm="batch"))
    assert bench_train_eval_gap.main(["--generator", folder, "--images", str(IMAGES)]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| guided ")]
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    low, target, guides = _pairs()
    generator = SRFUpsample.from_pretrained(folder)
    guided = bench_train_eval_gap.gaps(generator, low, target, guides)
    unguided = bench_train_eval_gap.gaps(generator, low, target)
    assert cells[2:6] == [f"{100 * gap:.1f} %" for gap in guided]
    # The BatchNorm mismatch of a fresh G dominates the gap, so the guide moves it by tenths of a point at P3 and by
    # points at P5: the printed row is the guided one, not the unguided one.
    assert cells[2:6] != [f"{100 * gap:.1f} %" for gap in unguided]
    assert guided[0] == unguided[0]  # P2: no guide, as in stage 1
    assert all(abs(guided[i] - unguided[i]) > 1e-4 for i in (1, 2, 3))
    assert "lateral map of I_lr as guide" in out


def test_bench_train_eval_gap_refuses_a_guided_generator_without_an_fpn(tmp_path, monkeypatch):
    folder = str(_guided_folder(tmp_path / "guided"))
    monkeypatch.setattr(bench_train_eval_gap, "load_shipped_extractor", lambda name: nn.Identity())
    with pytest.raises(ValueError, match=rf"generator {re.escape(repr(folder))} is a guided generator.*no fpn"):
        bench_train_eval_gap.main(["--generator", folder, "--images", str(IMAGES)])


def test_ship_weights_fidelity_table_feeds_a_guided_generator_its_guide(tmp_path):
    folder = _guided_folder(tmp_path / "guided")
    _, means = ship_weights.fidelity_table(IMAGES, {"lite": ship_weights.WEIGHTS / LITE, "guided": folder})
    low, target, guides = _pairs()
    generator = SRFUpsample.from_pretrained(folder).eval()
    with torch.no_grad():
        guided, unguided = _l1(generator, low, target, guides), _l1(generator, low, target)
        lite = _l1(SRFUpsample.from_pretrained(LITE).eval(), low, target)
    assert means["SRF guided"] == pytest.approx(guided, abs=0, rel=1e-12)
    assert means["SRF lite"] == pytest.approx(lite, abs=0, rel=1e-12)
    assert means["SRF guided"][0] == unguided[0]
    assert all(abs(means["SRF guided"][i] - unguided[i]) > 1e-4 for i in (1, 2, 3))


def test_ship_weights_fidelity_table_refuses_a_guided_generator_without_an_fpn(tmp_path, monkeypatch):
    folder = _guided_folder(tmp_path / "guided")
    monkeypatch.setattr(ship_weights, "load_shipped_extractor", lambda path: nn.Identity())
    with pytest.raises(ValueError, match=r"is a guided generator.*which has none"):
        ship_weights.fidelity_table(IMAGES, {"guided": folder})
