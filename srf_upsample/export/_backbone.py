"""Export of the backbone + FPN neck of a detector patched with ``patch_fpn``, each SRF generator as one pass."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_size_pair
from ..upsample import SRFUpsample
from ..upsamplers import upsampler_types
from ._onnx import DEFAULT_OPSET, check_opset, require_export_deps, torch_export

__all__ = ["export_backbone", "export_copy", "find_backbone"]

logger = logging.getLogger(__name__)


class _SinglePassUpsample(nn.Module):
    """Stands in for an SRFUpsample inside a patched neck during export: same call, one pass, no Python shape math.

    ``SRFUpsample.forward`` validates sizes and counts passes with Python comparisons, which pins every image size
    of an exported neck; FPN targets are at most twice the input, so one pass is what it computes anyway.
    """

    def __init__(self, module: SRFUpsample) -> None:
        super().__init__()
        self.module = module

    def forward(
        self,
        x: torch.Tensor,
        size: Any = None,
        scale_factor: float | Sequence[float] | None = None,
        guide: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if size is None:
            factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor or 2,) * 2
            if any(float(f) not in (1.0, 2.0) for f in factors):
                raise ValueError(
                    f"export supports scale_factor 2 (or size=) in patched necks, got scale_factor={scale_factor!r}."
                )
            # An integer product, not F.interpolate's floor(H * s): it stays symbolic for dynamic shapes.
            size = (x.shape[-2] * int(factors[0]), x.shape[-1] * int(factors[1]))
        elif isinstance(size, int):
            size = (size, size)
        # A guided generator gets the guide patch_fpn wired into the neck (the map the output is added to).
        return self.module.single_pass(x, size, guide=guide)


def find_backbone(model: nn.Module) -> nn.Module:
    """The part of a detector that exports: ``model.backbone`` (torchvision detectors) or the model itself."""
    return model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model


def export_copy(model: nn.Module, *, fuse: bool = False) -> nn.Module:
    """An eval-mode deep copy of ``find_backbone(model)``, its generators fused if ``fuse``; ``model`` is unchanged."""
    backbone = copy.deepcopy(find_backbone(model)).eval()
    if fuse:
        for module in backbone.modules():
            if isinstance(module, SRFUpsample):
                module.fuse()
    return backbone


def _swap_in_single_pass(backbone: nn.Module) -> None:
    """Replace every SRFUpsample submodule of ``backbone`` (a private copy) by its export stand-in, in place."""
    targets = [name for name, m in backbone.named_modules(remove_duplicate=False) if isinstance(m, SRFUpsample)]
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child_name, _SinglePassUpsample(getattr(parent, child_name)))


def export_backbone(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    image_size: tuple[int, int] = (64, 64),
    fuse: bool = False,
) -> Path:
    """Export the backbone + FPN neck of a detector patched with ``patch_fpn`` to ONNX; the model is not changed.

    The full torchvision detector (transform, RPN, ROI heads and their data-dependent post-processing) does not
    export with the dynamo exporter; the patched ``model.backbone`` (body + FPN, the part SRFUpsample changes) does.
    Its graph maps ``images`` ``(N, 3, H, W)`` to one output per FPN level, named after the level keys
    (``"0"``, ``"1"``, ..., ``"pool"``). Batch, height and width are dynamic (H, W >= 32). For export, each
    SRFUpsample of the copy is called as a single pass (``SRFUpsample.single_pass``) to the size the neck asks for
    (the same numbers as ``forward`` for FPN targets, which are at most twice the input), so no image size is baked
    into the graph; DySample and CARAFE (``patch_fpn(model, "dysample")`` ...) run their own ``forward``. A guided
    generator keeps the guide ``patch_fpn`` wired to it.

    Args:
        model: a torchvision detector (or a bare backbone module) patched with ``patch_fpn`` (any upsampler name).
        path: the ``.onnx`` file to write.
        opset: ONNX opset version, in ``SUPPORTED_OPSETS``.
        image_size: ``(H, W)`` of the example images traced; any size >= 32 works afterwards.
        fuse: fold BatchNorm of every SRFUpsample into its convolutions first.

    Returns:
        ``path`` as a Path.

    Shape:
        - images: :math:`(N, 3, H, W)`; outputs: one :math:`(N, C_{fpn}, H_l, W_l)` per pyramid level.

    Example:
        >>> model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)  # doctest: +SKIP
        >>> model, report = patch_fpn(model)  # doctest: +SKIP
        >>> export_backbone(model, "backbone.onnx")  # doctest: +SKIP
        PosixPath('backbone.onnx')
    """
    require_export_deps()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    opset = check_opset(opset)
    types = upsampler_types()
    if not any(isinstance(m, types) for m in find_backbone(model).modules()):
        names = ", ".join(t.__name__ for t in types)
        raise ValueError(
            f"model ({type(model).__name__}) has no learned upsampler ({names}) in its backbone: it is not patched. "
            "Call `model, report = srf_upsample.patch_fpn(model)` (or patch_fpn(model, 'carafe'), any name of "
            "srf_upsample.list_upsamplers()) first, or use export_generator for a bare upsampler."
        )
    check_size_pair("image_size", image_size, minimum=32)
    backbone = export_copy(model, fuse=fuse)
    _swap_in_single_pass(backbone)
    images = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        levels = list(backbone(images).keys())
        torch_export(
            backbone,
            (images,),
            Path(path),
            opset=opset,
            input_names=["images"],
            output_names=[str(level) for level in levels],
            dynamic_shapes=(
                {
                    0: torch.export.Dim("batch", min=1),
                    2: torch.export.Dim("height", min=32),
                    3: torch.export.Dim("width", min=32),
                },
            ),
        )
    logger.info("exported patched backbone of %s to %s at opset %d", type(model).__name__, path, opset)
    return Path(path)
