"""patch_fpn on real torchvision necks and detectors at input sizes where the FPN's feature maps have odd sizes.

A nearest upsampler with F.interpolate's call signature stands in for SRFUpsample: the patched model must then give
exactly the unpatched model's outputs. At odd sizes that holds only if every replaced site passes on the size the
neck asked for (the lateral map's shape): ``scale_factor=2`` from 7x11 gives 14x22, not the 13x21 lateral map.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from srf_upsample import patch_fpn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class NearestReference(nn.Module):
    """Exactly what torchvision's FPN computes at each merge, behind SRFUpsample's call signature.

    It records each call's input size, the ``size`` it was given and its output size, so a test can check that the
    patched model really calls it (equal outputs alone would also come from a site left unpatched).
    """

    def __init__(self, in_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.calls: list[tuple[tuple[int, int], object, tuple[int, int]]] = []

    def forward(self, x: torch.Tensor, size=None, scale_factor=None) -> torch.Tensor:
        out = F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")
        self.calls.append((tuple(x.shape[-2:]), size, tuple(out.shape[-2:])))
        return out


def reference_calls(model: nn.Module) -> list[tuple[tuple[int, int], object, tuple[int, int]]]:
    """The calls recorded by every NearestReference in ``model`` since the last clear, then clear them."""
    calls = []
    for module in model.modules():
        if isinstance(module, NearestReference):
            calls += module.calls
            module.calls.clear()
    return calls


def level_size(length: int, stride: int) -> int:
    """ResNet's feature size: each stride-2 layer (3x3 convs and max pool, padding 1) maps n to ceil(n / 2)."""
    while stride > 1:
        length, stride = -(-length // 2), stride // 2
    return length


def assert_outputs_equal(actual, expected) -> None:
    flat_actual, spec_actual = torch.utils._pytree.tree_flatten(actual)
    flat_expected, spec_expected = torch.utils._pytree.tree_flatten(expected)
    assert spec_actual == spec_expected
    assert flat_expected, "nothing to compare"
    for a, e in zip(flat_actual, flat_expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)  # same interpolation, same convs: bit-for-bit


# ---------------------------------------------------------------------------------------------------------------
# BackboneWithFPN (ResNet-18 body + torchvision FPN), run on images directly: no transform, no padding.

# 136x200: P2..P5 are 34x50, 17x25, 9x13, 5x7; 72x104: 18x26, 9x13, 5x7, 3x4.
ODD_IMAGES = [(136, 200), (72, 104)]


@pytest.fixture(scope="module")
def resnet18_fpn() -> nn.Module:
    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5).eval()


@pytest.mark.parametrize("image_size", ODD_IMAGES)
@pytest.mark.parametrize("patch_at", ["odd", "even"])
def test_backbone_with_fpn_at_odd_feature_sizes(resnet18_fpn, image_size, patch_at) -> None:
    height, width = image_size
    images = torch.rand(2, 3, height, width)
    sizes = [(level_size(height, 2**level), level_size(width, 2**level)) for level in (2, 3, 4, 5)]
    assert any(h % 2 or w % 2 for h, w in sizes[1:])  # some coarse level is odd: scale_factor=2 would overshoot it
    with torch.no_grad():
        expected = resnet18_fpn(images)
    assert [tuple(expected[key].shape[-2:]) for key in ("0", "1", "2", "3")] == sizes
    model = copy.deepcopy(resnet18_fpn)  # the module-scoped original stays unpatched for the next case
    # Patched on the same odd images, or on an image whose levels are all even: the sizes must not be baked in.
    example = images if patch_at == "odd" else torch.rand(1, 3, 64, 96)
    patched, report = patch_fpn(model, upsampler=NearestReference, example_inputs=(example,))
    assert patched is model
    assert len(report.replaced) == 3
    assert all(site.module_path == "fpn" and site.is_size_dynamic for site in report.replaced)
    reference_calls(patched)
    with torch.no_grad():
        assert_outputs_equal(patched(images), expected)
    # Each merge called the reference with the lateral map's size: P5 -> P4 -> P3 -> P2, odd sizes met exactly.
    steps = [(sizes[level + 1], sizes[level], sizes[level]) for level in (2, 1, 0)]
    assert [(before, tuple(size), after) for before, size, after in reference_calls(patched)] == steps


# ---------------------------------------------------------------------------------------------------------------
# Whole torchvision detectors, as users hold them. Their transform pads each batch to a multiple of 32
# (size_divisible), which makes every level exactly twice the next one; padding to 1 instead keeps the image's own
# 72x104 size, whose levels are odd (see ODD_IMAGES). min_size/max_size equal to that size: no resize.

ODD = {"weights": None, "weights_backbone": None, "min_size": 72, "max_size": 104, "size_divisible": 1}
# Few proposals and detections: random weights otherwise send hundreds of boxes through the RoI (mask) heads.
RCNN = {**ODD, "rpn_pre_nms_top_n_test": 8, "rpn_post_nms_top_n_test": 8, "box_detections_per_img": 3}
# score_thresh=0: the random heads' scores sit near their 0.01 prior, below the default 0.05 threshold.
DENSE = {**ODD, "topk_candidates": 8, "detections_per_img": 3, "score_thresh": 0.0}
DETECTORS = {
    "fasterrcnn_resnet50_fpn": (detection.fasterrcnn_resnet50_fpn, RCNN, 3),  # merges into P2, P3, P4
    "retinanet_resnet50_fpn": (detection.retinanet_resnet50_fpn, DENSE, 2),  # P3, P4 (P6/P7 are convs)
}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_outputs_unchanged_at_odd_feature_sizes(name) -> None:
    builder, kwargs, num_replaced = DETECTORS[name]
    model = builder(**kwargs).eval()
    images = [torch.rand(3, 72, 104), torch.rand(3, 72, 104)]
    with torch.no_grad():
        expected = model(images)
    assert all(len(output["boxes"]) for output in expected)  # there is something to compare
    patched, report = patch_fpn(model, upsampler=NearestReference, example_inputs=(images,))
    assert patched is model and not model.training
    assert len(report.replaced) == num_replaced
    assert all(site.module_path == "backbone.fpn" and site.is_size_dynamic for site in report.replaced)
    # The merges really are at odd sizes: P5 3x4 -> P4 5x7 -> P3 9x13 (-> P2 18x26), never twice the input.
    steps = [(site.input_shape[-2:], site.output_shape[-2:]) for site in report.replaced]
    assert steps[:2] == [((3, 4), (5, 7)), ((5, 7), (9, 13))]
    reference_calls(model)
    with torch.no_grad():
        assert_outputs_equal(model(images), expected)
    # The patched merges ran through the reference, each given the lateral map's size.
    calls = reference_calls(model)
    assert [(before, tuple(size), after) for before, size, after in calls] == [
        (before, after, after) for before, after in steps
    ]
