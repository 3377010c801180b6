"""One name per upsampler: the registry, and the name accepted by patch_fpn and the experiment's baseline stage."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import detection

from srf_upsample import CARAFE, DySample, SRFUpsample, build_upsampler, list_shipped, list_upsamplers, patch_fpn
from srf_upsample.train.models import CARAFE_INACTIVE_WEIGHT, start_carafe_as_bilinear
from srf_upsample.train.stage_configs import build_config

BUILT_IN = ["carafe", "dysample", "srf-paper", "srf-lite", "srf-guided"]
# What each built-in name builds: the class and, for the generators, the variant.
EXPECTED = {
    "carafe": (CARAFE, None),
    "dysample": (DySample, None),
    "srf-paper": (SRFUpsample, "paper"),
    "srf-lite": (SRFUpsample, "lite"),
    "srf-guided": (SRFUpsample, "guided"),
}
SHIPPED = "srf-lite-mobilenetv2-fpn"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def maskrcnn() -> nn.Module:
    """A small-input torchvision Mask R-CNN (random weights), built once; each test patches its own deep copy.

    Few proposals and detections: the box and mask heads on torchvision's 1000 / 100 would take most of the time.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return detection.maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            min_size=64,
            max_size=96,
            rpn_pre_nms_top_n_test=8,
            rpn_post_nms_top_n_test=8,
            box_detections_per_img=2,
        ).eval()


def test_list_upsamplers_names_every_upsampler_with_one_line() -> None:
    names = list_upsamplers()
    assert list(names) == [*BUILT_IN, *list_shipped()]
    assert SHIPPED in names and names[SHIPPED].startswith("shipped SRFUpsample, variant 'lite', 256 channels")
    lines = str(names).splitlines()
    assert [line.split()[0] for line in lines] == list(names)
    assert all(summary and "\n" not in summary for summary in names.values())


@pytest.mark.parametrize("name", BUILT_IN)
def test_build_upsampler_builds_the_named_module(name) -> None:
    cls, variant = EXPECTED[name]
    module = build_upsampler(name, 16)
    assert type(module) is cls and module.in_channels == 16 and module.training
    if variant is not None:
        assert module.variant == variant
    assert module(torch.rand(2, 16, 5, 7), size=(9, 13)).shape == (2, 16, 9, 13)


def test_build_upsampler_shipped_name_loads_the_shipped_weights() -> None:
    module = build_upsampler(SHIPPED, 256)
    reference = SRFUpsample.from_pretrained(SHIPPED)
    assert module.variant == "lite" and module.training
    state = module.state_dict()
    assert all(torch.equal(state[key], value) for key, value in reference.state_dict().items())
    with pytest.raises(ValueError, match=rf"'{SHIPPED}' takes 256-channel maps, got channels=128; .*'srf-lite'"):
        build_upsampler(SHIPPED, 128)


def test_unknown_name_lists_the_known_ones() -> None:
    known = str([*BUILT_IN, *list_shipped()])
    with pytest.raises(ValueError, match=rf"Unknown upsampler 'carafe2'; the known names are {re.escape(known)}"):
        build_upsampler("carafe2", 8)
    with pytest.raises(ValueError, match=r"Unknown upsampler 'bilinear'; the known names are \['carafe'"):
        patch_fpn(nn.Conv2d(3, 3, 1), "bilinear")
    with pytest.raises(TypeError, match="name must be a str such as 'carafe', got 3 of type int"):
        build_upsampler(3, 8)
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        build_upsampler("dysample", 0)


@pytest.mark.parametrize("name", [*BUILT_IN, SHIPPED])
def test_patch_fpn_by_name_replaces_the_three_fpn_sites_of_mask_rcnn(maskrcnn, name) -> None:
    model = copy.deepcopy(maskrcnn)
    model, report = patch_fpn(model, name)
    assert [site.module_path for site in report.replaced] == ["backbone.fpn"] * 3
    cls, variant = EXPECTED.get(name, (SRFUpsample, "lite"))
    upsamplers = {site.upsampler for site in report.replaced}
    assert upsamplers == {"srf_upsampler_c256"}  # shared per channel count (the default)
    module = model.backbone.fpn.srf_upsampler_c256
    assert type(module) is cls and getattr(module, "variant", None) == variant
    # The guide goes where the module can take one: the guided generator gets each site's lateral map.
    assert len(report.guided) == (3 if name == "srf-guided" else 0)
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 96)])
    assert len(detections) == 1 and "masks" in detections[0]


def test_guide_wiring_keys_on_the_accepts_guide_capability() -> None:
    # Not on SRFUpsample: any module whose accepts_guide is true gets guide= (the map its output is added to).
    from torchvision.ops import FeaturePyramidNetwork

    class GuidedNearest(nn.Module):
        accepts_guide = True

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.in_channels = channels
            self.guides: list[tuple[int, ...]] = []

        def forward(self, x, size=None, scale_factor=None, guide=None):
            self.guides.append(None if guide is None else tuple(guide.shape))
            return F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")

    fpn, report = patch_fpn(FeaturePyramidNetwork([8, 16], 8), GuidedNearest)
    assert len(report.guided) == 1
    module = fpn.srf_upsampler_c8
    module.guides.clear()
    fpn({"0": torch.rand(2, 8, 17, 25), "1": torch.rand(2, 16, 9, 13)})
    assert module.guides == [(2, 8, 17, 25)]


def test_carafe_arm_starts_as_bilinear_interpolation() -> None:
    module = start_carafe_as_bilinear(CARAFE(8))
    x = torch.randn(2, 8, 9, 11)
    kernels = module.kernels(x)
    # Content-independent kernels: phase (a, b) of the 5x5 tap grid, centre (2, 2), weights 9/16, 3/16, 3/16, 1/16
    # on the 2x2 neighbourhood towards the phase, CARAFE_INACTIVE_WEIGHT elsewhere, normalised (computed by hand).
    total = 1 + 21 * CARAFE_INACTIVE_WEIGHT
    phase0 = torch.full((5, 5), CARAFE_INACTIVE_WEIGHT)
    phase0[1:3, 1:3] = torch.tensor([[1 / 16, 3 / 16], [3 / 16, 9 / 16]])
    torch.testing.assert_close(kernels[0, :, 0, 4, 5].reshape(5, 5), phase0 / total)  # phase (0, 0): up and left
    torch.testing.assert_close(kernels[1, :, 3, 0, 0].reshape(5, 5), phase0.flip(0, 1) / total)  # (1, 1): down, right
    # Away from the zero-padded border it is bilinear interpolation to within the inactive taps' share (~2 %).
    out = module(x)
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert (out - bilinear)[inner].abs().max() <= 2 * 21 * CARAFE_INACTIVE_WEIGHT * x.abs().max()


def test_baseline_stage_builds_one_upsampler_per_site_by_name() -> None:
    # The experiment's DySample and CARAFE arms: the baseline stage with upsampler=<name>, through the registry.
    from srf_upsample.train.stages import Baseline

    config = build_config(
        "baseline",
        {
            "data_root": "unused",
            "ann_file": "unused.json",
            "output_dir": "unused",
            "device": "cpu",
            "upsampler": "carafe",
            "detector": "fasterrcnn",
            "backbone": "resnet18",
            "min_size": 64,
            "max_size": 96,
        },
    )
    modules = Baseline(config).build(num_classes=2)
    carafes = [m for m in modules.modules["detector"].modules() if isinstance(m, CARAFE)]
    assert len(carafes) == 3  # one per FPN site, as in the CARAFE paper
    assert all(not m.encoder.weight.any() for m in carafes)  # the bilinear start
    with pytest.raises(ValueError, match=r"upsampler must be one of \['interpolate', 'dysample', 'carafe'\]"):
        build_config("baseline", {"data_root": "x", "ann_file": "x.json", "output_dir": "x", "upsampler": "srf-lite"})
