import copy
import json

import pytest
import torch
import torch.nn.functional as F
from _helpers import give_trained_weights
from torch import nn

from srf_upsample import SRFUpsample
from srf_upsample.hub import CONFIG_NAME, shipped_weights_dir
from srf_upsample.upsample import MAX_SCALE_FACTOR

PAPER_SHIPPED = "srf-paper-mobilenetv2-fpn"
LITE_SHIPPED = "srf-lite-mobilenetv2-fpn"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(**kwargs) -> SRFUpsample:
    kwargs.setdefault("hidden_channels", 8)
    kwargs.setdefault("num_blocks", 1)
    return SRFUpsample(4, **kwargs)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_is_the_paper_generator():
    # Pins the paper's architecture (section 3.1): 256-wide body, 5 residual blocks, deconv x2, 1x1 back to C. The
    # deconvolution is 6x6, stride 2, padding 2 (Table 1's +10 M per detector and the authors' released generator),
    # and the residual blocks have no normalisation (the authors' code; see docs/paper_fidelity.md).
    up = SRFUpsample()
    assert up.variant == "paper" and up.hidden_channels == 256 and up.num_blocks == 5
    assert up.deconv_kernel == 6 and up.norm == "none"
    assert len(up.body) == 5
    deconv = up.upsample[2]
    assert isinstance(deconv, nn.ConvTranspose2d)
    assert deconv.kernel_size == (6, 6) and deconv.stride == (2, 2) and deconv.padding == (2, 2)
    assert up.tail.kernel_size == (1, 1) and up.tail.out_channels == 256
    assert not any(isinstance(m, nn.BatchNorm2d) for m in up.modules())
    assert num_parameters(up) == 9_506_304


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # Pins the README's parameter table. The paper default is about 9.5 M, what Table 1's "+10 M" implies.
        ({}, 9_506_304),
        ({"deconv_kernel": 4}, 8_195_584),
        # The generator of earlier versions (and of the shipped weights): 4x4 deconvolution, BN in the blocks.
        ({"deconv_kernel": 4, "norm": "batch"}, 8_198_144),
        ({"norm": "batch"}, 9_508_864),
        ({"variant": "lite"}, 68_672),
        ({"variant": "lite", "norm": "batch"}, 68_928),
        # The lite variant has no deconvolution: deconv_kernel changes nothing there.
        ({"variant": "lite", "deconv_kernel": 4}, 68_672),
    ],
)
def test_parameter_counts(kwargs, expected):
    assert num_parameters(SRFUpsample(256, **kwargs)) == expected


def test_lite_variant_is_much_smaller():
    lite = SRFUpsample(variant="lite")
    assert num_parameters(lite) < 0.01 * num_parameters(SRFUpsample())


@pytest.mark.parametrize("deconv_kernel", [2, 4, 6, 8])
@pytest.mark.parametrize(("in_size", "out_size"), [((5, 7), (10, 14)), ((9, 13), (17, 25)), ((5, 6), (20, 24))])
def test_every_even_deconv_kernel_doubles_exactly(deconv_kernel, in_size, out_size):
    # padding = kernel / 2 - 1 makes the transposed conv exactly x2 for every even kernel, so the size rule
    # (odd targets, chained passes) does not depend on the kernel.
    up = tiny(deconv_kernel=deconv_kernel).eval()
    x = torch.randn(2, 4, *in_size)
    assert up.residual(x).shape == (2, 4, 2 * in_size[0], 2 * in_size[1])
    assert up(x, size=out_size).shape == (2, 4, *out_size)


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
@pytest.mark.parametrize("variant", ["paper", "lite"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_output_has_exactly_the_requested_size(in_size, kwargs, expected, variant, norm):
    up = tiny(variant=variant, norm=norm)
    out = up(torch.randn(2, 4, *in_size), **kwargs)
    assert out.shape == (2, 4, *expected)
    ref = F.interpolate(torch.randn(2, 4, *in_size), mode="nearest", **(kwargs or {"scale_factor": 2}))
    assert out.shape == ref.shape  # same size rule as F.interpolate


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant", ["paper", "lite"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_any_batch_size_and_gradients_reach_every_parameter(batch, variant, norm):
    # trained_like: at initialisation a norm="none" block's first conv gets no gradient (the zero-initialised conv
    # after it blocks it), exactly as with torchvision's zero_init_residual; after one step it does.
    up = give_trained_weights(tiny(variant=variant, norm=norm)).train()
    x = torch.randn(batch, 4, 5, 7, requires_grad=True)
    up(x, size=(9, 13)).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in up.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_gradcheck_float64(norm):
    up = give_trained_weights(SRFUpsample(2, hidden_channels=2, num_blocks=1, norm=norm)).double().eval()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: up(t, size=(5, 7)), (x,))


def test_zero_init_residual_equals_bilinear():
    # Pins our (non-paper) option: a fresh zero-init module is exactly bilinear interpolation.
    up = tiny(zero_init_residual=True).eval()
    x = torch.randn(2, 4, 9, 13)
    expected = F.interpolate(x, size=(17, 25), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x, size=(17, 25)), expected)


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_norm_none_blocks_start_as_the_identity(variant):
    # Pins our initialisation for norm="none" (Fixup / zero-init-residual style): the last conv of every residual
    # block starts at zero, so the whole body is the identity however many blocks it has; the rest is He-initialised.
    up = tiny(variant=variant, num_blocks=3).eval()
    for block in up.body:
        assert block.last_conv.weight.abs().sum() == 0 and block.last_conv.bias.abs().sum() == 0
    hidden = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        assert torch.equal(up.body(hidden), hidden)
    up.reset_parameters()  # calling it again keeps the rule
    assert all(block.last_conv.weight.abs().sum() == 0 for block in up.body)


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_norm_batch_keeps_the_papers_block(variant):
    up = tiny(variant=variant, norm="batch", num_blocks=2)
    for block in up.body:
        assert isinstance(block.bn1, nn.BatchNorm2d) and isinstance(block.bn2, nn.BatchNorm2d)
        assert block.last_conv.bias is None  # BN would cancel a bias
        assert block.last_conv.weight.abs().sum() > 0


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_norm_none_output_is_the_same_in_train_and_eval_mode(variant):
    # Why norm="none" is the default: one G serves every pyramid level, and BN would normalise each call with its own
    # level's statistics in training but with running statistics mixed over the levels in eval mode. Without it,
    # training and inference compute the same function, bit for bit, on every level.
    up = give_trained_weights(tiny(variant=variant, num_blocks=2))
    levels = [torch.randn(2, 4, 5, 7), 3.0 * torch.randn(2, 4, 10, 14) + 1.0, torch.randn(2, 4, 20, 28)]
    with torch.no_grad():
        trained = [up.train()(level) for level in levels]
        inferred = [up.eval()(level) for level in levels]
    for train_out, eval_out in zip(trained, inferred, strict=True):
        assert torch.equal(train_out, eval_out)


def test_norm_batch_output_differs_between_train_and_eval_mode():
    # The problem the default avoids, shown on the paper's block: the same input gives another output in eval mode.
    up = tiny(norm="batch")
    x = 3.0 * torch.randn(2, 4, 5, 7) + 1.0
    with torch.no_grad():
        assert not torch.allclose(up.train()(x), up.eval()(x))


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


@pytest.mark.parametrize("deconv_kernel", [4, 6])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_x4_chains_two_passes(deconv_kernel, norm):
    up = give_trained_weights(tiny(deconv_kernel=deconv_kernel, norm=norm)).eval()
    x = torch.randn(1, 4, 5, 7)
    torch.testing.assert_close(up(x, scale_factor=4), up(up(x)))
    torch.testing.assert_close(up(x, size=(19, 27)), up(up(x), size=(19, 27)))


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_single_pass_always_resizing_gives_the_same_numbers(variant):
    # Pins what the one single-pass method relies on under torch.export (symbolic sizes): resizing the (2H, 2W)
    # residual to (2H, 2W) with bilinear, align_corners=False, is an exact identity, so always resizing (export) and
    # skipping the no-op resize (eager) give bit-identical outputs.
    up = give_trained_weights(tiny(variant=variant)).eval()
    x = torch.randn(2, 4, 9, 13)
    with torch.no_grad():
        residual = up.residual(x)
        resized = F.interpolate(residual, size=(18, 26), mode="bilinear", align_corners=False)
        expected = F.interpolate(x, size=(18, 26), mode="bilinear", align_corners=False) + resized
        assert torch.equal(resized, residual)
        assert torch.equal(up(x), expected)


def test_bfloat16_autocast():
    up = tiny().eval()
    x = torch.randn(2, 4, 9, 13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = up(x, size=(17, 25))
    assert out.shape == (2, 4, 17, 25) and torch.isfinite(out).all()
    # bfloat16 keeps ~3 significant digits; compare loosely to the float32 result.
    torch.testing.assert_close(out.float(), up(x, size=(17, 25)), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("variant", ["paper", "lite"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_bfloat16_module_matches_float32(variant, norm):
    up = give_trained_weights(tiny(variant=variant, norm=norm)).eval()
    x = torch.randn(2, 4, 9, 13).to(torch.bfloat16)
    with torch.no_grad():
        expected = up(x.float())  # float32 on the same (bf16-rounded) input: only the module's arithmetic differs
        out = copy.deepcopy(up).to(torch.bfloat16)(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 18, 26)
    # bfloat16 keeps 8 significant bits (eps = 2^-8 = 0.4 %); rounding in each of the ~6 layers compounds to about
    # 1 % of the output's scale (measured 0.6-0.9 %). 3 % leaves headroom; a wrong computation (a lost residual or
    # layer, a wrong resize) is an error of 10-100 % of the scale.
    error = (out.float() - expected).abs().max() / expected.abs().max()
    assert error <= 0.03, error.item()


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


def test_size_as_a_tensor_is_a_type_error_naming_the_fix():
    # F.interpolate fails deep inside torch on a tensor size; the message must say what to pass instead.
    with pytest.raises(
        TypeError, match=r"size must be an int or a pair of them .*got a torch.Tensor.*tuple\(t.tolist\(\)\)"
    ):
        tiny()(torch.randn(1, 4, 8, 8), size=torch.tensor([16, 16]))
    with pytest.raises(TypeError, match=r"scale_factor must be a positive float or a pair of them .*torch.Tensor"):
        tiny()(torch.randn(1, 4, 8, 8), scale_factor=torch.tensor(2.0))


@pytest.mark.parametrize("shape", [(1, 4, 0, 8), (1, 4, 8, 0)])
def test_empty_input_is_a_value_error(shape):
    # Was a ZeroDivisionError from the pass count (log2 of out / 0).
    with pytest.raises(ValueError, match=r"x must have H >= 1 and W >= 1, got shape \(1, 4, (0, 8|8, 0)\)"):
        tiny()(torch.randn(*shape), size=(16, 16))


@pytest.mark.parametrize("kwargs", [{"scale_factor": 1e6}, {"scale_factor": (2, 17)}, {"size": (16, 8 * 16 + 1)}])
def test_enlargement_beyond_the_cap_is_refused_at_once(kwargs):
    # Pins MAX_SCALE_FACTOR (16 per side, four passes): scale_factor=1e6 used to chain passes until memory ran out.
    with pytest.raises(ValueError, match=r"at most MAX_SCALE_FACTOR=16 times .*input is 8x8.*at most 128x128"):
        tiny()(torch.randn(1, 4, 8, 8), **kwargs)


def test_the_cap_itself_is_allowed():
    assert MAX_SCALE_FACTOR == 16
    assert tiny()(torch.randn(1, 4, 3, 2), scale_factor=16).shape == (1, 4, 48, 32)


def test_non_float_input_raises_type_error():
    with pytest.raises(TypeError, match="floating point"):
        tiny()(torch.zeros(1, 4, 8, 8, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 0}, ValueError, "in_channels must be a positive int, got 0"),
        ({"in_channels": 2.5}, TypeError, "in_channels"),
        ({"variant": "huge"}, ValueError, r"variant must be one of \['guided', 'lite', 'paper'\]"),
        ({"hidden_channels": -1}, ValueError, "hidden_channels"),
        ({"deconv_kernel": 5}, ValueError, r"deconv_kernel must be an even int >= 2, got 5; use 6"),
        ({"deconv_kernel": 0}, ValueError, r"deconv_kernel must be an even int >= 2, got 0"),
        # A wrong type is a TypeError and a wrong value a ValueError, for every argument (STYLE.md section 5).
        ({"deconv_kernel": 4.0}, TypeError, r"deconv_kernel must be an even int >= 2, got 4\.0 of type float"),
        ({"deconv_kernel": True}, TypeError, r"deconv_kernel must be an even int >= 2, got True of type bool"),
        ({"norm": "group"}, ValueError, r"norm must be one of \['batch', 'none'\], got 'group'"),
        ({"norm": None}, TypeError, r"norm must be one of \['batch', 'none'\], got None of type NoneType"),
        ({"hidden_channels": 2.0}, TypeError, "hidden_channels must be a positive int, got 2.0 of type float"),
        ({"num_blocks": -1}, ValueError, r"num_blocks must be an int >= 0, got -1"),
        ({"num_blocks": 1.5}, TypeError, r"num_blocks must be an int >= 0, got 1.5 of type float"),
        ({"negative_slope": -0.1}, ValueError, r"negative_slope must be a float in \[0, inf\), got -0.1"),
        ({"negative_slope": "0.2"}, TypeError, r"negative_slope must be a float in \[0, inf\), got '0.2' of type str"),
        ({"variant": 1}, TypeError, r"variant must be one of \['guided', 'lite', 'paper'\], got 1 of type int"),
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
    assert "deconv_kernel=4, norm='batch'" in repr(tiny(deconv_kernel=4, norm="batch"))


# Backward compatibility of saved generators ---------------------------------------------------------------------
# Generators saved before deconv_kernel and norm existed are a 4x4 deconvolution with BN; their config.json lacks both.


def _old_format_folder(tmp_path, variant: str):
    """A generator as an earlier version saved it: 4x4 deconvolution, BN, config.json without the two fields."""
    old = SRFUpsample(256, variant=variant, deconv_kernel=4, norm="batch", hidden_channels=16, num_blocks=1)
    with torch.no_grad():
        for module in old.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # trained-looking running statistics
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    folder = tmp_path / f"old-{variant}"
    old.save_pretrained(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    del config["deconv_kernel"], config["norm"]
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return old.eval(), folder


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_config_without_the_new_fields_loads_as_the_old_architecture(tmp_path, variant):
    # Missing fields read as 4 and "batch" (the behaviour of that version), not as today's defaults, and the weights
    # load strictly into them with the same outputs.
    old, folder = _old_format_folder(tmp_path, variant)
    loaded = SRFUpsample.from_pretrained(folder)
    assert (loaded.deconv_kernel, loaded.norm) == (4, "batch")
    x = torch.randn(2, 256, 6, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x, size=(11, 17)), old(x, size=(11, 17)))
        assert torch.equal(loaded(x, scale_factor=4), old(x, scale_factor=4))
    # Saving it again writes the fields explicitly, with the old values.
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / CONFIG_NAME).read_text())
    assert (again["deconv_kernel"], again["norm"]) == (4, "batch")


@pytest.mark.parametrize("name", [PAPER_SHIPPED, LITE_SHIPPED])
def test_shipped_configs_say_their_architecture(name):
    config = json.loads((shipped_weights_dir() / name / CONFIG_NAME).read_text())
    assert config["norm"] == "none" and config.get("deconv_kernel", 6) == 6
    generator = SRFUpsample.from_pretrained(name)  # strict: every key and shape of model.safetensors matches
    assert num_parameters(generator) == {PAPER_SHIPPED: 9_506_304, LITE_SHIPPED: 68_672}[name]


# Pinned from the shipped generators (float64 sums of the float32 output for a seeded 5x7 input upsampled to 9x13):
# the sum of |G(x) - bilinear(x)| and three output values. A regression guard for loading and computing them.
SHIPPED_REFERENCE = {
    PAPER_SHIPPED: (2365.0567591510335, [-1.6715847253799438, -0.22267033159732819, 0.5233649015426636]),
    LITE_SHIPPED: (1860.5806392922677, [-1.6644036769866943, -0.25567713379859924, 0.42151278257369995]),
}


@pytest.mark.parametrize("name", [PAPER_SHIPPED, LITE_SHIPPED])
def test_shipped_generators_give_the_pinned_outputs(name):
    generator = SRFUpsample.from_pretrained(name)
    x = torch.randn(1, 256, 5, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = generator(x, size=(9, 13)).double()
    residual = y - F.interpolate(x, size=(9, 13), mode="bilinear", align_corners=False).double()
    residual_l1, values = SHIPPED_REFERENCE[name]
    # Bit-identical on the machine that pinned them; other CPUs' conv kernels sum in another order (float32 rounding,
    # ~1e-6 relative). A changed architecture or computation moves these by 1e-2 or more.
    torch.testing.assert_close(residual.abs().sum().item(), residual_l1, rtol=1e-5, atol=0)
    torch.testing.assert_close(y[0, :3, 4, 6].tolist(), values, rtol=1e-5, atol=1e-6)


def test_new_saves_write_the_new_fields(tmp_path):
    up = give_trained_weights(tiny())
    up.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert (config["deconv_kernel"], config["norm"]) == (6, "none")
    loaded = SRFUpsample.from_pretrained(tmp_path)
    assert (loaded.deconv_kernel, loaded.norm) == (6, "none")
    x = torch.randn(2, 4, 5, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x, size=(9, 13)), up.eval()(x, size=(9, 13)))
