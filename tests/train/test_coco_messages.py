"""Known answers for the COCO reader's every message, boundary and count (each check reached on its own)."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import pytest
from _helpers import coco_box as _box

from srf_upsample.train import coco as coco_module
from srf_upsample.train.coco import coco_api, describe_drops, read_coco, subset, write_coco


def _write(tmp_path, annotations=None, *, images=None, categories=None, name="instances.json", raw=None):
    values = {
        "images": images if images is not None else [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": annotations if annotations is not None else [_box(1, [2, 2, 4, 5])],
        "categories": categories if categories is not None else [{"id": 1, "name": "tree"}],
    }
    path = tmp_path / name
    path.write_text(json.dumps(values) if raw is None else raw, encoding="utf-8")
    return path


def _read(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_coco(path, **kwargs)


def _error(path, error=ValueError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        _read(path, **kwargs)
    return str(caught.value)


def test_describe_drops():
    assert (
        describe_drops({"empty": 2, "outside": 1}) == "2 zero or negative width or height, 1 entirely outside its image"
    )
    assert describe_drops({}) == "none"


def test_file_level_errors_say_what_and_how(tmp_path):
    missing = tmp_path / "gone.json"
    assert _error(missing, FileNotFoundError) == (
        f"Annotation file {str(missing)!r} does not exist; pass --ann-file with a COCO json."
    )
    path = _write(tmp_path, raw="[1, 2]")
    assert _error(path) == (
        f"Annotation file {str(path)!r} holds a JSON list, not an object with 'images', 'annotations' and "
        "'categories'; pass a COCO instances json."
    )
    path = _write(tmp_path, raw=json.dumps({"images": {}, "annotations": [], "categories": []}))
    assert _error(path) == (
        f"Annotation file {str(path)!r}: 'images' must be a list, got a dict; a COCO instances json has 'images', "
        "'annotations' and 'categories' lists (write [] for an empty one)."
    )
    path = _write(tmp_path, raw=json.dumps({"images": [], "categories": []}))
    assert "'annotations' must be a list, got missing;" in _error(path)


def test_entry_errors_name_the_entry_and_the_file(tmp_path):
    path = _write(tmp_path, images=[5])
    assert _error(path) == (f"Annotation file {str(path)!r}: images[0] needs 'id' as int, got None; fix that entry.")
    path = _write(tmp_path, images=[{"id": True, "file_name": "a.png"}])
    assert "images[0] needs 'id' as int, got True" in _error(path)
    path = _write(tmp_path, categories=[{"id": 1}, {"id": "2"}])
    assert _error(path).startswith(f"Annotation file {str(path)!r}: categories[1] needs 'id' as int, got '2'")


@pytest.mark.parametrize(
    ("bbox", "dropped"),
    [
        ([64, 10, 4, 4], True),  # x at the width: outside
        ([63, 10, 4, 4], False),
        ([10, 48, 4, 4], True),  # y at the height
        ([10, 47, 4, 4], False),
        ([-4, 10, 4, 4], True),  # ends at x = 0
        ([-4, 10, 4.5, 4], False),
        ([10, -4, 4, 4], True),  # ends at y = 0
        ([10, -4, 4, 4.5], False),
    ],
)
def test_a_box_outside_its_image_on_any_one_side_is_dropped(tmp_path, bbox, dropped):
    path = _write(tmp_path, [_box(1, [2, 2, 4, 5]), _box(2, bbox)])
    coco = _read(path, max_dropped_fraction=None)
    assert coco.dropped == ({"outside": 1} if dropped else {})
    assert coco.counts["kept"] == (1 if dropped else 2)


def test_drops_of_one_reason_add_up(tmp_path):
    path = _write(tmp_path, [_box(1, [2, 2, 4, 5]), _box(2, [2, 2, 0, 5]), _box(3, [2, 2, 4, -1])])
    assert _read(path, max_dropped_fraction=None).dropped == {"empty": 2}


def test_polygon_area():
    area = coco_module._polygon_area
    assert area([[0, 0, 4, 0, 4, 3]]) == 6.0  # a triangle: the smallest polygon
    assert area([[0, 0, 4, 0, 4, 3], [10, 10, 12, 10, 12, 12, 10, 12]]) == 10.0  # two polygons add up
    assert area([]) is None and area({"counts": "x", "size": [4, 4]}) is None
    assert area([[0, 0, 4, 0]]) is None  # two corners
    assert area([[0, 0, 4, 0, 4]]) is None  # an odd count
    assert area([(0, 0, 4, 0, 4, 3)]) is None  # not a list of lists
    assert area([[0, 0, 4, 0, 4, "3"]]) is None


def test_an_area_above_its_box_disagrees_even_when_its_polygon_agrees(tmp_path):
    polygon = [0, 0, 15, 0, 15, 10, 0, 10]  # 150, drawn outside its 10 x 10 box
    path = _write(tmp_path, [_box(1, [0, 0, 10, 10], area=150, segmentation=[polygon])])
    assert _read(path).counts["area_disagreeing"] == 1


def test_iscrowd_must_be_zero_or_one(tmp_path):
    for value in (2, "0", -1):
        path = _write(tmp_path, [_box(1, [2, 2, 4, 5], iscrowd=value)])
        assert _error(path) == (
            f"Annotation file {str(path)!r}: annotation 1 has iscrowd {value!r}; iscrowd must be 0 or 1."
        )


def test_a_bad_area_is_named(tmp_path):
    path = _write(tmp_path, [_box(7, [2, 2, 4, 5], area="20")])
    assert _error(path) == (
        f"Annotation file {str(path)!r}: annotation 7 has area '20'; area must be a finite number (or absent, to be "
        "computed from the box)."
    )


def test_counts_of_filled_areas_missing_segmentations_and_negatives(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in (1, 2, 3)]
    annotations = [
        _box(1, [2, 2, 4, 5]),
        _box(2, [2, 2, 4, 5], image_id=2),
        _box(3, [2, 2, 4, 5], area=20.0, segmentation=[[2, 2, 6, 2, 6, 7, 2, 7]]),
    ]
    counts = _read(_write(tmp_path, annotations, images=images)).counts
    assert (counts["area_filled"], counts["segmentation_missing"], counts["negatives"]) == (2, 2, 1)
    assert (counts["images"], counts["kept"], counts["annotation_ids_renumbered"]) == (3, 3, 0)


@pytest.mark.parametrize(("size", "counted"), [({"height": 48}, 0), ({"width": 48}, 0), ({"width": 8, "height": 6}, 1)])
def test_an_area_counts_as_the_image_area_only_when_both_sides_are_known(tmp_path, size, counted):
    # The box is 4 x 5 = 20; the file area is 48, which is 8 x 6 (the image area when both are given).
    path = _write(tmp_path, [_box(1, [0, 0, 4, 5], area=48)], images=[{"id": 1, "file_name": "a.png", **size}])
    counts = _read(path).counts
    assert (counts["area_disagreeing"], counts["area_is_image_area"]) == (1, counted)


@pytest.mark.parametrize(("area", "counted"), [(48, 1), (47.9, 0), (80, 1), (80.1, 0)])
def test_the_image_area_tolerance_is_inclusive(tmp_path, area, counted):
    # 8 x 8 = 64 and tolerance 1/4: areas from 48 to 80 are "the image area"; the 4 x 5 box disagrees with each.
    images = [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}]
    path = _write(tmp_path, [_box(1, [0, 0, 4, 5], area=area)], images=images)
    assert _read(path, area_tolerance=0.25).counts["area_is_image_area"] == counted


def test_the_area_warning_counts_only_the_files_areas_and_says_how_many_are_the_image_area(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}]
    image_areas = [_box(1, [0, 0, 4, 5], area=64), _box(2, [0, 0, 2, 2], area=64), _box(3, [0, 0, 2, 2])]
    path = _write(tmp_path, image_areas, images=images)
    with pytest.warns(UserWarning) as record:
        read_coco(path)
    assert str(record[0].message) == (
        f"{path}: APs/APm/APl use the file's area: 2 of 2 areas are the image area; pass --area box (area='box') "
        "to size by the boxes, or fix the areas in the file."
    )
    # stacklevel 2: the warning points at read_coco's caller, neither into the reader nor into pytest (a mutation
    # tester's trampoline, where one wraps read_coco, is that caller's stand-in).
    assert Path(record[0].filename).name != "coco.py" and "_pytest" not in record[0].filename
    mixed = [_box(1, [0, 0, 4, 5], area=64), _box(2, [0, 0, 2, 2], area=30), _box(3, [0, 0, 2, 2], area=4)]
    with pytest.warns(UserWarning) as record:
        read_coco(_write(tmp_path, mixed, images=images))
    assert "2 of 3 areas disagree with their box (or polygon) by more than 20%, 1 of them the image area;" in str(
        record[0].message
    )
    off = [_box(1, [0, 0, 4, 5], area=30), _box(2, [0, 0, 2, 2], area=4)]
    with pytest.warns(UserWarning) as record:
        read_coco(_write(tmp_path, off, images=images))
    assert "1 of 2 areas disagree with their box (or polygon) by more than 20%; pass --area box" in str(
        record[0].message
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"area": "mask"}, ValueError, "area must be one of ['box', 'file'], got 'mask'"),
        ({"area_tolerance": -0.1}, ValueError, "area_tolerance must be a float in [0, inf), got -0.1"),
        ({"max_dropped_fraction": -0.1}, ValueError, "max_dropped_fraction must be a float in [0, 1], got -0.1"),
        ({"max_dropped_fraction": 1.5}, ValueError, "max_dropped_fraction must be a float in [0, 1], got 1.5"),
    ],
)
def test_argument_errors_name_the_argument(tmp_path, kwargs, error, message):
    assert _error(_write(tmp_path), error, **kwargs).startswith(message)


def test_unique_int_annotation_ids_are_kept(tmp_path):
    coco = _read(_write(tmp_path, [_box(5, [2, 2, 4, 5]), _box(9, [1, 1, 4, 5])]))
    assert [ann["id"] for ann in coco.dataset["annotations"]] == [5, 9]
    assert coco.counts["annotation_ids_renumbered"] == 0
    coco = _read(_write(tmp_path, [_box(5, [2, 2, 4, 5]), _box(5, [1, 1, 4, 5])]))
    assert [ann["id"] for ann in coco.dataset["annotations"]] == [1, 2]
    assert coco.counts["annotation_ids_renumbered"] == 2


def test_refusals_name_the_file_and_the_fix(tmp_path):
    path = _write(tmp_path, [_box(1, [2, 2, 0, 5])])
    assert _error(path) == (
        f"{str(path)!r} has no usable box: 1 annotation(s), 0 crowd (ignored), unusable: 1 zero or negative width "
        "or height. Fix the annotation file (bbox is [x, y, width, height] in pixels, category_id one of its "
        "'categories'): a detector can neither learn from nor be scored on background alone."
    )
    path = _write(tmp_path, [_box(1, [2, 2, 4, 5]), _box(2, [2, 2, 0, 5])])
    assert _error(path, max_dropped_fraction=0.25) == (
        f"{str(path)!r}: 1 of 2 annotations are unusable (1 zero or negative width or height), more than "
        "max_dropped_fraction=0.25. Fix the annotation file (bbox is [x, y, width, height] in pixels, category_id "
        "one of its 'categories'), or allow more with --set max_dropped_fraction=<share> to train on the usable ones."
    )


def test_reading_is_logged_at_debug(tmp_path, caplog):
    path = _write(tmp_path)
    with caplog.at_level(logging.DEBUG, logger=coco_module.__name__):
        coco = _read(path)
    assert [record.getMessage() for record in caplog.records] == [f"read {path}: {coco.counts}"]


def test_coco_api_without_pycocotools_says_how_to_install(tmp_path, monkeypatch):
    coco = _read(_write(tmp_path))
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError) as error:
        coco_api(coco)
    assert str(error.value) == "Reading COCO files needs pycocotools: pip install 'srf_upsample[train]'."


def test_subset_errors_and_counts(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in (1, 2, 3)]
    annotations = [_box(1, [2, 2, 4, 5]), _box(2, [2, 2, 4, 5], image_id=2), _box(3, [2, 2, 0, 5], image_id=3)]
    path = _write(tmp_path, annotations, images=images)
    coco = _read(path, max_dropped_fraction=None)
    assert coco.dropped == {"empty": 1}
    part = subset(coco, [3, 2])
    assert [image["id"] for image in part.dataset["images"]] == [2, 3]
    assert part.counts == {
        "annotations": 1,
        "dropped": 0,
        "images": 2,
        "kept": 1,
        "negatives": 1,
        "crowd": 0,
        "categories": 1,
        "categories_present": 1,
        "categories_absent": 0,
    }
    assert part.dropped == {}
    with pytest.raises(ValueError) as error:
        subset(coco, [1, 12, "a"])
    assert str(error.value) == (
        f"image_ids holds 2 id(s) not in {str(path)!r}, e.g. [12, 'a']; pass ids of its 'images'."
    )
    with pytest.raises(ValueError, match=r"holds 6 id\(s\) .*e\.g\. \[10, 11, 12, 13, 14\];"):
        subset(coco, [10, 11, 12, 13, 14, 15])
    with pytest.raises(ValueError) as error:
        subset(coco, [1, 1])
    assert str(error.value) == "image_ids repeats an id; pass each image once."


def test_write_coco_creates_folders_overwrites_and_refuses_the_source(tmp_path):
    coco = _read(_write(tmp_path))
    first = write_coco(coco, tmp_path / "a" / "b" / "x.json")
    second = write_coco(coco, tmp_path / "a" / "b" / "y.json")  # the folder exists now
    write_coco(coco, first)  # and again over a file
    for path in (first, second):
        assert json.loads(path.read_text(encoding="utf-8")) == coco.dataset
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["x.json", "y.json"]
    with pytest.raises(ValueError) as error:
        write_coco(coco, tmp_path / "instances.json")
    assert str(error.value) == (
        f"path {str(tmp_path / 'instances.json')!r} is the file that was read; write the normalised copy elsewhere."
    )
