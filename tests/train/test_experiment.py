"""The protocol runner's plan and table, without training: one schedule for every target detector, paired seeds."""

import json

import pytest
from _helpers import EXPERIMENT_SCHEDULE, experiment_values, fake_coco, fake_detections

from srf_upsample.train.experiment import (
    load_experiment,
    markdown_table,
    plan_jobs,
    pool_paired,
    pooled_markdown,
    summarize,
)

SCHEDULE = EXPERIMENT_SCHEDULE


def _config(**overrides):
    defaults = {
        "stage1": {"max_iters": 2, "lr": 0.5},
        "stage2": {"max_iters": 3, "lr": 0.7},
        "variants": ["lite", "paper"],
        "variant_seeds": {"paper": [0]},
    }
    return load_experiment(experiment_values(**{**defaults, **overrides}))


def test_every_target_detector_gets_the_one_schedule(tmp_path):
    jobs = plan_jobs(_config(), [0, 1], tmp_path)
    names = {job.name for job in jobs}
    assert {"seed0/A5-paper", "seed0/A2-paper", "seed1/A5-lite", "seed1/C"} <= names
    assert not any(name.startswith("seed1/") and "paper" in name for name in names)  # variant_seeds
    targets = [job for job in jobs if job.arm is not None]
    assert {job.arm for job in targets} == {
        "A1",
        "B",
        "A2-lite",
        "A5-lite",
        "A5g-lite",
        "C",
        "A2-paper",
        "A5-paper",
        "A5g-paper",
    }
    for job in targets:
        assert {key: job.values[key] for key in SCHEDULE} == SCHEDULE, job.name
        assert job.stage in ("baseline", "stage3")
    pre = {job.name: job for job in jobs if job.arm is None}
    assert pre["seed0/stage1-lite"].values["lr"] == 0.5 and pre["seed0/stage2-C"].values["lr"] == 0.7
    assert pre["seed0/stage2-C"].values["use_generator"] is False
    # Stages 1 and 2 learn against the trained A1 of the same seed; A1 runs before anything that needs it.
    assert pre["seed1/stage1-lite"].values["extractor_weights"].endswith("seed1/A1/checkpoint.safetensors")
    order = [job.name for job in jobs]
    for job in jobs:
        assert all(order.index(need) < order.index(job.name) for need in job.needs), job.name
    # Budget order: the first tier (A1, B, A5 and C of the first variant) comes before A2 / A5g and the paper arms.
    assert max(order.index(f"seed{s}/C") for s in (0, 1)) < min(order.index(f"seed{s}/A2-lite") for s in (0, 1))


def test_schedule_keys_cannot_hide_in_other_sections():
    with pytest.raises(ValueError, match="belong to 'schedule'"):
        _config(run={"max_iters": 10})
    with pytest.raises(ValueError, match="Unknown arms"):
        _config(arms=["A1", "A9"])


def test_variant_generator_sizes_stage_one_only(tmp_path):
    config = _config(variant_generator={"paper": {"generator_hidden_channels": 64}})
    jobs = {job.name: job for job in plan_jobs(config, [0], tmp_path)}
    assert jobs["seed0/stage1-paper"].values["generator_hidden_channels"] == 64
    assert "generator_hidden_channels" not in jobs["seed0/stage1-lite"].values
    # Stages 2 and 3 load G as stage 1 saved it, so its size cannot drift between them.
    assert all("generator_hidden_channels" not in job.values for name, job in jobs.items() if "stage1" not in name)
    with pytest.raises(ValueError, match=r"variant_generator\['paper'\]: \['max_iters'\]"):
        _config(variant_generator={"paper": {"max_iters": 3}})
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        _config(variant_generator={"huge": {"generator_hidden_channels": 8}})


def _finish(job, ap_by_step, schedule=SCHEDULE):
    job.output_dir.mkdir(parents=True, exist_ok=True)
    config = {**job.values, **schedule}
    (job.output_dir / "manifest.json").write_text(json.dumps({"finished": True, "config": config}))
    records = [
        {"step": step, "bbox": dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm"), ap)} for step, ap in ap_by_step
    ]
    (job.output_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_table_pairs_seeds_and_lists_what_did_not_run(tmp_path):
    config = _config(variants=["lite"], variant_seeds={})
    jobs = {job.name: job for job in plan_jobs(config, [0, 1, 2], tmp_path)}
    finals = {"A1": [0.20, 0.10, 0.30], "B": [0.25, 0.10, 0.20], "A2-lite": [0.22, 0.16, 0.31]}
    for arm, values in finals.items():
        for seed, ap in enumerate(values):
            _finish(jobs[f"seed{seed}/{arm}"], [(2, ap / 2), (4, ap)])
    summary = summarize(list(jobs.values()), config)
    row = summary["table"]["A2-lite"]
    assert row["AP"][0] == pytest.approx(100 * sum(finals["A2-lite"]) / 3)
    assert row["AP_minus_A1"]["per_seed"] == pytest.approx({0: 2.0, 1: 6.0, 2: 1.0})
    assert row["AP_minus_B"]["per_seed"] == pytest.approx({0: -3.0, 1: 6.0, 2: 11.0})
    assert summary["curves"]["A1"][1] == [(2, pytest.approx(5.0)), (4, pytest.approx(10.0))]
    assert summary["not_run"]["C"] == [0, 1, 2]
    text = markdown_table(summary)
    assert "| A2-lite | 3 |" in text and "Planned but not finished" in text and "A5-lite (seeds 0, 1, 2)" in text
    assert "| A1 | 3 | 20.0 ± 10.0 |" in text
    one_seed = markdown_table(summarize([job for job in jobs.values() if job.seed == 0], config))
    assert "| A2-lite | 1 | 22.0 | 22.0 |" in one_seed and "+2.0 | +2.0 |" in one_seed
    assert "±" not in one_seed.split("\n", 2)[2]
    # A diverged run is named as such, with where it stopped, instead of "not finished".
    jobs["seed1/C"].output_dir.mkdir(parents=True)
    record = {"stage": "stage3", "step": 80, "loss": "loss", "value": "nan"}
    (jobs["seed1/C"].output_dir / "diverged.json").write_text(json.dumps(record))
    diverged = summarize(list(jobs.values()), config)
    assert diverged["not_run"]["C"] == [0, 2] and diverged["diverged"] == {"seed1/C": record}
    assert "Diverged (the trainer stopped at a non-finite loss" in markdown_table(diverged)
    assert "seed1/C at step 80 (loss nan)" in markdown_table(diverged)
    # A run trained on another schedule is refused, not averaged in.
    _finish(jobs["seed0/C"], [(4, 0.5)], schedule={**SCHEDULE, "lr": 0.02})
    with pytest.raises(ValueError, match="another schedule"):
        summarize(list(jobs.values()), config)


def test_a5_is_paired_with_c_the_same_pre_training_without_g(tmp_path):
    config = _config(variants=["lite"], variant_seeds={})
    jobs = {job.name: job for job in plan_jobs(config, [0, 1], tmp_path)}
    finals = {"A1": [0.20, 0.10], "C": [0.22, 0.14], "A5-lite": [0.25, 0.13]}
    for arm, values in finals.items():
        for seed, ap in enumerate(values):
            _finish(jobs[f"seed{seed}/{arm}"], [(4, ap)])
    summary = summarize(list(jobs.values()), config)
    assert summary["table"]["A5-lite"]["AP_minus_C"]["per_seed"] == pytest.approx({0: 3.0, 1: -1.0})
    assert "AP_minus_C" not in summary["table"]["C"] and "AP_minus_C" not in summary["table"]["A1"]
    assert (
        "AP - C, paired (what G adds to the same stage-2 pre-training): A5-lite +1.0 ± 2.8 (per seed +3.0, -1.0)."
        in (markdown_table(summary))
    )


def test_compute_line_sums_logged_step_and_validation_time(tmp_path):
    config = _config(variants=["lite"], variant_seeds={}, arms=["A1", "B"])
    jobs = {job.name: job for job in plan_jobs(config, [0], tmp_path)}
    for name, step_seconds, eval_seconds in (("A1", [30.0, 90.0], [6.0, 54.0]), ("B", [60.0, 60.0], [60.0])):
        job = jobs[f"seed0/{name}"]
        _finish(job, [(4, 0.2)])
        log = "".join(json.dumps({"step": i + 1, "time": t}) + "\n" for i, t in enumerate(step_seconds))
        (job.output_dir / "log.jsonl").write_text(log)
        bbox = dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm"), 0.2)
        evals = [
            {"step": 4 - 2 * (len(eval_seconds) - 1 - i), "bbox": bbox, "seconds": t}
            for i, t in enumerate(eval_seconds)
        ]
        (job.output_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    summary = summarize(list(jobs.values()), config)
    assert summary["compute_minutes"][0]["A1"] == {"steps": pytest.approx(2.0), "validation": pytest.approx(1.0)}
    assert "seed 0: 6 min (4 training steps + 2 validation) over 2 runs" in markdown_table(summary)
    # Logs from before validation was timed: the line says so instead of counting it as zero.
    _finish(jobs["seed0/B"], [(4, 0.2)])
    text = markdown_table(summarize(list(jobs.values()), config))
    assert "seed 0: 4 min of training steps (validation time not logged) over 2 runs" in text


def test_pooled_pairs_stay_within_their_fold_and_count_signs():
    def summary(**aps):
        return {"per_seed": {arm: {str(s): {"AP": ap} for s, ap in enumerate(v)} for arm, v in aps.items()}}

    pooled = pool_paired(
        {
            "fold 0": summary(A1=[20.0, 18.0], B=[21.0, 17.0], **{"A5-lite": [22.0, 18.5], "C": [21.0, 19.0]}),
            # Fold 1's levels are lower; a pair never mixes folds. Seed 1 of B did not finish.
            "fold 1": summary(A1=[14.0, 15.0], B=[13.0], **{"A5-lite": [14.5, 14.0]}),
        }
    )
    against_a1 = pooled["A5-lite"]["AP_minus_A1"]
    assert against_a1["pairs"] == {"fold 0": {0: 2.0, 1: 0.5}, "fold 1": {0: 0.5, 1: -1.0}}
    assert against_a1["n"] == 4 and against_a1["above_zero"] == 3
    assert against_a1["mean_sd"][0] == pytest.approx(0.5)
    assert pooled["B"]["AP_minus_A1"]["pairs"] == {"fold 0": {0: 1.0, 1: -1.0}, "fold 1": {0: -1.0}}
    assert pooled["A5-lite"]["AP_minus_C"]["pairs"] == {"fold 0": {0: 1.0, 1: -0.5}}  # no C in fold 1
    assert "AP_minus_C" not in pooled["C"] and "A1" not in pooled
    # Without per-image detections there is no interval over tiles; the sign test and the power still apply. By hand:
    # 3 of 4 above 0 gives p = 2 * (1 + 4) / 16; the sd of (2.0, 0.5, 0.5, -1.0) is sqrt(1.5), and at 80 % power a
    # paired t-test finds (t(0.975, 3) + t(0.8, 3)) * sd / 2 = (3.182 + 0.978) * 1.225 / 2 = 2.5 points.
    assert against_a1["interval"] is None and against_a1["sign_test_p"] == pytest.approx(2 * 5 / 16)
    assert against_a1["mde_80"] == pytest.approx((3.18245 + 0.97847) * 1.5**0.5 / 2, abs=1e-4)
    text = pooled_markdown(pooled)
    row = "| A5-lite | A1 | 4 | +0.5 ± 1.2 | n/a | 3 of 4 | 0.62 | 2.5 | +1.2 ± 1.1 (+2.0, +0.5) |"
    assert row + " -0.2 ± 1.1 (+0.5, -1.0) |" in text
    # One pair in fold 1: its value alone.
    assert "| B | A1 | 3 | -0.3 ± 1.2 | n/a | 1 of 3 | 1.00 | 3.6 | +0.0 ± 1.4 (+1.0, -1.0) | -1.0 |" in text


def test_registry_takes_variants_from_the_model_and_schedule_keys_from_the_schedule():
    # Pins that nothing in the runner retypes what the model or the schedule already defines.
    import dataclasses

    from srf_upsample.train.experiment import ARMS, GENERATOR_VARIANTS, DetectorSchedule
    from srf_upsample.train.experiment.config import SCHEDULE_KEYS
    from srf_upsample.upsample import VARIANTS

    assert set(GENERATOR_VARIANTS) == set(VARIANTS)
    assert set(SCHEDULE_KEYS) == {f.name for f in dataclasses.fields(DetectorSchedule)}
    with pytest.raises(ValueError, match="Unknown generator variants"):
        _config(variants=["huge"])
    # Every arm's pre-training run and reference is itself in the registry.
    from srf_upsample.train.experiment.arms import BASELINE, PRETRAINING

    for arm in ARMS.values():
        assert arm.init is None or arm.init in PRETRAINING or arm.init == BASELINE, arm.name
        assert all(ref.split("-")[0] in ARMS for ref in arm.references), arm.name


def test_table_refuses_arms_that_are_not_the_same_detector(tmp_path):
    config = _config(variants=["lite"], variant_seeds={}, arms=["A1", "B"])
    jobs = {job.name: job for job in plan_jobs(config, [0], tmp_path)}
    _finish(jobs["seed0/A1"], [(4, 0.2)])
    _finish(jobs["seed0/B"], [(4, 0.2)])
    assert summarize(list(jobs.values()), config)["table"]["B"]["AP_minus_A1"]["per_seed"] == {0: 0.0}
    # Another FPN width than A1's: not the same detector, whatever the experiment file said.
    manifest = jobs["seed0/B"].output_dir / "manifest.json"
    saved = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**saved, "config": {**saved["config"], "fpn_channels": 64}}))
    with pytest.raises(
        ValueError, match=r"seed0/B and seed0/A1 are not the same detector .*'fpn_channels': \(64, None\)"
    ):
        summarize(list(jobs.values()), config)
    # Image sizes against the experiment's detector settings.
    manifest.write_text(json.dumps({**saved, "config": {**saved["config"], "min_size": 32}}))
    with pytest.raises(ValueError, match=r"other detector settings than the experiment's: \{'min_size': \(32, 64\)\}"):
        summarize(list(jobs.values()), config)


def test_e2e_arm_trains_a_new_generator_from_its_bilinear_start_and_pairs_with_a2(tmp_path):
    config = _config(
        variants=["lite"],
        variant_seeds={},
        arms=["A1", "A2", "E2E"],
        stage1={"max_iters": 2, "generator_norm": "none", "generator_zero_init_residual": False},
        variant_generator={"lite": {"generator_hidden_channels": 16}},
    )
    jobs = {job.name: job for job in plan_jobs(config, [0, 1], tmp_path)}
    e2e = jobs["seed0/E2E-lite"]
    assert (e2e.stage, e2e.arm, e2e.needs) == ("stage3", "E2E-lite", [])  # no stage 1: nothing but L_DET trains G
    assert {key: e2e.values[key] for key in SCHEDULE} == SCHEDULE
    assert "init" not in e2e.values and "generator" not in e2e.values and e2e.values["max_iters"] == 4
    # G as stage 1 would build it (variant, width, norm), but always from its bilinear start.
    assert e2e.values["use_new_generator"] is True and e2e.values["generator_variant"] == "lite"
    assert e2e.values["generator_hidden_channels"] == 16 and e2e.values["generator_norm"] == "none"
    assert e2e.values["generator_zero_init_residual"] is True
    order = [job.name for job in plan_jobs(config, [0, 1], tmp_path)]
    assert order.index("seed1/A1") < order.index("seed0/A2-lite") < order.index("seed0/E2E-lite")  # budget tier 1
    finals = {"A1": [0.20, 0.10], "A2-lite": [0.22, 0.14], "E2E-lite": [0.21, 0.16]}
    for arm, values in finals.items():
        for seed, ap in enumerate(values):
            _finish(jobs[f"seed{seed}/{arm}"], [(4, ap)])
    summary = summarize(list(jobs.values()), config)
    assert summary["table"]["E2E-lite"]["AP_minus_A2-lite"]["per_seed"] == pytest.approx({0: -1.0, 1: 2.0})
    assert "AP - A2-<variant>, paired (end to end against G's GAN pre-training; below 0: it helps): E2E-lite +0.5" in (
        markdown_table(summary)
    )


def test_sign_test_p_value_is_the_hand_computed_binomial_tail():
    from srf_upsample.train.experiment.stats import sign_test

    # 5 of 6 above zero: P(X <= 1) = (C(6, 0) + C(6, 1)) / 2^6 = 7 / 64, two-sided 14 / 64.
    assert sign_test([0.4, 1.2, 0.1, 2.0, 0.3, -0.5]) == {"n": 6, "above_zero": 5, "p": pytest.approx(14 / 64)}
    # A zero difference has no sign and is left out; 6 of 6 gives 2 / 64; an even split gives 1 (capped).
    assert sign_test([0.0, 1.0, 1.0, -1.0])["n"] == 3 and sign_test([1.0] * 6)["p"] == pytest.approx(2 / 64)
    assert sign_test([1.0, -1.0])["p"] == 1.0 and sign_test([0.0])["p"] is None


def test_t_quantiles_and_the_effect_found_at_80_percent_power():
    from srf_upsample.train.experiment.stats import minimal_detectable_effect, student_t_quantile

    # Values of a printed t table.
    for probability, df, value in ((0.975, 1, 12.7062), (0.975, 5, 2.5706), (0.8, 5, 0.9195), (0.975, 30, 2.0423)):
        assert student_t_quantile(probability, df) == pytest.approx(value, abs=1e-4)
    assert student_t_quantile(0.2, 5) == pytest.approx(-0.9195, abs=1e-4)
    # The issue-32 audit: 6 pairs of sd 0.9 detect about 1.25 AP at 80 % power, of sd 0.4 about 0.6.
    assert minimal_detectable_effect(0.9, 6) == pytest.approx((2.5706 + 0.9195) * 0.9 / 6**0.5, abs=1e-3)
    assert minimal_detectable_effect(0.4, 6) == pytest.approx(0.57, abs=0.01)
    assert minimal_detectable_effect(1.0, 1) is None


def _synthetic_differences(rng, true_mean, *, folds=4, seeds=3, tiles=12, replicates=400):
    """Per fold, (seeds, replicates) mean differences over resampled tiles: tile effects around ``true_mean``."""
    from srf_upsample.train.experiment.stats import tile_resamples

    differences = {}
    for fold in range(folds):
        tile_effect = true_mean + rng.normal(0.0, 0.6, size=tiles)
        per_seed = tile_effect[None, :] + rng.normal(0.0, 0.3, size=(seeds, 1)) + rng.normal(0, 0.2, (seeds, tiles))
        indices = tile_resamples(tiles, replicates, seed=fold)
        differences[f"fold {fold}"] = per_seed[:, indices].mean(axis=-1)
    return differences


def test_paired_bootstrap_interval_covers_a_known_mean():
    import numpy as np

    from srf_upsample.train.experiment.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    replicates = paired_bootstrap(_synthetic_differences(rng, 0.8))
    low, high = np.quantile(replicates, [0.025, 0.975])
    assert low < 0.8 < high and high - low < 1.0
    # Over many synthetic experiments, the 95 % interval holds the true mean about 95 % of the time.
    covered = []
    for trial in range(200):
        replicates = paired_bootstrap(_synthetic_differences(rng, -0.3), seed=trial)
        low, high = np.quantile(replicates, [0.025, 0.975])
        covered.append(low < -0.3 < high)
    assert 0.88 <= np.mean(covered) <= 0.99
    # Nothing random left (every tile and seed differs by exactly 0.5): the interval is that value.
    constant = {"fold 0": np.full((3, 50), 0.5), "fold 1": np.full((2, 50), 0.5)}
    assert np.allclose(paired_bootstrap(constant), 0.5)


def _coco_ground_truth(rng, num_images):
    """400x400 images (ids 10, 13, ...) with 1 to 6 boxes each, about one in ten a crowd box."""
    ids = [10 + 3 * index for index in range(num_images)]
    images = [{"id": i, "width": 400, "height": 400, "file_name": f"{i}.png"} for i in ids]
    return fake_coco(rng, images, boxes_per_image=(1, 7), corner_max=300, sides=(10, 80), crowd_rate=0.1)


def _noisy_detections(rng, ground_truth, jitter):
    """Per image of ``ground_truth``: detections near its boxes and up to two false ones, scores with ties."""
    return fake_detections(rng, ground_truth, jitter, false_boxes=(300, 2))


def test_average_precision_on_resampled_images_is_pycocotools_on_those_images(tmp_path):
    import contextlib
    import io

    import numpy as np

    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from srf_upsample.train.experiment.detections import average_precision, match_run, read_ground_truth

    rng = np.random.default_rng(0)
    truth = _coco_ground_truth(rng, 6)
    detections = _noisy_detections(rng, truth, jitter=6.0)
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    matches = match_run({"ann_file": "gt.json", "images": detections}, read_ground_truth(tmp_path / "gt.json"))
    # A bootstrap resample counts an image as often as it is drawn: COCOeval on copies of those images must agree.
    for indices in ([0, 1, 2, 3, 4, 5], [0, 0, 2, 3, 3, 3], [5, 1, 1, 4, 4, 2]):
        copies = {"images": [], "annotations": [], "categories": truth["categories"]}
        results = []
        for copy, index in enumerate(indices):
            image, new_id = truth["images"][index], 1000 + copy
            copies["images"].append({**image, "id": new_id})
            for annotation in (a for a in truth["annotations"] if a["image_id"] == image["id"]):
                copies["annotations"].append({**annotation, "id": len(copies["annotations"]) + 1, "image_id": new_id})
            found = detections[index]
            results += [
                {"image_id": new_id, "category_id": 1, "bbox": box, "score": score}
                for box, score in zip(found["boxes"], found["scores"], strict=True)
            ]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = copies
            coco.createIndex()
            evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        assert average_precision(matches, indices) == pytest.approx(evaluator.stats[0], abs=1e-12)


def _write_detections(folder, ann_file, images):
    import gzip

    with gzip.open(folder / "detections.json.gz", "wt", encoding="utf-8") as f:
        json.dump({"ann_file": str(ann_file), "step": SCHEDULE["max_iters"], "images": images}, f)


def test_runs_archive_rebuilds_the_same_table_and_intervals_come_from_detections(tmp_path):
    import shutil

    import numpy as np

    from srf_upsample.train.experiment.archive import ARCHIVE_NAME, open_runs, read_archive, write_archive
    from srf_upsample.train.experiment.detections import average_precision, match_run, read_ground_truth
    from srf_upsample.train.experiment.summary import resampled_ap_of_runs

    rng = np.random.default_rng(1)
    truth = _coco_ground_truth(rng, 8)
    work = tmp_path / "block0"
    (work / "annotations").mkdir(parents=True)
    (work / "annotations" / "instances_val.json").write_text(json.dumps(truth))
    config = _config(variants=["lite"], variant_seeds={}, arms=["A1", "B"])
    jobs = plan_jobs(config, [0, 1, 2], work)
    ground_truth = read_ground_truth(work / "annotations" / "instances_val.json")
    for job in jobs:  # B's boxes are closer to the truth than A1's
        images = _noisy_detections(rng, truth, jitter=2.0 if job.arm == "B" else 8.0)
        ap = average_precision(match_run({"images": images}, ground_truth))
        _finish(job, [(2, ap / 2), (4, ap)])
        _write_detections(job.output_dir, "/elsewhere/instances_val.json", images)  # found by name in annotations/
    summary = summarize(jobs, config)
    # One archive holds every run file; the table rebuilt from it is the same.
    files = {p.relative_to(work).as_posix(): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}
    write_archive(work / ARCHIVE_NAME, files)
    first = (work / ARCHIVE_NAME).read_bytes()
    write_archive(work / ARCHIVE_NAME, files)
    assert (work / ARCHIVE_NAME).read_bytes() == first and read_archive(work / ARCHIVE_NAME) == files
    with pytest.raises(ValueError, match="both runs.tar.gz and loose run folders"):
        with open_runs(work):
            pass
    for folder in ("seed0", "seed1", "seed2", "annotations"):
        shutil.rmtree(work / folder)
    with open_runs(work) as runs:
        rebuilt_jobs = plan_jobs(config, [0, 1, 2], runs)
        assert summarize(rebuilt_jobs, config) == summary
        resampled = resampled_ap_of_runs(rebuilt_jobs, annotations_dir=runs / "annotations", replicates=300)
    assert sorted(resampled) == ["A1", "B"] and resampled["B"][0].shape == (300,)
    pooled = pool_paired({"block 0": json.loads(json.dumps(summary))}, {"block 0": resampled})
    entry = pooled["B"]["AP_minus_A1"]
    low, high = entry["interval"]
    assert low < entry["mean_sd"][0] < high and low > 0  # B's better boxes: the whole interval above 0
    # The interval has the library's level: that share of the paired bootstrap's replicates (resampled detections of
    # each seed's pair) lies inside it, and the table names that level and prints these bounds.
    import inspect

    from srf_upsample.train.experiment.stats import paired_bootstrap

    level = inspect.signature(pool_paired).parameters["level"].default
    seeds = [int(seed) for seed in entry["pairs"]["block 0"]]
    differences = np.stack([np.asarray(resampled["B"][s]) - np.asarray(resampled["A1"][s]) for s in seeds])
    replicates = paired_bootstrap({"block 0": differences})
    assert abs(np.mean((replicates >= low) & (replicates <= high)) - level) <= 2 / replicates.size
    table = pooled_markdown(pooled)
    assert f"{round(level * 100)} % interval" in table and f"[{low:+.1f}, {high:+.1f}]" in table


def test_pooled_reading_states_effects_with_intervals_and_withholds_a_reading_below_the_pairs_needed():
    from srf_upsample.train.experiment import pooled_reading

    def entry(mean, interval, n=12):
        return {"mean_sd": (mean, 1.0), "n": n, "interval": interval}

    pooled = {
        "A2-lite": {"AP_minus_B": entry(0.8, (0.3, 1.4)), "AP_minus_DySample": entry(-0.1, (-0.6, 0.4))},
        # E2E - A2 = +0.9: end to end beats the GAN pre-training, so the headline (A2 - E2E) reads "hurts".
        "E2E-lite": {"AP_minus_A2-lite": entry(0.9, (0.2, 1.5))},
        "A5-lite": {"AP_minus_C": entry(0.1, (-0.4, 0.6), n=8)},
    }
    lines = pooled_reading(pooled, variant="lite").splitlines()
    # Every entry's pairs have sd 1.0: a paired t-test then needs 90 pairs to find 0.3 AP at 80 % power (below).
    POWER = " At this sd (1.0), 0.3 AP takes 90 pairs."
    assert (
        lines[0]
        == "- G alone (A2 - B: the stage-1 generator against bilinear): SRF helps by 0.8 AP [+0.3, +1.4], 12 pairs."
        + POWER
    )
    assert "SRF hurts by 0.9 AP [-1.5, -0.2], 12 pairs." + POWER in lines[1]
    assert lines[2].endswith("no effect larger than 0.6 AP either way (-0.1 [-0.6, +0.4], 12 pairs)." + POWER)
    assert lines[3].endswith("no reading yet (8 of the 12 pairs)." + POWER)
    # Enough pairs but no per-image detections: still no reading. An arm that never ran: none either.
    pooled["A5-lite"]["AP_minus_C"] = entry(0.1, None)
    assert (
        pooled_reading(pooled, variant="lite")
        .splitlines()[3]
        .endswith("no reading yet (no interval over tiles)." + POWER)
    )
    assert pooled_reading(pooled, variant="paper").count("no reading yet (0 of the 12 pairs).") == 4


def test_pairs_to_find_an_effect_inverts_the_detectable_effect():
    from srf_upsample.train.experiment.stats import minimal_detectable_effect, pairs_to_find

    for effect, sd in ((0.3, 1.0), (0.3, 1.3), (1.0, 0.9), (0.5, 0.2)):
        n = pairs_to_find(effect, sd)
        assert minimal_detectable_effect(sd, n) <= effect < (minimal_detectable_effect(sd, n - 1) if n > 2 else 1e9)
    # The normal approximation ((1.96 + 0.84) * sd / effect) ** 2 is 87 pairs for sd 1, effect 0.3; t needs a few more.
    assert pairs_to_find(0.3, 1.0) == 90 and pairs_to_find(0.3, 1.3) == 150
    assert pairs_to_find(0.3, 0.0) == 2 and pairs_to_find(0.01, 50.0, limit=1000) == 1000
    with pytest.raises(ValueError, match="effect > 0"):
        pairs_to_find(0.0, 1.0)
