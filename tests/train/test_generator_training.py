"""Stage 1's feature cache (same numbers as without it), G's held-out validation curve, and the plateau stop."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, data_args

from srf_upsample.train.cli import main
from srf_upsample.train.feature_cache import FeatureCache, batch_features
from srf_upsample.train.models import DetectorSpec
from srf_upsample.train.plateau import plateau_step
from srf_upsample.train.plots import plot_generator_curves
from srf_upsample.train.pyramid import downsample_images, extract_levels, prepare_batch
from srf_upsample.train.run_folder import read_jsonl

KEYS = ["0", "1", "2", "3"]
LEVELS = ["P2", "P3", "P4", "P5"]


def _stage1(coco, out: Path, *extra: str) -> list[str]:
    return ["stage1", *data_args(coco), *TINY, "--output-dir", str(out), *extra]


def _evaluation(coco) -> list[str]:
    return ["--eval-data-root", str(coco[0]), "--eval-ann-file", str(coco[1])]


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoint.safetensors"))


def test_cached_and_uncached_stage1_give_identical_losses_and_weights(coco, tmp_path):
    # 4 images, batch 2, 4 steps: the second epoch revisits keys, so the cached run reads entries it stored.
    args = ("--max-iters", "4")
    assert main(_stage1(coco, tmp_path / "cached", *args)) == 0
    assert main(_stage1(coco, tmp_path / "plain", *args, "--set", "feature_cache=false")) == 0
    cached, plain = read_jsonl(tmp_path / "cached" / "log.jsonl"), read_jsonl(tmp_path / "plain" / "log.jsonl")
    assert [r["losses"] for r in cached] == [r["losses"] for r in plain]  # exact float equality, every step
    stats = json.loads((tmp_path / "cached" / "manifest.json").read_text())["feature_cache"]
    assert (stats["hits"], stats["misses"], stats["entries"]) == (3, 5, 5)  # epoch 1 revisits 3 of its 4 keys
    assert "feature_cache" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())
    a, b = _tensors(tmp_path / "cached"), _tensors(tmp_path / "plain")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), "G or D weights differ between cached and uncached runs"
    # The L1 and adversarial parts of G's loss are logged apart and make up Eq. (2) with lambda = 0.001.
    losses = cached[0]["losses"]
    assert losses["loss_g"] == pytest.approx(losses["loss_g_l1"] + 0.001 * losses["loss_g_adv"], rel=1e-6)


def test_cache_returns_stored_levels_and_per_image_f_matches_the_batched_f():
    torch.manual_seed(0)
    spec = DetectorSpec.from_values(
        {"detector": "fasterrcnn", "backbone": "resnet18", "fpn_channels": 8}, num_classes=3
    )
    extractor = spec.build().backbone.eval().requires_grad_(False)
    images = [torch.rand(3, 64, 64), torch.rand(3, 40, 100)]  # different sizes: both padded to 64 x 128
    cache = FeatureCache()
    first = batch_features(extractor, images, [(0, False), (1, True)], KEYS, degradation="bilinear", cache=cache)
    again = batch_features(extractor, images, [(0, False), (1, True)], KEYS, degradation="bilinear", cache=cache)
    assert (cache.misses, cache.hits, len(cache)) == (2, 2, 2)
    assert all(torch.equal(x, y) for x, y in zip(first[0] + first[1], again[0] + again[1], strict=True))
    assert cache.nbytes == sum(t.numel() * 4 for t in first[0] + first[1])
    # The old batched computation gives the same levels up to float rounding (per-image vs batched convolutions).
    with torch.no_grad():
        full = prepare_batch(images)
        target = extract_levels(extractor, full, KEYS)
        low = extract_levels(extractor, downsample_images(full, "bilinear"), KEYS)
    for mine, theirs in zip(first[0] + first[1], target + low, strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_validation_curve_of_g_in_eval_jsonl_and_its_plot(coco, tmp_path):
    out = tmp_path / "s1"
    assert main(_stage1(coco, out, *_evaluation(coco), "--max-iters", "2", "--eval-every", "1")) == 0
    records = read_jsonl(out / "eval.jsonl")
    assert [r["step"] for r in records] == [1, 2]  # every eval_every steps, and at the end
    for record in records:
        assert sorted(record["generator_l1"]) == sorted(LEVELS)
        assert record["generator_l1_mean"] == pytest.approx(sum(record["generator_l1"].values()) / 4)
        assert record["heldout_images"] == 4 and record["seconds"] >= 0
    # The fixed interpolations once per run, in the first record.
    assert sorted(records[0]["interpolation_l1"]) == ["bicubic", "bilinear", "nearest"]
    assert "interpolation_l1" not in records[1]
    assert records[0]["interpolation_l1"]["nearest"]["P2"] > 0
    # G was trained between the two evaluations: its L1 changed.
    assert records[0]["generator_l1"] != records[1]["generator_l1"]
    picture = plot_generator_curves({"tiny": out}, tmp_path / "curve.png")
    assert picture.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="eval.jsonl"):
        plot_generator_curves({"none": tmp_path}, tmp_path / "x.png")


def test_plateau_stop_ends_the_run_as_finished_and_stays_stopped_on_resume(coco, tmp_path):
    out = tmp_path / "s1"
    # min_delta 1.0: no evaluation can improve by 100 %, so the run plateaus at its second evaluation.
    argv = _stage1(
        coco,
        out,
        *_evaluation(coco),
        "--max-iters",
        "6",
        "--eval-every",
        "1",
        "--set",
        "plateau_patience=1",
        "--set",
        "plateau_min_delta=1.0",
    )
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] is True and manifest["step"] == 2
    assert manifest["stopped"]["step"] == 2 and manifest["stopped"]["reason"].startswith("plateau")
    assert [r["step"] for r in read_jsonl(out / "eval.jsonl")] == [1, 2]  # the stopping evaluation is the last
    assert main(argv) == 0  # rerun: resumes, finds the plateau in eval.jsonl, trains nothing more
    assert len(read_jsonl(out / "log.jsonl")) == 2
    assert [r["step"] for r in read_jsonl(out / "eval.jsonl")] == [1, 2]


def test_plateau_criterion_and_its_settings_are_checked(coco, tmp_path, capsys):
    rows = [{"step": s, "generator_l1_mean": v} for s, v in [(1, 1.0), (2, 0.95), (3, 0.949), (4, 0.90), (5, 0.9)]]
    assert plateau_step(rows, patience=2, min_delta=0.01) is None  # step 4 improved by more than 1 %
    assert plateau_step(rows, patience=1, min_delta=0.01) == 3
    assert plateau_step([{"step": 1, "bbox": {}}], patience=1, min_delta=0.0) is None  # AP-only records ignored
    assert main(_stage1(coco, tmp_path / "x", "--set", "plateau_patience=3")) == 2
    assert "plateau_patience=3 stops on G's held-out L1" in capsys.readouterr().err


def test_bench_fidelity_takes_any_generator_folder_and_extractor_run(coco, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_fidelity

    base = ["--detector", "fasterrcnn", "--backbone", "resnet18", "--min-size", "64", "--max-size", "64"]
    baseline = [*base, "--batch-size", "2", "--device", "cpu", "--quiet", "--set", "warmup_iters=0"]
    assert main(["baseline", *data_args(coco), *baseline, "--max-iters", "1", "--output-dir", str(tmp_path / "b")]) == 0
    assert main(_stage1(coco, tmp_path / "s1", "--max-iters", "1")) == 0
    generator = str(tmp_path / "s1" / "generator")
    common = ["--images", str(coco[0]), "--no-write", "--limit", "2"]
    for extractor in (tmp_path / "b", tmp_path / "b" / "checkpoint.safetensors"):
        argv = [*common, "--extractor", str(extractor), "--generator", generator, "--generator", generator]
        assert bench_fidelity.main(argv) == 0
    table = capsys.readouterr().out
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ")]
    assert [generator, "P2"] in [[cell.strip() for cell in row] for row in rows]
    assert ["bilinear", "mean"] in [[cell.strip() for cell in row] for row in rows]
    wrong = {
        ("--extractor", str(tmp_path / "nowhere")): "does not exist",
        ("--extractor", str(coco[1])): "not a trainer checkpoint.safetensors",
        ("--extractor", str(tmp_path / "s1")): "stage1",
        ("--generator", str(tmp_path / "nowhere")): "neither a folder nor a shipped generator",
        ("--generator", str(tmp_path / "b")): "no config.json",
    }
    for (flag, value), message in wrong.items():
        extra = [flag, value] if flag == "--extractor" else ["--extractor", str(tmp_path / "b"), flag, value]
        with pytest.raises(SystemExit):  # argparse's error: exit status 2, the message on stderr
            bench_fidelity.main([*common, *extra])
        assert message in capsys.readouterr().err


def test_stage2_eval_record_holds_ap_and_g_fidelity(coco, tmp_path):
    assert main(_stage1(coco, tmp_path / "s1", "--max-iters", "1")) == 0
    argv = ["stage2", *data_args(coco), *TINY, *_evaluation(coco), "--init", str(tmp_path / "s1")]
    assert main([*argv, "--max-iters", "1", "--output-dir", str(tmp_path / "s2")]) == 0
    (record,) = read_jsonl(tmp_path / "s2" / "eval.jsonl")
    assert "AP" in record["bbox"] and sorted(record["generator_l1"]) == sorted(LEVELS)
    assert "interpolation_l1" in record
