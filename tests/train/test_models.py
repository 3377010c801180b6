import pytest
import torch
from torchvision import models

from srf_upsample.train.models import build_detector, level_keys
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
