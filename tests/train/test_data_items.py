"""Known answers for the training data: an item's resize, flip, labels and masks; batches, epochs and samplers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from srf_upsample.train import data
from srf_upsample.train.data import (
    Batch,
    CocoDetectionDataset,
    KeyBatchSampler,
    collate,
    epoch_batches,
    log_report,
    read_image,
    scale_targets,
)


def _write(tmp_path, annotations, *, size=(40, 80), categories=(3, 7), extra_images=()):
    """One ``size`` (H, W) image ``a.png`` (image id 1) with ``annotations``; returns (root, ann_file)."""
    height, width = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = 255  # left half white: a flip moves it right
    Image.fromarray(pixels).save(tmp_path / "a.png")
    images = [{"id": 1, "file_name": "a.png", "height": height, "width": width}, *extra_images]
    anns = [{"id": i + 1, "image_id": 1, "iscrowd": 0, **ann} for i, ann in enumerate(annotations)]
    dataset = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(dataset), encoding="utf-8")
    return tmp_path, ann_file


def _box(x, y, w, h, category=3, **extra):
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"bbox": [x, y, w, h], "category_id": category, "area": w * h, "segmentation": [polygon], **extra}


def test_read_image_is_rgb_float_in_unit_range(tmp_path):
    Image.fromarray(np.array([[0, 51], [255, 102]], dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 2, 2) and image.dtype == torch.float32
    expected = torch.tensor([[0.0, 0.2], [1.0, 0.4]])
    assert torch.allclose(image, expected.expand(3, 2, 2), atol=1e-6)


def test_item_without_resize_keeps_boxes_and_maps_categories_to_contiguous_labels(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6, 7), _box(20, 10, 8, 8, 3), _box(30, 20, 5, 5, 3, iscrowd=1)])
    dataset = CocoDetectionDataset(root, ann_file)
    assert dataset.num_classes == 3 and dataset.label_of == {3: 1, 7: 2}
    image, target = dataset[0]
    assert type(image) is torch.Tensor and image.shape == (3, 40, 80)
    assert type(target["boxes"]) is torch.Tensor
    assert target["boxes"].tolist() == [[4, 2, 14, 8], [20, 10, 28, 18]]  # XYXY; the crowd box is not a target
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 1 and target["orig_size"] == (40, 80) and target["dataset_key"] == (0, False)
    assert "masks" not in target
    assert (dataset.report["usable"], dataset.report["crowd_ignored"], dataset.report["dropped"]) == (2, 1, {})


def test_resize_takes_the_shorter_side_to_min_size_unless_the_longer_passes_max_size(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6)])
    image, target = CocoDetectionDataset(root, ann_file, min_size=20)[0]
    assert image.shape == (3, 20, 40)  # scale 0.5
    assert target["boxes"].tolist() == [[2, 1, 7, 4]]
    image, target = CocoDetectionDataset(root, ann_file, min_size=80, max_size=100)[0]
    assert image.shape == (3, 50, 100)  # 2x would make the longer side 160 > 100: scale 1.25
    assert torch.allclose(target["boxes"], torch.tensor([[5.0, 2.5, 17.5, 10.0]]))
    assert target["orig_size"] == (40, 80)
    image, _ = CocoDetectionDataset(root, ann_file, min_size=80, max_size=160)[0]
    assert image.shape == (3, 80, 160)  # exactly at max_size: the shorter-side rule holds
    image, _ = CocoDetectionDataset(root, ann_file, min_size=1, max_size=1)[0]
    assert image.shape == (3, 1, 1)  # 0.5 px rounds up to one pixel


def test_flip_mirrors_image_boxes_and_masks(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6)])
    dataset = CocoDetectionDataset(root, ann_file, use_masks=True)
    image, target = dataset[0, True]
    assert image[:, :, :40].max() == 0 and image[:, :, 40:].min() == 1  # the white left half is now right
    assert target["boxes"].tolist() == [[66, 2, 76, 8]] and target["dataset_key"] == (0, True)
    mask = target["masks"][0]
    assert mask.dtype == torch.uint8 and mask.shape == (40, 80)
    unflipped = dataset[0][1]["masks"][0]
    assert torch.equal(mask, unflipped.flip(-1)) and unflipped[2:8, 4:14].all() and unflipped.sum() < 100


def test_masks_of_an_image_without_targets_are_an_empty_stack(tmp_path):
    second = {"id": 2, "file_name": "a.png", "height": 40, "width": 80}
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6, image_id=2)], extra_images=[second])
    image, target = CocoDetectionDataset(root, ann_file, use_masks=True, min_size=20)[0]
    assert target["masks"].shape == (0, 20, 40) and target["masks"].dtype == torch.uint8
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_categories_outside_the_given_mapping_are_not_targets(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6, 7), _box(20, 10, 8, 8, 3)])
    dataset = CocoDetectionDataset(root, ann_file, category_ids=[7])
    assert dataset.label_of == {7: 1} and dataset.num_classes == 2
    assert dataset[0][1]["labels"].tolist() == [1] and dataset[0][1]["boxes"].tolist() == [[4, 2, 14, 8]]


def test_a_box_resized_below_a_pixel_is_removed_with_its_label(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6, 7), _box(20, 10, 1.5, 1.5, 3)])
    _, target = CocoDetectionDataset(root, ann_file, min_size=20)[0]  # the 1.5 px box becomes 0.75 px
    assert target["boxes"].tolist() == [[2, 1, 7, 4]] and target["labels"].tolist() == [2]


def test_dataset_errors_name_the_value_and_the_fix(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6)])
    with pytest.raises(FileNotFoundError, match="Image folder .*nowhere' does not exist; pass --data-root"):
        CocoDetectionDataset(tmp_path / "nowhere", ann_file)
    (tmp_path / "a.png").rename(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"1 of 1 images listed in .* are missing from .*e\.g\. \['a.png'\]"):
        CocoDetectionDataset(root, ann_file)
    (tmp_path / "b.png").rename(tmp_path / "a.png")
    with pytest.raises(ValueError, match="has no categories"):
        CocoDetectionDataset(root, ann_file, category_ids=[])
    no_mask = _box(4, 2, 10, 6)
    del no_mask["segmentation"]
    root, ann_file = _write(tmp_path, [no_mask, _box(20, 10, 8, 8)])
    with pytest.raises(ValueError, match="1 of 2 annotations have no segmentation.*--detector fasterrcnn"):
        CocoDetectionDataset(root, ann_file, use_masks=True)
    assert len(CocoDetectionDataset(root, ann_file)) == 1  # boxes only: fine


def test_an_unreadable_image_is_none_and_collate_counts_it(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6)])
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    dataset = CocoDetectionDataset(root, ann_file)
    assert dataset[0] is None
    good = (torch.zeros(3, 2, 2), {"image_id": 5})
    batch = collate([None, good, None])
    assert batch.num_skipped == 2 and batch.targets == [{"image_id": 5}] and batch.images[0] is good[0]


def test_log_report_warns_only_when_boxes_were_left_out(caplog):
    report = {
        "ann_file": "f.json",
        "images": 4,
        "negatives": 1,
        "annotations": 9,
        "usable": 6,
        "crowd_ignored": 1,
        "dropped": {},
        "iscrowd_filled": 2,
        "area_filled": 3,
        "area_recomputed": 0,
        "categories_present": 2,
        "categories_absent": 1,
    }
    with caplog.at_level(logging.INFO, logger=data.__name__):
        log_report(report)
        log_report({**report, "dropped": {"empty": 2}})
    first, second = caplog.records
    assert (first.levelno, second.levelno) == (logging.INFO, logging.WARNING)
    assert first.getMessage() == (
        "f.json: 4 image(s) (1 without boxes), 9 annotation(s), 6 usable, 1 crowd (ignored), left out: none; "
        "filled in: 2 iscrowd, 3 area; 0 area(s) set from boxes; categories: 2 present, 1 absent"
    )
    assert "left out: 2 " in second.getMessage()


def test_batch_pin_memory_pins_images_and_targets_and_keeps_the_count(monkeypatch):
    pinned = []

    def pin(value):
        pinned.append(value)
        return ("pinned", value)

    monkeypatch.setattr(torch.utils.data._utils.pin_memory, "pin_memory", pin)
    images, targets = [torch.zeros(1)], [{"boxes": torch.zeros(0, 4)}]
    batch = Batch(images, targets, 3).pin_memory()
    assert batch == Batch(("pinned", images), ("pinned", targets), 3) and pinned == [images, targets]


def test_epoch_batches_split_ranks_like_distributed_sampler():
    ranks = [epoch_batches(5, 2, epoch=0, seed=1, rank=r, world_size=2, flip=False) for r in (0, 1)]
    flat = [[index for batch in batches for index, _ in batch] for batches in ranks]
    assert [len(f) for f in flat] == [3, 3]  # padded to 6
    order = torch.randperm(5, generator=torch.Generator().manual_seed(100_003)).tolist()
    padded = order + order[:1]
    assert flat == [padded[0::2], padded[1::2]]
    assert [len(b) for b in ranks[0]] == [2, 1]
    assert all(flip is False for batches in ranks for batch in batches for _, flip in batch)


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    first = epoch_batches(7, 3, epoch=2, seed=4)
    assert first == epoch_batches(7, 3, epoch=2, seed=4)
    assert first != epoch_batches(7, 3, epoch=3, seed=4) and first != epoch_batches(7, 3, epoch=2, seed=5)
    assert sorted(index for batch in first for index, _ in batch) == list(range(7))
    flips = {index: flip for batch in first for index, flip in batch}
    other_epoch_orders = {index: flip for batch in epoch_batches(7, 7, epoch=2, seed=4) for index, flip in batch}
    assert flips == other_epoch_orders  # an image's flip does not depend on the batch size
    assert 0 < sum(flip for batch in epoch_batches(400, 400, epoch=0, seed=0) for _, flip in batch) < 400
    plain = epoch_batches(5, 2, epoch=9, seed=9, shuffle=False, flip=False)
    assert plain == [[(0, False), (1, False)], [(2, False), (3, False)], [(4, False)]]


def test_scale_targets_scales_boxes_per_axis_and_resizes_masks_nearest():
    masks = torch.zeros(1, 4, 8, dtype=torch.uint8)
    masks[0, :2, :4] = 1
    target = {"boxes": torch.tensor([[0.0, 0.0, 8.0, 4.0]]), "masks": masks, "labels": torch.tensor([1])}
    (scaled,) = scale_targets([target], [torch.zeros(3, 4, 8)], [torch.zeros(3, 2, 3)])
    assert scaled["boxes"].tolist() == [[0.0, 0.0, 3.0, 2.0]]  # x by 3/8, y by 1/2
    assert scaled["masks"].dtype == torch.uint8 and scaled["masks"].tolist() == [[[1, 1, 0], [0, 0, 0]]]
    assert scaled["labels"] is target["labels"] and target["boxes"].tolist() == [[0.0, 0.0, 8.0, 4.0]]
    empty = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 4, 8, dtype=torch.uint8)}
    (scaled,) = scale_targets([empty], [torch.zeros(3, 4, 8)], [torch.zeros(3, 2, 3)])
    assert scaled["masks"].shape == (0, 2, 3) and scaled["masks"].dtype == torch.uint8
    with pytest.raises(ValueError):
        scale_targets([target], [torch.zeros(3, 4, 8)], [])


def test_key_batch_sampler_resumes_at_a_batch_across_epochs():
    def batches_of_epoch(epoch):
        return [[(epoch, 0)], [(epoch, 1)], [(epoch, 2)]]

    stream = data.iterate_forever(batches_of_epoch, 0)
    assert [next(stream)[0] for _ in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    sampler = iter(KeyBatchSampler(batches_of_epoch, start=2))
    assert [next(sampler) for _ in range(4)] == [[(0, 2)], [(1, 0)], [(1, 1)], [(1, 2)]]
    everything = iter(KeyBatchSampler(batches_of_epoch))
    assert next(everything) == [(0, 0)]
    stream = data.iterate_forever(batches_of_epoch, 3)
    assert next(stream) == (1, [(1, 0)])
    with pytest.raises(ValueError, match="^An epoch has no batches; the dataset is empty for this rank.$"):
        next(iter(KeyBatchSampler(lambda epoch: [])))


def test_the_seed_of_an_epochs_order_is_seed_times_100003_plus_epoch():
    # Pinned: committed runs resume on this order; changing it would change what a resumed run sees.
    order = torch.randperm(6, generator=torch.Generator().manual_seed(2 * 100_003 + 5)).tolist()
    assert [index for batch in epoch_batches(6, 6, epoch=5, seed=2, flip=False) for index, _ in batch] == order


def test_a_coco_file_already_read_is_used_as_it_is(tmp_path):
    from srf_upsample.train.coco import read_coco

    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6, 7)])
    coco_file = read_coco(ann_file)
    dataset = CocoDetectionDataset(root, coco_file)
    assert dataset.coco_file is coco_file and dataset[0][1]["labels"].tolist() == [2]


def test_the_report_holds_the_counts_the_area_rule_and_the_file(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6), _box(4, 2, 0, 6)])
    report = CocoDetectionDataset(root, ann_file, area="box", max_dropped_fraction=None).report
    assert (report["ann_file"], report["area"], report["dropped"]) == (str(ann_file), "box", {"empty": 1})
    assert (report["usable"], report["crowd_ignored"], report["kept"]) == (1, 0, 1)
    with pytest.raises(ValueError, match="1 of 2 annotations are unusable"):
        CocoDetectionDataset(root, ann_file, max_dropped_fraction=0.0)
    with pytest.raises(ValueError, match="more than max_dropped_fraction=0.4"):
        CocoDetectionDataset(root, ann_file, max_dropped_fraction=0.4)


def test_missing_images_list_at_most_five_and_the_mask_message_in_full(tmp_path):
    extra = [{"id": i, "file_name": f"gone{i}.png", "height": 40, "width": 80} for i in range(2, 9)]
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6)], extra_images=extra)
    with pytest.raises(ValueError) as error:
        CocoDetectionDataset(root, ann_file)
    expected = [f"gone{i}.png" for i in range(2, 7)]
    assert str(error.value).endswith(f"e.g. {expected}; check --data-root.") and "7 of 8 images" in str(error.value)
    no_mask = _box(4, 2, 10, 6)
    del no_mask["segmentation"]
    root, ann_file = _write(tmp_path, [no_mask])
    with pytest.raises(ValueError) as error:
        CocoDetectionDataset(root, ann_file, use_masks=True)
    assert str(error.value) == (
        f"{str(ann_file)!r}: 1 of 1 annotations have no segmentation, and use_masks (the maskrcnn detector) trains on "
        "masks. Add the masks, or train a box-only detector (--detector fasterrcnn)."
    )


def test_a_box_of_one_pixel_or_more_is_kept(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6), _box(20, 10, 1.0, 1.5)])
    assert CocoDetectionDataset(root, ann_file)[0][1]["boxes"].tolist() == [[4, 2, 14, 8], [20, 10, 21, 11.5]]


def test_an_unreadable_image_is_logged_at_debug_with_its_id(tmp_path, caplog):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6)])
    (tmp_path / "a.png").write_bytes(b"not an image")
    with caplog.at_level(logging.DEBUG, logger=data.__name__):
        assert CocoDetectionDataset(root, ann_file)[0] is None
    (record,) = [r for r in caplog.records if r.name == data.__name__]
    message = record.getMessage()  # PIL's own words depend on the plugins loaded: only its presence is checked
    assert message.startswith("skipping unreadable image 1: ") and len(message) > 30 and "None" not in message


def test_boxes_are_float32_whatever_the_default_dtype(tmp_path):
    root, ann_file = _write(tmp_path, [_box(4, 2, 10, 6)])
    dataset = CocoDetectionDataset(root, ann_file)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        target = dataset[0][1]
    finally:
        torch.set_default_dtype(previous)
    assert target["boxes"].dtype == torch.float32
