"""The guided generator (variant="guided", docs/guided_generator.md): shapes, the init point, guide errors, the Hub."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from srf_upsample import SRFUpsample
from srf_upsample.hub import CONFIG_NAME


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_guided(channels: int = 8, **kwargs) -> SRFUpsample:
    return SRFUpsample(channels, hidden_channels=8, num_blocks=1, variant="guided", **kwargs)


def give_guide_weights(module: SRFUpsample) -> SRFUpsample:
    """Make the guide branch (zero at init) and the residual blocks' last convs non-zero, as training would."""
    with torch.no_grad():
        nn.init.normal_(module.guide.modulation.weight, std=0.3)
        nn.init.uniform_(module.guide.modulation.bias, -0.1, 0.1)
        for block in module.body:
            nn.init.normal_(block.last_conv.weight, std=0.3)
    return module


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((5, 7), (10, 14)), ((17, 25), (33, 49)), ((6, 11), (12, 21)), ((5, 6), (20, 24)), ((8, 8), (9, 16))],
)
@pytest.mark.parametrize("guide_channels", [None, 3])
def test_output_shape_with_guide(in_size, out_size, guide_channels):
    up = give_guide_weights(small_guided(guide_channels=guide_channels))
    guide = torch.randn(2, guide_channels or 8, *out_size)
    assert up(torch.randn(2, 8, *in_size), size=out_size, guide=guide).shape == (2, 8, *out_size)
    # Without size, the output takes the guide's size.
    assert up(torch.randn(2, 8, *in_size), guide=guide).shape == (2, 8, *out_size)


@pytest.mark.parametrize(("in_size", "out_size"), [((8, 8), (16, 16)), ((17, 25), (33, 49)), ((5, 6), (20, 24))])
@pytest.mark.parametrize("training", [True, False])
def test_fresh_guided_equals_lite_with_the_same_trunk(in_size, out_size, training):
    # Pins the init point: the guide branch starts as the identity, so a fresh guided G computes the lite G of its
    # trunk weights, with or without a guide, in both modes (eval takes the in-place routes).
    lite = SRFUpsample(8, hidden_channels=8, num_blocks=1, variant="lite")
    for block in lite.body:  # non-zero blocks, so the trunk matters
        nn.init.normal_(block.last_conv.weight, std=0.3)
    guided = small_guided()
    result = guided.load_state_dict(lite.state_dict(), strict=False)
    assert all(key.startswith("guide.") for key in result.missing_keys) and not result.unexpected_keys
    lite.train(training)
    guided.train(training)
    x, guide = torch.randn(2, 8, *in_size), 3 * torch.randn(2, 8, *out_size)
    with torch.set_grad_enabled(training):
        expected = lite(x, size=out_size)
        torch.testing.assert_close(guided(x, size=out_size, guide=guide), expected)
        torch.testing.assert_close(guided(x, size=out_size), expected)


def test_fresh_zero_init_residual_guided_is_bilinear():
    up = small_guided(zero_init_residual=True)
    x = torch.randn(2, 8, 9, 13)
    expected = torch.nn.functional.interpolate(x, size=(18, 25), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x, size=(18, 25), guide=torch.randn(2, 8, 18, 25)), expected)


def test_trained_guide_changes_the_output_and_gradients_reach_the_branch():
    up = give_guide_weights(small_guided())
    x = torch.randn(2, 8, 9, 13)
    guide = torch.randn(2, 8, 18, 26, requires_grad=True)
    guided_out = up(x, guide=guide)
    assert not torch.allclose(guided_out, up(x, size=(18, 26)), atol=1e-3)
    guided_out.square().mean().backward()
    assert guide.grad is not None and guide.grad.abs().sum() > 0
    assert up.guide.project.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(16, 16), (17, 25)])
def test_inplace_inference_route_equals_plain_route(size):
    up = give_guide_weights(small_guided()).eval()
    x, guide = torch.randn(2, 8, 8, 13), torch.randn(2, 8, *size)
    with torch.no_grad():
        fast = up(x, size=size, guide=guide)
        up.use_fast_inference = False
        plain = up(x, size=size, guide=guide)
    torch.testing.assert_close(fast, plain)


def test_guide_gradcheck():
    up = give_guide_weights(small_guided(4)).double()
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(1, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, g: up(a, guide=g), (x, guide))


@pytest.mark.parametrize(
    ("guide", "size", "error", "match"),
    [
        (torch.randn(2, 8, 10, 15), (10, 14), ValueError, r"guide must have the output size 10x14, got 10x15"),
        (torch.randn(2, 5, 10, 14), (10, 14), ValueError, r"guide has 5 channels .* guide_channels=8; build it"),
        (torch.randn(3, 8, 10, 14), (10, 14), ValueError, r"guide has batch size 3 but x has 2"),
        (torch.randn(8, 10, 14), (10, 14), ValueError, r"guide must be a 4D tensor"),
        (torch.zeros(2, 8, 10, 14, dtype=torch.long), (10, 14), TypeError, r"guide must be a floating point"),
        ([1.0], (10, 14), TypeError, r"guide must be a torch.Tensor .* got list"),
    ],
)
def test_bad_guide_raises(guide, size, error, match):
    with pytest.raises(error, match=match):
        small_guided()(torch.randn(2, 8, 5, 7), size=size, guide=guide)


def test_guide_to_an_unguided_variant_raises():
    up = SRFUpsample(8, hidden_channels=8, num_blocks=1, variant="lite")
    with pytest.raises(ValueError, match=r"guide= is accepted only by .*variant='guided'.*variant='lite'"):
        up(torch.randn(2, 8, 5, 7), guide=torch.randn(2, 8, 10, 14))
    assert not up.accepts_guide and small_guided().accepts_guide


def test_guide_channels_for_an_unguided_variant_raises():
    with pytest.raises(ValueError, match=r"guide_channels applies only to variant='guided'"):
        SRFUpsample(8, variant="lite", guide_channels=8)
    with pytest.raises(ValueError, match=r"guide_channels must be a positive int, got 0"):
        SRFUpsample(8, variant="guided", guide_channels=0)


def test_hub_round_trip(tmp_path):
    up = give_guide_weights(small_guided(guide_channels=5))
    up.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["variant"] == "guided" and config["guide_channels"] == 5
    loaded = SRFUpsample.from_pretrained(tmp_path)
    assert loaded.accepts_guide and loaded.guide_channels == 5
    for key, value in up.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    x, guide = torch.randn(2, 8, 5, 7), torch.randn(2, 5, 10, 14)
    torch.testing.assert_close(loaded(x, guide=guide), up.eval()(x, guide=guide))


def test_unguided_config_keeps_guide_channels_none(tmp_path):
    SRFUpsample(8, hidden_channels=8, num_blocks=1, variant="lite").save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["guide_channels"] is None
    assert SRFUpsample.from_pretrained(tmp_path).guide_channels is None


def test_parameter_count_at_fpn_width():
    # Pins the README's count: the lite trunk (68,672) plus the guide branch, 16 wide (1x1 256->16, depthwise 3x3,
    # 1x1 16->128 for gamma and beta of the 64 hidden channels).
    up = SRFUpsample(256, variant="guided")
    assert sum(p.numel() for p in up.parameters()) == 68_672 + (256 * 16 + 16) + 16 * 9 + (16 * 128 + 128) == 75_104
