"""The guided generator in the trainer (issue 34, docs/guided_generator.md): stage 1 feeds it the lateral map of I_lr
at every level but the finest, the feature cache holds those maps, the G validation curve feeds them too, a guided G
can start from a trained lite G, and stages 2 and 3 run it inside the FPN with every site guided."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, data_args

import srf_upsample.patch
from srf_upsample import SRFUpsample, patch_fpn
from srf_upsample.train.cli import main
from srf_upsample.train.feature_cache import FeatureCache, batch_features
from srf_upsample.train.fidelity import feature_pairs, fidelity
from srf_upsample.train.heldout import HeldoutFeatures
from srf_upsample.train.models import DetectorSpec, patch_generator
from srf_upsample.train.pyramid import (
    downsample_images,
    extract_levels_and_guides,
    guide_sources,
    prepare_batch,
)
from srf_upsample.train.run_folder import read_jsonl
from srf_upsample.train.stage_configs import build_config
from srf_upsample.train.stages import stage_for

KEYS = ["0", "1", "2", "3"]
LEVELS = [2, 3, 4, 5]
GUIDED = ["--set", "fpn_channels=16", "--set", "generator_variant=guided"]


def _stage1(coco, out: Path, *extra: str) -> list[str]:
    return ["stage1", *data_args(coco), *TINY, *GUIDED, "--output-dir", str(out), *extra]


def _evaluation(coco) -> list[str]:
    return ["--eval-data-root", str(coco[0]), "--eval-ann-file", str(coco[1])]


def _extractor() -> torch.nn.Module:
    spec = DetectorSpec.from_values(
        {"detector": "fasterrcnn", "backbone": "resnet18", "fpn_channels": 16}, num_classes=3
    )
    return spec.build().backbone.eval().requires_grad_(False)


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoint.safetensors"))


def _generator(variant: str, **kwargs) -> SRFUpsample:
    return SRFUpsample(16, hidden_channels=8, num_blocks=1, variant=variant, **kwargs)


def _randomise_guide_branch(generator: SRFUpsample) -> None:
    with torch.no_grad():
        for name, param in generator.named_parameters():
            if name.startswith("guide."):
                param.normal_(0, 0.3)


def test_guides_are_the_lateral_maps_of_the_next_finer_level_and_the_cache_keeps_them():
    assert guide_sources(KEYS) == [None, 0, 1, 2]  # P2 is the finest: unguided
    assert guide_sources(["1", "2"]) == [0, 1]  # P3 without P2 trained: P2's lateral map still exists
    extractor = _extractor()
    images = [torch.rand(3, 64, 64), torch.rand(3, 40, 100)]  # both padded to 64 x 128
    cache = FeatureCache()
    sources = guide_sources(KEYS)
    target, low, guides = batch_features(
        extractor, images, [(0, False), (1, True)], KEYS, degradation="bilinear", cache=cache, guide_sources=sources
    )
    assert guides[0] is None
    for level in (1, 2, 3):  # the guide has the target's size and the FPN's width
        assert guides[level].shape == target[level].shape == (2, 16, *target[level].shape[-2:])
    assert cache.nbytes == sum(t.numel() * 4 for t in target + low + guides[1:])
    again = batch_features(
        extractor, images, [(0, False), (1, True)], KEYS, degradation="bilinear", cache=cache, guide_sources=sources
    )
    assert cache.hits == 2 and all(torch.equal(x, y) for x, y in zip(guides[1:], again[2][1:], strict=True))
    # The captured guide is exactly the lateral map torchvision's FPN computes: inner_blocks[k - 1](C_{k-1}(I_lr)).
    with torch.no_grad():
        low_batch = downsample_images(prepare_batch(images), "bilinear")
        body = extractor.body(low_batch)
        levels, hooked = extract_levels_and_guides(extractor, low_batch, KEYS, sources)
        for level, source in enumerate(sources[1:], start=1):
            expected = extractor.fpn.get_result_from_inner_blocks(list(body.values())[source], source)
            assert torch.equal(hooked[level], expected)
    # Lite / paper: no guides, the levels as before.
    plain = batch_features(extractor, images, [None, None], KEYS, degradation="bilinear")
    assert plain[2] == [None] * 4
    assert all(torch.equal(x, y) for x, y in zip(plain[1], low, strict=True))
    # A cache filled without guides cannot silently serve a guided run.
    cache = FeatureCache()
    batch_features(extractor, images[:1], [(0, False)], KEYS, degradation="bilinear", cache=cache)
    with pytest.raises(ValueError, match="use one FeatureCache per guide setting"):
        batch_features(
            extractor, images, [(0, False), (1, True)], KEYS, degradation="bilinear", cache=cache, guide_sources=sources
        )


def test_stage1_feeds_the_guide_at_every_level_but_the_finest(coco, tmp_path, monkeypatch):
    calls = []
    forward = SRFUpsample.forward

    def recording(self, x, size=None, scale_factor=None, guide=None):
        if self.training:  # the training step (the validation curve runs in eval mode)
            calls.append((tuple(x.shape), tuple(size), None if guide is None else tuple(guide.shape)))
        return forward(self, x, size=size, scale_factor=scale_factor, guide=guide)

    monkeypatch.setattr(SRFUpsample, "forward", recording)
    out = tmp_path / "s1"
    assert main(_stage1(coco, out, *_evaluation(coco), "--max-iters", "1")) == 0
    assert [call[2] is None for call in calls] == [True, False, False, False]  # P2 unguided, P3-P5 guided
    for x_shape, size, guide in calls[1:]:
        assert guide == (x_shape[0], 16, *size) and size == (2 * x_shape[2], 2 * x_shape[3])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["generator_variant"] == "guided"
    assert SRFUpsample.from_pretrained(str(out / "generator")).accepts_guide
    (record,) = read_jsonl(out / "eval.jsonl")  # the G validation curve of a guided G ran (it needs its guides)
    assert sorted(record["generator_l1"]) == ["P2", "P3", "P4", "P5"]


def test_guided_stage1_cached_and_uncached_give_identical_losses_and_weights(coco, tmp_path):
    args = ("--max-iters", "4")  # the second epoch revisits keys: the cached run reads the guides it stored
    assert main(_stage1(coco, tmp_path / "cached", *args)) == 0
    assert main(_stage1(coco, tmp_path / "plain", *args, "--set", "feature_cache=false")) == 0
    cached, plain = read_jsonl(tmp_path / "cached" / "log.jsonl"), read_jsonl(tmp_path / "plain" / "log.jsonl")
    assert [r["losses"] for r in cached] == [r["losses"] for r in plain]  # exact float equality, every step
    stats = json.loads((tmp_path / "cached" / "manifest.json").read_text())["feature_cache"]
    assert (stats["hits"], stats["misses"]) == (3, 5)
    a, b = _tensors(tmp_path / "cached"), _tensors(tmp_path / "plain")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    # The guide branch trained: its modulation conv left zero (it gets a gradient from the first step on).
    modulation = [key for key in a if key.startswith("generator.guide.") and a[key].abs().sum() > 0]
    assert len(modulation) == len([key for key in a if key.startswith("generator.guide.")])


def test_the_validation_curve_feeds_the_guide_as_stage_1_does(coco):
    torch.manual_seed(0)
    extractor = _extractor()
    config = SimpleNamespace(
        eval_data_root=str(coco[0]),
        data_root=str(coco[0]),
        eval_ann_file=str(coco[1]),
        min_size=64,
        max_size=64,
        degradation="bilinear",
    )
    cpu = torch.device("cpu")
    sources = guide_sources(KEYS)
    heldout = HeldoutFeatures.from_config(config, extractor, KEYS, LEVELS, cpu, guide_sources=sources)
    plain = HeldoutFeatures.from_config(config, extractor, KEYS, LEVELS, cpu)
    for (low, target), (plain_low, plain_target) in zip(heldout.pairs, plain.pairs, strict=True):  # same pairs
        assert all(torch.equal(x, y) for x, y in zip(low + target, plain_low + plain_target, strict=True))
    generator = _generator("guided")
    _randomise_guide_branch(generator)  # non-zero modulation: the guide changes the output
    generator.train()
    record = heldout.generator_fidelity(generator, interpolations=True)
    assert generator.training  # restored
    generator.eval()
    unguided = [fidelity(lambda x, size: generator(x, size=size), low, target) for low, target in heldout.pairs]
    guided = [
        fidelity(lambda x, size, guide=None: generator(x, size=size, guide=guide), low, target, guides)
        for (low, target), guides in zip(heldout.pairs, heldout.guides, strict=True)
    ]
    for index, name in enumerate(["P2", "P3", "P4", "P5"]):
        mean_guided = sum(rows[index]["L1"] for rows in guided) / len(guided)
        mean_unguided = sum(rows[index]["L1"] for rows in unguided) / len(unguided)
        assert record["generator_l1"][name] == pytest.approx(mean_guided, rel=1e-6)
        if name == "P2":  # the finest level runs unguided, in stage 1 as here
            assert mean_guided == mean_unguided
        else:
            assert abs(mean_guided - mean_unguided) > 1e-4 * mean_unguided
    # The interpolation baselines are as before (no guide).
    assert (
        record["interpolation_l1"]
        == plain.generator_fidelity(_generator("lite"), interpolations=True)["interpolation_l1"]
    )
    # The held-out pairs of stage 1 are those of feature_pairs.
    low, target = feature_pairs(extractor, torch.zeros(3, 64, 64), KEYS)
    assert [t.shape for t in target] == [p.shape for p in heldout.pairs[0][1]]
    # A guided G measured on features without guides would measure its unguided pass: refused.
    with pytest.raises(ValueError, match="built without guides"):
        plain.generator_fidelity(generator)
    with pytest.raises(ValueError, match="built with guides"):
        heldout.generator_fidelity(_generator("lite"))


def _tiny_values(coco, output_dir: Path, **extra) -> dict:
    """Config values of a tiny Faster R-CNN R18 run on the test COCO set, on the CPU."""
    paths = {"data_root": str(coco[0]), "ann_file": str(coco[1]), "output_dir": str(output_dir)}
    return {**paths, "detector": "fasterrcnn", "backbone": "resnet18", "device": "cpu", "fpn_channels": 16, **extra}


def _stage1_values(tmp_path: Path, coco, **extra) -> dict:
    return {
        **_tiny_values(coco, tmp_path / "out"),
        "generator_variant": "guided",
        "generator_hidden_channels": 8,
        "generator_num_blocks": 1,
        "discriminator_hidden_channels": [8, 8, 8],
        "allow_untrained_extractor": True,
        **extra,
    }


def test_a_guided_g_starts_from_a_trained_lite_g_and_refuses_anything_else(coco, tmp_path, capsys):
    lite = _generator("lite")
    with torch.no_grad():
        for param in lite.parameters():
            param.normal_()
    lite.save_pretrained(str(tmp_path / "lite"))
    built = stage_for(build_config("stage1", _stage1_values(tmp_path, coco, generator=str(tmp_path / "lite")))).build(3)
    guided = built.generator
    assert guided.variant == "guided"
    trunk = lite.state_dict()
    assert all(torch.equal(guided.state_dict()[key], value) for key, value in trunk.items())
    # The guide branch keeps its zero start, so the guided G computes exactly the lite G, with or without guide.
    guided.eval(), lite.eval()
    x, guide = torch.randn(1, 16, 5, 7), torch.randn(1, 16, 10, 14)
    assert torch.equal(guided(x, size=(10, 14), guide=guide), lite(x, size=(10, 14)))
    # A paper generator, a lite one of another width, or a lite G into a lite config of another variant: clear errors.
    _generator("paper").save_pretrained(str(tmp_path / "paper"))
    SRFUpsample(16, hidden_channels=4, num_blocks=1, variant="lite").save_pretrained(str(tmp_path / "narrow"))
    with pytest.raises(ValueError, match="is a 'paper' generator, but generator_variant is 'guided'.*lite G"):
        stage_for(build_config("stage1", _stage1_values(tmp_path, coco, generator=str(tmp_path / "paper")))).build(3)
    with pytest.raises(ValueError, match=r"does not fit.*shape: body.0.* more.*hidden_channels=4"):
        stage_for(build_config("stage1", _stage1_values(tmp_path, coco, generator=str(tmp_path / "narrow")))).build(3)
    # The same variant loads strictly (a lite G continued as a lite G).
    values = _stage1_values(tmp_path, coco, generator=str(tmp_path / "lite"), generator_variant="lite")
    assert torch.equal(
        stage_for(build_config("stage1", values)).build(3).generator.state_dict()["tail.weight"], trunk["tail.weight"]
    )
    # Through the CLI: --generator works for stage 1, and a wrong folder is exit code 2 with the message.
    argv = _stage1(coco, tmp_path / "s1", "--max-iters", "1", "--generator", str(tmp_path / "paper"))
    assert main(argv) == 2
    assert "is a 'paper' generator" in capsys.readouterr().err
    assert main(_stage1(coco, tmp_path / "s1", "--max-iters", "1", "--generator", str(tmp_path / "lite"))) == 0


def test_guided_needs_a_level_with_a_finer_fpn_level(coco, tmp_path, capsys):
    assert main(_stage1(coco, tmp_path / "s1", "--levels", "2")) == 2
    assert "only the FPN's finest level" in capsys.readouterr().err


def test_stages_2_and_3_run_the_guided_g_with_every_fpn_site_guided(coco, tmp_path, monkeypatch):
    # Every top-down site of the trainer's detector FPN (P5->P4, P4->P3, P3->P2) gets its lateral map as guide.
    spec = DetectorSpec.from_values(
        {"detector": "fasterrcnn", "backbone": "resnet18", "fpn_channels": 16}, num_classes=3
    )
    _, report = patch_fpn(spec.build(), upsampler=_generator("guided"), share=True, strict=True)
    assert len(report.replaced) == 3 and report.guided == report.replaced
    assert {site.guide_via for site in report.guided} == {"add"}
    # patch_generator refuses a guided G that would run unguided at a site (here: one site's guide taken away).
    real = srf_upsample.patch.patch_fpn

    def one_unguided(*args, **kwargs):
        model, found = real(*args, **kwargs)
        sites = list(found.sites)
        sites[0] = dataclasses.replace(sites[0], guide=None, guide_via="", guide_reason="no same-size add")
        return model, dataclasses.replace(found, sites=tuple(sites))

    monkeypatch.setattr(srf_upsample.patch, "patch_fpn", one_unguided)
    with pytest.raises(ValueError, match="got no guide at 1 of the FPN's 3 upsampling sites.*no same-size add"):
        patch_generator(spec.build(), _generator("guided"))
    patch_generator(spec.build(), _generator("lite"))  # an unguided site is what a lite G always has
    monkeypatch.undo()
    # Stage 1 -> stage 2 (with the G validation curve, guided) -> stage 3, one iteration each.
    assert main(_stage1(coco, tmp_path / "s1", "--max-iters", "1")) == 0
    common = [*data_args(coco), *TINY, "--set", "fpn_channels=16", "--max-iters", "1"]
    s2 = ["stage2", *common, *_evaluation(coco), "--init", str(tmp_path / "s1"), "--output-dir", str(tmp_path / "s2")]
    assert main(s2) == 0
    (record,) = read_jsonl(tmp_path / "s2" / "eval.jsonl")
    assert sorted(record["generator_l1"]) == ["P2", "P3", "P4", "P5"] and "AP" in record["bbox"]
    assert main(["stage3", *common, "--init", str(tmp_path / "s2"), "--output-dir", str(tmp_path / "s3")]) == 0
    for stage in ("s2", "s3"):
        manifest = json.loads((tmp_path / stage / "manifest.json").read_text())
        assert manifest["config"]["generator_variant"] == "guided"
    # The stage-3 detector, as the trainer builds it, calls G with a guide at every site.
    config = build_config(
        "stage3", _tiny_values(coco, tmp_path / "s3b", min_size=64, max_size=64, init=str(tmp_path / "s2"))
    )
    built = stage_for(config).build(3)
    guides = []
    built.generator.register_forward_hook(
        lambda module, args, kwargs, output: guides.append(kwargs.get("guide") is not None), with_kwargs=True
    )
    built.modules["detector"].eval()
    with torch.no_grad():
        built.modules["detector"]([torch.rand(3, 64, 64)])
    assert guides == [True, True, True]


def test_bench_swap_scores_the_detector_as_trained_and_with_each_generator_patched_in(coco, tmp_path, capsys):
    import sys

    from safetensors.torch import save_file

    from srf_upsample.train.shipped import save_detector_folder

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_swap

    values = {"detector": "fasterrcnn", "backbone": "resnet18", "fpn_channels": 16, "min_size": 64, "max_size": 64}
    detector = DetectorSpec.from_values(values, num_classes=3, frozen_batchnorm=True).build()
    save_file({f"detector.{k}": v.contiguous() for k, v in detector.state_dict().items()}, str(tmp_path / "c.st"))
    spec = {**values, "num_classes": 3, "anchor_sizes": None, "detector_kwargs": None}
    folder = save_detector_folder(tmp_path / "c.st", tmp_path / "detector", spec, half=False)
    _generator("guided").save_pretrained(str(tmp_path / "guided"))
    _generator("lite").save_pretrained(str(tmp_path / "lite"))
    common = ["--detector", str(folder), "--data-root", str(coco[0]), "--ann-file", str(coco[1]), "--no-write"]
    argv = [*common, "--generator", str(tmp_path / "guided"), "--generator", str(tmp_path / "lite")]
    assert bench_swap.main(argv) == 0
    rows = {
        cells[0]: cells[1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and not line.startswith(("| upsampling", "| -"))
        for cells in [[cell.strip() for cell in line.split("|")[1:-1]]]
    }
    assert list(rows) == [
        "nearest (as trained)",
        "bilinear",
        f"{tmp_path / 'guided'} (guided G)",
        f"{tmp_path / 'lite'} (lite G)",
    ]
    assert rows[f"{tmp_path / 'guided'} (guided G)"] == "6 of 6"  # 3 sites x 2 batches of 2 images, all guided
    assert rows[f"{tmp_path / 'lite'} (lite G)"] == "0 of 6" and rows["bilinear"] == "-"
    # A baseline run folder (an A1: the F of stage 1) serves as the detector too; --quick scores 2 images.
    baseline = ["baseline", *data_args(coco), *TINY, "--set", "fpn_channels=16", "--max-iters", "1"]
    assert main([*baseline, "--output-dir", str(tmp_path / "A1")]) == 0
    run = ["--detector", str(tmp_path / "A1"), *common[2:], "--quick", "--generator", str(tmp_path / "guided")]
    assert bench_swap.main(run) == 0
    assert "| 3 of 3 " in capsys.readouterr().out  # 2 images, one batch: 3 sites, all guided
    # A generator of another FPN width is refused before anything is scored.
    SRFUpsample(8, hidden_channels=8, num_blocks=1, variant="guided").save_pretrained(str(tmp_path / "wide"))
    with pytest.raises(SystemExit):
        bench_swap.main([*common, "--generator", str(tmp_path / "wide")])
    error = capsys.readouterr()
    assert "8-channel features but the detector's FPN has 16" in error.err and "AP50" not in error.out


def test_stage3_trains_a_new_guided_g_end_to_end_with_its_guides(coco, tmp_path):
    # Arm E2E-guided: stage 3 alone builds the guided G from the generator_* settings; every site gets its guide.
    from srf_upsample.train.run_folder import load_trained_detector

    out = tmp_path / "e2e"
    argv = ["stage3", *data_args(coco), *TINY, *GUIDED, "--max-iters", "1", "--output-dir", str(out)]
    assert main([*argv, "--set", "use_new_generator=true"]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["generator_variant"] == "guided"
    detector, _ = load_trained_detector(out)  # rebuilt from the run folder: G patched in again, guided
    (generator,) = {m for m in detector.modules() if isinstance(m, SRFUpsample)}
    guided = []
    generator.register_forward_hook(
        lambda module, args, kwargs, output: guided.append(kwargs.get("guide") is not None), with_kwargs=True
    )
    with torch.no_grad():
        detector([torch.rand(3, 64, 64)])
    assert generator.accepts_guide and guided == [True, True, True]
