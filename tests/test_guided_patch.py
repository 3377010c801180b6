"""patch_fpn wires the guide of a guided generator by itself: FPN adds, PANet concats, the run-time fallback, export."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from _helpers import backbone_parity, generator_parity
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from srf_upsample import SRFUpsample, patch_fpn

GUIDED = functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1, variant="guided")
LITE = functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1, variant="lite")
FEATURES = {"0": (8, 17, 25), "1": (16, 9, 13), "2": (32, 5, 7)}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _features(batch: int = 2) -> dict[str, torch.Tensor]:
    return {key: torch.rand(batch, *shape) for key, shape in FEATURES.items()}


def _give_guide_weights(module: nn.Module) -> None:
    with torch.no_grad():
        for up in (m for m in module.modules() if isinstance(m, SRFUpsample)):
            if up.accepts_guide:
                nn.init.normal_(up.guide.modulation.weight, std=0.3)
            for block in up.body:
                nn.init.normal_(block.last_conv.weight, std=0.3)


def _fpn_pair() -> tuple[nn.Module, nn.Module, object]:
    """The same FPN patched with a guided and with a lite generator sharing the trunk weights."""
    fpn = FeaturePyramidNetwork([8, 16, 32], 8)
    guided, report = patch_fpn(copy.deepcopy(fpn), GUIDED)
    lite, _ = patch_fpn(copy.deepcopy(fpn), LITE)
    _give_guide_weights(lite)
    guided.srf_upsampler_c8.load_state_dict(lite.srf_upsampler_c8.state_dict(), strict=False)
    return guided, lite, report


def test_fpn_adds_get_the_lateral_map_as_guide():
    guided, lite, report = _fpn_pair()
    # Both top-down sites of the 3-level FPN: the guide is the lateral 1x1 conv of the level it is added to.
    assert [site.guide for site in report.guided] == ["inner_blocks_1_0", "inner_blocks_0_0"]
    assert [site.guide_via for site in report.guided] == ["add", "add"]
    assert report.to_dict()["num_guided"] == 2
    assert "guided by inner_blocks_1_0 (add)" in str(report)
    features = _features()
    # At init the guide branch is the identity: the guided FPN computes what the lite FPN computes.
    for key, value in lite(features).items():
        torch.testing.assert_close(guided(features)[key], value)
    _give_guide_weights(guided)
    out, reference = guided(features), lite(features)
    assert not torch.allclose(out["0"], reference["0"], atol=1e-4)  # the guide changed the two finer levels
    torch.testing.assert_close(out["2"], reference["2"])  # the coarsest level has no upsampling before it


def test_guided_fpn_trains_the_guide_branch_and_keeps_mode():
    fpn = FeaturePyramidNetwork([8, 16, 32], 8).train()
    fpn, report = patch_fpn(fpn, GUIDED)
    assert fpn.training and len(report.guided) == 2
    _give_guide_weights(fpn)
    sum(v.square().mean() for v in fpn(_features()).values()).backward()
    assert fpn.srf_upsampler_c8.guide.project.weight.grad.abs().sum() > 0


def test_unguided_upsamplers_report_no_guide():
    _, report = patch_fpn(FeaturePyramidNetwork([8, 16, 32], 8), LITE)
    assert not report.guided and all(site.guide is None and not site.guide_reason for site in report.sites)
    assert "guided" not in str(report)


class TinyPANet(nn.Module):
    """A PANet / YOLO-like top-down path: upsample, concat with the finer backbone map, fuse with a 1x1 conv."""

    def __init__(self, late_skip: bool = False) -> None:
        super().__init__()
        self.late_skip = late_skip
        self.skip = nn.Conv2d(4, 4, 1)
        self.fuse = nn.Conv2d(8 + 4, 8, 1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
        # late_skip: the concatenated map is computed after the upsampling call in the graph.
        skip = self.skip(fine) if self.late_skip else fine
        return self.fuse(torch.cat([up, skip], 1))


@pytest.mark.parametrize("late_skip", [False, True])
def test_concat_neck_gets_the_skip_map_as_guide(late_skip):
    neck = TinyPANet(late_skip)
    example = (torch.rand(2, 4, 10, 14), torch.rand(2, 8, 5, 7))
    reference = neck(*example)
    patched, report = patch_fpn(neck, functools.partial(GUIDED, guide_channels=4), example_inputs=example)
    (site,) = report.replaced
    assert site.guide == ("skip" if late_skip else "fine") and site.guide_via == "cat"
    _give_guide_weights(patched)
    out = patched(*example)
    assert out.shape == reference.shape
    skip = patched.skip(example[0]) if late_skip else example[0]
    unguided = patched.fuse(torch.cat([patched.srf_upsampler_c8(example[1], scale_factor=2.0), skip], 1))
    guided = patched.fuse(torch.cat([patched.srf_upsampler_c8(example[1], guide=skip), skip], 1))
    torch.testing.assert_close(out, guided)
    assert not torch.allclose(out, unguided, atol=1e-4)
    patched(torch.rand(1, 4, 12, 18), torch.rand(1, 8, 6, 9))  # another size


def test_concat_guide_with_other_channels_falls_back_to_the_unguided_pass():
    neck = TinyPANet()
    example = (torch.rand(2, 4, 10, 14), torch.rand(2, 8, 5, 7))
    patched, report = patch_fpn(neck, GUIDED, example_inputs=example)  # guide_channels defaults to 8, the map has 4
    (site,) = report.replaced
    assert site.guide is None and "has 4 channels but srf_upsampler_c8 takes guide_channels=8" in site.guide_reason
    assert "unguided: the map it meets in cat has 4 channels" in str(report)
    assert patched(*example).shape == (2, 8, 10, 14)


class NoConsumer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0).relu()


def test_site_without_a_same_size_map_runs_unguided():
    _, report = patch_fpn(NoConsumer(), GUIDED, example_inputs=(torch.rand(2, 8, 5, 7),))
    (site,) = report.replaced
    assert site.guide is None and site.guide_reason == "its output meets no same-size map in an add or a channel concat"


class DataDependent(nn.Module):
    """fx cannot trace it (a branch on tensor values): its nn.Upsample is swapped and runs unguided."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2.0)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        if coarse.sum() > -1e9:
            return fine + self.up(coarse)
        return fine


def test_runtime_fallback_reports_unguided_sites():
    example = (torch.rand(2, 8, 10, 14), torch.rand(2, 8, 5, 7))
    patched, report = patch_fpn(DataDependent(), GUIDED, example_inputs=example)
    (site,) = report.replaced
    assert site.method == "module" and site.guide is None and "patched without fx" in site.guide_reason
    assert "unguided: patched without fx" in str(report)
    assert patched(*example).shape == (2, 8, 10, 14)


class TinyBackbone(nn.Module):
    """Three strided conv levels and a torchvision FPN, the shape of a detector's ``backbone``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.ModuleList([nn.Conv2d(3, 8, 3, 4, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1)])
        self.fpn = FeaturePyramidNetwork([8, 16, 32], 8)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, x = {}, images
        for index, layer in enumerate(self.body):
            x = layer(x).relu()
            features[str(index)] = x
        return self.fpn(features)


def test_patched_guided_backbone_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from srf_upsample.export import export_backbone

    model = TinyBackbone().eval()
    model, report = patch_fpn(model, GUIDED, example_inputs=(torch.rand(2, 3, 64, 64),))
    assert len(report.guided) == 2
    _give_guide_weights(model)
    path = export_backbone(model, tmp_path / "backbone.onnx", image_size=(64, 64))
    # Dynamic H/W: the graph exported at 64x64 runs an odd, non-square image with the guides wired.
    backbone_parity(model, path, image_size=(72, 57))


def test_guided_generator_exports_to_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from srf_upsample.export import export_generator

    up = GUIDED(8, guide_channels=5)
    _give_guide_weights(up)
    path = export_generator(up, tmp_path / "guided.onnx")
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x", "guide"]
    generator_parity(up, path, sizes=(((17, 25), (33, 49)), ((6, 11), (12, 20))))


class AddForms(nn.Module):
    """torch.add with the lateral map, and a sum with a map computed from the upsampled one (no guide there)."""

    def __init__(self) -> None:
        super().__init__()
        self.lateral = nn.Conv2d(4, 8, 1)
        self.smooth = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        merged = torch.add(F.interpolate(coarse, size=fine.shape[-2:]), self.lateral(fine))
        up = F.interpolate(merged, scale_factor=2.0)
        return merged, up + self.smooth(up)


def test_torch_add_is_guided_and_a_self_derived_map_is_not():
    example = (torch.rand(2, 4, 10, 14), torch.rand(2, 8, 5, 7))
    patched, report = patch_fpn(AddForms(), GUIDED, example_inputs=example)
    first, second = report.replaced
    assert first.guide == "lateral" and first.guide_via == "add"
    assert second.guide is None and "is computed from the upsampled map itself" in second.guide_reason
    assert [tuple(out.shape) for out in patched(*example)] == [(2, 8, 10, 14), (2, 8, 20, 28)]
