"""Which calls a patched site hands to the upsampler and which run the original F.interpolate, case by case."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import SMALL_SRF
from torch import nn

from srf_upsample import SRFUpsample
from srf_upsample.patch import enlarge_or_interpolate, patch_fpn


class Recorder(nn.Module):
    """An upsampler that records how it was called and answers with a constant map of the requested size."""

    def __init__(self, in_channels: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.calls: list[dict] = []

    def forward(self, x, size=None, scale_factor=None, guide=None):
        self.calls.append({"size": size, "scale_factor": scale_factor, "guide": guide})
        height, width = size if size is not None else (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
        return torch.full((x.shape[0], x.shape[1], height, width), 7.0)


@pytest.mark.parametrize(
    ("in_size", "out_size", "enlarges"),
    [
        ((4, 6), (8, 12), True),
        ((4, 6), (4, 12), True),  # one side kept, the other enlarged: an enlargement
        ((4, 6), (5, 6), True),
        ((1, 2), (4, 8), True),  # one side of 1 is no broadcast: only 1x1 is
        ((2, 1), (8, 4), True),
        ((8, 12), (16, 6), False),  # one side enlarged, the other shrunk
        ((8, 12), (7, 24), False),
        ((8, 12), (8, 12), False),  # same size
        ((8, 12), (8, 6), False),  # one side kept, the other shrunk
        ((8, 12), (4, 6), False),
        ((1, 1), (5, 7), False),  # broadcast from 1x1
    ],
)
def test_guard_serves_exactly_the_enlargements(in_size, out_size, enlarges):
    recorder = Recorder()
    x = torch.rand(2, 4, *in_size)
    out = enlarge_or_interpolate(recorder, x, size=out_size, mode="bilinear")
    assert tuple(out.shape) == (2, 4, *out_size)
    if enlarges:
        assert recorder.calls == [{"size": out_size, "scale_factor": None, "guide": None}]
        assert torch.equal(out, torch.full_like(out, 7.0))
    else:
        assert recorder.calls == []
        assert torch.equal(out, F.interpolate(x, size=out_size, mode="bilinear"))


def test_guard_passes_scale_factor_through_unchanged():
    recorder = Recorder()
    enlarge_or_interpolate(recorder, torch.rand(1, 4, 3, 5), scale_factor=2)
    assert recorder.calls == [{"size": None, "scale_factor": 2, "guide": None}]
    recorder.calls.clear()
    x = torch.rand(1, 4, 6, 10)
    assert torch.equal(enlarge_or_interpolate(recorder, x, scale_factor=0.5), F.interpolate(x, scale_factor=0.5))
    assert recorder.calls == []


@pytest.mark.parametrize(
    "x",
    [
        torch.arange(2 * 4 * 3 * 5, dtype=torch.uint8).view(2, 4, 3, 5),  # not floating point
        torch.rand(2, 4, 5),  # 3D: a sequence, not a feature map
    ],
)
def test_guard_runs_the_original_call_on_non_floating_and_non_4d_inputs(x):
    recorder = Recorder()
    size = (6, 10) if x.dim() == 4 else 10
    out = enlarge_or_interpolate(recorder, x, size=size)
    assert recorder.calls == []
    assert out.dtype == x.dtype and torch.equal(out, F.interpolate(x, size=size))


def test_a_patched_site_runs_the_original_call_on_a_uint8_map():
    # Patched on float maps; a uint8 map (e.g. a label image) enlarged at the same site must not reach the upsampler.
    patched, report = patch_fpn(Resize(), Recorder, example_inputs=(torch.rand(1, 4, 3, 5), torch.rand(1, 4, 6, 10)))
    assert len(report.replaced) == 1
    x = torch.arange(60, dtype=torch.uint8).view(1, 4, 3, 5)
    out = patched(x, torch.rand(1, 4, 6, 10))
    assert out.dtype == torch.uint8 and torch.equal(out, F.interpolate(x, size=(6, 10)))
    assert patched.get_submodule(report.replaced[0].upsampler).calls == []
    patched(torch.rand(1, 4, 3, 5), torch.rand(1, 4, 6, 10))  # a float map does
    assert len(patched.get_submodule(report.replaced[0].upsampler).calls) == 1


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "bilinear", "align_corners": True},
        {"mode": "bilinear", "antialias": True},
        {"mode": "bilinear", "recompute_scale_factor": True},
        {"mode": "bicubic"},
    ],
)
def test_guard_forwards_every_option_to_the_original_call(options):
    # A shrink by 0.6 of a 7x9 map: each option changes the result, so a dropped option would show.
    x = torch.rand(1, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, scale_factor=0.6, **options)
    assert not torch.equal(expected, F.interpolate(x, scale_factor=0.6, mode="nearest"))
    if options.get("mode") == "bilinear":
        assert not torch.equal(expected, F.interpolate(x, scale_factor=0.6, mode="bilinear"))
    assert torch.equal(enlarge_or_interpolate(Recorder(2), x, scale_factor=0.6, **options), expected)


@pytest.mark.parametrize(
    ("guide_shape", "passed"),
    [
        ((2, 4, 8, 12), True),
        ((2, 16, 8, 12), True),  # channels may differ (the lateral's): only batch and size must match
        ((1, 4, 8, 12), False),  # another batch
        ((2, 4, 8, 11), False),  # another size
        ((2, 4, 9, 12), False),
        ((4, 8, 12), False),  # not 4D
        ((2, 8, 12), False),  # not 4D, though its first and last two sizes match the output's
    ],
)
def test_guard_passes_a_guide_only_when_it_matches_the_output(guide_shape, passed):
    recorder = Recorder()
    guide = torch.rand(*guide_shape)
    enlarge_or_interpolate(recorder, torch.rand(2, 4, 4, 6), size=(8, 12), guide=guide)
    assert recorder.calls[0]["guide"] is (guide if passed else None)


def test_guard_sizes_a_scale_factor_call_from_height_and_width():
    # One channel, scale 2: 4x6 -> 8x12, an enlargement that takes the guide; sized from (C, H) it would look like
    # 2x8, a shrink of one side, and run the original call.
    recorder = Recorder(1)
    guide = torch.rand(2, 3, 8, 12)
    out = enlarge_or_interpolate(recorder, torch.rand(2, 1, 4, 6), scale_factor=2, guide=guide)
    assert tuple(out.shape) == (2, 1, 8, 12)
    assert len(recorder.calls) == 1
    assert recorder.calls[0]["scale_factor"] == 2 and recorder.calls[0]["guide"] is guide


def test_guard_ignores_the_guide_where_the_original_call_runs():
    recorder = Recorder()
    x = torch.rand(2, 4, 8, 12)
    out = enlarge_or_interpolate(recorder, x, size=(4, 6), guide=torch.rand(2, 4, 4, 6))
    assert recorder.calls == [] and torch.equal(out, F.interpolate(x, size=(4, 6)))


class Resize(nn.Module):
    """One call site resizing ``x`` to the size of ``y``."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=y.shape[-2:], mode="nearest")


@pytest.mark.parametrize(
    ("x_shape", "y_size", "reason"),
    [
        ((2, 4, 8, 12), (8, 6), "downsampling"),
        ((2, 4, 8, 12), (4, 12), "downsampling"),
        ((2, 4, 8, 12), (4, 6), "downsampling"),
        ((2, 4, 8, 12), (16, 6), "enlarges one side and shrinks the other"),
        ((2, 4, 8, 12), (4, 24), "enlarges one side and shrinks the other"),
        ((2, 4, 8, 12), (8, 12), "same-size resize"),
        ((2, 4, 1, 1), (8, 12), "broadcast from a 1x1 map (e.g. global pooling), not an enlargement"),
        ((2, 4, 1, 3), (2, 6), ""),
        ((2, 4, 3, 1), (6, 2), ""),
        ((2, 4, 8, 12), (8, 24), ""),
    ],
)
def test_report_gives_the_reason_a_site_is_left_alone(x_shape, y_size, reason):
    example = (torch.rand(*x_shape), torch.rand(2, 4, *y_size))
    _, report = patch_fpn(Resize(), Recorder, example_inputs=example)
    assert [site.reason for site in report.skipped] == ([reason] if reason else [])
    assert len(report.replaced) == (0 if reason else 1)


class Resize1d(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0)


def test_report_names_a_non_4d_site():
    _, report = patch_fpn(Resize1d(), Recorder, example_inputs=(torch.rand(2, 4, 8),))
    assert [site.reason for site in report.skipped] == ["not a 4D feature map (input shape (2, 4, 8))"]


class TwoSites(nn.Module):
    """Two enlargements at 4 channels and one at 8."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return F.interpolate(a, scale_factor=2.0), F.interpolate(a, scale_factor=4.0), F.interpolate(b, size=(6, 6))


def two_site_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(1, 4, 3, 3), torch.rand(1, 8, 3, 3)


def test_share_builds_one_upsampler_per_channel_count_by_name():
    built: list[int] = []

    def factory(channels: int) -> nn.Module:
        built.append(channels)
        return Recorder(channels)

    patched, report = patch_fpn(TwoSites(), factory, example_inputs=two_site_inputs())
    assert built == [4, 8]
    assert [site.upsampler for site in report.replaced] == ["srf_upsampler_c4", "srf_upsampler_c4", "srf_upsampler_c8"]
    assert patched.get_submodule("srf_upsampler_c4") is not patched.get_submodule("srf_upsampler_c8")


def test_share_installs_a_ready_module_itself():
    instance = Recorder(4)
    patched, report = patch_fpn(TwoSites(), instance, example_inputs=(two_site_inputs()[0],) * 2)
    assert {site.upsampler for site in report.replaced} == {"srf_upsampler_c4"}
    assert patched.get_submodule("srf_upsampler_c4") is instance


def test_share_false_calls_the_factory_once_per_site_with_its_channels():
    built: list[int] = []

    def factory(channels: int) -> nn.Module:
        built.append(channels)
        return Recorder(channels)

    patched, report = patch_fpn(TwoSites(), factory, share=False, example_inputs=two_site_inputs())
    assert built == [4, 4, 8]
    assert [patched.get_submodule(site.upsampler).in_channels for site in report.replaced] == [4, 4, 8]


class Plain(nn.Module):
    """A ready upsampler without an ``in_channels`` attribute: nothing to check, it serves every site."""

    def forward(self, x, size=None, scale_factor=None):
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")


class WideFactory:
    """A factory object that happens to carry an ``in_channels`` attribute; a factory is never width-checked."""

    in_channels = 16

    def __call__(self, channels: int) -> nn.Module:
        return Recorder(channels)


@pytest.mark.parametrize("upsampler", [Plain(), WideFactory()])
def test_only_a_ready_module_with_in_channels_is_width_checked(upsampler):
    patched, report = patch_fpn(TwoSites(), upsampler, example_inputs=two_site_inputs())
    assert [site.upsampler for site in report.replaced] == ["srf_upsampler_c4", "srf_upsampler_c4", "srf_upsampler_c8"]
    assert list(report.skipped) == []


def test_share_false_deep_copies_a_module_instance_per_site():
    instance = SRFUpsample(4, hidden_channels=8, num_blocks=1)
    patched, report = patch_fpn(TwoSites(), instance, share=False, example_inputs=(two_site_inputs()[0],) * 2)
    for site in report.replaced:
        copy = patched.get_submodule(site.upsampler)
        assert copy is not instance and copy.tail.weight is not instance.tail.weight
        assert copy.tail.weight.data_ptr() != instance.tail.weight.data_ptr()
        assert torch.equal(copy.tail.weight, instance.tail.weight)


def test_share_false_copies_a_module_instance_per_site():
    instance = Recorder(4)
    patched, report = patch_fpn(TwoSites(), instance, share=False, example_inputs=(two_site_inputs()[0],) * 2)
    names = [site.upsampler for site in report.replaced]
    assert len(set(names)) == 3 and all(name.startswith("srf_") for name in names)
    modules = [patched.get_submodule(name) for name in names]
    assert all(isinstance(m, Recorder) and m is not instance for m in modules)
    assert len({id(m) for m in modules}) == 3


def test_patching_twice_sees_installed_upsamplers_as_patched():
    patched, report = patch_fpn(TwoSites(), Recorder, example_inputs=two_site_inputs())
    assert len(report.replaced) == 3
    again, second = patch_fpn(patched, Recorder, example_inputs=two_site_inputs())
    assert list(second.replaced) == [] and again is patched


@pytest.mark.parametrize(
    ("upsampler", "share", "error", "message"),
    [
        (
            3,
            True,
            TypeError,
            "upsampler must be a name from srf_upsample.list_upsamplers() (e.g. 'carafe'), an nn.Module, a factory "
            "called with the channel count (e.g. SRFUpsample or functools.partial(SRFUpsample, variant='lite')), or "
            "None, got int.",
        ),
        (SMALL_SRF, "yes", TypeError, "share must be a bool, got 'yes'."),
        (lambda channels: 3, True, TypeError, "upsampler factory must return an nn.Module, got int."),
    ],
)
def test_upsampler_argument_errors_by_message(upsampler, share, error, message):
    with pytest.raises(error) as info:
        patch_fpn(TwoSites(), upsampler, share=share, example_inputs=two_site_inputs())
    assert str(info.value) == message


def test_a_module_of_the_wrong_width_is_refused_with_the_fix():
    module = SRFUpsample(8, hidden_channels=8, num_blocks=1)
    _, report = patch_fpn(
        TwoSites(), module, example_inputs=(torch.rand(1, 4, 3, 3), torch.rand(1, 8, 3, 3)), strict=False
    )
    reasons = {site.reason for site in report.skipped}
    assert (
        "the upsampler module has in_channels=8 but this site has 4 channels; pass a factory "
        "(e.g. upsampler=SRFUpsample) to build one per channel count" in reasons
    )
    assert [site.upsampler for site in report.replaced] == ["srf_upsampler_c8"]


def test_default_upsampler_is_srfupsample():
    patched, report = patch_fpn(TwoSites(), None, example_inputs=two_site_inputs())
    assert isinstance(patched.get_submodule(report.replaced[0].upsampler), SRFUpsample)


class OwnGenerator(nn.Module):
    """A neck that already calls a generator of its own, next to a plain enlargement."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = SRFUpsample(4, hidden_channels=8, num_blocks=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gen(x, scale_factor=2) + F.interpolate(x, scale_factor=2.0)


def test_a_generator_the_neck_already_has_is_reported_as_patched_not_replaced():
    patched, report = patch_fpn(OwnGenerator(), SMALL_SRF, example_inputs=(torch.rand(1, 4, 3, 3),))
    actions = {site["node"]: (site["action"], site["upsampler"]) for site in report.to_dict()["sites"]}
    assert actions == {"gen": ("already patched", "gen"), "interpolate": ("replaced", "srf_upsampler_c4")}


def test_a_registry_name_builds_that_upsampler_per_channel_count():
    patched, report = patch_fpn(TwoSites(), "srf-lite", example_inputs=two_site_inputs())
    modules = {name: patched.get_submodule(name) for name in ("srf_upsampler_c4", "srf_upsampler_c8")}
    assert all(isinstance(m, SRFUpsample) and m.variant == "lite" for m in modules.values())
    assert [m.in_channels for m in modules.values()] == [4, 8]


@pytest.mark.parametrize(
    ("input_shape", "output_shape", "reason"),
    [
        (None, None, "no shape on the example input (the call did not run)"),
        ((2, 4, 8, 12), None, "no shape on the example input (the call did not run)"),
        ((2, 4, 8, 12), (2, 4, 8), "not a 4D feature map (input shape (2, 4, 8, 12))"),
        ((2, 4, 8), (2, 4, 16), "not a 4D feature map (input shape (2, 4, 8))"),
        ((2, 4, 8, 12), (2, 4, 16, 24), ""),
    ],
)
def test_direction_of_recorded_shapes(input_shape, output_shape, reason):
    # The rule patch_fpn applies to each recorded call (its reasons are the report's): the unusual records directly.
    from srf_upsample.patch._upsamplers import direction

    assert direction(input_shape, output_shape) == reason
