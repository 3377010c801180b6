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
    # A target where bilinear and nearest downsampling differ. Bilinear with half-pixel centres: output pixel (0, j)
    # samples input (0.5, 2j + 0.5), the mean of a 2x2 block: [(1+2+5+6)/4, (3+4+7+8)/4] = [3.5, 5.5]. Nearest
    # would take the top-left of each block, [1, 3].
    target = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]).view(1, 1, 2, 4)
    sr = torch.tensor([[3.0, 7.0]]).view(1, 1, 1, 2)
    fake = [torch.zeros(1, 1, 1, 2)]
    loss = srf_extractor_loss([sr], [target], fake, adversarial_weight=0.0)
    assert loss.item() == pytest.approx(1.0)  # mean(|3 - 3.5|, |7 - 5.5|); against nearest it would be mean(2, 4) = 3
    with_adv = srf_extractor_loss([sr], [target], fake)
    assert with_adv.item() == pytest.approx(1.0 + 0.001 * math.log(2), rel=1e-6)


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


# ---------------------------------------------------------------------------------------------------------------
# Known answers that tell the directions, the boundaries and the resampling modes apart


def test_generator_adversarial_term_pushes_d_towards_real():
    # At logit log 3 (D = 0.75) the term is -log 0.75, not -log(1 - 0.75); its gradient on each of the 4 logits is
    # d softplus(-x)/dx / 4 = -(1 - D) / 4 = -1/16: a descent step raises D(G(.)), i.e. G is pushed towards "real".
    logits = torch.full((1, 1, 2, 2), math.log(3), requires_grad=True)
    loss = generator_adversarial_loss([logits])
    assert loss.item() == pytest.approx(-math.log(0.75), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(logits.grad, torch.full((1, 1, 2, 2), -1 / 16))


def test_discriminator_loss_pushes_real_up_and_fake_down():
    # D = 0.75 on real and on fake: loss -log 0.75 - log 0.25. Gradients per pixel (2 pixels each):
    # real -(1 - D) / 2 = -1/8 (raise the real logit), fake D / 2 = 3/8 (lower the fake logit).
    real = torch.full((1, 1, 1, 2), math.log(3), requires_grad=True)
    fake = torch.full((1, 1, 1, 2), math.log(3), requires_grad=True)
    loss = discriminator_loss([real], [fake])
    assert loss.item() == pytest.approx(-math.log(0.75) - math.log(0.25), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(real.grad, torch.full((1, 1, 1, 2), -1 / 8))
    torch.testing.assert_close(fake.grad, torch.full((1, 1, 1, 2), 3 / 8))


def test_srf_loss_gradients_of_both_terms_by_value():
    # L1 term: d mean|sr - t| / d sr = sign(sr - t) / 4. Adversarial term, weight 0.5, logit 0 (D = 1/2) on 2 pixels:
    # 0.5 * -(1 - 1/2) / 2 = -1/8 per logit. A detached term would leave a zero gradient, not these values.
    sr = torch.tensor([1.0, -1.0, 2.0, 0.0]).view(1, 1, 2, 2).requires_grad_()
    target = torch.tensor([0.0, 0.0, 3.0, -1.0]).view(1, 1, 2, 2)
    logits = torch.zeros(1, 1, 1, 2, requires_grad=True)
    loss = srf_loss([sr], [target], [logits], adversarial_weight=0.5)
    assert loss.item() == pytest.approx(1.0 + 0.5 * math.log(2), rel=1e-6)  # mean(1, 1, 1, 1) + 0.5 log 2
    loss.backward()
    torch.testing.assert_close(sr.grad, torch.tensor([1.0, -1.0, -1.0, 1.0]).view(1, 1, 2, 2) / 4)
    torch.testing.assert_close(logits.grad, torch.full((1, 1, 1, 2), -1 / 8))


def test_downsample_targets_modes_differ_by_hand():
    # [[1, 2], [3, 4]] to 1x1: bilinear (half-pixel centres) samples the middle, 2.5; nearest takes [0, 0], 1.
    target = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)]
    assert downsample_targets(target).pop().item() == pytest.approx(2.5)
    assert downsample_targets(target, mode="nearest").pop().item() == 1.0
    assert downsample_targets(target, [(1, 2)], mode="nearest").pop().flatten().tolist() == [1.0, 2.0]


def test_eq3_multi_channel_and_odd_sizes_use_the_given_sizes():
    # A 9x9 target: the FPN of the half-size image rounds up to 5x5 where floor(9 / 2) = 4; Eq. (3) resizes the
    # target to the sr shape. Constant channels c stay c after any resize: L1 = mean |0 - c| over c = 1..4 = 2.5.
    target = torch.arange(1.0, 5.0).view(1, 4, 1, 1).expand(2, 4, 9, 9)
    sr = torch.zeros(2, 4, 5, 5)
    loss = srf_extractor_loss([sr], [target], [torch.zeros(2, 1, 5, 5)], adversarial_weight=0.0)
    assert loss.item() == pytest.approx(2.5)


@pytest.mark.parametrize(("sr_size", "accepted"), [((5, 4), True), ((3, 4), True), ((6, 4), False), ((4, 2), False)])
def test_eq3_size_check_allows_a_difference_of_one_pixel_exactly(sr_size, accepted):
    # s * 8 = 4: an sr side of 5 or 3 is within 1 (accepted: "> 1" rejects), 6 or 2 is 2 away (rejected).
    target = torch.ones(1, 1, 8, 8)
    sr = torch.ones(1, 1, *sr_size)
    fake = [torch.zeros(1, 1, *sr_size)]
    if accepted:
        assert srf_extractor_loss([sr], [target], fake, adversarial_weight=0.0).item() == 0.0
    else:
        with pytest.raises(ValueError, match="Level 0: sr_features is"):
            srf_extractor_loss([sr], [target], fake, adversarial_weight=0.0)


_Z = torch.zeros(1, 1, 2, 2)
_WRAP = (
    "must be a non-empty list of tensors, one per pyramid level, got a Tensor; wrap a single level in a list: [tensor]."
)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: discriminator_loss(_Z, [_Z]), TypeError, f"real_logits {_WRAP}"),
        (lambda: discriminator_loss([_Z], _Z), TypeError, f"fake_logits {_WRAP}"),
        (
            lambda: discriminator_loss([_Z], [_Z, _Z]),
            ValueError,
            "fake_logits has 2 levels but real_logits has 1; pass the same levels.",
        ),
        (lambda: generator_adversarial_loss(_Z), TypeError, f"fake_logits {_WRAP}"),
        (lambda: feature_l1_loss(_Z, [_Z]), TypeError, f"sr_features {_WRAP}"),
        (
            lambda: feature_l1_loss([_Z], [_Z, _Z]),
            ValueError,
            "target_features has 2 levels but sr_features has 1; pass the same levels.",
        ),
        (
            lambda: srf_loss([_Z], [_Z], [_Z], adversarial_weight=-0.5),
            ValueError,
            "adversarial_weight must be a float in [0, inf), got -0.5; the paper's lambda is 0.001.",
        ),
        (lambda: downsample_targets(_Z), TypeError, f"target_features {_WRAP}"),
        (
            lambda: downsample_targets([_Z], [(1, 1), (1, 1)]),
            ValueError,
            "sizes has 2 entries but target_features has 1 levels.",
        ),
        (lambda: srf_extractor_loss(_Z, [_Z], [_Z]), TypeError, f"sr_features {_WRAP}"),
        (lambda: srf_extractor_loss([_Z], _Z, [_Z]), TypeError, f"target_features {_WRAP}"),
        (
            lambda: srf_extractor_loss([_Z], [_Z, _Z], [_Z]),
            ValueError,
            "target_features has 2 levels but sr_features has 1; pass the same levels.",
        ),
        (
            lambda: srf_extractor_loss([_Z], [_Z], [_Z], scale=1.5),
            ValueError,
            "scale must be a float in (0, 1), got 1.5; the paper's s is 0.5.",
        ),
        (
            lambda: srf_extractor_loss([_Z], [_Z], [_Z], scale=0.0),
            ValueError,
            "scale must be a float in (0, 1), got 0.0; the paper's s is 0.5.",
        ),
        (
            lambda: srf_extractor_loss([torch.zeros(1, 1, 8, 4)], [torch.zeros(1, 1, 8, 8)], [_Z]),
            ValueError,
            "Level 0: sr_features is (8, 4) but s * target is about (4, 4) (s=0.5); feed M the image downsampled by s "
            "and F the full-size image.",
        ),
        (
            lambda: srf_extractor_loss([torch.zeros(1, 1, 2, 6)], [torch.zeros(1, 1, 4, 4)], [_Z]),
            ValueError,
            "Level 0: sr_features is (2, 6) but s * target is about (2, 2) (s=0.5); feed M the image downsampled by s "
            "and F the full-size image.",
        ),
        (
            lambda: integral_loss(torch.tensor(1.0), {}),
            ValueError,
            "detection_losses is empty; call the detector in train mode with targets.",
        ),
        (
            lambda: integral_loss(torch.tensor(1.0), [1.0]),
            TypeError,
            "detection_losses must be a dict of tensors or a tensor, got list.",
        ),
    ],
)
def test_loss_errors_name_the_argument_exactly(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message
