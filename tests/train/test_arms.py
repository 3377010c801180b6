"""Issue 32's arms and plan: DySample and A1+ rows, one shared converged stage 1 per variant, one lineage per seed."""

import json

import pytest
from test_experiment import SCHEDULE, _config, _finish

from srf_upsample.train.experiment import markdown_table, plan_jobs, summarize
from srf_upsample.train.experiment.run import LINEAGE_KEY, lineage_of, record_a1_lineage
from srf_upsample.train.stage_configs import build_config

ORDER = ["A1", "B", "A2-lite", "E2E-lite", "DySample", "A5-lite", "C", "A1+"]


def _blocks_config(**overrides):
    values = {
        "variants": ["lite"],
        "variant_seeds": {},
        "arms": ["A1", "B", "A2", "E2E", "DySample", "A5", "C", "A1+"],
        "budget_order": ORDER,
        "shared_stage1": True,
        "stage1": {"max_iters": 50, "lr": 0.5, "plateau_patience": 3},  # passed through to the trainer as is
    }
    return _config(**{**values, **overrides})


def test_dysample_and_a1_plus_rows_and_the_budget_order(tmp_path):
    jobs = plan_jobs(_blocks_config(), [0, 1], tmp_path)
    by_name = {job.name: job for job in jobs}
    dysample, a1_plus = by_name["seed1/DySample"], by_name["seed1/A1+"]
    assert dysample.stage == "baseline" and dysample.values["upsampler"] == "dysample" and dysample.needs == []
    # A1+: the trained A1 of the same seed, trained again on the target schedule at full size.
    assert a1_plus.stage == "baseline" and a1_plus.needs == ["seed1/A1"]
    assert a1_plus.values["detector_weights"] == str(tmp_path / "seed1" / "A1" / "checkpoint.safetensors")
    assert {key: a1_plus.values[key] for key in SCHEDULE} == SCHEDULE
    # Per seed, the arms start in the budget order, each pre-training run just before its first user.
    seed1 = [job.name.split("/")[1] for job in jobs if job.name.startswith("seed1/")]
    assert [name for name in seed1 if name in ORDER] == ORDER
    assert seed1.index("stage2-lite") == seed1.index("A5-lite") - 1
    # Both stages accept what the plan gives them (build_config validates without data).
    build_config("baseline", {**dysample.values, "device": "cpu"})
    with pytest.raises(ValueError, match="upsampler must be"):
        build_config("baseline", {**dysample.values, "device": "cpu", "upsampler": "srf-lite"})


def test_one_shared_stage1_per_variant_serves_every_seed(tmp_path):
    jobs = plan_jobs(_blocks_config(variants=["lite", "paper"]), [1, 2], tmp_path)
    by_name = {job.name: job for job in jobs}
    stage1 = [name for name in by_name if "stage1" in name]
    assert stage1 == ["shared/stage1-lite", "shared/stage1-paper"]
    shared = by_name["shared/stage1-lite"]
    # Trained against seed 0's A1, which is planned for it though seed 0 is not a table seed.
    assert shared.needs == ["seed0/A1"] and by_name["seed0/A1"].arm is None
    assert shared.values["extractor_weights"] == str(tmp_path / "seed0" / "A1" / "checkpoint.safetensors")
    assert shared.values["plateau_patience"] == 3 and shared.values["max_iters"] == 50
    for seed in (1, 2):
        assert by_name[f"seed{seed}/A2-lite"].values["generator"] == str(tmp_path / "shared/stage1-lite/generator")
        stage2 = by_name[f"seed{seed}/stage2-lite"]
        assert stage2.values["init"] == str(tmp_path / "shared/stage1-lite")
        assert stage2.values["extractor_weights"] == str(tmp_path / f"seed{seed}" / "A1" / "checkpoint.safetensors")
        assert stage2.a1_from == f"seed{seed}/A1" and stage2.generator_from == "shared/stage1-lite"
    # Without shared_stage1 the plan is per seed, as before.
    per_seed = {job.name for job in plan_jobs(_config(variants=["lite"], variant_seeds={}), [1, 2], tmp_path)}
    assert {"seed1/stage1-lite", "seed2/stage1-lite"} <= per_seed and "seed0/A1" not in per_seed


def _write_weights(job, content: bytes) -> None:
    job.output_dir.mkdir(parents=True, exist_ok=True)
    (job.output_dir / "checkpoint.safetensors").write_bytes(content)


def test_lineage_is_recorded_and_pairs_across_lineages_are_left_out(tmp_path, caplog):
    config = _blocks_config()
    jobs = plan_jobs(config, [0, 1], tmp_path)
    by_name = {job.name: job for job in jobs}
    for seed in (0, 1):
        _finish(by_name[f"seed{seed}/A1"], [(4, 0.2)])
        _write_weights(by_name[f"seed{seed}/A1"], f"A1 of seed {seed}".encode())
        record_a1_lineage(by_name[f"seed{seed}/A1"])
    a1 = json.loads((by_name["seed1/A1"].output_dir / "manifest.json").read_text())[LINEAGE_KEY]
    assert a1["a1"] == "seed1/A1" and len(a1["a1_sha256"]) == 64
    # The shared stage 1 descends from seed 0's A1; seed 1's stage 2 from seed 1's A1, its G from seed 0's.
    stage1 = by_name["shared/stage1-lite"]
    _finish(stage1, [])
    manifest = json.loads((stage1.output_dir / "manifest.json").read_text())
    manifest[LINEAGE_KEY] = lineage_of(stage1, by_name)
    (stage1.output_dir / "manifest.json").write_text(json.dumps(manifest))
    lineage = lineage_of(by_name["seed1/stage2-lite"], by_name)
    assert lineage["a1"] == "seed1/A1" and lineage["generator_a1"] == "seed0/A1"
    assert lineage["a1_sha256"] == a1["a1_sha256"] != lineage["generator_a1_sha256"]
    # C of seed 1 recorded the right A1; A1+ of seed 1 one from a retrained A1 (other weights): left out.
    for name, ap, sha in (("seed1/C", 0.25, a1["a1_sha256"]), ("seed1/A1+", 0.3, "0" * 64)):
        _finish(by_name[name], [(4, ap)])
        manifest = json.loads((by_name[name].output_dir / "manifest.json").read_text())
        manifest[LINEAGE_KEY] = {"a1": "seed1/A1", "a1_sha256": sha}
        (by_name[name].output_dir / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        summary = summarize(jobs, config)
    assert "seed1/A1+" in caplog.text
    assert "A1+" not in summary["table"] and "C" in summary["table"]
    assert set(summary["lineage_excluded"]) == {"seed1/A1+"}
    assert summary["shared_stage1"] == ["shared/stage1-lite"]
    text = markdown_table(summary)
    assert "Left out (another lineage than the table's A1" in text and "serves every seed's A2, A5" in text
