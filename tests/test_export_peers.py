"""ONNX export of every learned peer by name (CARAFE, DySample, the guided generator): operators, parity, backbones."""

from __future__ import annotations

import functools
from collections import OrderedDict

import pytest
import torch
from _helpers import backbone_parity, generator_parity
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from srf_upsample import CARAFE, DySample, SRFUpsample, patch_fpn
from srf_upsample.export import export_backbone, export_generator, main, onnx_operators

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Odd, non-square single-pass targets: 17x25 -> 33x49 (FPN's "2x minus one"), plus exact 2x and a small odd one.
SIZES = (((17, 25), (33, 49)), ((6, 11), (12, 22)), ((5, 7), (9, 13)))

# The operators an exported peer may use, all in the default ONNX domain (onnx_operators raises on any other), and
# those each peer's graph must hold (its own computation, not a plain resize). docs/upsamplers.md lists each graph's.
ALLOWED = {
    "Add", "Cast", "Concat", "Conv", "DepthToSpace", "Div", "Expand", "Gather", "GridSample", "LeakyRelu", "MatMul",
    "MaxPool", "Mul", "Pad", "Range", "Relu", "Reshape", "Resize", "Shape", "Slice", "Softmax", "Split", "Squeeze",
    "Sub", "Transpose", "Unsqueeze",
}  # fmt: skip
REQUIRED = {
    "carafe": {"Conv", "Softmax", "Mul", "Add"},
    "dysample": {"Conv", "DepthToSpace", "GridSample", "Resize"},
    "srf-guided": {"Conv", "LeakyRelu", "DepthToSpace", "MatMul", "Resize"},
}

# Small members of each family, so that each export takes seconds: the code paths of the defaults (CARAFE's 5x5
# reassembly has 25 taps, each a few graph nodes; the exporter's time grows with the node count).
SMALL = {
    "carafe": functools.partial(CARAFE, compressed_channels=8, k_up=3),
    "dysample": DySample,
    "srf-guided": functools.partial(SRFUpsample, variant="guided", hidden_channels=8, num_blocks=1),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _trained_looking(module: nn.Module) -> nn.Module:
    """Random weights everywhere (a fresh DySample is exactly bilinear, a fresh generator's residual starts small)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.2)
    return module.eval()


@pytest.mark.parametrize("name", ["carafe", "srf-guided"])
def test_peer_exports_with_standard_operators_and_matches_onnxruntime(tmp_path, name) -> None:
    module = _trained_looking(SMALL[name](8))
    path = export_generator(module, tmp_path / f"{name}.onnx")
    operators = set(onnx_operators(path))
    assert REQUIRED[name] <= operators <= ALLOWED, sorted(operators)
    results = generator_parity(module, path, sizes=SIZES)
    assert [r.output_shape for r in results] == [(2, 8, 33, 49), (2, 8, 12, 22), (2, 8, 9, 13)]


def test_cli_exports_by_name(tmp_path, capsys) -> None:
    code = main(["dysample", str(tmp_path / "dysample.onnx"), "--channels", "8", "--sizes", "17x25:33x49", "5x7:9x13"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "exported 'dysample' (DySample, untrained, in_channels=8, fused=False)" in out
    operators = next(line for line in out.splitlines() if line.startswith("operators ("))
    assert "all in the default ONNX domain" in operators and "GridSample" in operators
    assert "17x25 -> 33x49" in out and "5x7 -> 9x13" in out


def test_dysample_export_route_gives_the_eager_numbers(monkeypatch) -> None:
    # The export fix of DySample: under torch.export it always resizes the offset field, even to its own size.
    # Run that route eagerly (is_exporting patched to True) and compare with the normal route: identical, because
    # a same-size bilinear resize is an exact copy. Before the fix both routes were this eager one.
    module = _trained_looking(DySample(8))
    x = torch.randn(2, 8, 6, 11)
    requests = [{"scale_factor": 2}, {"size": (12, 22)}, {"size": (11, 21)}, {"size": (9, 16)}]
    eager = [module(x, **request) for request in requests]
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    for request, expected in zip(requests, eager, strict=True):
        torch.testing.assert_close(module(x, **request), expected, rtol=0, atol=0)


def _backbone() -> BackboneWithFPN:
    """Four stride-2 stages (8 to 32 channels) with an FPN: three upsampling sites, small enough to export fast."""
    channels = [8, 16, 16, 32]
    layers = OrderedDict()
    for index, (in_channels, out_channels) in enumerate(zip([3, *channels[:-1]], channels, strict=True)):
        stride = 4 if index == 0 else 2
        layers[f"layer{index}"] = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.ReLU())
    return_layers = {f"layer{index}": str(index) for index in range(4)}
    return BackboneWithFPN(nn.Sequential(layers), return_layers, channels, 8).eval()


@pytest.mark.slow  # ~30 s on a busy 2-core machine: one backbone export holding all three peers
def test_backbone_patched_with_each_peer_exports_and_matches(tmp_path) -> None:
    # One peer per FPN site (share=False builds one per site, top-down): CARAFE, DySample, the guided generator.
    order = iter(["carafe", "dysample", "srf-guided"])
    backbone, report = patch_fpn(_backbone(), lambda channels: SMALL[next(order)](channels), share=False)
    peers = [backbone.get_submodule(f"{site.module_path}.{site.upsampler}") for site in report.replaced]
    assert [type(peer).__name__ for peer in peers] == ["CARAFE", "DySample", "SRFUpsample"]
    assert report.replaced[2].guide is not None  # the guided generator gets the lateral map it is added to
    for peer in peers:
        _trained_looking(peer)
    path = export_backbone(backbone, tmp_path / "backbone.onnx", image_size=(64, 64))
    operators = onnx_operators(path)
    assert {"Softmax", "GridSample", "MatMul"} <= set(operators) <= ALLOWED, operators  # each peer is in the graph
    # Dynamic H and W: exported at 64x64 (levels exactly 2x apart), the graph also runs an odd, non-square image
    # whose levels are not (72x57: 18x15, 9x8, 5x4, 3x2).
    for image_size in [(64, 64), (72, 57)]:
        results = backbone_parity(backbone, path, image_size=image_size, batch_size=2)
        assert [r.name for r in results] == ["0", "1", "2", "3", "pool"]


def test_cli_unknown_name_lists_the_names(tmp_path, capsys) -> None:
    assert main(["carafee", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "Unknown upsampler 'carafee'; the known names are ['carafe', 'dysample'" in err


def test_fuse_of_a_peer_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="fuse=True folds SRFUpsample's BatchNorm, but module is a DySample"):
        export_generator(DySample(8), tmp_path / "x.onnx", fuse=True)
