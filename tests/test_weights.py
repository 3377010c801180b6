"""Every generator shipped in weights/ loads offline and beats nearest, bilinear and bicubic on a held-out photo."""

from pathlib import Path

import pytest
import torch

from srf_upsample import SRFUpsample, list_shipped
from srf_upsample.hub import shipped_weights_dir
from srf_upsample.train.data import read_image
from srf_upsample.train.fidelity import INTERPOLATIONS, feature_pairs, fidelity
from srf_upsample.train.shipped import DEFAULT_DETECTOR, load_shipped_extractor

HELDOUT = Path(__file__).parent / "data" / "heldout_tile.png"
SHIPPED = list_shipped()


def test_generators_are_shipped_small_and_documented():
    assert len(SHIPPED) >= 2, SHIPPED  # the paper generator and the lite generator
    for name in SHIPPED:
        folder = shipped_weights_dir() / name
        assert (folder / "model.safetensors").stat().st_size < 50 * 2**20
        card = (folder / "README.md").read_text()
        for required in ("license", "backbone", "levels", "steps"):
            assert required in card.lower(), (name, required)


@pytest.fixture(scope="module")
def heldout_features():
    image = read_image(HELDOUT)
    with torch.no_grad():
        return feature_pairs(load_shipped_extractor(DEFAULT_DETECTOR), image, ["0", "1", "2", "3"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_generator_beats_every_interpolation_on_a_heldout_photo(name, heldout_features):
    generator = SRFUpsample.from_pretrained(name)
    assert not generator.training
    low, target = heldout_features
    with torch.no_grad():
        ours = sum(level["L1"] for level in fidelity(lambda x, size: generator(x, size=size), low, target))
        fixed = {
            mode: sum(level["L1"] for level in fidelity(upsample, low, target))
            for mode, upsample in INTERPOLATIONS.items()
        }
    # The README claims the shipped generators beat nearest, bilinear and bicubic: Eq. (2)'s L1 summed over P2-P5
    # must be lower than each one's on an image no model was trained on.
    assert set(fixed) == {"nearest", "bilinear", "bicubic"}
    for mode, theirs in fixed.items():
        assert ours < theirs, (name, mode, ours, theirs)


def test_unknown_shipped_name_lists_the_shipped_ones(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="shipped"):
        SRFUpsample.from_pretrained("srf-does-not-exist")
