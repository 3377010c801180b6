"""Tests for srf_upsample.carafe: CARAFE against known answers and a straightforward unfold implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork  # imported here: its first import sets TORCHINDUCTOR_CACHE_DIR

from srf_upsample import CARAFE, patch_fpn
from srf_upsample.carafe import reassemble


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def reference_kernels(module: CARAFE, x: torch.Tensor) -> torch.Tensor:
    """The paper's kernel path written out: encoder logits, pixel shuffle to the output grid, softmax over taps."""
    logits = module.encoder(module.compressor(x))
    return F.pixel_shuffle(logits, module.scale).softmax(dim=1)  # (N, k_up**2, s * H, s * W)


def reference_reassemble(x: torch.Tensor, kernels: torch.Tensor, scale: int) -> torch.Tensor:
    """The straightforward CARAFE reassembly: unfold every k_up x k_up neighbourhood, upsample it, weight and sum.

    ``kernels`` are on the output grid, (N, k_up**2, s * H, s * W); output pixel (i, j) reads the neighbourhood of
    input pixel (i // s, j // s), which is what nearest upsampling of the unfolded tensor gives.
    """
    batch, channels, height, width = x.shape
    taps = kernels.shape[1]
    k_up = math.isqrt(taps)
    unfolded = F.unfold(x, k_up, padding=k_up // 2).view(batch, channels * taps, height, width)
    unfolded = F.interpolate(unfolded, scale_factor=scale, mode="nearest")
    unfolded = unfolded.view(batch, channels, taps, scale * height, scale * width)
    return (unfolded * kernels.unsqueeze(1)).sum(dim=2)


def reference_forward(module: CARAFE, x: torch.Tensor) -> torch.Tensor:
    return reference_reassemble(x, reference_kernels(module, x), module.scale)


def randomize(module: CARAFE, std: float = 0.3) -> CARAFE:
    """Weights large enough for kernels far from uniform (the paper's start is nearly uniform)."""
    with torch.no_grad():
        module.encoder.weight.normal_(std=std)
        module.encoder.bias.normal_(std=std)
        module.compressor.bias.normal_(std=std)
    return module


def phase_major(kernels: torch.Tensor, scale: int) -> torch.Tensor:
    """Output-grid kernels (N, T, s * H, s * W) -> reassemble's layout (N, T, s * s, H, W)."""
    batch, taps = kernels.shape[:2]
    unshuffled = F.pixel_unshuffle(kernels, scale)  # channel t * s * s + phase
    return unshuffled.view(batch, taps, scale * scale, *unshuffled.shape[-2:])


def both_routes(x: torch.Tensor, kernels: torch.Tensor, scale: int) -> list[torch.Tensor]:
    """reassemble on its inference route (no autograd) and on its differentiable route (x requires grad)."""
    with torch.no_grad():
        fast = reassemble(x, kernels, scale)
    graph = reassemble(x.detach().requires_grad_(), kernels, scale)
    assert graph.requires_grad  # it did take the autograd route
    return [fast, graph.detach()]


# --- (1) one-hot centre kernels: nearest upsampling, exactly -------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize(("height", "width", "k_up"), [(7, 9, 5), (1, 1, 5), (5, 8, 3), (6, 5, 1)])
def test_one_hot_centre_kernels_give_nearest_upsampling_exactly(scale: int, height: int, width: int, k_up: int) -> None:
    x = torch.randn(2, 4, height, width)
    kernels = torch.zeros(2, k_up * k_up, scale * scale, height, width)
    kernels[:, k_up * k_up // 2] = 1.0
    expected = F.interpolate(x, scale_factor=scale, mode="nearest")
    for out in both_routes(x, kernels, scale):
        assert torch.equal(out, expected)


def test_module_with_centre_logits_dominating_is_nearest_upsampling() -> None:
    # Softmax never gives an exact one-hot, but with a logit gap of 200 the other taps weigh exp(-200) < 1e-86, so
    # float32 rounds the kernel to one-hot: the module's own kernel path puts the centre tap where it belongs.
    up = CARAFE(4, compressed_channels=3)
    centre = up.k_up * up.k_up // 2
    with torch.no_grad():
        up.encoder.weight.zero_()
        up.encoder.bias.zero_()
        up.encoder.bias[centre * 4 : (centre + 1) * 4] = 200.0  # tap t, phase p is channel t * s * s + p
    x = torch.randn(2, 4, 7, 9)
    assert torch.equal(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))


# --- (2) uniform kernels: box filter then nearest upsampling -------------------------------------------------------


def box_then_nearest(x: torch.Tensor, k_up: int, scale: int) -> torch.Tensor:
    # avg_pool2d with count_include_pad=True is the zero-padded k x k sum divided by k**2 at every pixel.
    box = F.avg_pool2d(x, k_up, stride=1, padding=k_up // 2, count_include_pad=True)
    return F.interpolate(box, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize(("scale", "k_up", "height", "width"), [(2, 5, 7, 9), (2, 3, 1, 6), (3, 5, 5, 4), (4, 5, 3, 2)])
def test_zero_encoder_gives_box_filter_then_nearest(scale: int, k_up: int, height: int, width: int) -> None:
    up = CARAFE(6, scale=scale, k_up=k_up)
    with torch.no_grad():
        up.encoder.weight.zero_()
        up.encoder.bias.zero_()
    x = torch.randn(2, 6, height, width)
    expected = box_then_nearest(x, k_up, scale)
    with torch.no_grad():
        torch.testing.assert_close(up(x), expected)
    torch.testing.assert_close(up(x), expected)  # the autograd route (the parameters require grad)


def test_fresh_module_starts_near_the_box_filter_as_documented() -> None:
    # The paper's start: normal(std 0.001) encoder, so kernels within ~1 % of uniform, not exactly uniform.
    up = CARAFE(16)
    assert up.encoder.bias.abs().max() == 0 and up.compressor.bias.abs().max() == 0
    assert 0.0008 < up.encoder.weight.std().item() < 0.0012
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        out, box = up(x), box_then_nearest(x, 5, 2)
    assert not torch.equal(out, box)
    torch.testing.assert_close(out, box, atol=0.02, rtol=0.0)
    up.encoder.weight.data.zero_()
    up.reset_parameters()  # safe to call again: the same scheme
    assert 0.0008 < up.encoder.weight.std().item() < 0.0012


# --- (3) forward and backward against the unfold implementation ----------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize(("height", "width"), [(7, 9), (5, 4), (1, 3)])
def test_forward_and_gradients_match_the_unfold_reference(scale: int, height: int, width: int) -> None:
    up = randomize(CARAFE(5, scale=scale, compressed_channels=4)).double()
    reference = randomize(CARAFE(5, scale=scale, compressed_channels=4)).double()
    reference.load_state_dict(up.state_dict())
    x = torch.randn(2, 5, height, width, dtype=torch.float64, requires_grad=True)
    x_reference = x.detach().clone().requires_grad_()
    out, expected = up(x), reference_forward(reference, x_reference)
    torch.testing.assert_close(out, expected)
    weights = torch.randn_like(out)  # a generic upstream gradient
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_reference.grad)
    for name, parameter in up.named_parameters():
        reference_grad = reference.get_parameter(name).grad
        assert parameter.grad.abs().max() > 0, name  # gradients reach compressor and encoder
        torch.testing.assert_close(parameter.grad, reference_grad, msg=name)


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize(("height", "width", "channels"), [(7, 9, 5), (1, 1, 3), (13, 6, 130)])
def test_inference_route_matches_the_unfold_reference(scale: int, height: int, width: int, channels: int) -> None:
    # 130 channels: more than one block of the inference route (INFERENCE_CHANNEL_CHUNK) and a partial last one.
    x = torch.randn(2, channels, height, width, dtype=torch.float64)
    kernels = torch.rand(2, 25, scale * height, scale * width, dtype=torch.float64).softmax(dim=1)
    expected = reference_reassemble(x, kernels, scale)
    for out in both_routes(x, phase_major(kernels, scale), scale):
        torch.testing.assert_close(out, expected)


def test_gradcheck_on_a_tiny_float64_case() -> None:
    up = randomize(CARAFE(2, compressed_channels=2, k_up=3)).double()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: up(t, size=(5, 8)), (x,))


# --- (4) batch composition ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_grad", [False, True])
def test_output_of_one_image_does_not_depend_on_the_batch(use_grad: bool) -> None:
    up = randomize(CARAFE(8, compressed_channels=4))
    batch = torch.randn(3, 8, 9, 7)
    with torch.set_grad_enabled(use_grad):
        alone = up(batch[1:2])
        together = up(batch)
        reordered = up(batch.flip(0))
    torch.testing.assert_close(alone[0], together[1])
    torch.testing.assert_close(reordered[2], together[0])


# --- (5) sizes and errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, (34, 50)),
        ({"scale_factor": 2}, (34, 50)),
        ({"scale_factor": 2.0}, (34, 50)),
        ({"size": (33, 49)}, (33, 49)),
        ({"size": 40}, (40, 40)),
        ({"scale_factor": 1.5}, (25, 37)),  # floor(17 * 1.5), floor(25 * 1.5), F.interpolate's rule
        ({"scale_factor": (2, 3)}, (34, 75)),
        ({"scale_factor": 4}, (68, 100)),
    ],
)
def test_output_size_follows_f_interpolate(kwargs: dict, expected: tuple[int, int]) -> None:
    up = CARAFE(4, compressed_channels=4)
    x = torch.randn(2, 4, 17, 25)
    assert tuple(up(x, **kwargs).shape) == (2, 4, *expected)
    assert F.interpolate(x, **(kwargs or {"scale_factor": 2})).shape[-2:] == expected  # neither means scale (2)


def test_odd_target_is_the_scale_times_map_resized_bilinearly() -> None:
    # Pins the documented rule for 17x25 -> 33x49 (an odd FPN level): compute at 34x50, then resize bilinearly.
    up = randomize(CARAFE(4, compressed_channels=4))
    x = torch.randn(2, 4, 17, 25)
    with torch.no_grad():
        expected = F.interpolate(up(x), size=(33, 49), mode="bilinear", align_corners=False)
        torch.testing.assert_close(up(x, size=(33, 49)), expected)


def test_larger_requests_chain_passes() -> None:
    up = randomize(CARAFE(4, compressed_channels=4))
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        twice = up(up(x))
        torch.testing.assert_close(up(x, scale_factor=4), twice)
        # x3 needs two x2 passes (x4), then the bilinear resize to 15x18.
        torch.testing.assert_close(up(x, scale_factor=3), F.interpolate(twice, size=(15, 18), mode="bilinear"))
    three = randomize(CARAFE(4, scale=3, compressed_channels=4))
    with torch.no_grad():
        # x9 with scale 3 is exactly two passes (integer arithmetic: log(9) / log(3) rounds above 2).
        torch.testing.assert_close(three(x, scale_factor=9), three(three(x)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (8, 12)}, r"only enlarges feature maps: input is 17x25, requested 8x12 \(size=\(8, 12\)"),
        ({"size": (17, 25)}, "only enlarges feature maps: input is 17x25, requested 17x25"),
        ({"scale_factor": 0.5}, r"requested 8x12 \(size=None, scale_factor=0.5\)"),
        ({"scale_factor": 17}, "at most MAX_SCALE_FACTOR=16 times per call"),
        ({"size": (34, 50), "scale_factor": 2}, "exactly one of size or scale_factor"),
        ({"size": (1, 2, 3)}, "size must be a number or a pair"),
        ({"scale_factor": -2}, "scale_factor must be positive"),
    ],
)
def test_bad_requests_raise_value_error_naming_the_value(kwargs: dict, match: str) -> None:
    up = CARAFE(4, compressed_channels=4)
    with pytest.raises(ValueError, match=match):
        up(torch.randn(1, 4, 17, 25), **kwargs)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(4, 5, 5), ValueError, "4D tensor of shape"),
        (torch.ones(1, 4, 5, 5, dtype=torch.int64), TypeError, "floating point"),
        (torch.randn(1, 3, 5, 5), ValueError, "built with in_channels=4"),
        (torch.randn(1, 4, 0, 5), ValueError, "H >= 1 and W >= 1"),
        ([[1.0]], TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise(x: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CARAFE(4, compressed_channels=4)(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 0}, ValueError, "in_channels must be a positive int, got 0"),
        ({"scale": 1}, ValueError, "scale must be an int between 2 and 16, got 1"),
        ({"scale": 2.0}, TypeError, "scale must be an int between 2 and 16"),
        ({"k_up": 4}, ValueError, "k_up must be an odd positive int, got 4"),
        ({"k_enc": True}, TypeError, "k_enc must be a positive int"),
        ({"compressed_channels": 0}, ValueError, "compressed_channels must be a positive int, got 0"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CARAFE(**{"in_channels": 4, **kwargs})


def test_parameter_count_and_repr() -> None:
    up = CARAFE(256)
    # Compressor 256 -> 64 (1x1, bias) and encoder 64 -> 2**2 * 5**2 (3x3, bias): the paper's defaults.
    assert sum(p.numel() for p in up.parameters()) == (256 * 64 + 64) + (64 * 100 * 9 + 100) == 74148
    assert "in_channels=256, scale=2, compressed_channels=64, k_up=5, k_enc=3" in repr(up)


# --- (6) memory format and precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_grad", [False, True])
def test_channels_last_input_gives_the_same_numbers_and_keeps_its_format(use_grad: bool) -> None:
    up = randomize(CARAFE(8, compressed_channels=4))
    x = torch.randn(2, 8, 9, 11)
    with torch.set_grad_enabled(use_grad):
        expected = up(x)
        out = up(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert expected.is_contiguous()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_bf16_autocast_runs_and_matches_float32(input_dtype: torch.dtype) -> None:
    up = randomize(CARAFE(8, compressed_channels=4), std=0.1)
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        expected = up(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = up(x.to(input_dtype), size=(17, 21))
            assert out.dtype == input_dtype  # reassembly runs in the input's dtype
            out = up(x.to(input_dtype))
    # bf16 keeps 8 bits of mantissa: logits and (for a bf16 input) the sums are rounded at ~0.4 % relative.
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    up = randomize(CARAFE(8, compressed_channels=4))
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        expected = up(x, size=(17, 21))
        out = up.cuda()(x.cuda(), size=(17, 21))
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)


# --- drop-in use ------------------------------------------------------------------------------------------------


def test_patch_fpn_routes_a_feature_pyramid_network_to_carafe() -> None:
    fpn = FeaturePyramidNetwork([8, 16], 8)
    up = CARAFE(8, compressed_channels=4)
    fpn, report = patch_fpn(fpn, up, strict=True)
    assert len(report.replaced) == 1
    features = {"0": torch.rand(2, 8, 17, 25), "1": torch.rand(2, 16, 9, 13)}
    with torch.no_grad():
        out = fpn(features)
    assert out["0"].shape == (2, 8, 17, 25)
    assert any(module is up for module in fpn.modules())


# --- (7) boundaries, routes and messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"k_up": 4},
            r"k_up must be an odd positive int, got 4; the neighbourhood is centred on the source pixel \(the",
        ),
        ({"k_enc": 2}, r"k_enc must be an odd positive int, got 2; the encoder keeps the input's size with padding"),
        ({"k_up": -1}, "k_up must be a positive int, got -1"),  # odd, but not a size
        ({"k_enc": -3}, "k_enc must be a positive int, got -3"),
    ],
)
def test_kernel_sizes_must_be_odd_and_positive_and_the_message_says_why(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CARAFE(4, **kwargs)


@pytest.mark.parametrize("k_enc", [1, 3, 5, 7])
def test_the_encoder_keeps_the_input_size_for_every_odd_k_enc(k_enc: int) -> None:
    up = CARAFE(4, compressed_channels=4, k_enc=k_enc)
    assert up.encoder.padding == (k_enc // 2, k_enc // 2)
    assert tuple(up.kernels(torch.randn(1, 4, 7, 9)).shape) == (1, 25, 4, 7, 9)
    assert tuple(up(torch.randn(1, 4, 7, 9)).shape) == (1, 4, 14, 18)


def test_kernels_of_a_bfloat16_module_are_float32_and_sum_to_one() -> None:
    up = randomize(CARAFE(4, compressed_channels=4)).to(torch.bfloat16)
    kernels = up.kernels(torch.randn(1, 4, 5, 6, dtype=torch.bfloat16))
    assert kernels.dtype == torch.float32
    torch.testing.assert_close(kernels.sum(dim=1), torch.ones(1, 4, 5, 6))


@pytest.mark.parametrize("use_grad", [False, True])
def test_reassembly_computes_in_the_dtype_of_x(use_grad: bool) -> None:
    x = torch.randn(1, 3, 4, 5, dtype=torch.bfloat16, requires_grad=use_grad)
    grid_kernels = torch.softmax(torch.randn(1, 9, 8, 10), dim=1)  # float32, on the output grid
    out = reassemble(x, phase_major(grid_kernels, 2), 2)
    assert out.dtype == torch.bfloat16
    expected = reference_reassemble(x.detach().float(), grid_kernels.bfloat16().float(), 2)
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize(
    ("case", "route"),
    [
        ("grad enabled, nothing requires a gradient", "inference"),
        ("no_grad", "inference"),
        ("x requires a gradient", "differentiable"),
        ("kernels require a gradient", "differentiable"),
        ("x requires a gradient under no_grad", "inference"),
        ("compiling", "differentiable"),
        ("exporting", "differentiable"),
        ("another device", "differentiable"),
    ],
)
def test_reassemble_takes_the_documented_route(monkeypatch, case: str, route: str) -> None:
    from srf_upsample import carafe

    taken = []
    for name in ("inference", "differentiable"):
        original = getattr(carafe, f"_reassemble_{name}")
        monkeypatch.setattr(carafe, f"_reassemble_{name}", lambda *a, _n=name, _f=original: taken.append(_n) or _f(*a))
    x, kernels = torch.randn(1, 2, 3, 4), torch.softmax(torch.randn(1, 9, 4, 3, 4), dim=1)
    grad = case != "no_grad" and "under no_grad" not in case
    x.requires_grad_(case.startswith("x requires"))
    kernels.requires_grad_(case.startswith("kernels"))
    if case in ("compiling", "exporting"):
        monkeypatch.setattr(torch.compiler, f"is_{case}", lambda: True)
    if case == "another device":
        x = x.to("meta")  # not the CPU: the 2D route, whatever the autograd state
        kernels = kernels.to("meta")
    with torch.set_grad_enabled(grad):
        out = reassemble(x, kernels, 2)
    assert taken == [route] and tuple(out.shape) == (1, 2, 6, 8)


def test_a_non_contiguous_nchw_input_gives_a_contiguous_nchw_output() -> None:
    up = randomize(CARAFE(4, compressed_channels=4))
    x = torch.randn(1, 4, 7, 18)[..., ::2]  # strided: neither contiguous nor channels_last
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = up(x)
        assert out.is_contiguous()
        torch.testing.assert_close(out, up(x.contiguous()))


def test_a_request_at_scale_times_makes_no_resize_even_when_channels_equal_the_size() -> None:
    up = randomize(CARAFE(8, compressed_channels=4))
    x = torch.randn(1, 8, 4, 4)  # output 8x8: channels, height and width all 8
    with torch.no_grad():
        torch.testing.assert_close(up(x), reassemble(x, up.kernels(x), 2), rtol=0, atol=0)


@pytest.mark.parametrize(("size", "passes"), [((17, 50), 1), ((34, 25), 1), ((17, 100), 2), ((68, 25), 2)])
def test_enlarging_one_side_and_keeping_the_other_is_accepted(size: tuple[int, int], passes: int) -> None:
    up = randomize(CARAFE(4, compressed_channels=4))
    x = torch.randn(1, 4, 17, 25)
    with torch.no_grad():
        full = up(x) if passes == 1 else up(up(x))
        torch.testing.assert_close(up(x, size=size), F.interpolate(full, size=size, mode="bilinear"))


@pytest.mark.parametrize("size", [(34, 24), (16, 50)])
def test_enlarging_one_side_and_shrinking_the_other_is_refused(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=f"only enlarges feature maps: input is 17x25, requested {size[0]}x{size[1]}"):
        CARAFE(4, compressed_channels=4)(torch.randn(1, 4, 17, 25), size=size)


def test_exactly_max_scale_factor_per_side_is_accepted_and_one_more_pixel_is_not() -> None:
    up = CARAFE(4, compressed_channels=4)
    x = torch.randn(1, 4, 2, 3)
    assert tuple(up(x, size=(32, 48)).shape) == (1, 4, 32, 48)
    for size in ((33, 48), (32, 49), (33, 6)):
        with pytest.raises(ValueError) as error:
            up(x, size=size)
        message = str(error.value)
        assert f"at most MAX_SCALE_FACTOR=16 times per call: input is 2x3, requested {size[0]}x{size[1]}" in message
        assert message.endswith(
            "Ask for at most 32x48, and resize further with F.interpolate if a larger map is really meant."
        )


def test_a_bool_scale_factor_is_a_type_error_not_a_size() -> None:
    with pytest.raises(TypeError, match="scale_factor must be a positive float or a pair of them, got True"):
        CARAFE(4, compressed_channels=4)(torch.randn(1, 4, 5, 5), scale_factor=True)


def test_torch_export_with_dynamic_sizes_gives_the_eager_numbers() -> None:
    up = randomize(CARAFE(4, compressed_channels=4, k_up=3)).eval()
    height, width = torch.export.Dim("height", min=2, max=64), torch.export.Dim("width", min=2, max=64)
    program = torch.export.export(up, (torch.randn(1, 4, 6, 7),), dynamic_shapes=({2: height, 3: width},))
    x = torch.randn(1, 4, 9, 5)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), up(x))
