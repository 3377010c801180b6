from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from _helpers import SMALL_SRF, NearestUpsample
from torch import fx, nn
from torchvision.models import detection
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from srf_upsample import SRFUpsample
from srf_upsample.patch import PatchReport, PatchSite, patch_fpn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def assert_tree_equal(actual, expected) -> None:
    flat_actual, spec_actual = torch.utils._pytree.tree_flatten(actual)
    flat_expected, spec_expected = torch.utils._pytree.tree_flatten(expected)
    assert spec_actual == spec_expected
    for a, e in zip(flat_actual, flat_expected, strict=True):
        if isinstance(e, torch.Tensor):
            torch.testing.assert_close(a, e, rtol=0, atol=0)
        else:
            assert a == e


# ---------------------------------------------------------------------------------------------------------------
# Toy necks in the styles real libraries use


class ConvBlock(nn.Module):
    """A helper fx cannot trace (data-dependent Python control flow on shapes), but with no upsampling inside."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError("bad channels")
        return F.relu(self.conv(x))


class PANet(nn.Module):
    """YOLO/mmdet style PAN: one shared nn.Upsample called at two sites with different channels, concat fusion."""

    def __init__(self, channels: tuple[int, int, int] = (4, 8, 16)) -> None:
        super().__init__()
        c3, c4, c5 = channels
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = ConvBlock(c5 + c4, c4)
        self.top_down3 = ConvBlock(c4 + c3, c3)
        self.down3 = ConvBlock(c3, c3, stride=2)
        self.bottom_up4 = ConvBlock(c3 + c4, c4)
        self.down4 = ConvBlock(c4, c4, stride=2)
        self.bottom_up5 = ConvBlock(c4 + c5, c5)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3, p4, p5 = feats
        t4 = self.top_down4(torch.cat([self.up(p5), p4], dim=1))  # 16 channels upsampled
        t3 = self.top_down3(torch.cat([self.up(t4), p3], dim=1))  # 8 channels upsampled
        b4 = self.bottom_up4(torch.cat([self.down3(t3), t4], dim=1))
        b5 = self.bottom_up5(torch.cat([self.down4(b4), p5], dim=1))
        return t3, b4, b5


class WeightedFusion(nn.Module):
    """BiFPN fast normalized fusion (EfficientDet): relu weights, divided by their sum."""

    def __init__(self, num_inputs: int, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        weight = F.relu(self.weight)
        weight = weight / (weight.sum() + 1e-4)
        return self.conv(sum(w * x for w, x in zip(weight, inputs, strict=True)))


class BiFPNLayer(nn.Module):
    """effdet style BiFPN layer on a dict of three levels with the same channels."""

    def __init__(self, channels: int = 8, constant_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.constant_size = constant_size
        self.fuse4_td = WeightedFusion(2, channels)
        self.fuse3_out = WeightedFusion(2, channels)
        self.fuse4_out = WeightedFusion(3, channels)
        self.fuse5_out = WeightedFusion(2, channels)

    def forward(self, feats: dict[str, torch.Tensor], use_pool: bool = True) -> dict[str, torch.Tensor]:
        p3, p4, p5 = feats["p3"], feats["p4"], feats["p5"]
        up5 = F.interpolate(p5, size=p4.shape[-2:], mode="nearest")  # size from runtime shapes
        td4 = self.fuse4_td([p4, up5])
        size = self.constant_size if self.constant_size is not None else p3.shape[-2:]
        up4 = F.interpolate(td4, size, None, "nearest")  # positional arguments
        out3 = self.fuse3_out([p3, up4])
        down3 = F.max_pool2d(out3, 3, 2, 1) if use_pool else F.interpolate(out3, size=p4.shape[-2:])
        out4 = self.fuse4_out([p4, td4, down3])
        down4 = F.interpolate(out4, size=p5.shape[-2:], mode="nearest")  # downsampling: left alone
        out5 = self.fuse5_out([p5, down4])
        return {"p3": out3, "p4": out4, "p5": out5}


class BiFPN(nn.Module):
    def __init__(self, channels: int = 8, constant_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList([BiFPNLayer(channels, constant_size), BiFPNLayer(channels, constant_size)])

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for layer in self.layers:
            feats = layer(feats)
        return feats


class MixedSites(nn.Module):
    """Every flavour of call site, including ones that must be left alone, on a tuple input."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.bilinear = nn.UpsamplingBilinear2d(scale_factor=2)  # an nn.Upsample subclass

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        low, high = feats
        a = F.interpolate(low, scale_factor=2.0, mode="nearest")
        b = F.upsample_nearest(low, size=(high.shape[-2], high.shape[-1]))
        c = torch.nn.functional.interpolate(high, scale_factor=0.5)  # downsampling
        d = F.interpolate(high, size=high.shape[-2:])  # same size
        pooled = F.adaptive_avg_pool2d(high, 1)
        e = F.interpolate(pooled, size=high.shape[-2:], mode="nearest")  # broadcast from 1x1
        f = self.bilinear(self.conv(low))
        return a + b + F.interpolate(c, size=high.shape[-2:]) + d + e + f


def panet_inputs(scale: int = 1) -> list[torch.Tensor]:
    sizes = ((4, 16, 24), (8, 8, 12), (16, 4, 6))
    return [torch.rand(2, c, h * scale, w * scale) for c, h, w in sizes]


def bifpn_inputs(height: int = 16, width: int = 24) -> dict[str, torch.Tensor]:
    return {
        "p3": torch.rand(2, 8, height, width),
        "p4": torch.rand(2, 8, (height + 1) // 2, (width + 1) // 2),
        "p5": torch.rand(2, 8, (height + 3) // 4, (width + 3) // 4),
    }


def fpn_inputs(sizes=((16, 24), (8, 12), (4, 6))) -> dict[str, torch.Tensor]:
    return {str(i): torch.rand(2, c, h, w) for i, (c, (h, w)) in enumerate(zip((4, 8, 16), sizes, strict=True))}


def sites_by_action(report: PatchReport) -> tuple[list[str], list[str]]:
    return [site.node for site in report.replaced], [site.node for site in report.skipped]


# ---------------------------------------------------------------------------------------------------------------
# General case


def test_fpn_forward_equal_with_nearest_reference() -> None:
    fpn = FeaturePyramidNetwork([4, 8, 16], 8, extra_blocks=LastLevelMaxPool()).eval()
    inputs = fpn_inputs()
    expected = fpn(inputs)
    keys = set(fpn.state_dict())
    patched, report = patch_fpn(fpn, NearestUpsample, example_inputs=(inputs,))
    assert isinstance(patched, fx.GraphModule) and type(patched).__name__ == "FeaturePyramidNetwork"
    assert [site.node for site in report.replaced] == ["interpolate", "interpolate_1"]
    assert all(site.is_size_dynamic and site.mode == "nearest" for site in report.sites)
    assert [site.in_channels for site in report.replaced] == [8, 8]
    assert report.replaced[0].input_shape == (2, 8, 4, 6) and report.replaced[0].output_shape == (2, 8, 8, 12)
    assert keys <= set(patched.state_dict())
    assert_tree_equal(patched(inputs), expected)


def test_fpn_odd_sizes_and_other_sizes_than_traced() -> None:
    fpn = FeaturePyramidNetwork([4, 8, 16], 8)
    patched, report = patch_fpn(fpn, SMALL_SRF, example_inputs=(fpn_inputs(),))
    assert len(report.replaced) == 2
    # Strides 4, 8, 16 of a 513x769 image: the runtime sizes stay in the graph, so odd targets are met exactly.
    odd = fpn_inputs(((129, 193), (65, 97), (33, 49)))
    out = patched(odd)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(129, 193), (65, 97), (33, 49)]


def test_panet_shared_upsample_replaced_per_call_site() -> None:
    neck = PANet().eval()
    inputs = panet_inputs()
    expected = neck(inputs)
    patched, report = patch_fpn(neck, NearestUpsample, example_inputs=(inputs,))
    # One nn.Upsample called at two sites with 16 and 8 channels: two replacements, one per channel count.
    assert [(site.kind, site.target, site.in_channels) for site in report.replaced] == [
        ("nn.Upsample", "up", 16),
        ("nn.Upsample", "up", 8),
    ]
    assert [site.upsampler for site in report.replaced] == ["srf_upsampler_c16", "srf_upsampler_c8"]
    assert_tree_equal(patched(inputs), expected)
    # ConvBlock cannot be traced; it holds no upsampling, so it became a leaf by default.
    assert any(node.op == "call_module" and node.target == "top_down4" for node in patched.graph.nodes)
    out = patched(panet_inputs(scale=2))
    assert out[0].shape == (2, 4, 32, 48)


def test_panet_srf_backward_reaches_generator() -> None:
    patched, report = patch_fpn(PANet(), SMALL_SRF, example_inputs=(panet_inputs(),))
    assert patched.training
    patched.double()
    generators = [patched.get_submodule(name) for name in ("srf_upsampler_c16", "srf_upsampler_c8")]
    assert all(isinstance(generator, SRFUpsample) for generator in generators)
    with torch.no_grad():  # a fresh generator's zero convs (tail, last conv of each block) zero other gradients
        for param in (p for generator in generators for p in generator.parameters() if not p.any()):
            param.normal_(0.0, 0.1)
    inputs = [x.double() for x in panet_inputs()]

    def loss() -> torch.Tensor:
        return sum(out.square().mean() for out in patched(inputs))

    loss().backward()
    for generator in generators:
        for name, param in generator.named_parameters():
            assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
        # The gradient is the loss's true derivative: a central difference on one weight of the last conv agrees.
        weight = generator.tail.weight
        step = 1e-4
        with torch.no_grad():
            original = weight.view(-1)[0].item()
            weight.view(-1)[0] = original + step
            plus = loss().item()
            weight.view(-1)[0] = original - step
            minus = loss().item()
            weight.view(-1)[0] = original
        assert weight.grad.view(-1)[0].item() == pytest.approx((plus - minus) / (2 * step), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("constant_size", [None, (16, 24)])
def test_bifpn_weighted_fusion(constant_size) -> None:
    neck = BiFPN(constant_size=constant_size).eval()
    inputs = bifpn_inputs()
    expected = neck(inputs)
    patched, report = patch_fpn(neck, NearestUpsample, example_inputs=inputs)
    assert patched is neck  # the traced submodules are the two layers, swapped in place
    assert [site.module_path for site in report.replaced] == ["layers.0", "layers.0", "layers.1", "layers.1"]
    assert [site.is_size_dynamic for site in report.replaced] == [True, constant_size is None] * 2
    assert [site.reason for site in report.skipped] == ["downsampling", "downsampling"]
    assert type(neck.layers[0]).__name__ == "BiFPNLayer"
    assert_tree_equal(patched(inputs), expected)


def test_bifpn_odd_input_sizes() -> None:
    neck = BiFPN()
    patched, _ = patch_fpn(neck, SMALL_SRF, example_inputs=bifpn_inputs())
    out = patched(bifpn_inputs(17, 25))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(17, 25), (9, 13), (5, 7)]


@pytest.mark.filterwarnings("ignore:`nn.functional.upsample_nearest` is deprecated")
def test_mixed_sites_reported_and_only_enlargements_replaced() -> None:
    model = MixedSites().eval()
    inputs = (torch.rand(2, 4, 5, 7), torch.rand(2, 4, 10, 14))
    expected = model(inputs)
    patched, report = patch_fpn(model, NearestUpsample, example_inputs=(inputs,))
    replaced = {site.node: site for site in report.replaced}
    skipped = {site.node: site.reason for site in report.skipped}
    assert set(replaced) == {"interpolate", "upsample_nearest", "bilinear", "interpolate_4"}
    assert replaced["upsample_nearest"].kind == "F.upsample_nearest"
    assert replaced["bilinear"].kind == "nn.Upsample (UpsamplingBilinear2d)"
    assert replaced["bilinear"].mode == "bilinear" and replaced["bilinear"].align_corners is True
    assert replaced["interpolate"].scale_factor == 2.0
    assert skipped == {
        "interpolate_1": "downsampling",
        "interpolate_2": "same-size resize",
        "interpolate_3": "broadcast from a 1x1 map (e.g. global pooling), not an enlargement",
    }
    # NearestUpsample computes what a nearest call computes, so the patched model equals the original with the
    # bilinear site (replaced too) computed by nearest instead; the skipped sites still run their own calls.
    low, high = inputs
    a = F.interpolate(low, scale_factor=2.0, mode="nearest")
    b = F.interpolate(low, size=high.shape[-2:], mode="nearest")
    c = F.interpolate(F.interpolate(high, scale_factor=0.5), size=high.shape[-2:])
    e = F.adaptive_avg_pool2d(high, 1).expand_as(high)
    f = F.interpolate(model.conv(low), scale_factor=2.0, mode="nearest")
    out = patched(inputs)
    torch.testing.assert_close(out, a + b + c + high + e + f, rtol=0, atol=0)
    assert not torch.allclose(out, expected)  # the bilinear site did change
    # The report survives JSON: every site with its node, action, reason and shapes as lists.
    data = json.loads(json.dumps(report.to_dict()))
    assert (data["num_replaced"], data["num_skipped"]) == (4, 3)
    rows = {
        site["node"]: (site["action"], site["reason"], site["input_shape"], site["output_shape"])
        for site in data["sites"]
    }
    assert rows["interpolate"] == ("replaced", "", [2, 4, 5, 7], [2, 4, 10, 14])
    assert rows["interpolate_1"] == ("skipped", "downsampling", [2, 4, 10, 14], [2, 4, 5, 7])
    assert rows["interpolate_3"][:3] == ("skipped", skipped["interpolate_3"], [2, 4, 1, 1])
    assert {node for node, row in rows.items() if row[0] == "replaced"} == set(replaced)
    text = str(report)
    assert "replaced by srf_upsampler_c4" in text and "same-size resize" in text


def test_share_false_builds_one_module_per_site() -> None:
    patched, report = patch_fpn(PANet(), SMALL_SRF, share=False, example_inputs=(panet_inputs(),))
    names = [site.upsampler for site in report.replaced]
    assert names == ["srf_up", "srf_up_1"]
    assert patched.get_submodule("srf_up") is not patched.get_submodule("srf_up_1")


def test_ready_module_shared_and_channel_mismatch_skipped() -> None:
    generator = SMALL_SRF(8)
    patched, report = patch_fpn(PANet(), generator, example_inputs=(panet_inputs(),))
    assert [site.in_channels for site in report.replaced] == [8]
    assert patched.get_submodule("srf_upsampler_c8") is generator
    assert "in_channels=8 but this site has 16 channels" in report.skipped[0].reason


def test_patching_twice_does_not_wrap_twice() -> None:
    neck = BiFPN()
    patch_fpn(neck, SMALL_SRF, example_inputs=bifpn_inputs())
    keys = set(neck.state_dict())
    code = neck.layers[0].code
    _, report = patch_fpn(neck, SMALL_SRF, example_inputs=bifpn_inputs())
    assert not report.replaced
    assert [site.action for site in report.sites if site.kind == "SRFUpsample"] == ["already patched"] * 4
    assert report.already_patched == tuple(site for site in report.sites if site.kind == "SRFUpsample")
    assert set(neck.state_dict()) == keys and neck.layers[0].code == code


def test_no_upsampling_returned_unchanged() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    patched, report = patch_fpn(model)
    assert patched is model and report.sites == ()
    assert "no upsampling call sites found" in str(report)
    with pytest.raises(ValueError, match="strict=True"):
        patch_fpn(model, strict=True)


def test_training_mode_restored() -> None:
    neck = PANet().train()
    patch_fpn(neck, SMALL_SRF, example_inputs=(panet_inputs(),))
    assert neck.training
    neck = PANet().eval()
    patched, _ = patch_fpn(neck, SMALL_SRF, example_inputs=(panet_inputs(),))
    assert not patched.training and not patched.get_submodule("srf_upsampler_c8").training


class Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > -10:  # data-dependent branch around the upsampling itself
            return F.interpolate(x, scale_factor=2)
        return x


class HoldsUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.neck = Untraceable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.conv(x))


def test_untraceable_submodule_routed_at_run_time() -> None:
    # Pins the run-time fallback: a submodule fx cannot trace is patched by run-time routing, not refused.
    model = HoldsUntraceable().eval()
    x = torch.rand(2, 3, 8, 8)
    expected = model(x)
    keys = set(model.state_dict())
    patched, report = patch_fpn(model, NearestUpsample, example_inputs=x)
    assert patched is model and type(model.neck) is Untraceable
    assert [(site.module_path, site.method, site.upsampler) for site in report.replaced] == [
        ("neck", "runtime", "srf_upsampler_c3")
    ]
    assert report.fallbacks[0][0] == "neck" and "cannot trace" in report.fallbacks[0][1]
    assert "neck patched without fx" in str(report)
    assert set(model.state_dict()) == keys  # the reference upsampler has no weights; nothing else changed
    assert_tree_equal(model(x), expected)
    _, report = patch_fpn(HoldsUntraceable(), SMALL_SRF, example_inputs=torch.rand(2, 3, 8, 8), exclude=["neck"])
    assert report.skipped[0].reason == "matched by exclude" and not report.replaced


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        patch_fpn("fpn")
    with pytest.raises(TypeError, match=r"upsampler must be a name from .*, an nn.Module, a factory"):
        patch_fpn(PANet(), upsampler=3)
    with pytest.raises(TypeError, match="share must be a bool"):
        patch_fpn(PANet(), share="yes")
    with pytest.raises(TypeError, match="example_inputs must be a tuple"):
        patch_fpn(PANet(), example_inputs=3)
    with pytest.raises(TypeError, match="leaf_modules must hold nn.Module subclasses"):
        patch_fpn(PANet(), example_inputs=(panet_inputs(),), leaf_modules=["ConvBlock"])
    with pytest.raises(TypeError, match="exclude must be a sequence"):
        patch_fpn(PANet(), example_inputs=(panet_inputs(),), exclude="neck")
    with pytest.raises(ValueError, match="Cannot build an example input for PANet"):
        patch_fpn(PANet())
    with pytest.raises(TypeError, match="factory must return an nn.Module"):
        patch_fpn(PANet(), upsampler=lambda channels: None, example_inputs=(panet_inputs(),))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("where", ["model", "submodule"])
def test_torchscript_module_is_refused_with_what_to_do(where: str) -> None:
    # Pins issue 30: a scripted module took example_inputs and then failed with "pass example_inputs" (its compiled
    # forward takes no hooks and fx cannot trace it). It must say so, name the module, and leave it unchanged.
    fpn = FeaturePyramidNetwork([8, 16], 8)
    features = {"0": torch.rand(2, 8, 16, 24), "1": torch.rand(2, 16, 8, 12)}
    if where == "model":
        model = torch.jit.script(fpn)
        match = r"model is a RecursiveScriptModule"
    else:
        model = nn.Sequential(torch.jit.script(fpn))
        match = r"model\.0 is a RecursiveScriptModule"
    keys = set(model.state_dict())
    with pytest.raises(TypeError, match=match) as error:
        patch_fpn(model, NearestUpsample, example_inputs=(features,))
    assert "Call patch_fpn on the original nn.Module, then script or trace the patched model" in str(error.value)
    assert "example_inputs" not in str(error.value)
    assert set(model.state_dict()) == keys


def test_report_dataclasses_are_frozen() -> None:
    _, report = patch_fpn(PANet(), NearestUpsample, example_inputs=(panet_inputs(),))
    assert isinstance(report.sites[0], PatchSite)
    with pytest.raises(AttributeError):
        report.sites = ()


# ---------------------------------------------------------------------------------------------------------------
# torchvision detectors, as users hold them

SMALL = {"weights": None, "weights_backbone": None, "min_size": 64, "max_size": 96}
# Few proposals and detections: random weights otherwise send hundreds of boxes through the RoI (mask) heads.
RCNN = {**SMALL, "rpn_pre_nms_top_n_test": 8, "rpn_post_nms_top_n_test": 8, "box_detections_per_img": 2}
DENSE = {**SMALL, "topk_candidates": 8, "detections_per_img": 2}
DETECTORS = {
    "fasterrcnn_resnet50_fpn": (detection.fasterrcnn_resnet50_fpn, RCNN, 3),
    "fasterrcnn_resnet50_fpn_v2": (detection.fasterrcnn_resnet50_fpn_v2, RCNN, 3),
    "maskrcnn_resnet50_fpn": (detection.maskrcnn_resnet50_fpn, RCNN, 3),
    "maskrcnn_resnet50_fpn_v2": (detection.maskrcnn_resnet50_fpn_v2, RCNN, 3),
    "retinanet_resnet50_fpn": (detection.retinanet_resnet50_fpn, DENSE, 2),
    "retinanet_resnet50_fpn_v2": (detection.retinanet_resnet50_fpn_v2, DENSE, 2),
    "fcos_resnet50_fpn": (detection.fcos_resnet50_fpn, DENSE, 2),
    "keypointrcnn_resnet50_fpn": (detection.keypointrcnn_resnet50_fpn, RCNN, 3),
    # Its two FPN levels both have stride 32, so its one interpolation is a same-size resize: nothing to replace.
    "fasterrcnn_mobilenet_v3_large_fpn": (detection.fasterrcnn_mobilenet_v3_large_fpn, RCNN, 0),
}


def images() -> list[torch.Tensor]:
    return [torch.rand(3, 64, 80), torch.rand(3, 64, 80)]


@pytest.mark.parametrize("name", list(DETECTORS))
def test_torchvision_detector_forward_equal(name) -> None:
    builder, kwargs, num_replaced = DETECTORS[name]
    model = builder(**kwargs).eval()
    example = images()
    with torch.no_grad():
        expected = model(example)
    keys = set(model.state_dict())
    patched, report = patch_fpn(model, NearestUpsample, example_inputs=(example,))
    assert patched is model and not model.training
    assert len(report.replaced) == num_replaced
    assert all(site.module_path == "backbone.fpn" and site.is_size_dynamic for site in report.replaced)
    fpn_skipped = [site.reason for site in report.skipped if site.module_path == "backbone.fpn"]
    assert fpn_skipped == ([] if num_replaced else ["same-size resize"])
    assert all(site.module_path == "backbone.fpn" or site.reason == "matched by exclude" for site in report.sites)
    assert keys <= set(model.state_dict())
    with torch.no_grad():
        assert_tree_equal(model(example), expected)


def test_torchvision_detector_trains_and_reloads_weights() -> None:
    model = detection.retinanet_resnet50_fpn(**DENSE)
    original_state = model.state_dict()
    model.train()
    patched, report = patch_fpn(model, SMALL_SRF)  # default example: two 3x64x96 images
    assert patched.training and len(report.replaced) == 2
    generator = model.backbone.fpn.srf_upsampler_c256
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    losses = model(images(), targets)
    sum(losses.values()).backward()
    # The generator's tail conv starts at zero, so at first only it gets a non-zero gradient; every one is finite.
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in generator.parameters())
    assert generator.tail.weight.grad.abs().sum() > 0
    # Pretrained detector weights (the unpatched keys) still load; only the generator's keys are new.
    missing, unexpected = model.load_state_dict(original_state, strict=False)
    assert not unexpected and all(key.startswith("backbone.fpn.srf_upsampler_c256.") for key in missing)
    model.eval()
    with torch.no_grad():
        assert len(model(images())) == 2
    _, again = patch_fpn(model, SMALL_SRF)
    assert not again.replaced and any(site.action == "already patched" for site in again.sites)


def test_torchvision_fpn_alone_default_example() -> None:
    fpn = torchvision.ops.FeaturePyramidNetwork([4, 8], 8)
    patched, report = patch_fpn(fpn, SMALL_SRF)
    assert len(report.replaced) == 1 and report.replaced[0].input_shape == (2, 8, 8, 12)
    assert patched({"0": torch.rand(2, 4, 17, 25), "1": torch.rand(2, 8, 9, 13)})["0"].shape == (2, 8, 17, 25)
