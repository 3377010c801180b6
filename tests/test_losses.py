import math

import pytest
import torch

from srf_upsample import (
    FeaturePatchDiscriminator,
    SRFUpsample,
    discriminator_loss,
    feature_l1_loss,
    generator_adversarial_loss,
    integral_loss,
    srf_extractor_loss,
    srf_loss,
)
from srf_upsample.losses import ADVERSARIAL_WEIGHT, DOWNSCALE_FACTOR, downsample_targets


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_paper_constants():
    assert ADVERSARIAL_WEIGHT == 0.001  # lambda, section 4.1
    assert DOWNSCALE_FACTOR == 0.5  # s, section 3.2


def test_eq1_discriminator_loss_by_hand():
    # Level 1: logits 0 everywhere -> D = 0.5 on both: -log 0.5 - log 0.5 = 2 log 2.
    # Level 2 (another size): real logit = log 3 (D = 0.75), fake logit = -log 3 (D = 0.25):
    # -log 0.75 - log(1 - 0.25) = -2 log 0.75. Levels are summed, pixels averaged.
    real = [torch.zeros(2, 1, 3, 3), torch.full((2, 1, 2, 5), math.log(3))]
    fake = [torch.zeros(2, 1, 3, 3), torch.full((2, 1, 2, 5), -math.log(3))]
    expected = 2 * math.log(2) - 2 * math.log(0.75)
    assert discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_eq1_is_a_mean_over_pixels_not_a_sum():
    real = [torch.zeros(1, 1, 2, 2)]
    big = [torch.zeros(1, 1, 8, 8)]
    assert discriminator_loss(real, real).item() == pytest.approx(discriminator_loss(big, big).item())


def test_eq2_l1_term_by_hand():
    # mean over C, H, W per level, summed over levels: level 1 |1 - 0| = 1, level 2 mean(|[0, 2]|) = 1.
    sr = [torch.zeros(1, 2, 2, 2), torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)]
    target = [torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 1, 1)]
    assert feature_l1_loss(sr, target).item() == pytest.approx(2.0)


def test_eq2_full_loss_by_hand():
    sr = [torch.zeros(1, 2, 2, 2)]
    target = [torch.full((1, 2, 2, 2), 0.5)]
    fake_logits = [torch.zeros(1, 1, 2, 2)]  # D = 0.5: -log D = log 2
    expected = 0.5 + 0.001 * math.log(2)
    assert srf_loss(sr, target, fake_logits).item() == pytest.approx(expected, rel=1e-6)
    assert generator_adversarial_loss(fake_logits).item() == pytest.approx(math.log(2), rel=1e-6)


def test_eq3_compares_with_targets_downsampled_by_half():
    # A 2x2 block-constant target downsampled by s = 0.5 (bilinear, half-pixel centres) is exactly the block values.
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]]).view(1, 1, 2, 4)
    sr = torch.tensor([[1.0, 2.0]]).view(1, 1, 1, 2)
    fake = [torch.zeros(1, 1, 1, 2)]
    loss = srf_extractor_loss([sr], [target], fake, adversarial_weight=0.0)
    assert loss.item() == pytest.approx(0.5)  # mean(|1 - 1|, |2 - 3|)
    with_adv = srf_extractor_loss([sr], [target], fake)
    assert with_adv.item() == pytest.approx(0.5 + 0.001 * math.log(2), rel=1e-6)


def test_downsample_targets_uses_floor_sizes():
    out = downsample_targets([torch.randn(1, 2, 9, 13), torch.randn(1, 2, 5, 7)])
    assert [tuple(t.shape[-2:]) for t in out] == [(4, 6), (2, 3)]


def test_eq3_rejects_mismatched_scale():
    with pytest.raises(ValueError, match="downsampled"):
        srf_extractor_loss([torch.randn(1, 2, 8, 8)], [torch.randn(1, 2, 8, 8)], [torch.zeros(1, 1, 8, 8)])


def test_integral_loss_sums_detection_dict():
    det = {"loss_classifier": torch.tensor(1.5), "loss_box_reg": torch.tensor(0.25)}
    assert integral_loss(torch.tensor(2.0), det).item() == pytest.approx(3.75)
    assert integral_loss(torch.tensor(2.0), torch.tensor(1.0)).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="empty"):
        integral_loss(torch.tensor(2.0), {})


def assert_every_gradient_nonzero_and_finite(module: torch.nn.Module) -> None:
    # "not None" only says that autograd visited the parameter: a detached or zeroed path also leaves a zero tensor.
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_adversarial_gradient_reaches_the_generator():
    # A public implementation detached D's output, so G never learned from D. With lambda only (no L1 term),
    # G's parameters must still receive a gradient through D.
    generator = SRFUpsample(4, hidden_channels=4, num_blocks=1)
    # A fresh generator starts its residual blocks at zero (identity blocks), which zeroes the gradient of the conv
    # before each zero conv; with the non-zero weights of a trained generator every parameter must get a gradient.
    with torch.no_grad():
        for param in generator.parameters():
            if not param.any():
                param.normal_(0.0, 0.1)
    disc = FeaturePatchDiscriminator(4, hidden_channels=[4, 4, 4])
    sr = generator(torch.randn(2, 4, 5, 6))
    target = sr.detach().clone()  # L1 term is zero and has no effect
    loss = srf_loss([sr], [target], [disc(sr)])
    loss.backward()
    assert_every_gradient_nonzero_and_finite(generator)


def test_discriminator_step_does_not_touch_the_generator():
    generator = SRFUpsample(4, hidden_channels=4, num_blocks=1)
    disc = FeaturePatchDiscriminator(4, hidden_channels=[4, 4, 4])
    sr = generator(torch.randn(2, 4, 5, 6))
    discriminator_loss([disc(torch.randn(2, 4, 10, 12))], [disc(sr.detach())]).backward()
    assert all(p.grad is None for p in generator.parameters())
    assert_every_gradient_nonzero_and_finite(disc)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: feature_l1_loss([torch.zeros(1, 1, 2, 2)], [torch.zeros(1, 1, 3, 3)]), ValueError, "Level 0"),
        (
            lambda: feature_l1_loss([torch.zeros(1)], []),
            ValueError,
            r"target_features must be a non-empty list.*got \[\]",
        ),
        (
            lambda: srf_loss([torch.zeros(1)], [torch.zeros(1)], [torch.zeros(1)], adversarial_weight="0.1"),
            TypeError,
            r"adversarial_weight must be a float in \[0, inf\), got '0.1' of type str",
        ),
        (
            lambda: downsample_targets([torch.zeros(1, 1, 4, 4)], scale=1.5),
            ValueError,
            r"scale must be a float in \(0, 1\), got 1.5; the paper's s is 0.5",
        ),
        (
            lambda: downsample_targets([torch.zeros(1, 1, 4, 4)], mode="area"),
            ValueError,
            r"mode must be one of \['bicubic', 'bilinear', 'nearest'\], got 'area'",
        ),
        (
            lambda: FeaturePatchDiscriminator(4, hidden_channels=[4, 0]),
            ValueError,
            r"hidden_channels\[1\] must be a positive int, got 0",
        ),
        (
            lambda: FeaturePatchDiscriminator(4, hidden_channels=8),
            TypeError,
            r"hidden_channels must be a list .*got 8 of type int",
        ),
        (
            lambda: FeaturePatchDiscriminator(4, negative_slope=-1.0),
            ValueError,
            r"negative_slope must be a float in \[0, inf\), got -1.0",
        ),
        (lambda: discriminator_loss([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)]), ValueError, "levels"),
        (
            lambda: srf_loss([torch.zeros(1)], [torch.zeros(1)], [torch.zeros(1)], adversarial_weight=-1),
            ValueError,
            "adversarial_weight",
        ),
        (lambda: feature_l1_loss(torch.zeros(1, 1, 2, 2), [torch.zeros(1, 1, 2, 2)]), TypeError, "one per pyramid"),
    ],
)
def test_bad_loss_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_discriminator_shapes_and_paper_widths():
    disc = FeaturePatchDiscriminator()
    assert [m.out_channels for m in disc.features if isinstance(m, torch.nn.Conv2d)] == [512, 1024, 1024]
    assert sum(p.numel() for p in disc.parameters()) == 15_341_569
    small = FeaturePatchDiscriminator(4, hidden_channels=[4, 4, 4])
    assert small(torch.randn(3, 4, 7, 9)).shape == (3, 1, 7, 9)
    with pytest.raises(ValueError, match="in_channels=4"):
        small(torch.randn(1, 5, 7, 9))
    with pytest.raises(ValueError, match="hidden_channels"):
        FeaturePatchDiscriminator(4, hidden_channels=[])
