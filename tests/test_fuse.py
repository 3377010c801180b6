"""SRFUpsample's inference path: fuse() folds BatchNorm exactly; channels_last and torch.compile keep the output."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _helpers import trained_looking

from srf_upsample import SRFUpsample


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _trained_looking(variant: str, norm: str = "batch", deconv_kernel: int = 6, channels: int = 8) -> SRFUpsample:
    """Two residual blocks with trained-looking weights (BN statistics, or non-zero last convs with norm="none")."""
    return trained_looking(variant, channels, num_blocks=2, norm=norm, deconv_kernel=deconv_kernel)


def _max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    # Relative to the output's scale, not elementwise: elementwise relative error is meaningless near zeros.
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("variant", ["paper", "lite"])
@pytest.mark.parametrize("deconv_kernel", [4, 6])
@pytest.mark.parametrize(("in_size", "out_size"), [((5, 7), (10, 14)), ((9, 16), (17, 31)), ((5, 6), (20, 24))])
def test_fuse_matches_unfused_within_1e_5_relative(
    variant: str, deconv_kernel: int, in_size: tuple[int, int], out_size
) -> None:
    module = _trained_looking(variant, deconv_kernel=deconv_kernel)
    fused = copy.deepcopy(module).fuse()
    x = torch.randn(2, 8, *in_size)
    with torch.no_grad():
        expected = module(x, size=out_size)
        actual = fused(x, size=out_size)
    assert actual.shape == (2, 8, *out_size)
    assert _max_relative_error(actual, expected) <= 1e-5


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_fuse_without_normalisation_changes_nothing(variant: str) -> None:
    # norm="none" has no BatchNorm to fold: fuse() still works (so inference code can always call it), marks the
    # module fused and leaves every weight and every output as it was.
    module = _trained_looking(variant, norm="none")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(2, 8, 9, 16)
    with torch.no_grad():
        expected = module(x, size=(17, 31))
        assert module.fuse() is module and module.is_fused
        actual = module(x, size=(17, 31))
    assert module.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("variant", ["paper", "lite"])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_fuse_removes_every_batchnorm_in_place_and_returns_self(variant: str, norm: str) -> None:
    module = _trained_looking(variant, norm)
    assert module.fuse() is module
    assert module.is_fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.fuse()  # a second call is a no-op, not a second fold
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_fuse_needs_eval_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        SRFUpsample(8, hidden_channels=8, num_blocks=1, variant="lite").train().fuse()
    with pytest.raises(ValueError, match="eval mode"):
        SRFUpsample(8, hidden_channels=8, num_blocks=1, norm="batch").train().fuse()


@pytest.mark.parametrize("variant", ["paper", "lite"])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_channels_last_gives_the_same_output(variant: str, norm: str) -> None:
    module = _trained_looking(variant, norm).fuse()
    fast = copy.deepcopy(module).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 9, 16)
    with torch.inference_mode():
        expected = module(x, size=(17, 31))
        actual = fast(x.contiguous(memory_format=torch.channels_last), size=(17, 31))
    # Not bit-exact: channels_last selects other convolution kernels, which sum in another order.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_torch_compile_traces_without_graph_breaks(variant: str) -> None:
    # backend="aot_eager" runs Dynamo's tracing (fullgraph=True fails on any graph break) and AOTAutograd, but no
    # code generation: seconds instead of the minute Inductor needs on a 2-core CPU (see the slow test below).
    module = _trained_looking(variant).fuse()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 8, 5, 7)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x, size=(10, 14)), module(x, size=(10, 14)))


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager() -> None:
    # The default backend generates and compiles C++ for the CPU: about a minute on a 2-core machine.
    torch._dynamo.reset()
    module = _trained_looking("lite").fuse()
    compiled = torch.compile(module)
    x = torch.randn(2, 8, 5, 7)
    with torch.inference_mode():
        # Inductor fuses and reorders arithmetic, so allow float32 rounding differences.
        torch.testing.assert_close(compiled(x, size=(10, 14)), module(x, size=(10, 14)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("size", [(5, 7), (8, 8)])
def test_lite_fast_inference_pass_matches_the_reference_pass(norm: str, size: tuple[int, int]) -> None:
    # Pins that the rearranged lite inference route (in-place GEMM tail, bias before the shortcut) computes the same
    # function as the module-by-module pass, so generators trained with the lite architecture give the same outputs.
    torch.manual_seed(0)
    fast = SRFUpsample(8, variant="lite", hidden_channels=8, norm=norm)
    with torch.no_grad():
        for parameter in fast.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    fast = fast.eval().fuse()
    reference = copy.deepcopy(fast)
    reference.use_fast_inference = False
    x = torch.randn(2, 8, *size)
    target = (2 * size[0], 2 * size[1])
    with torch.no_grad():
        expected = reference(x)
        assert fast.uses_fast_pass(x, target) and not reference.uses_fast_pass(x, target)
        torch.testing.assert_close(fast(x), expected)
        # The plain route of single_pass is what residual() gives: the fast route shares its layers (_features).
        shortcut = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        torch.testing.assert_close(reference.single_pass(x, target), shortcut + reference.residual(x), rtol=0, atol=0)
        # Targets other than an exact x2 take the reference route.
        assert not fast.uses_fast_pass(x, (2 * size[0] - 1, 2 * size[1]))
        torch.testing.assert_close(
            fast(x, size=(2 * size[0] - 1, 2 * size[1])), reference(x, size=(2 * size[0] - 1, 2 * size[1]))
        )
    # With autograd on, the reference route runs (the fast one works in place).
    assert not fast.uses_fast_pass(x, target)
    torch.testing.assert_close(fast(x), expected)


def test_fast_route_leaves_the_input_and_weights_alone() -> None:
    # The fast route writes in place: it must write only into tensors it made, never into x or a parameter.
    module = SRFUpsample(8, variant="lite", hidden_channels=8).eval()
    x = torch.randn(2, 8, 5, 7)
    before = (x.clone(), {k: v.clone() for k, v in module.state_dict().items()})
    with torch.no_grad():
        assert module.uses_fast_pass(x, (10, 14))
        module(x)
    torch.testing.assert_close(x, before[0], rtol=0, atol=0)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, before[1][key], rtol=0, atol=0)
