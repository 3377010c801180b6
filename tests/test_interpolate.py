"""The resize rules every part of the package goes through: output size and align_corners, by hand and against torch."""

import pytest
import torch
import torch.nn.functional as F

from srf_upsample._interpolate import CORNER_MODES, align_corners_for, interpolate, output_size


@pytest.mark.parametrize(
    ("in_size", "size", "scale_factor", "expected"),
    [
        ((5, 7), 4, None, (4, 4)),  # an int size serves both sides
        ((5, 7), (3, 9), None, (3, 9)),
        ((5, 7), [3, 9], 2.0, (3, 9)),  # size wins over scale_factor, as in F.interpolate
        ((5, 7), torch.Size([6, 2]), None, (6, 2)),
        ((5, 3), None, 1.5, (7, 4)),  # floor(7.5) = 7, floor(4.5) = 4: floor, not round
        ((5, 7), None, (2, 0.5), (10, 3)),  # one factor per side, floor(3.5) = 3
        ((5, 7), None, [0.4, 3], (2, 21)),
        ((9, 9), None, 0.5, (4, 4)),
    ],
)
def test_output_size_by_hand_and_as_torch_computes_it(in_size, size, scale_factor, expected):
    assert output_size(in_size, size, scale_factor) == expected
    out = F.interpolate(torch.zeros(1, 1, *in_size), size=size, scale_factor=None if size is not None else scale_factor)
    assert tuple(out.shape[-2:]) == expected


@pytest.mark.parametrize(
    ("size", "scale_factor"),
    [(None, None), ((3,), None), ((3, 4, 5), None), (None, (2.0,)), (None, (2.0, 2.0, 2.0))],
)
def test_output_size_is_none_for_what_is_not_a_2d_resize(size, scale_factor):
    assert output_size((5, 7), size, scale_factor) is None


def test_output_size_returns_size_entries_as_given():
    height, width = object(), object()  # e.g. symbolic sizes under tracing: not converted
    result = output_size((5, 7), (height, width), None)
    assert result[0] is height and result[1] is width
    assert output_size((5, 7), height, None) == (height, height)


def test_align_corners_only_for_the_modes_that_take_it():
    assert CORNER_MODES == ("linear", "bilinear", "bicubic", "trilinear")
    assert [align_corners_for(mode) for mode in CORNER_MODES] == [False] * 4
    assert [align_corners_for(mode) for mode in ("nearest", "nearest-exact", "area")] == [None] * 3


def test_interpolate_uses_pixel_centres_by_hand():
    # [0, 1] to 4 samples at x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped): 0, 0.25, 0.75, 1.
    # align_corners=True would give 0, 1/3, 2/3, 1; nearest 0, 0, 1, 1.
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert interpolate(x, size=(1, 4)).flatten().tolist() == [0.0, 0.25, 0.75, 1.0]
    assert interpolate(x, scale_factor=(1, 2)).flatten().tolist() == [0.0, 0.25, 0.75, 1.0]
    assert interpolate(x, size=(1, 4), mode="nearest").flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    bicubic = interpolate(x, size=(1, 4), mode="bicubic")
    torch.testing.assert_close(bicubic, F.interpolate(x, size=(1, 4), mode="bicubic", align_corners=False))
