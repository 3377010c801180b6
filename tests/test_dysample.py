import functools

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork

from srf_upsample import DySample, patch_fpn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _bilinear(x: torch.Tensor, **kwargs) -> torch.Tensor:
    return F.interpolate(x, mode="bilinear", align_corners=False, **kwargs)


def _randomize(module: DySample) -> DySample:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize(
    ("in_size", "call"),
    [
        ((5, 7), {"scale_factor": 2}),
        ((5, 7), {"size": (9, 13)}),  # an odd FPN level: 2H - 1
        ((4, 6), {"size": (8, 12)}),
        ((5, 7), {"scale_factor": 1.5}),  # a non-integer ratio
        ((3, 3), {"size": (12, 7)}),  # x4 and a non-integer ratio on the other side
        ((5, 7), {}),  # neither: scale_factor=scale
    ],
)
def test_fresh_module_is_bilinear_interpolation(style, dynamic, in_size, call):
    up = DySample(16, style=style, dynamic=dynamic)
    x = torch.randn(2, 16, *in_size)
    out = up(x, **call)
    expected = _bilinear(x, **(call or {"scale_factor": 2}))
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("style", ["lp", "pl"])
def test_trained_module_moves_samples_and_keeps_the_requested_size(style):
    up = _randomize(DySample(16, style=style, dynamic=True))
    x = torch.randn(2, 16, 5, 7)
    for request, size in (({"scale_factor": 2}, (10, 14)), ({"size": (9, 13)}, (9, 13)), ({"size": (11, 8)}, (11, 8))):
        out = up(x, **request)
        assert out.shape == (2, 16, *size)
        assert not torch.allclose(out, _bilinear(x, size=size), atol=1e-3)


def test_offsets_shape_and_groups_sample_independently():
    up = _randomize(DySample(8, groups=2))
    x = torch.randn(1, 8, 4, 5)
    assert up.offsets(x).shape == (1, 4, 8, 10)
    out = up(x)
    # Group 0 (channels 0-3) depends only on its own channels' values at its sample points: changing group 1's
    # channels after the offsets are fixed changes only group 1's output.
    with torch.no_grad():
        up.offset.weight[:, 4:] = 0
    out_a = up(x)
    x_b = x.clone()
    x_b[:, 4:] += 1.0
    out_b = up(x_b)
    torch.testing.assert_close(out_a[:, :4], out_b[:, :4])
    assert not torch.allclose(out_a[:, 4:], out_b[:, 4:])
    assert out.shape == (1, 8, 8, 10)


def test_parameter_counts_follow_the_paper_styles():
    # lp: C -> 2 g s^2 (1x1 conv); pl: C / s^2 -> 2 g; dynamic doubles the layer.
    assert sum(p.numel() for p in DySample(256).parameters()) == 256 * 32 + 32
    assert sum(p.numel() for p in DySample(256, style="pl").parameters()) == 64 * 8 + 8
    assert sum(p.numel() for p in DySample(256, dynamic=True).parameters()) == 2 * (256 * 32 + 32)


def test_gradient_reaches_the_offset_layer_from_the_zero_start():
    up = DySample(8)
    x = torch.randn(2, 8, 5, 6)
    up(x, size=(9, 11)).square().sum().backward()
    assert up.offset.weight.grad is not None and up.offset.weight.grad.abs().sum() > 0


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        DySample(6, groups=4)
    with pytest.raises(ValueError, match="scale\\*\\*2"):
        DySample(6, style="pl", groups=2)
    with pytest.raises(ValueError, match="style"):
        DySample(8, style="xy")
    with pytest.raises(ValueError, match="in_channels=8"):
        DySample(8)(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="exactly one"):
        DySample(8)(torch.randn(1, 8, 3, 3), size=6, scale_factor=2)
    assert "style='lp'" in repr(DySample(8))


def test_patches_torchvision_fpn_forward_and_backward():
    fpn = FeaturePyramidNetwork([8, 16, 32], 8)
    inputs = {"0": torch.rand(2, 8, 17, 25), "1": torch.rand(2, 16, 9, 13), "2": torch.rand(2, 32, 5, 7)}
    with torch.no_grad():
        before = fpn(inputs)
    fpn, report = patch_fpn(fpn, functools.partial(DySample), share=False)
    assert len(report.replaced) == 2
    ups = [m for m in fpn.modules() if isinstance(m, DySample)]
    assert len(ups) == 2
    out = fpn(inputs)
    assert [o.shape for o in out.values()] == [b.shape for b in before.values()]
    # FPN's top-down step is nearest; a fresh DySample is bilinear, so outputs change but shapes do not.
    assert not torch.allclose(out["0"], before["0"])
    sum(o.sum() for o in out.values()).backward()
    assert all(m.offset.weight.grad is not None and m.offset.weight.grad.abs().sum() > 0 for m in ups)
