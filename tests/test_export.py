"""ONNX export (srf_upsample.export): standard operators only, a named opset, onnxruntime parity, clear errors."""

from __future__ import annotations

import functools
import sys

import pytest
import torch
from _helpers import backbone_parity, generator_parity, trained_looking

from srf_upsample import SRFUpsample
from srf_upsample.export import (
    DEFAULT_OPSET,
    GeneratorExportWrapper,
    check_generator_parity,
    export_backbone,
    export_generator,
    main,
    onnx_operators,
)
from srf_upsample.export._backbone import _SinglePassUpsample

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Single-pass targets, odd and non-square included; 17x25 -> 33x49 is the docstring's example (residual 34x50 resized).
SIZES = (((17, 25), (33, 49)), ((16, 16), (32, 32)), ((5, 7), (9, 13)), ((6, 11), (12, 20)))

# Every operator a generator or patched FPN backbone may use; all are in the default ONNX domain (docs/export.md).
STANDARD_OPERATORS = {
    "Add", "BatchNormalization", "Concat", "Conv", "ConvTranspose", "DepthToSpace", "Div", "LeakyRelu",
    "MaxPool", "Mul", "Relu", "Reshape", "Resize", "Shape", "Squeeze",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _trained_looking(variant: str, norm: str = "none", deconv_kernel: int = 6) -> SRFUpsample:
    return trained_looking(variant, norm=norm, deconv_kernel=deconv_kernel)


def _default_domain_opset(path) -> int:
    return next(entry.version for entry in onnx.load(str(path)).opset_import if entry.domain in ("", "ai.onnx"))


@pytest.mark.parametrize(
    ("variant", "norm", "deconv_kernel", "fuse"),
    [
        ("paper", "none", 6, False),  # the default generator
        ("paper", "none", 6, True),
        ("paper", "batch", 4, False),  # the generator of earlier versions and of the shipped weights
        ("paper", "batch", 4, True),
        ("lite", "none", 6, False),
        ("lite", "batch", 6, True),
    ],
)
def test_generator_export_matches_pytorch_in_onnxruntime(tmp_path, variant, norm, deconv_kernel, fuse):
    module = _trained_looking(variant, norm, deconv_kernel)
    state_before = {k: v.clone() for k, v in module.state_dict().items()}
    path = export_generator(module, tmp_path / "srf.onnx", fuse=fuse)

    operators = onnx_operators(path)  # raises if any node is outside the default domain
    assert set(operators) <= STANDARD_OPERATORS, operators
    assert "Resize" in operators and "Conv" in operators
    assert _default_domain_opset(path) == DEFAULT_OPSET

    # One exported graph serves every size: dynamic H/W, target size carried by the ``like`` input's shape.
    # Tolerance: float32 summation-order differences, relative to the output scale (see PARITY_TOLERANCE).
    results = generator_parity(module, path, sizes=SIZES, fuse=fuse)
    assert [r.output_shape[-2:] for r in results] == [target for _, target in SIZES]
    # export works on a copy: the caller's module is neither fused nor changed.
    assert not module.is_fused
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state_before[key], rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["paper", "lite"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_export_wrapper_equals_forward(variant, norm):
    # Pins that the exported computation is SRFUpsample.forward for single-pass targets, exact sizes included: both
    # call the one single-pass method, so the outputs are bit-identical.
    module = _trained_looking(variant, norm)
    wrapper = GeneratorExportWrapper(module)
    for (height, width), target in SIZES:
        x = torch.randn(2, 8, height, width)
        with torch.no_grad():
            torch.testing.assert_close(wrapper(x, torch.empty(2, 0, *target)), module(x, size=target), rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_export_paths_match_forward_under_autocast(variant):
    # The export code had its own copy of the single pass, which lacked forward's cast of the low-precision residual
    # to the shortcut's dtype. One method serves all three now: dtype and values agree under autocast too.
    module = _trained_looking(variant)
    x = torch.randn(2, 8, 9, 13)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = module(x, size=(17, 25))
        wrapped = GeneratorExportWrapper(module)(x, torch.empty(1, 0, 17, 25))
        single = _SinglePassUpsample(module)(x, size=(17, 25))
    assert expected.dtype == wrapped.dtype == single.dtype
    torch.testing.assert_close(wrapped, expected, rtol=0, atol=0)
    torch.testing.assert_close(single, expected, rtol=0, atol=0)


def test_single_pass_module_equals_forward():
    # The stand-in that export_backbone puts in a patched neck computes what forward computes, for size= and the
    # scale_factor=2 call an FPN may make instead.
    module = _trained_looking("paper")
    single = _SinglePassUpsample(module)
    x = torch.randn(2, 8, 9, 13)
    with torch.no_grad():
        torch.testing.assert_close(single(x, size=(17, 25)), module(x, size=(17, 25)), rtol=0, atol=0)
        torch.testing.assert_close(single(x, scale_factor=2), module(x), rtol=0, atol=0)
        torch.testing.assert_close(single(x, size=18), module(x, size=18), rtol=0, atol=0)


def test_export_uses_requested_opset(tmp_path):
    path = export_generator(_trained_looking("lite"), tmp_path / "srf.onnx", opset=21)
    assert _default_domain_opset(path) == 21


@pytest.mark.slow  # ~25 s: patch_fpn runs the detector once, then a ResNet18-FPN export
def test_patched_detector_backbone_matches_pytorch_in_onnxruntime(tmp_path):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from srf_upsample import patch_fpn

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    model = FasterRCNN(backbone, num_classes=2).eval()
    model, report = patch_fpn(model, functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1))
    assert len(report.replaced) == 3

    path = export_backbone(model, tmp_path / "backbone.onnx", image_size=(64, 64))
    operators = onnx_operators(path)
    assert set(operators) <= STANDARD_OPERATORS, operators
    assert "ConvTranspose" in operators  # the generator is in the graph, not plain interpolation
    # Dynamic H/W: the graph exported at 64x64 also runs an odd, non-square image.
    for image_size in [(64, 64), (72, 57)]:
        results = backbone_parity(model, path, image_size=image_size)
        assert [r.name for r in results] == ["0", "1", "2", "3", "pool"]


def test_cli_export_prints_operators_and_parity(tmp_path, capsys):
    _trained_looking("lite").save_pretrained(tmp_path / "tiny")
    code = main([str(tmp_path / "tiny"), str(tmp_path / "out.onnx"), "--fuse", "--opset", "18"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (tmp_path / "out.onnx").is_file()
    assert "operators" in out and "DepthToSpace" in out and "Resize" in out
    assert "17x25 -> 33x49" in out and "max_abs_diff=" in out and "rel_error=" in out


def test_cli_routes_through_srf_upsample_command(tmp_path, capsys):
    from srf_upsample.cli import main as cli_main

    assert cli_main(["export", str(tmp_path / "missing"), str(tmp_path / "out.onnx"), "--opset", "12"]) == 2
    assert "opset must be an int between 18 and 23, got 12" in capsys.readouterr().err


@pytest.mark.parametrize("opset", [12, 17, 99])
def test_unsupported_opset_raises(tmp_path, opset):
    with pytest.raises(ValueError, match=rf"opset must be an int between 18 and 23, got {opset}; .*--opset 18"):
        export_generator(_trained_looking("paper"), tmp_path / "srf.onnx", opset=opset)


def test_non_int_opset_raises(tmp_path):
    with pytest.raises(TypeError, match="opset must be an int between 18 and 23, got '18' of type str"):
        export_generator(_trained_looking("paper"), tmp_path / "srf.onnx", opset="18")


def test_unpatched_model_through_detector_path_raises(tmp_path):
    from torchvision.ops import FeaturePyramidNetwork

    with pytest.raises(ValueError, match=r"not patched.*patch_fpn\(model\)"):
        export_backbone(FeaturePyramidNetwork([8, 16], 8), tmp_path / "fpn.onnx")


def test_generator_path_rejects_other_modules(tmp_path):
    with pytest.raises(TypeError, match="must be an SRFUpsample.*export_backbone"):
        export_generator(torch.nn.Conv2d(8, 8, 1), tmp_path / "x.onnx")


def test_multi_pass_parity_size_raises(tmp_path):
    with pytest.raises(ValueError, match=r"sizes entry .* not a single-pass target"):
        check_generator_parity(_trained_looking("paper"), tmp_path / "x.onnx", sizes=[((5, 5), (20, 20))])


def test_missing_export_extra_names_pip_command(tmp_path, monkeypatch):
    # A None entry in sys.modules makes ``import onnxruntime`` raise ImportError, as when the extra is not installed.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "srf_upsample\[export\]"'):
        export_generator(_trained_looking("paper"), tmp_path / "srf.onnx")
    code = main([str(tmp_path), str(tmp_path / "srf.onnx")])
    assert code == 2
