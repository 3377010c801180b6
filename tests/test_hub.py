import json
import shutil

import pytest
import torch

from srf_upsample import FeaturePatchDiscriminator, SRFUpsample
from srf_upsample.hub import CONFIG_NAME, SAFE_WEIGHTS_NAME

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(**kwargs) -> SRFUpsample:
    return SRFUpsample(4, hidden_channels=8, num_blocks=1, **kwargs)


def trained_like(module: torch.nn.Module) -> torch.nn.Module:
    # Non-default BN statistics, so that a round trip that dropped buffers would be caught.
    module.train()
    for _ in range(2):
        module(torch.randn(2, module.in_channels, 5, 6))
    return module.eval()


def test_folder_round_trip_gives_identical_outputs(tmp_path):
    up = trained_like(tiny(variant="lite"))
    up.save_pretrained(tmp_path)
    assert {CONFIG_NAME, SAFE_WEIGHTS_NAME} <= {p.name for p in tmp_path.iterdir()}
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["in_channels"] == 4 and config["variant"] == "lite" and config["hidden_channels"] == 8
    loaded = SRFUpsample.from_pretrained(tmp_path)
    assert not loaded.training
    x = torch.randn(2, 4, 9, 13)
    torch.testing.assert_close(loaded(x, size=(17, 25)), up(x, size=(17, 25)), rtol=0, atol=0)


def test_discriminator_round_trip(tmp_path):
    disc = trained_like(FeaturePatchDiscriminator(4, hidden_channels=[8, 6, 4]))
    disc.save_pretrained(tmp_path)
    loaded = FeaturePatchDiscriminator.from_pretrained(tmp_path)
    assert loaded.hidden_channels == [8, 6, 4]
    x = torch.randn(2, 4, 5, 7)
    torch.testing.assert_close(loaded(x), disc(x), rtol=0, atol=0)


def fill_hub_cache(cache, repo_id, folder):
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in (CONFIG_NAME, SAFE_WEIGHTS_NAME):
        shutil.copy(folder / name, snapshot / name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)


def test_repo_id_resolves_from_a_prefilled_cache_offline(tmp_path, monkeypatch):
    up = trained_like(tiny())
    up.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "hub"
    fill_hub_cache(cache, "srf-upsample/tiny-test", tmp_path / "saved")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    x = torch.randn(1, 4, 6, 7)
    for revision in (None, "main", COMMIT):
        loaded = SRFUpsample.from_pretrained("srf-upsample/tiny-test", cache_dir=cache, revision=revision)
        torch.testing.assert_close(loaded(x), up(x), rtol=0, atol=0)


def test_unknown_repo_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="Could not find pretrained weights 'nobody/nothing'.*HF_HUB_OFFLINE"):
        SRFUpsample.from_pretrained("nobody/nothing", cache_dir=tmp_path)


def test_config_that_disagrees_with_weights(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["in_channels"] = 6
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"shape mismatches .*left unchanged"):
        SRFUpsample.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_weights_are_a_clear_error(tmp_path, damage):
    tiny().save_pretrained(tmp_path)
    weights = tmp_path / SAFE_WEIGHTS_NAME
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    else:
        weights.unlink()
    error = FileNotFoundError if damage == "missing" else ValueError
    with pytest.raises(error, match="model.safetensors"):
        SRFUpsample.from_pretrained(tmp_path)


def test_failed_load_leaves_the_module_unchanged(tmp_path):
    from srf_upsample.hub import load_state_dict_strict

    target = tiny()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    other = SRFUpsample(4, hidden_channels=8, num_blocks=2).state_dict()  # one block too many
    with pytest.raises(ValueError, match="unexpected keys"):
        load_state_dict_strict(target, other)
    partial = dict(other)
    partial["tail.weight"] = torch.zeros(5, 8, 1, 1)
    with pytest.raises(ValueError, match="tail.weight"):
        load_state_dict_strict(target, partial)
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        SRFUpsample.from_pretrained(tmp_path)


def test_fused_module_refuses_to_save(tmp_path):
    up = tiny().eval().fuse()
    with pytest.raises(ValueError, match="fused"):
        up.save_pretrained(tmp_path)


def test_push_to_hub_uploads_a_saved_folder(tmp_path, monkeypatch):
    # No network here: intercept the upload and check that what would be uploaded is a loadable folder.
    uploaded = {}

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        shutil.copytree(folder_path, tmp_path / "uploaded")
        return "https://huggingface.co/" + repo_id

    from huggingface_hub import RepoUrl

    monkeypatch.setattr(
        "huggingface_hub.HfApi.create_repo",
        lambda self, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}"),
    )
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", fake_upload_folder)
    up = trained_like(tiny())
    up.push_to_hub("me/tiny-srf")
    assert uploaded["repo_id"] == "me/tiny-srf"
    loaded = SRFUpsample.from_pretrained(tmp_path / "uploaded")
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(loaded(x), up(x), rtol=0, atol=0)


def _snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def _raises_cleanly(error_type, match, call, *, folder=None):
    """Check that ``call()`` raises ``error_type`` matching ``match`` from srf_upsample code, with no chained error
    from torch or huggingface_hub in the traceback, and that ``folder`` is left byte for byte as it was."""
    before = _snapshot(folder) if folder is not None else None
    with pytest.raises(error_type, match=match) as info:
        call()
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), repr(error)
    assert "srf_upsample" in str(info.traceback[-1].path), info.traceback[-1].path
    if folder is not None:
        assert _snapshot(folder) == before
    return error


def test_missing_local_folder_says_so_and_touches_no_hub_cache(tmp_path, monkeypatch):
    # Was an HFValidationError about repo ids, which never said that the folder is missing.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    for name in ("/missing/dir", "./missing", str(tmp_path / "a" / "b")):
        _raises_cleanly(
            ValueError,
            rf"pretrained_model_name_or_path='{name}': the local folder '{name}' does not exist .*save_pretrained\(\)",
            lambda name=name: SRFUpsample.from_pretrained(name),
        )
    assert not (tmp_path / "cache").exists()


def test_weights_file_instead_of_folder(tmp_path):
    tiny().save_pretrained(tmp_path)
    _raises_cleanly(
        ValueError,
        r"is a file, not a folder: pass the folder that save_pretrained\(\) wrote",
        lambda: SRFUpsample.from_pretrained(tmp_path / SAFE_WEIGHTS_NAME),
        folder=tmp_path,
    )


@pytest.mark.parametrize(
    ("map_location", "error", "match"),
    [
        ("cuda", ValueError, r"map_location must be a device this machine has, got 'cuda'; CUDA is not available"),
        ("gpu", ValueError, r"map_location must be a torch.device or a device string .*got 'gpu'"),
        (0.5, TypeError, r"map_location must be a torch.device or a device string .*got 0.5 of type float"),
    ],
)
def test_unavailable_map_location_is_named_not_called_corrupt(tmp_path, monkeypatch, map_location, error, match):
    # Was "Weights file ... may be truncated or corrupt" for map_location="cuda" on a machine without a GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tiny().save_pretrained(tmp_path)
    _raises_cleanly(
        error, match, lambda: SRFUpsample.from_pretrained(tmp_path, map_location=map_location), folder=tmp_path
    )


@pytest.mark.parametrize("key", ["hiden_channels", "dropout"])
def test_config_with_an_unknown_key_is_rejected_listing_the_valid_keys(tmp_path, key):
    # Was loaded, the key ignored: a misspelled hidden_channels silently built the default width.
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config[key] = 8
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    _raises_cleanly(
        ValueError,
        rf"config.json of .* has keys that SRFUpsample does not take: \['{key}'\]\. Valid keys: \['deconv_kernel', "
        r"'guide_channels', 'hidden_channels', 'in_channels', 'negative_slope', 'norm', 'num_blocks', 'variant', "
        r"'zero_init_residual'\]",
        lambda: SRFUpsample.from_pretrained(tmp_path),
        folder=tmp_path,
    )


@pytest.mark.parametrize("content", ["[1, 2]", '"paper"', "{not json"])
def test_config_that_is_not_a_json_object(tmp_path, content):
    # A list was an AttributeError ('list' object has no attribute 'items') from inside huggingface_hub.
    tiny().save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(content)
    match = "is not valid JSON" if content.startswith("{") else r"must be a JSON object of constructor arguments"
    _raises_cleanly(ValueError, match, lambda: SRFUpsample.from_pretrained(tmp_path), folder=tmp_path)


def test_folder_of_the_other_class_names_the_class_to_use(tmp_path):
    # A discriminator folder loaded as a generator was a TypeError from the constructor, and the reverse loaded keys
    # the discriminator ignores.
    FeaturePatchDiscriminator(4, hidden_channels=[8, 8, 8]).save_pretrained(tmp_path / "disc")
    tiny().save_pretrained(tmp_path / "gen")
    _raises_cleanly(
        ValueError,
        r"does not describe a SRFUpsample \(hidden_channels must be a positive int, got \[8, 8, 8\] of type list\); "
        r"fix that value, or, as it describes a FeaturePatchDiscriminator, load it with "
        r"FeaturePatchDiscriminator.from_pretrained\(\)\.",
        lambda: SRFUpsample.from_pretrained(tmp_path / "disc"),
        folder=tmp_path,
    )
    _raises_cleanly(
        ValueError,
        r"has keys that FeaturePatchDiscriminator does not take: .*load it with SRFUpsample.from_pretrained\(\)",
        lambda: FeaturePatchDiscriminator.from_pretrained(tmp_path / "gen"),
        folder=tmp_path,
    )


@pytest.mark.parametrize("damage", ["shape", "truncate"])
def test_bad_weights_say_so_and_write_nothing(tmp_path, damage):
    tiny().save_pretrained(tmp_path)
    if damage == "shape":
        SRFUpsample(4, hidden_channels=6, num_blocks=1).save_pretrained(tmp_path / "other")
        shutil.copy(tmp_path / "other" / SAFE_WEIGHTS_NAME, tmp_path / SAFE_WEIGHTS_NAME)
        shutil.rmtree(tmp_path / "other")
        match = r"Cannot load weights from .* shape mismatches .*the module was left unchanged"
    else:
        weights = tmp_path / SAFE_WEIGHTS_NAME
        weights.write_bytes(weights.read_bytes()[:100])
        match = r"Weights file .*model.safetensors' is not a readable safetensors file .*save or download it again"
    _raises_cleanly(ValueError, match, lambda: SRFUpsample.from_pretrained(tmp_path), folder=tmp_path)
