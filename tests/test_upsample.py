import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srf_upsample import SRFUpsample


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(**kwargs) -> SRFUpsample:
    kwargs.setdefault("hidden_channels", 8)
    kwargs.setdefault("num_blocks", 1)
    return SRFUpsample(4, **kwargs)


def test_default_is_the_paper_generator():
    # Pins the paper's architecture (section 3.1): 256-wide body, 5 residual blocks, deconv x2, 1x1 back to C.
    up = SRFUpsample()
    assert up.variant == "paper" and up.hidden_channels == 256 and up.num_blocks == 5
    assert len(up.body) == 5
    assert isinstance(up.upsample[2], nn.ConvTranspose2d) and up.upsample[2].stride == (2, 2)
    assert up.tail.kernel_size == (1, 1) and up.tail.out_channels == 256
    assert sum(p.numel() for p in up.parameters()) == 8_198_144


def test_lite_variant_is_much_smaller():
    lite = SRFUpsample(variant="lite")
    assert sum(p.numel() for p in lite.parameters()) < 0.05 * 8_198_144


@pytest.mark.parametrize(
    ("in_size", "kwargs", "expected"),
    [
        ((8, 8), {}, (16, 16)),
        ((17, 25), {"size": (33, 49)}, (33, 49)),
        ((9, 13), {"size": (17, 25)}, (17, 25)),
        ((5, 7), {"scale_factor": 2}, (10, 14)),
        ((5, 7), {"scale_factor": 4}, (20, 28)),
        ((5, 6), {"scale_factor": 8.0}, (40, 48)),
        ((5, 7), {"scale_factor": (2, 3)}, (10, 21)),
        ((5, 7), {"size": 11}, (11, 11)),
        ((7, 7), {"scale_factor": 1.5}, (10, 10)),
        ((6, 9), {"size": [6, 18]}, (6, 18)),
    ],
)
def test_output_has_exactly_the_requested_size(in_size, kwargs, expected):
    up = tiny()
    out = up(torch.randn(2, 4, *in_size), **kwargs)
    assert out.shape == (2, 4, *expected)
    ref = F.interpolate(torch.randn(2, 4, *in_size), mode="nearest", **(kwargs or {"scale_factor": 2}))
    assert out.shape == ref.shape  # same size rule as F.interpolate


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_size_and_gradients_reach_every_parameter(batch):
    up = tiny().train()
    x = torch.randn(batch, 4, 5, 7, requires_grad=True)
    up(x, size=(9, 13)).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in up.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradcheck_float64():
    up = SRFUpsample(2, hidden_channels=2, num_blocks=1).double().eval()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: up(t, size=(5, 7)), (x,))


def test_zero_init_residual_equals_bilinear():
    # Pins our (non-paper) option: a fresh zero-init module is exactly bilinear interpolation.
    up = tiny(zero_init_residual=True).eval()
    x = torch.randn(2, 4, 9, 13)
    expected = F.interpolate(x, size=(17, 25), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x, size=(17, 25)), expected)


def test_default_init_is_not_plain_interpolation():
    up = tiny().eval()
    x = torch.randn(2, 4, 9, 13)
    assert not torch.allclose(up(x), F.interpolate(x, scale_factor=2, mode="bilinear"))


def test_non_exact_target_resizes_the_learned_residual():
    # Pins the documented rule: one pass, residual computed at 2x then resized bilinearly to the exact target.
    up = tiny().eval()
    x = torch.randn(1, 4, 17, 25)
    residual = F.interpolate(up.residual(x), size=(33, 49), mode="bilinear", align_corners=False)
    expected = F.interpolate(x, size=(33, 49), mode="bilinear", align_corners=False) + residual
    torch.testing.assert_close(up(x, size=(33, 49)), expected)


def test_x4_chains_two_passes():
    up = tiny().eval()
    x = torch.randn(1, 4, 5, 6)
    torch.testing.assert_close(up(x, scale_factor=4), up(up(x)))


def test_bfloat16_autocast():
    up = tiny().eval()
    x = torch.randn(2, 4, 9, 13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = up(x, size=(17, 25))
    assert out.shape == (2, 4, 17, 25) and torch.isfinite(out).all()
    # bfloat16 keeps ~3 significant digits; compare loosely to the float32 result.
    torch.testing.assert_close(out.float(), up(x, size=(17, 25)), atol=0.1, rtol=0.05)


def test_bfloat16_module():
    up = tiny().eval().to(torch.bfloat16)
    out = up(torch.randn(2, 4, 9, 13, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 18, 26)


def test_channels_last_gives_the_same_result():
    up = tiny().eval()
    x = torch.randn(2, 4, 9, 13)
    expected = up(x, size=(17, 25))
    up = up.to(memory_format=torch.channels_last)
    out = up(x.to(memory_format=torch.channels_last), size=(17, 25))
    torch.testing.assert_close(out, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    up = tiny().eval()
    x = torch.randn(2, 4, 9, 13)
    expected = up(x, size=(17, 25))
    torch.testing.assert_close(up.cuda()(x.cuda(), size=(17, 25)).cpu(), expected, atol=1e-4, rtol=1e-4)


def test_torch_export_of_a_module_that_calls_it():
    class Neck(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = tiny()

        def forward(self, coarse, fine):
            return fine + self.up(coarse, size=fine.shape[-2:])

    neck = Neck().eval()
    coarse, fine = torch.randn(1, 4, 9, 13), torch.randn(1, 4, 17, 25)
    exported = torch.export.export(neck, (coarse, fine))
    torch.testing.assert_close(exported.module()(coarse, fine), neck(coarse, fine))


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (torch.randn(1, 4, 8, 8), {"size": (4, 4)}, "only enlarges"),
        (torch.randn(1, 4, 8, 8), {"size": (8, 8)}, "only enlarges"),
        (torch.randn(1, 4, 8, 8), {"scale_factor": 0.5}, "only enlarges"),
        (torch.randn(1, 3, 8, 8), {}, "in_channels=4"),
        (torch.randn(4, 8, 8), {}, r"4D tensor .* got shape \(4, 8, 8\)"),
        (torch.randn(1, 4, 8, 8), {"size": (16, 16), "scale_factor": 2}, "exactly one of size or scale_factor"),
        (torch.randn(1, 4, 8, 8), {"scale_factor": -2}, "scale_factor must be positive"),
        (torch.randn(1, 4, 8, 8), {"size": (16, 16, 16)}, "pair"),
    ],
)
def test_bad_forward_input_raises_a_clear_value_error(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny()(x, **kwargs)


def test_non_float_input_raises_type_error():
    with pytest.raises(TypeError, match="floating point"):
        tiny()(torch.zeros(1, 4, 8, 8, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 0}, ValueError, "in_channels must be a positive int, got 0"),
        ({"in_channels": 2.5}, TypeError, "in_channels"),
        ({"variant": "huge"}, ValueError, r"variant must be one of \['lite', 'paper'\]"),
        ({"hidden_channels": -1}, ValueError, "hidden_channels"),
        ({"num_blocks": -1}, ValueError, "num_blocks"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SRFUpsample(**kwargs)


def test_reset_parameters_is_repeatable():
    up = tiny()
    torch.manual_seed(1)
    up.reset_parameters()
    first = {k: v.clone() for k, v in up.state_dict().items()}
    torch.manual_seed(1)
    up.reset_parameters()
    for key, value in up.state_dict().items():
        torch.testing.assert_close(value, first[key])


def test_repr_shows_the_config():
    assert "hidden_channels=8, num_blocks=1, variant='paper'" in repr(tiny())
