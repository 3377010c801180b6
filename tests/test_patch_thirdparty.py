"""patch_fpn with default arguments on third-party necks; each test skips cleanly when its library is absent."""

from __future__ import annotations

import functools

import pytest
import torch

from srf_upsample import SRFUpsample, patch_fpn

SMALL_SRF = functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1)


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
