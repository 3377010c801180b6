"""patch_fpn with default arguments on third-party necks; each test skips cleanly when its library is absent."""

from __future__ import annotations

import pytest
import torch
from _helpers import SMALL_SRF

from srf_upsample import SRFUpsample, patch_fpn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# architecture: (methods expected per patched submodule, number of sites replaced)
SMP = {
    "FPN": ({"fx"}, 9),
    # The last decoder block is called with skip_connection=None by keyword; fx would drop that argument.
    "Unet": ({"fx", "runtime"}, 5),
    "DeepLabV3Plus": ({"fx"}, 1),
}


@pytest.mark.parametrize("architecture", list(SMP))
def test_segmentation_models_pytorch(architecture) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    methods, num_replaced = SMP[architecture]
    model = getattr(smp, architecture)(encoder_name="resnet18", encoder_weights=None, classes=2)
    patched, report = patch_fpn(model, SMALL_SRF)
    assert len(report.replaced) == num_replaced and set(report.methods.values()) == methods
    patched.train()
    patched(torch.rand(2, 3, 64, 96)).square().mean().backward()
    grads = [p.grad is not None for m in patched.modules() if isinstance(m, SRFUpsample) for p in m.parameters()]
    assert grads and all(grads)
    patched.eval()
    with torch.no_grad():
        assert patched(torch.rand(1, 3, 96, 160)).shape == (1, 2, 96, 160)


def _transformers_models():
    transformers = pytest.importorskip("transformers")
    backbone = transformers.ConvNextConfig(
        hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    return {
        "UperNet": transformers.UperNetForSemanticSegmentation(
            transformers.UperNetConfig(backbone_config=backbone, hidden_size=64, use_auxiliary_head=False)
        ),
        "Segformer": transformers.SegformerForSemanticSegmentation(
            transformers.SegformerConfig(decoder_hidden_size=64)
        ),
    }


# The decode heads hold these necks, so the default exclude ("*head*") must be narrowed; fx cannot trace them
# (a loop over a proxied tuple, a module called by name), so every site is routed at run time.
TRANSFORMERS_EXCLUDE = ("transform", "transform.*", "*auxiliary*")
# architecture: the (input -> output) sizes G is called with on a 160x224 image
TRANSFORMERS_CALLS = {
    "UperNet": [(2, 2, 5, 7), (3, 3, 5, 7), (5, 7, 10, 14), (10, 14, 20, 28), (20, 28, 40, 56), (5, 7, 40, 56),
                (10, 14, 40, 56), (20, 28, 40, 56)],
    "Segformer": [(20, 28, 40, 56), (10, 14, 40, 56), (5, 7, 40, 56)],
}  # fmt: skip


@pytest.mark.parametrize("architecture", list(TRANSFORMERS_CALLS))
def test_hugging_face_transformers_decode_heads(architecture) -> None:
    model = _transformers_models()[architecture].eval()
    image = torch.rand(1, 3, 160, 224)
    patched, report = patch_fpn(model, SMALL_SRF, example_inputs=(image,), exclude=TRANSFORMERS_EXCLUDE)
    assert set(report.methods.values()) == {"runtime"}
    calls = []
    for module in patched.modules():
        if isinstance(module, SRFUpsample):
            module.register_forward_hook(lambda m, args, out: calls.append((*args[0].shape[-2:], *out.shape[-2:])))
    with torch.no_grad():
        patched(pixel_values=image)
        patched(pixel_values=torch.rand(1, 3, 131, 197))  # odd sizes run too
    assert calls[: len(TRANSFORMERS_CALLS[architecture])] == TRANSFORMERS_CALLS[architecture]
    patched.train()
    patched(pixel_values=torch.rand(2, 3, 96, 128)).logits.square().mean().backward()
    grads = [p.grad for m in patched.modules() if isinstance(m, SRFUpsample) for p in m.parameters()]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
