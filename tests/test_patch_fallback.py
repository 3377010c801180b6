"""patch_fpn on necks fx cannot use: run-time routing, module swapping, train-only branches, guards."""

from __future__ import annotations

import copy
import io
import logging
import pickle

import pytest
import torch
import torch.nn.functional as F
from _helpers import SMALL_SRF, NearestUpsample
from torch import nn
from torchvision.models import detection

from srf_upsample import SRFUpsample, patch_fpn
from srf_upsample.patch import UpsampleSite


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def assert_equal(actual, expected) -> None:
    for a, e in zip(torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected), strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def generator_grads(model: nn.Module) -> list[bool]:
    """Per generator: every parameter has a finite gradient and the tail's is not zero.

    A fresh generator's tail conv is zero, so only the tail gets a non-zero gradient at first (the convs before it
    get zeros); a detached generator would leave even the tail's at zero.
    """
    return [
        all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in m.parameters())
        and bool(m.tail.weight.grad.abs().sum() > 0)
        for m in model.modules()
        if isinstance(m, SRFUpsample)
    ]


# ---------------------------------------------------------------------------------------------------------------
# Necks in the styles fx cannot trace


class VarargsNeck(nn.Module):
    """Control flow on the number of inputs (*feats): 3 or 4 levels, top-down with F.interpolate to the lateral size."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(4))
        self.extra = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, *feats: torch.Tensor) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral, feats, strict=False)]
        if len(feats) == 4:
            laterals[-1] = self.extra(laterals[-1])
        outs = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            outs.insert(0, lateral + F.interpolate(outs[0], size=lateral.shape[-2:], mode="nearest"))
        return outs


class ListLoopNeck(nn.Module):
    """A list input driving a loop, with a shape test deciding whether to upsample (one nn.Upsample per level)."""

    def __init__(self, channels: tuple[int, ...] = (4, 8, 16)) -> None:
        super().__init__()
        self.ups = nn.ModuleList(nn.Upsample(scale_factor=2, mode="nearest") for _ in channels[1:])
        pairs = zip(channels, channels[1:], strict=False)
        self.reduce = nn.ModuleList(nn.Conv2d(c_high, c_low, 1) for c_low, c_high in pairs)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [feats[-1]]
        for i in range(len(feats) - 2, -1, -1):
            top = outs[0]
            if top.shape[-1] * 2 <= feats[i].shape[-1] + 1:  # data-dependent in fx's eyes (a shape comparison)
                top = self.ups[i](top)[..., : feats[i].shape[-2], : feats[i].shape[-1]]
            outs.insert(0, feats[i] + self.reduce[i](top))
        return outs


class AttentionNeck(nn.Module):
    """An attention encoder on the coarsest level (tokens built from its shape) feeding a top-down upsampling path."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(channels, num_heads=2, batch_first=True)
        self.position = nn.Parameter(torch.zeros(1, channels, 4, 4))
        self.fuse = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        low, high = feats
        n, c, h, w = high.shape
        position = F.interpolate(self.position, size=(int(h), int(w)), mode="bilinear", align_corners=False)
        tokens = (high + position).flatten(2).transpose(1, 2)
        encoded, _ = self.attention(tokens, tokens, tokens)
        encoded = encoded.transpose(1, 2).reshape(n, c, h, w)
        return [self.fuse(low + F.interpolate(encoded, size=low.shape[-2:], mode="nearest")), encoded]


class TrainOnlyBranchNeck(nn.Module):
    """A training-only branch (auxiliary mixing) before the upsampling: traceable, but eval-only if traced once."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.aux = nn.Conv2d(channels, channels, 1)
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        top = feats["p4"]
        if self.training:
            top = top + self.aux(top)
        return {"p3": self.smooth(feats["p3"] + F.interpolate(top, scale_factor=2.0, mode="nearest")), "p4": top}


class Detector(nn.Module):
    """A stem and one of the necks above, as a user holds them."""

    def __init__(self, neck: nn.Module, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.stems = nn.ModuleList(nn.Conv2d(3, c, 3, stride=2 ** (i + 1), padding=1) for i, c in enumerate(channels))
        self.neck = neck

    def forward(self, images: torch.Tensor):
        return self.neck([stem(images) for stem in self.stems])


def varargs_inputs(height: int = 16, width: int = 24, levels: int = 3) -> tuple[torch.Tensor, ...]:
    return tuple(torch.rand(2, 8, -(-height // 2**i), -(-width // 2**i)) for i in range(levels))


NECKS = {
    # name: (builder, example inputs, expected method, number of calls replaced on the example)
    "varargs": (VarargsNeck, lambda h, w: varargs_inputs(h, w), "runtime", 2),
    "list_loop": (lambda: Detector(ListLoopNeck(), (4, 8, 16)), lambda h, w: torch.rand(2, 3, h, w), "module", 2),
    # The position embedding resize is an enlargement too, but of a parameter: left alone.
    "attention": (lambda: Detector(AttentionNeck(), (8, 8)), lambda h, w: torch.rand(2, 3, h, w), "runtime", 1),
}


@pytest.mark.parametrize("name", list(NECKS))
def test_untraceable_neck_equal_with_reference_at_several_sizes(name) -> None:
    builder, make_inputs, method, num_replaced = NECKS[name]
    model = builder().eval()
    example = make_inputs(32, 48)
    inputs = [example, make_inputs(33, 47), make_inputs(64, 80)]
    with torch.no_grad():
        expected = [model(*x) if isinstance(x, tuple) else model(x) for x in inputs]
    keys = set(model.state_dict())
    patched, report = patch_fpn(model, NearestUpsample, example_inputs=example)
    assert patched is model
    assert sum(site.num_calls for site in report.replaced) == num_replaced
    assert set(report.methods.values()) == {method}
    assert report.fallbacks and "fx" in str(report)
    assert set(model.state_dict()) == keys  # the reference upsampler has no weights; every original key is kept
    with torch.no_grad():
        for x, e in zip(inputs, expected, strict=True):
            assert_equal(model(*x) if isinstance(x, tuple) else model(x), e)


@pytest.mark.parametrize("name", list(NECKS))
def test_untraceable_neck_trains_generator_at_odd_sizes(name) -> None:
    builder, make_inputs, _, num_replaced = NECKS[name]
    model = builder().train()
    patched, report = patch_fpn(model, SMALL_SRF, example_inputs=make_inputs(32, 48))
    assert patched.training and sum(site.num_calls for site in report.replaced) == num_replaced
    for height, width in ((32, 48), (35, 51)):
        x = make_inputs(height, width)
        out = patched(*x) if isinstance(x, tuple) else patched(x)
        sum(t.square().mean() for t in torch.utils._pytree.tree_leaves(out)).backward()
    assert generator_grads(patched) and all(generator_grads(patched))
    patched.eval()
    with torch.no_grad():
        patched(*make_inputs(17, 29)) if name == "varargs" else patched(make_inputs(17, 29))


def test_varargs_neck_with_four_levels_and_share_false() -> None:
    neck = VarargsNeck().eval()
    example = varargs_inputs(levels=4)
    expected = neck(*example)
    reference = copy.deepcopy(neck)
    patched, report = patch_fpn(neck, NearestUpsample, share=False, example_inputs=example)
    # One upsampler per call of the forward, named by call index (the neck's loop makes three calls).
    assert [site.upsampler for site in report.replaced] == ["srf_call0", "srf_call1", "srf_call2"]
    assert_equal(patched(*example), expected)
    three = varargs_inputs(levels=3)
    assert_equal(patched(*three), reference(*three))  # fewer levels than on the example: still the original


def test_runtime_routed_neck_pickles_deepcopies_and_patches_once() -> None:
    neck = VarargsNeck()
    patch_fpn(neck, SMALL_SRF, example_inputs=varargs_inputs())
    neck.eval()
    x = varargs_inputs(20, 28)
    expected = neck(*x)
    buffer = io.BytesIO()
    torch.save(neck, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(neck), torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(neck))):
        assert_equal(clone(*x), expected)
        assert clone.srf_upsampler_c8 is not neck.srf_upsampler_c8
    keys = set(neck.state_dict())
    _, again = patch_fpn(neck, SMALL_SRF, example_inputs=varargs_inputs())
    assert not again.replaced and {site.action for site in again.sites} == {"already patched"}
    assert set(neck.state_dict()) == keys
    assert_equal(neck(*x), expected)


def test_runtime_routed_neck_exports_with_torch_export() -> None:
    neck = VarargsNeck()
    patch_fpn(neck, SMALL_SRF, example_inputs=varargs_inputs())
    neck.eval()
    x = varargs_inputs()
    trace_log = logging.getLogger("torch.__trace")
    handlers = list(trace_log.handlers)
    try:
        program = torch.export.export(neck, x)
    finally:  # the first export of a process sets up torch's trace logging, dropping its lazy handler
        trace_log.handlers[:] = handlers
    assert_equal(program.module()(*x), neck(*x))
    # The generator's convolutions are in the exported graph, not only F.interpolate.
    assert sum(node.target == torch.ops.aten.conv2d.default for node in program.graph.nodes) > 8


def test_module_swap_keeps_upsample_attributes() -> None:
    model = Detector(ListLoopNeck(), (4, 8, 16))
    model.neck.ups[0].layer_index = 7  # frameworks keep bookkeeping on layers (ultralytics: f, i, type)
    _, report = patch_fpn(model, SMALL_SRF, example_inputs=torch.rand(2, 3, 32, 48))
    site = model.neck.ups[0]
    assert isinstance(site, UpsampleSite) and isinstance(site, nn.Upsample)
    assert site.layer_index == 7 and site.scale_factor == 2.0 and site.mode == "nearest"
    assert site.upsamplers[8] is model.neck.srf_upsampler_c8  # ups[0] enlarges the 8-channel level
    # Shared upsamplers live once, on the neck: one state-dict key each.
    assert sum(key.startswith("neck.srf_upsampler_c8.") for key in model.state_dict()) == len(
        model.neck.srf_upsampler_c8.state_dict()
    )


def test_train_only_branch_survives_patching() -> None:
    neck = TrainOnlyBranchNeck()
    feats = {"p3": torch.rand(2, 8, 16, 24), "p4": torch.rand(2, 8, 8, 12)}
    neck.train()
    expected_train = neck(feats)
    neck.eval()
    expected_eval = neck(feats)
    patched, report = patch_fpn(neck, NearestUpsample, example_inputs=(feats,))
    # fx traces it in both modes, but the graphs differ: the submodule keeps its own forward.
    assert report.methods == {"": "runtime"}
    assert "differs between train and eval" in report.fallbacks[0][1]
    assert_equal(patched.train()(feats), expected_train)
    assert_equal(patched.eval()(feats), expected_eval)
    assert not torch.equal(expected_train["p3"], expected_eval["p3"])  # the branch matters, so the check can fail


def test_traced_graph_same_in_both_modes_stays_fx() -> None:
    from torchvision.ops import FeaturePyramidNetwork

    fpn = FeaturePyramidNetwork([4, 8], 8).train()
    patched, report = patch_fpn(fpn, SMALL_SRF)
    assert report.methods == {"": "fx"} and not report.fallbacks and patched.training


# ---------------------------------------------------------------------------------------------------------------
# A replaced site that is not an enlargement on another input runs the original call


def test_mobilenet_fpn_detector_runs_at_any_size_after_patching() -> None:
    model = detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        rpn_pre_nms_top_n_test=8,
        rpn_post_nms_top_n_test=8,
        box_detections_per_img=2,
    ).eval()
    sizes = ((64, 96), (333, 500), (810, 1190))
    with torch.no_grad():
        expected = [model([torch.rand(3, h, w, generator=torch.Generator().manual_seed(h))]) for h, w in sizes]
    # The FPN alone, patched on its default example (levels 16x24 and 8x12), has an enlarging site; inside the
    # detector its two stride-32 levels have the same size, which SRFUpsample refuses: the original call must run.
    fpn, report = patch_fpn(model.backbone.fpn, SMALL_SRF, strict=True)
    assert len(report.replaced) == 1
    model.backbone.fpn = fpn
    with torch.no_grad():
        for (h, w), e in zip(sizes, expected, strict=True):
            assert_equal(model([torch.rand(3, h, w, generator=torch.Generator().manual_seed(h))]), e)
    model.train()
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    losses = model([torch.rand(3, 70, 90)], targets)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("size", [(8, 12), (7, 9), (3, 4), (8, 6), (16, 6), (4, 24), (1, 1)])
def test_guard_runs_original_call_on_non_enlargements(size) -> None:
    class Neck(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)

    patched, report = patch_fpn(Neck(), SMALL_SRF, example_inputs=(torch.rand(2, 4, 4, 6), torch.rand(2, 4, 8, 12)))
    assert len(report.replaced) == 1
    # From 8x12: same size, shrinks (both sides, one side), one side enlarged and the other shrunk (16x6, 4x24), and
    # a 1x1 broadcast: F.interpolate with the original mode, exactly; the generator is never called.
    x = torch.rand(2, 4, 8, 12) if size != (1, 1) else torch.rand(2, 4, 1, 1)
    y = torch.rand(2, 4, *size) if size != (1, 1) else torch.rand(2, 4, 5, 7)
    expected = F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
    generator = patched.get_submodule(report.replaced[0].upsampler)
    calls = []
    handle = generator.register_forward_hook(lambda *args: calls.append(args))
    assert_equal(patched(x, y), expected)
    handle.remove()
    assert calls == []


# ---------------------------------------------------------------------------------------------------------------
# concrete_args and leaf modules


class FlagNeck(nn.Module):
    def forward(self, low: torch.Tensor, high: torch.Tensor, use_pool: bool = True) -> torch.Tensor:
        down = F.max_pool2d(low, 2) if use_pool else F.interpolate(low, size=high.shape[-2:])
        return low + F.interpolate(high + down, size=low.shape[-2:])


def test_concrete_args_passed_to_tracer() -> None:
    example = (torch.rand(2, 4, 8, 12), torch.rand(2, 4, 4, 6))
    _, report = patch_fpn(FlagNeck(), SMALL_SRF, example_inputs=example)
    assert [site.reason for site in report.skipped] == []
    # Fixed to False by the caller, the traced graph takes the other branch: a downsampling F.interpolate appears.
    neck = FlagNeck()
    patched, report = patch_fpn(neck, SMALL_SRF, example_inputs=example, concrete_args={"": {"use_pool": False}})
    assert [site.reason for site in report.skipped] == ["downsampling"] and len(report.replaced) == 1
    assert report.methods == {"": "fx"}  # the caller fixed use_pool, so its absence from the graph is intended


def test_concrete_args_bad_input() -> None:
    with pytest.raises(ValueError, match="concrete_args names submodules .* does not have: \\['nope'\\]"):
        patch_fpn(VarargsNeck(), example_inputs=varargs_inputs(), concrete_args={"nope": {}})
    with pytest.raises(TypeError, match="concrete_args must map submodule paths to dicts"):
        patch_fpn(VarargsNeck(), example_inputs=varargs_inputs(), concrete_args={"": 3})


def test_container_owner_that_cannot_be_routed_errors_clearly() -> None:
    class Interp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    class Bad(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # a container whose own code interpolates
            if x.sum() > -1e9:
                x = F.interpolate(x, scale_factor=2.0)
            return super().forward(x)

    with pytest.raises(ValueError, match="cannot patch submodule '<model>' \\(Bad\\).*exclude="):
        patch_fpn(Bad(Interp()), SMALL_SRF, example_inputs=torch.rand(2, 4, 5, 6))
