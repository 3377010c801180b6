import pytest
import torch
from torchvision import models

from srf_upsample import SRFUpsample
from srf_upsample.train.models import build_detector, level_keys, patch_generator
from srf_upsample.train.pyramid import extract_levels, prepare_batch


def test_mobilenet_v2_backbone_loads_local_imagenet_weights_strictly(tmp_path):
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(models.mobilenet_v2(weights=None).state_dict(), weights)
    detector = build_detector("fasterrcnn", "mobilenet_v2", 3, min_size=64, max_size=64, backbone_weights=str(weights))
    # P2..P5 at strides 4, 8, 16, 32 (features 3, 6, 13, 18), 256 channels each.
    feats = extract_levels(detector.backbone, prepare_batch([torch.rand(3, 64, 64)]), level_keys("fasterrcnn", [2, 5]))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 16), (1, 256, 2, 2)]
    bad = tmp_path / "resnet18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), bad)
    with pytest.raises(ValueError, match="mobilenet_v2 ImageNet weights .*unexpected keys"):
        build_detector("fasterrcnn", "mobilenet_v2", 3, backbone_weights=str(bad))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_detector("fasterrcnn", "mobilenet_v2", 3, backbone_weights=str(tmp_path / "nope.pth"))


def test_levels_map_to_fpn_keys():
    # Pins P2..P5 -> '0'..'3' for R-CNNs and P3..P5 -> '0'..'2' for RetinaNet/FCOS; 'pool'/P6/P7 are not levels.
    assert level_keys("maskrcnn", [2, 3, 4, 5]) == ["0", "1", "2", "3"]
    assert level_keys("retinanet", [3, 4, 5]) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="P3..P5"):
        level_keys("fcos", [2, 3])


def test_half_size_batch_gives_exactly_half_size_levels():
    backbone = build_detector("retinanet", "resnet18", 3).backbone.eval()
    full = prepare_batch([torch.rand(3, 70, 90), torch.rand(3, 50, 100)])
    low = torch.nn.functional.interpolate(full, scale_factor=0.5, mode="bilinear")
    with torch.no_grad():
        for high, small in zip(
            extract_levels(backbone, full, ["0", "1", "2"]), extract_levels(backbone, low, ["0", "1", "2"]), strict=True
        ):
            assert high.shape[-2:] == (2 * small.shape[-2], 2 * small.shape[-1])


@pytest.mark.parametrize(
    ("detector", "backbone", "keys"), [("fasterrcnn", "mobilenet_v2", 5), ("retinanet", "resnet18", 5)]
)
def test_fpn_channels_set_every_level_and_the_heads_follow(detector, backbone, keys):
    model = build_detector(detector, backbone, 3, min_size=64, max_size=64, fpn_channels=16).eval()
    with torch.no_grad():
        levels = model.backbone(torch.rand(1, 3, 64, 64))
        detections = model([torch.rand(3, 64, 64)])
    assert len(levels) == keys and {level.shape[1] for level in levels.values()} == {16}
    assert set(detections[0]) >= {"boxes", "scores", "labels"}
    for bad in (0, -8, 1.5, True):  # a wrong value is a ValueError, a wrong type (float, bool) a TypeError
        with pytest.raises((ValueError, TypeError), match="fpn_channels must be a positive int"):
            build_detector(detector, backbone, 3, fpn_channels=bad)


def test_generator_for_another_fpn_width_is_refused():
    detector = build_detector("fasterrcnn", "resnet18", 3, fpn_channels=16)
    with pytest.raises(ValueError, match="takes 8-channel features but the detector's FPN has 16 channels"):
        patch_generator(detector, SRFUpsample(8, variant="lite"))
