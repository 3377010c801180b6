"""What the COCO reader counts, drops and refuses, at the boundaries its docstring states."""

import json
import warnings

import pytest
from _helpers import coco_box as _box

from srf_upsample.train.coco import read_coco


def _read(tmp_path, annotations, **kwargs):
    values = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "tree"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(values))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coco = read_coco(path, **kwargs)
    return coco, caught


def _crowd_file():
    usable = [_box(1, [0, 0, 1, 1]), _box(2, [5, 5, 8, 8]), _box(3, [9, 9, 4, 4])]
    crowd = [_box(4, [0, 0, 30, 30], iscrowd=1), _box(5, [20, 20, 30, 30], iscrowd=1)]
    return [*usable, *crowd, _box(6, [3, 3, 0, 4])]  # the last one is empty


def test_crowd_boxes_are_counted_apart_and_left_out_of_the_dropped_share(tmp_path):
    # 1 unusable of 4 non-crowd annotations: 0.25 exactly, which a limit of 0.25 accepts and 0.24 refuses.
    coco, _ = _read(tmp_path, _crowd_file(), max_dropped_fraction=0.25)
    assert (coco.counts["kept"], coco.counts["crowd"], dict(coco.dropped)) == (5, 2, {"empty": 1})
    with pytest.raises(
        ValueError, match=r"1 of 4 annotations are unusable \(.*\), more than max_dropped_fraction=0.24"
    ):
        _read(tmp_path, _crowd_file(), max_dropped_fraction=0.24)


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [([3, 3, 0, 4], "empty"), ([3, 3, 4, 0], "empty"), ([3, 3, -1, 4], "empty"), ([3, 3, 4, -1], "empty")],
)
def test_a_box_without_width_or_height_is_dropped_as_empty(tmp_path, bbox, reason):
    coco, _ = _read(tmp_path, [_box(1, [0, 0, 1, 1]), _box(2, bbox)], max_dropped_fraction=None)
    assert dict(coco.dropped) == {reason: 1} and coco.counts["kept"] == 1  # the 1x1 box is kept


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        (["not", "a", "dict"], "malformed"),
        ({"id": 2, "image_id": 1.0, "category_id": 1, "bbox": [0, 0, 2, 2]}, "unknown_image"),  # ids are ints
        ({"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2]}, "unknown_image"),
    ],
)
def test_unusable_annotations_are_dropped_by_reason(tmp_path, annotation, reason):
    coco, _ = _read(tmp_path, [_box(1, [0, 0, 1, 1]), annotation], max_dropped_fraction=None)
    assert dict(coco.dropped) == {reason: 1}


@pytest.mark.parametrize(
    ("area", "segmentation", "disagrees"),
    [
        (120.0, None, False),  # box 10x10, tolerance 0.2: exactly 20 % above the box is still within
        (120.5, None, True),
        (80.0, None, False),  # exactly 20 % below the box
        (79.5, None, True),
        (50.0, None, True),  # no segmentation: the box is the reference
        (80.0, [[0, 0, 10, 0, 10, 10, 0, 10]], False),  # the polygon's shoelace area, 100
        (79.0, [[0, 0, 10, 0, 10, 10, 0, 10]], True),
        (50.0, [[0, 0, 10, 0, 10, 5, 0, 5]], False),  # a 10x5 polygon: 50 is its area, though half the box
    ],
)
def test_file_areas_are_checked_against_polygon_or_box_with_the_tolerance(tmp_path, area, segmentation, disagrees):
    extra = {"area": area} if segmentation is None else {"area": area, "segmentation": segmentation}
    coco, caught = _read(tmp_path, [_box(1, [0, 0, 10, 10], **extra)], area_tolerance=0.2)
    assert coco.counts["area_disagreeing"] == int(disagrees)
    assert any("area" in str(w.message) for w in caught) == disagrees
