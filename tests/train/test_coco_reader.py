"""coco.read_coco: one reader for training and evaluation, checked against files written the way labelling tools do.

The "tool file" below has what a file written by another tool often has: images in sub-folders, category ids 3 and 7,
large image ids in no order, images without boxes, ``iscrowd`` on some annotations only, and ``area`` written as the
image's area. AP values are known answers: detections are scripted per image, and COCO's AP is the fraction of the
IoU thresholds 0.50:0.05:0.95 a detection passes when every detection of a category is a true positive at the same
IoU (see tests/train/test_evaluate.py for the rule).
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_coco
from PIL import Image
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from srf_upsample.train.cli import main, parse_config
from srf_upsample.train.coco import coco_api, read_coco, subset, write_coco
from srf_upsample.train.data import CocoDetectionDataset
from srf_upsample.train.evaluate import evaluate_detector

CATEGORY_IDS = [3, 7]  # label 1 is category 3, label 2 is category 7
SMALL, LARGE, MEDIUM = (10, 10, 20, 20), (50, 50, 100, 100), (20, 30, 40, 40)  # areas 400, 10000, 1600
# id -> (file name, (H, W), [(category, box, iscrowd or None when absent)]); each image has its own size, so the
# scripted detector can tell them apart. Two images have no box.
IMAGES = {
    9_000_000_000_017: ("cam_a/0001.png", (160, 168), [(3, SMALL, 0), (3, LARGE, None)]),
    42: ("cam_b/day/0002.png", (160, 176), [(7, MEDIUM, None)]),
    123_456_789_012: ("cam_b/night/0003.png", (160, 184), []),
    5: ("0004.png", (160, 192), []),
}
SHIFT = 4  # the medium box is detected 4 px to the right: IoU 36*40 / (44*40) = 0.818, so 7 of 10 thresholds
NEGATIVE = 123_456_789_012
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Category 3: both boxes exact (AP 1); category 7: AP 0.7. APs and APm each have one category (the other's -1 is
# left out of the mean).
BY_BOX = dict(zip(METRICS, (0.85, 1.0, 1.0, 1.0, 0.7, 1.0), strict=True))
# Every area the image area (160*168 or more > 96**2): every box is "large", APs/APm are COCO's -1.
BY_IMAGE_AREA = dict(zip(METRICS, (0.85, 1.0, 1.0, -1.0, -1.0, 0.85), strict=True))


def write_tool_file(root: Path, areas: str = "image", **changes) -> tuple[Path, Path]:
    """Write the images of IMAGES and their json; ``areas``: "image", "box" (w*h) or "missing"."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, (name, (height, width), boxes) in reversed(IMAGES.items()):  # not in id order
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(root / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for category, box, crowd in boxes:
            ann = {"id": 1000 - len(annotations), "image_id": image_id, "category_id": category, "bbox": list(box)}
            if crowd is not None:
                ann["iscrowd"] = crowd
            if areas != "missing":
                ann["area"] = height * width if areas == "image" else box[2] * box[3]
            annotations.append(ann)
    values = {"images": images, "annotations": annotations, "categories": [{"id": 7}, {"id": 3}], **changes}
    ann_file = root / "tool.json"
    ann_file.write_text(json.dumps(values))
    return root, ann_file


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> tuple[Path, Path]:
    return write_tool_file(tmp_path_factory.mktemp("tool"))


class ScriptedDetector(nn.Module):
    """Returns the detections scripted for each image, found by its size (a stand-in for a torchvision detector)."""

    def __init__(self, false_positive: bool = False, masks: bool = False) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(64, 64, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        self.detections = {}
        for image_id, (_, size, boxes) in IMAGES.items():
            shown = [(c, (x + SHIFT * (c == 7), y, w, h), 0.9 - 0.1 * (c == 7)) for c, (x, y, w, h), _ in boxes]
            if false_positive and image_id == NEGATIVE:  # a category-3 box, scored above every true one
                shown = [(3, SMALL, 0.95)]
            self.detections[size] = {
                "boxes": torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h), _ in shown]).reshape(-1, 4).float(),
                "labels": torch.tensor([CATEGORY_IDS.index(c) + 1 for c, _, _ in shown], dtype=torch.int64),
                "scores": torch.tensor([s for _, _, s in shown]),
            }
            if masks:  # as Mask R-CNN returns them: (N, 1, H, W) probabilities
                self.detections[size]["masks"] = torch.full((len(shown), 1, *size), 0.9)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{k: v.clone() for k, v in self.detections[tuple(image.shape[-2:])].items()} for image in images]


def evaluate(ann_file, root, **kwargs) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the area warning has its own test
        metrics = evaluate_detector(ScriptedDetector(), root, ann_file, category_ids=CATEGORY_IDS, **kwargs)
    return {name: pytest.approx(value, abs=1e-9) for name, value in metrics["bbox"].items()}


def test_image_areas_warn_with_the_count_and_area_box_sizes_by_the_boxes(tool) -> None:
    _, ann_file = tool
    with pytest.warns(
        UserWarning, match=r"APs/APm/APl use the file's area: 3 of 3 areas are the image area.*--area box"
    ):
        coco = read_coco(ann_file)
    assert coco.counts["area_disagreeing"] == coco.counts["area_is_image_area"] == 3
    assert [ann["area"] for ann in coco.dataset["annotations"]] == [160.0 * 176, 160.0 * 168, 160.0 * 168]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # area="box" is the fix: no warning
        boxed = read_coco(ann_file, area="box")
    assert sorted(ann["area"] for ann in boxed.dataset["annotations"]) == [400.0, 1600.0, 10000.0]
    assert boxed.counts["area_recomputed"] == 3 and boxed.area == "box"


def test_correct_and_image_areas_give_the_same_ap_and_area_box_the_right_size_classes(tool, tmp_path) -> None:
    root, image_areas = tool
    _, box_areas = write_tool_file(tmp_path, areas="box")
    assert evaluate(box_areas, root) == BY_BOX
    assert evaluate(image_areas, root) == BY_IMAGE_AREA  # AP the same; the size classes follow the file's area
    assert evaluate(image_areas, root, area="box") == BY_BOX
    _, missing = write_tool_file(tmp_path / "missing", areas="missing")
    assert evaluate(missing, root) == BY_BOX  # a missing area is the box's


def test_negative_images_are_evaluated(tool) -> None:
    root, ann_file = tool
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = evaluate_detector(ScriptedDetector(True), root, ann_file, category_ids=CATEGORY_IDS)
    # Category 3's false positive on the empty image ranks first: its precision is 2/3 at every recall, AP 2/3.
    assert metrics["bbox"]["AP"] == pytest.approx((2 / 3 + 0.7) / 2)
    assert metrics["num_images"] == 4


def test_detections_keep_the_file_category_ids_and_image_ids(tool, tmp_path) -> None:
    root, ann_file = tool
    evaluate(ann_file, root, output_dir=tmp_path)
    detections = json.loads(gzip.decompress((tmp_path / "detections.json.gz").read_bytes()))
    assert [image["image_id"] for image in detections["images"]] == sorted(IMAGES)  # the negatives listed too
    expected = {
        image_id: sorted((c, [x + SHIFT * (c == 7), y, w, h]) for c, (x, y, w, h), _ in boxes)
        for image_id, (_, _, boxes) in IMAGES.items()
    }
    found = {
        image["image_id"]: sorted(zip(image["labels"], image["boxes"], strict=True)) for image in detections["images"]
    }
    assert found == expected
    results = json.loads((tmp_path / "detections_bbox.json").read_text())
    assert sorted({r["category_id"] for r in results}) == [3, 7]


def test_missing_iscrowd_never_reaches_pycocotools_and_the_file_is_left_alone(tool) -> None:
    root, ann_file = tool
    before = ann_file.read_bytes()
    with pytest.warns(UserWarning):
        dataset = CocoDetectionDataset(root, ann_file)
    assert all(ann["iscrowd"] == 0 for ann in dataset.coco.anns.values())  # pycocotools' index
    assert dataset.coco.dataset is not dataset.coco_file.dataset  # COCOeval writes into its copy, not the reader's
    report = dataset.report
    assert (report["iscrowd_filled"], report["area_filled"], report["images"], report["negatives"]) == (2, 0, 4, 2)
    assert (report["categories_present"], report["categories_absent"], report["usable"]) == (2, 0, 3)
    assert ann_file.read_bytes() == before


def test_labels_are_contiguous_and_negatives_are_true_negatives(tool) -> None:
    root, ann_file = tool
    with pytest.warns(UserWarning):
        dataset = CocoDetectionDataset(root, ann_file, min_size=None)
    assert dataset.coco_file.label_of_category == {3: 1, 7: 2} and dataset.category_ids == CATEGORY_IDS
    assert dataset.ids == sorted(IMAGES)  # ids of any size, in id order
    items = {dataset.ids[i]: dataset[i][1] for i in range(len(dataset))}
    assert items[9_000_000_000_017]["labels"].tolist() == [1, 1] and items[42]["labels"].tolist() == [2]
    assert items[NEGATIVE]["boxes"].shape == (0, 4) and items[NEGATIVE]["labels"].shape == (0,)


def test_polygon_and_box_areas_that_agree_raise_no_warning(tmp_path) -> None:
    _, ann_file = make_coco(tmp_path, num_images=3)  # area w*h, a rectangle polygon
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coco = read_coco(ann_file)
    assert coco.counts["area_disagreeing"] == 0 and coco.counts["iscrowd_filled"] == 0


def test_areas_off_their_polygon_are_counted_apart_from_image_areas(tmp_path) -> None:
    _, ann_file = make_coco(tmp_path, num_images=2)  # 3 annotations
    values = json.loads(ann_file.read_text())
    values["annotations"][0]["area"] *= 2  # above its box: always off
    x, y, w, h = values["annotations"][1]["bbox"]
    values["annotations"][1]["segmentation"] = [[x, y, x + w / 2, y, x + w / 2, y + h, x, y + h]]  # half the box
    ann_file.write_text(json.dumps(values))
    with pytest.warns(UserWarning, match=r"2 of 3 areas disagree with their box \(or polygon\) by more than 20%"):
        coco = read_coco(ann_file)
    assert coco.counts["area_is_image_area"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_coco(ann_file, area_tolerance=10.0)  # within a wide tolerance of the polygon: none is off


def _edit(values: dict, edit: str) -> object:
    """The tool file's values broken in one way (``edit``)."""
    anns = values["annotations"]
    if edit == "duplicate image id":
        values["images"][1]["id"] = values["images"][0]["id"]
    elif edit == "duplicate category id":
        values["categories"].append({"id": 3})
    elif edit == "no file_name":
        del values["images"][0]["file_name"]
    elif edit == "unknown image":
        anns[0]["image_id"] = 77
    elif edit == "unknown category":
        anns[0]["category_id"] = 8
    elif edit == "bad bbox":
        anns[0]["bbox"] = [1, 2, 3]
    elif edit == "NaN bbox":
        anns[0]["bbox"][0] = float("nan")
    elif edit == "area not a number":
        anns[0]["area"] = "big"
    elif edit == "iscrowd a string":
        anns[1]["iscrowd"] = "0"
    elif edit == "no usable box":
        values["annotations"] = []
    elif edit == "empty images":
        values["images"], values["annotations"] = [], []
    elif edit.startswith("no "):
        del values[edit[3:]]
    elif edit == "a list":
        return [values]
    return values


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("not JSON", r"tool.json' is not JSON .*pass a COCO instances json"),
        ("a list", r"holds a JSON list, not an object"),
        ("no images", r"'images' must be a list, got missing.*write \[\] for an empty one"),
        ("no annotations", r"'annotations' must be a list, got missing"),
        ("no categories", r"'categories' must be a list, got missing"),
        ("duplicate image id", r"images id 5 appears twice \(images\[1\]\); ids must be unique"),
        ("duplicate category id", r"categories id 3 appears twice"),
        ("no file_name", r"images\[0\] needs 'file_name' as str, got None"),
        ("unknown image", r"1 of 3 annotations are unusable \(1 image id not among the file's images\).*max_dropped"),
        ("unknown category", r"1 of 3 annotations are unusable \(1 unknown category id\)"),
        ("bad bbox", r"1 of 3 annotations are unusable \(1 bbox is not 4 numbers\)"),
        ("NaN bbox", r"\(1 NaN or infinite coordinates\).*bbox is \[x, y, width, height\]"),
        ("area not a number", r"annotation 1000 has area 'big'; area must be a finite number"),
        ("iscrowd a string", r"annotation 999 has iscrowd '0'; iscrowd must be 0 or 1"),
        ("no usable box", r"has no usable box: 0 annotation"),
        ("empty images", r"has no images; a COCO json with at least one image is needed"),
    ],
)
def test_what_cannot_be_read_is_a_clear_error(tool, tmp_path, edit, message) -> None:
    values = json.loads(tool[1].read_text())
    path = tmp_path / "tool.json"
    path.write_text("{'images': []" if edit == "not JSON" else json.dumps(_edit(values, edit)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message):
            read_coco(path)


def test_left_out_boxes_are_counted_when_allowed_and_ids_renumbered(tool, tmp_path) -> None:
    values = json.loads(tool[1].read_text())
    values["annotations"][0]["category_id"] = 8
    values["annotations"][2]["id"] = values["annotations"][1]["id"]  # pycocotools would index one of the two
    path = tmp_path / "tool.json"
    path.write_text(json.dumps(values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = read_coco(path, max_dropped_fraction=0.5)
    assert coco.dropped == {"unknown_category": 1} and coco.counts["kept"] == 2
    assert [ann["id"] for ann in coco.dataset["annotations"]] == [1, 2]
    assert coco.counts["annotation_ids_renumbered"] == 2 and len(coco_api(coco).anns) == 2


def test_subset_and_write_coco_make_fold_files(tool, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = read_coco(tool[1], area="box")
    fold = subset(coco, [42, NEGATIVE])
    assert [image["id"] for image in fold.dataset["images"]] == [NEGATIVE, 42]  # the file's order
    assert fold.label_of_category == coco.label_of_category and len(fold.dataset["categories"]) == 2
    assert (fold.counts["images"], fold.counts["kept"], fold.counts["negatives"]) == (2, 1, 1)
    assert (fold.counts["categories_present"], fold.counts["categories_absent"]) == (1, 1)
    written = write_coco(fold, tmp_path / "fold0" / "val.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # normalised: nothing left to fill in or warn about
        again = read_coco(written)
    assert again.dataset == fold.dataset and again.counts["iscrowd_filled"] == again.counts["area_filled"] == 0
    with pytest.raises(ValueError, match=r"image_ids holds 1 id\(s\) not in .*e.g. \[6\]"):
        subset(coco, [42, 6])
    with pytest.raises(ValueError, match="is the file that was read"):
        write_coco(coco, tool[1])


def test_masks_without_segmentation_are_refused_for_mask_training(tool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"3 of 3 annotations have no segmentation.*--detector fasterrcnn"):
            CocoDetectionDataset(tool[0], tool[1], use_masks=True)


def test_area_flag_reaches_the_config() -> None:
    argv = ["baseline", "--data-root", "d", "--ann-file", "a.json", "--output-dir", "o"]
    assert parse_config(argv)[0].coco_area == "file"
    assert parse_config([*argv, "--area", "box"])[0].coco_area == "box"
    with pytest.raises(ValueError, match=r"coco_area must be one of \['box', 'file'\], got 'pixels'"):
        parse_config([*argv, "--set", "coco_area=pixels"])


def test_train_then_evaluate_on_the_tool_file(tool, tmp_path) -> None:
    root, ann_file = tool
    out = tmp_path / "run"
    argv = ["baseline", "--data-root", str(root), "--ann-file", str(ann_file), "--eval-ann-file", str(ann_file)]
    argv += [*TINY, "--max-iters", "1", "--output-dir", str(out), "--set", 'detector_kwargs={"box_score_thresh":0}']
    with pytest.warns(UserWarning, match="3 of 3 areas are the image area"):
        assert main(argv) == 0  # before the reader: KeyError 'iscrowd' inside pycocotools at the first evaluation
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("data", "eval_data"):
        counts = manifest[key]
        assert (counts["iscrowd_filled"], counts["negatives"], counts["area_is_image_area"]) == (2, 2, 3), key
    metrics = json.loads((out / "metrics.json").read_text())["bbox"]
    assert metrics["APs"] == metrics["APm"] == -1.0  # the file's areas make every box large, as the warning said
    detections = json.loads(gzip.decompress((out / "detections.json.gz").read_bytes()))
    labels = {label for image in detections["images"] for label in image["labels"]}
    assert labels and labels <= {3, 7}  # the file's category ids, never the labels 1 and 2
    assert [image["image_id"] for image in detections["images"]] == sorted(IMAGES)
    # `evaluate` with --area box: the boxes' areas put ground truth in all three size classes.
    evaluate_argv = ["evaluate", "--init", str(out), "--eval-ann-file", str(ann_file), "--area", "box", "--quiet"]
    assert main([*evaluate_argv, "--device", "cpu", "--log-level", "WARNING"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["bbox"]
    assert min(metrics["APs"], metrics["APm"], metrics["APl"]) >= 0.0


def test_a_bad_evaluation_file_fails_before_training(tool, tmp_path, capsys) -> None:
    root, ann_file = tool
    values = json.loads(ann_file.read_text())
    values["images"][1]["id"] = values["images"][0]["id"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(values))
    out = tmp_path / "run"
    argv = ["baseline", "--data-root", str(root), "--ann-file", str(ann_file), "--eval-ann-file", str(bad)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, *TINY, "--max-iters", "1", "--output-dir", str(out)]) == 2
    assert "appears twice" in capsys.readouterr().err and not out.exists()


def test_an_evaluation_file_with_other_categories_or_without_masks_warns(tool, tmp_path) -> None:
    root, ann_file = tool
    with pytest.warns(UserWarning, match=r"category ids \[7\] have boxes but are not among the model's categories"):
        evaluate_detector(ScriptedDetector(), root, ann_file, category_ids=[3, 9], area="box")
    with pytest.warns(UserWarning, match=r"3 ground-truth annotation\(s\) have no segmentation; only box AP"):
        metrics = evaluate_detector(ScriptedDetector(masks=True), root, ann_file, category_ids=CATEGORY_IDS, area="box")
    assert "segm" not in metrics and metrics["bbox"]["AP"] == pytest.approx(0.85)


def test_images_missing_from_the_folder_are_named(tool, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            ValueError, match=r"4 of 4 images listed in .* are missing from .*cam_a/0001.png.*--data-root"
        ):
            CocoDetectionDataset(tmp_path, tool[1])


def test_a_file_read_once_scores_the_same_at_every_evaluation(tool) -> None:
    root, ann_file = tool
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = read_coco(ann_file, area="box")
    before = json.dumps(coco.dataset, sort_keys=True)
    for _ in range(2):  # as the trainer does every eval_every steps
        metrics = evaluate_detector(ScriptedDetector(), root, coco, category_ids=CATEGORY_IDS)
        assert {name: pytest.approx(value, abs=1e-9) for name, value in metrics["bbox"].items()} == BY_BOX
    assert json.dumps(coco.dataset, sort_keys=True) == before  # COCOeval's "ignore" went into its own copies
