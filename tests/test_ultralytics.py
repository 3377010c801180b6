"""patch_fpn on ultralytics models and training a patched YOLO with ultralytics' own trainer (offline, CPU, tiny)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# ultralytics reads these at import: no network checks, no pip auto-install, settings in a throw-away folder.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_config_"))
ultralytics = pytest.importorskip("ultralytics")

from _helpers import SMALL_SRF  # noqa: E402
from PIL import Image  # noqa: E402  (ultralytics depends on Pillow)
from ultralytics import RTDETR, YOLO  # noqa: E402

from srf_upsample import SRFUpsample, patch_fpn  # noqa: E402
from srf_upsample.integrations.ultralytics import use_srf  # noqa: E402
from srf_upsample.patch import UpsampleSite  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _network(config: str) -> torch.nn.Module:
    return (RTDETR if config.startswith("rtdetr") else YOLO)(config).model


@pytest.mark.parametrize("config", ["yolov8n.yaml", "yolo11n.yaml", "rtdetr-l.yaml"])
@pytest.mark.parametrize("training", [False, True])
def test_whole_model_patched_by_swapping_upsample_modules(config, training) -> None:
    network = _network(config).train(training)
    keys = set(network.state_dict())
    patched, report = patch_fpn(network, SMALL_SRF)  # default arguments besides a small generator
    assert patched is network and network.training == training
    # The two top-down nn.Upsample layers of each neck; fx cannot trace the layer-routing forward, so they are swapped.
    assert len(report.replaced) == 2 and report.methods == {"": "module"}
    assert all(
        isinstance(network.get_submodule(f"model.{site.target.split('.')[-1]}"), UpsampleSite)
        for site in report.replaced
    )
    names = {site.upsampler for site in report.replaced}
    assert set(network.state_dict()) - keys == {
        key for name in names for key in network.get_submodule(name).state_dict(prefix=f"{name}.")
    }
    out = network(torch.rand(2, 3, 64, 96))
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if training:
        sum(t.float().square().mean() for t in leaves).backward()
        for name in names:
            assert all(p.grad is not None for p in network.get_submodule(name).parameters()), name
    network(torch.rand(1, 3, 96, 160))  # another size, not a multiple of the example


@pytest.fixture
def tiny_dataset(tmp_path):
    """Four 64x64 images per split, one bright square each, in YOLO format."""
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for index in range(4):
            image = (torch.rand(64, 64, 3, generator=generator) * 60).to(torch.uint8)
            image[16:40, 20:44] = 220
            Image.fromarray(image.numpy()).save(tmp_path / "images" / split / f"{index}.png")
            (tmp_path / "labels" / split / f"{index}.txt").write_text("0 0.5 0.4375 0.375 0.375\n")
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames:\n  0: square\n")
    return data


def _train_one_epoch(model, data: Path, project: Path, name: str, **options) -> Path:
    """Train ``model`` for one tiny CPU epoch on ``data`` into ``project/name``; the path of its ``last.pt``."""
    model.train(
        data=str(data),
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        project=str(project),
        name=name,
        exist_ok=True,
        verbose=False,
        **options,
    )
    return project / name / "weights" / "last.pt"


def test_train_one_epoch_reload_predict(tiny_dataset, tmp_path) -> None:
    model = use_srf(YOLO("yolov8n.yaml"), SMALL_SRF)
    assert len(model.srf_report.replaced) == 2
    start = {}

    def remember(trainer) -> None:
        # The trainer built its own network: it must be patched before the optimizer and EMA were made.
        generators = {n: m for n, m in trainer.model.named_modules() if isinstance(m, SRFUpsample)}
        assert set(generators) == {"srf_upsampler_c256", "srf_upsampler_c128"}
        optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert all(id(p) in optimized for m in generators.values() for p in m.parameters())
        start.update({k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("srf_")})

    model.add_callback("on_pretrain_routine_end", remember)
    last = _train_one_epoch(model, tiny_dataset, tmp_path / "runs", "srf")
    assert last.exists() and start
    reloaded = YOLO(str(last))
    network = reloaded.model
    assert sum(isinstance(m, UpsampleSite) for m in network.modules()) == 2
    state = network.state_dict()
    assert set(start) == {k for k in state if k.startswith("srf_")}
    # One optimizer step ran (warm-up trains the biases first): the saved generators are not the initial ones.
    assert any(not torch.equal(state[k].float(), start[k].float()) for k in start)
    results = reloaded.predict(str(tiny_dataset.parent / "images" / "val" / "0.png"), imgsz=64, verbose=False)
    assert len(results) == 1
    _, again = patch_fpn(network.float())
    assert not again.replaced and any(site.action == "already patched" for site in again.sites)


def test_use_srf_bad_input() -> None:
    with pytest.raises(TypeError, match="model must be an ultralytics model object"):
        use_srf(torch.nn.Conv2d(3, 3, 1))


@pytest.fixture(autouse=True)
def restore_environ():
    """Put os.environ and torch's thread count back: ultralytics changes them for good.

    ``YOLO(...)`` and its trainer set variables (CUBLAS_WORKSPACE_CONFIG, ...); its ``select_device`` on CPU (training,
    predicting) calls ``torch.set_num_threads`` with its own count.
    """
    saved, threads = dict(os.environ), torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(saved)
    torch.set_num_threads(threads)


def test_train_and_reload_keep_an_upsampler_given_by_name(tiny_dataset, tmp_path, restore_environ) -> None:
    from srf_upsample.carafe import CARAFE

    model = use_srf(YOLO("yolov8n.yaml"), "carafe")
    assert [type(model.model.get_submodule(site.upsampler)) for site in model.srf_report.replaced] == [CARAFE] * 2
    built = []
    # The trainer builds its own network: it must hold CARAFE modules (one per channel count) when training starts.
    model.add_callback(
        "on_pretrain_routine_end",
        lambda trainer: built.append({n: m.in_channels for n, m in trainer.model.named_modules() if type(m) is CARAFE}),
    )
    last = _train_one_epoch(model, tiny_dataset, tmp_path / "runs", "carafe", val=False)
    assert built == [{"srf_upsampler_c256": 256, "srf_upsampler_c128": 128}]
    network = YOLO(str(last)).model
    sites = [m for m in network.modules() if isinstance(m, UpsampleSite)]
    assert len(sites) == 2
    assert {n: m.in_channels for n, m in network.named_modules() if type(m) is CARAFE} == built[0]
    # Patching the reloaded network again finds nothing new: its sites already call CARAFE.
    _, again = patch_fpn(network.float(), "carafe")
    assert not again.replaced and [m for m in network.modules() if isinstance(m, UpsampleSite)] == sites
