"""Real image sizes (odd, resized as the paper configs do) and device-correct data and loss helpers."""

import pytest
import torch
from conftest import TINY, make_coco

from srf_upsample.losses import discriminator_loss, downsample_targets, feature_l1_loss, srf_extractor_loss, srf_loss
from srf_upsample.train.cli import main, parse_config
from srf_upsample.train.data import scale_targets
from srf_upsample.train.loop import fit
from srf_upsample.train.models import build_detector, disable_detector_resize, level_keys
from srf_upsample.train.pyramid import downsample_images, extract_levels, prepare_batch, target_batch_size


def _resized(height: int, width: int, min_size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return round(height * scale), round(width * scale)


@pytest.mark.parametrize("original", [(193, 290), (533, 640), (1024, 682), (129, 129)])
def test_stage2_levels_line_up_at_real_sizes(original):
    # The paper configs resize to 800 (max 1333); odd sides whose half is a multiple of 32 used to crash stage 2.
    size = _resized(*original) if original != (129, 129) else original
    image = torch.rand(3, *size)
    low = downsample_images([image], "bilinear")
    detector = build_detector("fasterrcnn", "resnet18", 3).eval()
    disable_detector_resize(detector)  # as in training: the data pipeline resized already
    keys = level_keys("fasterrcnn", [2, 3, 4, 5])
    with torch.no_grad():
        # M sees I_lr through the detector's own transform (normalise + pad to size_divisible).
        low_batch = detector.transform(low)[0].tensors
        target = extract_levels(detector.backbone, prepare_batch([image], size=target_batch_size(low)), keys)
        sr = extract_levels(detector.backbone, low_batch, keys)
    for high, small in zip(target, sr, strict=True):
        assert high.shape[-2:] == (2 * small.shape[-2], 2 * small.shape[-1])
    assert [feat.shape for feat in downsample_targets(target, [f.shape[-2:] for f in sr])] == [f.shape for f in sr]


def test_stage1_to_evaluate_at_an_odd_size(tmp_path):
    # 129 = 2 * 64 + 1: I_lr is 64, a multiple of 32, so the padded I_tr batch is one pixel short of the image.
    image_dir, ann_file = make_coco(tmp_path / "coco", num_images=2, size=(60, 90))
    data = ["--data-root", str(image_dir), "--ann-file", str(ann_file)]
    sizes = ["--min-size", "129", "--max-size", "195"]
    assert main(["stage1", *data, *TINY, *sizes, "--max-iters", "1", "--output-dir", str(tmp_path / "s1")]) == 0
    assert (
        main(
            [
                "stage2",
                *data,
                *TINY,
                *sizes,
                "--max-iters",
                "1",
                "--init",
                str(tmp_path / "s1"),
                "--output-dir",
                str(tmp_path / "s2"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "stage3",
                *data,
                *TINY,
                *sizes,
                "--max-iters",
                "1",
                "--init",
                str(tmp_path / "s2"),
                "--output-dir",
                str(tmp_path / "s3"),
                "--eval-ann-file",
                str(ann_file),
                "--eval-data-root",
                str(image_dir),
            ]
        )
        == 0
    )


def test_data_and_loss_helpers_stay_on_the_input_device():
    # The meta device stands in for CUDA: any CPU tensor created inside these helpers raises a device mismatch.
    meta = torch.device("meta")
    image = torch.empty(3, 65, 97, device=meta)
    target = {
        "boxes": torch.empty(2, 4, device=meta),
        "labels": torch.empty(2, dtype=torch.int64, device=meta),
        "masks": torch.empty(2, 65, 97, dtype=torch.uint8, device=meta),
    }
    low = downsample_images([image], "bilinear")
    assert low[0].device == meta and low[0].shape[-2:] == (32, 48)
    scaled = scale_targets([target], [image], low)[0]
    assert scaled["boxes"].device == meta and scaled["masks"].shape[-2:] == (32, 48)
    batch = prepare_batch([image], size=target_batch_size(low))
    assert batch.device == meta and batch.shape == (1, 3, 64, 128)  # 2 x (32, 48 padded to 64); row 65 cropped
    sr = [torch.empty(2, 8, 4, 6, device=meta, requires_grad=True)]
    full = [torch.empty(2, 8, 8, 12, device=meta)]
    logits = [torch.empty(2, 1, 4, 6, device=meta)]
    for loss in (
        srf_loss(sr, [f[..., :4, :6] for f in full], logits),
        discriminator_loss(logits, logits),
        srf_extractor_loss(sr, full, logits),
        feature_l1_loss(sr, downsample_targets(full)),
    ):
        assert loss.device == meta and loss.dim() == 0


def test_training_against_an_untrained_extractor_is_refused(tmp_path):
    image_dir, ann_file = make_coco(tmp_path / "coco", num_images=2)
    args = [
        "stage1",
        "--data-root",
        str(image_dir),
        "--ann-file",
        str(ann_file),
        *[arg for arg in TINY if arg != "--allow-untrained-extractor"],
        "--max-iters",
        "1",
        "--output-dir",
        str(tmp_path / "s1"),
    ]
    config, _ = parse_config(args)
    assert not config.allow_untrained_extractor
    with pytest.raises(ValueError, match="--extractor-weights"):
        fit(config)
