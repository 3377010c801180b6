"""The report step: intervals that reach their coverage, the variance split, and report_experiment's files."""

import gzip
import json

import numpy as np
import pytest
from _helpers import EXPERIMENT_SCHEDULE, experiment_values, fake_coco, fake_detections

from srf_upsample.train.experiment import load_experiment, paired_interval, plan_jobs, report_experiment
from srf_upsample.train.experiment.intervals import DEFAULT_LEVEL, EXTRA_SEEDS
from srf_upsample.train.experiment.stats import paired_bootstrap


def _percentile_covers(resampled, true, seed):
    """Whether the former interval (percentile bootstrap over images, then seeds) holds ``true``."""
    low, high = np.quantile(paired_bootstrap(resampled, seed=seed), [(1 - DEFAULT_LEVEL) / 2, (1 + DEFAULT_LEVEL) / 2])
    return low < true < high


SCHEDULE = EXPERIMENT_SCHEDULE


def _draws(rng, *, draws, folds, seeds, images, true, image_sd, seed_sd, noise_sd, replicates=400):
    """Synthetic experiments: per draw, per fold, each pair's difference on all images and on image resamples.

    A pair's difference on an image is ``true + g_i + a_s + e_si``: ``g`` the image's own (shared by every seed of
    the fold), ``a`` the seed's (training noise), ``e`` their interaction; a difference on a set of images is the
    mean over it, as an AP contribution would add up.
    """
    result = []
    for _ in range(draws):
        points, resampled = {}, {}
        for fold in range(folds):
            per_image = (
                true
                + rng.normal(0.0, image_sd, (1, images))
                + rng.normal(0.0, seed_sd, (seeds, 1))
                + rng.normal(0.0, noise_sd, (seeds, images))
            )
            indices = rng.integers(0, images, size=(replicates, images))  # one resample for every seed of the fold
            points[f"fold {fold}"] = per_image.mean(axis=1)
            resampled[f"fold {fold}"] = per_image[:, indices].mean(axis=-1)
        result.append((points, resampled))
    return result


def test_interval_reaches_its_coverage_and_the_variance_split_recovers_the_set_parts():
    rng = np.random.default_rng(0)
    folds, seeds, images, image_sd, seed_sd, noise_sd = 4, 3, 8, 1.0, 0.8, 0.5
    counts = dict.fromkeys((f"fold {k}" for k in range(folds)), images)
    covered, former, image_parts, seed_parts = [], [], [], []
    for draw, (points, resampled) in enumerate(_draws(
        rng, draws=300, folds=folds, seeds=seeds, images=images, true=0.7, image_sd=image_sd, seed_sd=seed_sd,
        noise_sd=noise_sd,
    )):  # fmt: skip
        answer = paired_interval(points, resampled, images=counts, level=DEFAULT_LEVEL)
        former.append(_percentile_covers(resampled, 0.7, draw))
        assert answer["method"] == "images+seeds" and answer["n"] == folds * seeds
        low, high = answer["interval"]
        covered.append(low < 0.7 < high)
        image_parts.append(answer["variance"]["images"])
        seed_parts.append(answer["variance"]["seeds"])
    print(f"3 seeds per fold: coverage {np.mean(covered):.3f}, percentile bootstrap {np.mean(former):.3f}")
    assert DEFAULT_LEVEL - 0.05 <= np.mean(covered) <= min(DEFAULT_LEVEL + 0.04, 1.0)
    # Seed noise dominates with 3 seeds per fold: a percentile bootstrap over seeds covers less (variance x 2/3).
    assert np.mean(former) < DEFAULT_LEVEL - 0.03
    # Known parts of the variance of the mean over all pairs (by hand, F folds, n seeds, m images):
    # images: (image_sd^2 + noise_sd^2 / n) / (F m); seeds: (seed_sd^2 + noise_sd^2 / m) / (F n).
    expected_images = (image_sd**2 + noise_sd**2 / seeds) / (folds * images)  # 0.0338542
    expected_seeds = (seed_sd**2 + noise_sd**2 / images) / (folds * seeds)  # 0.0559375
    assert np.mean(image_parts) == pytest.approx(expected_images, rel=0.12)
    assert np.mean(seed_parts) == pytest.approx(expected_seeds, rel=0.12)


def test_one_seed_per_fold_still_carries_seed_noise_and_reaches_its_coverage():
    # The hand-computed t-interval over 4 pairs: mean 1.1, sd 1.2516656, t(0.975, 3) = 3.1824463 (a printed table).
    half = 3.1824463 * 1.2516656 / 4**0.5
    answer = paired_interval({"block 0": [1.2], "block 1": [1.9], "block 2": [-0.7], "block 3": [2.0]})
    assert answer["method"] == "between folds" and answer["df"] == 3
    assert answer["interval"] == pytest.approx((1.1 - half, 1.1 + half), abs=1e-6)
    # The detectable effect comes from the reported interval: (t(0.975, 3) + t(0.8, 3)) * half / t(0.975, 3).
    assert answer["mde"] == pytest.approx((3.1824463 + 0.9784723) * half / 3.1824463, abs=1e-5)
    rng = np.random.default_rng(1)
    counts = dict.fromkeys((f"fold {k}" for k in range(4)), 8)
    covered, former, image_only = [], [], []
    for draw, (points, resampled) in enumerate(_draws(
        rng, draws=300, folds=4, seeds=1, images=8, true=-0.4, image_sd=0.6, seed_sd=1.0, noise_sd=0.0,
    )):  # fmt: skip
        answer = paired_interval(points, resampled, images=counts)
        former.append(_percentile_covers(resampled, -0.4, draw))
        low, high = answer["interval"]
        covered.append(low < -0.4 < high)
        image_only.append(answer["variance"]["images"])
        assert answer["projection"]["more_seeds"] is not None
    print(f"1 seed per fold: coverage {np.mean(covered):.3f}, image-only percentile bootstrap {np.mean(former):.3f}")
    assert DEFAULT_LEVEL - 0.05 <= np.mean(covered) <= min(DEFAULT_LEVEL + 0.04, 1.0)
    assert np.mean(former) < 0.6  # one seed: a bootstrap cannot resample seeds, so it shows image noise only
    # Image noise alone, 0.6^2 / (4 folds x 8 images), is a small part of the mean's variance (1.36 / 4).
    assert np.mean(image_only) == pytest.approx(0.36 / 32, rel=0.15)


def test_projection_of_more_seeds_and_more_images_follows_the_estimated_parts():
    # Seeds differ, images do not: more seeds shrink the interval, more images leave it (nearly) as it is.
    points = {"a": [0.0, 1.0, 2.0], "b": [1.0, 2.0, 3.0]}
    flat = {label: np.repeat(np.asarray(values)[:, None], 50, axis=1) for label, values in points.items()}
    answer = paired_interval(points, flat, images={"a": 10, "b": 10})
    assert answer["variance"]["images"] == 0.0
    assert answer["variance"]["seeds"] == pytest.approx(1.0 / 6)  # pooled within-fold variance 1, over 6 pairs
    now = (answer["interval"][1] - answer["interval"][0]) / 2
    assert answer["projection"]["twice_images"] == pytest.approx(now)
    # 3 more seeds per fold: variance 1 / 12 at 10 df (t(0.975, 10) = 2.2281) instead of 1 / 6 at 4 (2.7764).
    assert EXTRA_SEEDS == 3
    assert now == pytest.approx(2.7764 * (1 / 6) ** 0.5, abs=1e-3)
    assert answer["projection"]["more_seeds"] == pytest.approx(2.2281 * (1 / 12) ** 0.5, abs=1e-3)


def _config(arms=("A1", "B")):
    return load_experiment(experiment_values(variants=["lite"], arms=list(arms)))


def _ground_truth(rng, num_images):
    """200x200 images (ids 1, 2, ...) with 2 to 5 boxes each."""
    images = [
        {"id": index + 1, "width": 200, "height": 200, "file_name": f"{index}.png"} for index in range(num_images)
    ]
    return fake_coco(rng, images, boxes_per_image=(2, 6), corner_max=150, sides=(10, 40))


def _work_folder(rng, work, config, seeds):
    """A fake ``srf-upsample experiment --work-dir``: finished runs with detections; returns {arm: {seed: AP}}."""
    from srf_upsample.train.experiment.detections import average_precision, match_run, read_ground_truth

    truth = _ground_truth(rng, 6)
    work.mkdir(parents=True)
    (work / "val.json").write_text(json.dumps(truth))
    (work / "experiment.json").write_text(json.dumps({"config": config.to_dict(), "seeds": seeds}))
    ground_truth, ap = read_ground_truth(work / "val.json"), {}
    for job in plan_jobs(config, seeds, work):
        images = fake_detections(rng, truth, 1.5 if job.arm == "B" else 6.0)  # B's boxes are closer
        value = average_precision(match_run({"images": images}, ground_truth))
        ap.setdefault(job.arm, {})[job.seed] = 100 * value
        job.output_dir.mkdir(parents=True)
        manifest = {"finished": True, "config": {**job.values, **SCHEDULE}}
        (job.output_dir / "manifest.json").write_text(json.dumps(manifest))
        record = {"step": SCHEDULE["max_iters"], "bbox": dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm"), value)}
        (job.output_dir / "eval.jsonl").write_text(json.dumps(record) + "\n")
        with gzip.open(job.output_dir / "detections.json.gz", "wt", encoding="utf-8") as f:
            json.dump({"ann_file": str(work / "val.json"), "step": SCHEDULE["max_iters"], "images": images}, f)
    return ap


def _commit_fold(work, config, seeds):
    """Turn a work folder into a committed fold: runs.tar.gz (ground truth under annotations/), config, seeds."""
    import shutil

    from srf_upsample.train.experiment.archive import write_archive

    files = {p.relative_to(work).as_posix(): p.read_bytes() for p in sorted(work.glob("seed*/*/*"))}
    files["annotations/val.json"] = (work / "val.json").read_bytes()
    for path in [*work.glob("seed*"), work / "val.json", work / "experiment.json"]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_archive(work / "runs.tar.gz", files)
    (work / "experiment_config.json").write_text(json.dumps(config.to_dict()))
    (work / "results.json").write_text(json.dumps({"seeds": seeds}))


def test_report_experiment_writes_table_json_and_forest_from_work_folders(tmp_path):
    rng = np.random.default_rng(2)
    config = _config()
    ap = {label: _work_folder(rng, tmp_path / label, config, [0, 1, 2]) for label in ("north", "south")}
    _commit_fold(tmp_path / "south", config, [0, 1, 2])  # one work folder, one committed fold
    out = tmp_path / "report"
    report = report_experiment([tmp_path / "north", tmp_path / "south"], out, replicates=60)
    assert sorted(p.name for p in out.iterdir()) == ["forest.png", "results.json", "results.md"]
    assert (out / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text()) == report
    (entry,) = report["differences"]
    assert (entry["arm"], entry["reference"]) == ("B", "A1")
    # The pooled mean is the mean of the 6 per-(fold, seed) differences of all-image AP, computed here.
    expected = np.mean([ap[f]["B"][s] - ap[f]["A1"][s] for f in ("north", "south") for s in (0, 1, 2)])
    pooled = entry["pooled"]
    assert pooled["mean"] == pytest.approx(expected, abs=1e-9) and pooled["n"] == 6
    assert pooled["method"] == "images+seeds" and pooled["interval"][0] < expected < pooled["interval"][1]
    assert sorted(entry["folds"]) == ["north", "south"] and entry["folds"]["north"]["n"] == 3
    assert report["folds"][0]["images"] == 6 and report["folds"][0]["detections"] == ["A1", "B"]
    text = (out / "results.md").read_text()
    assert "| B | A1 | 6 |" in text and "![" in text and "**B** (is SRF just bilinear?" in text


def test_replicates_must_have_one_row_per_pair():
    with pytest.raises(ValueError, match=r"replicates\['a'\]: need one row per pair, shape \(3, B\), got \(2, 50\)"):
        paired_interval({"a": [0.1, 0.2, 0.3]}, {"a": np.zeros((2, 50))})


def test_a_source_without_finished_runs_or_config_is_a_clear_error(tmp_path):
    config = _config()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "experiment.json").write_text(json.dumps({"config": config.to_dict(), "seeds": [0, 1]}))
    with pytest.raises(ValueError, match=r"empty.*no finished target run"):
        report_experiment(empty, tmp_path / "out")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match=r"bare.*holds neither experiment.json .* nor experiment_config.json"):
        report_experiment(bare, tmp_path / "out")
    with pytest.raises(ValueError, match="is not a folder"):
        report_experiment(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="labels: need one distinct label per source"):
        report_experiment([empty, empty], tmp_path / "out", labels=["a", "a"])
