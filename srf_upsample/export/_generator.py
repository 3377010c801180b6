"""Export of one upsampler (an SRFUpsample generator, DySample or CARAFE) to ONNX, with dynamic input and output."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from torch import nn

from .._checks import check_size_pair
from ..upsample import SRFUpsample
from ..upsamplers import upsampler_types
from ._onnx import DEFAULT_OPSET, check_opset, require_export_deps, torch_export

__all__ = ["GeneratorExportWrapper", "check_exportable", "export_generator"]

logger = logging.getLogger(__name__)


def check_exportable(module: object) -> nn.Module:
    """Return ``module`` if it is an upsampler of the registry (SRFUpsample, DySample, CARAFE), else raise TypeError."""
    types = upsampler_types()
    if not isinstance(module, types):
        names = ", ".join(t.__name__ for t in types)
        raise TypeError(
            f"module must be an SRFUpsample or another upsampler of srf_upsample.list_upsamplers() ({names}), got "
            f"{type(module).__name__}; build one with srf_upsample.build_upsampler(name, channels), and for a "
            "detector patched with patch_fpn use export_backbone."
        )
    return module


def describe(module: nn.Module) -> str:
    """A short name for messages: the SRFUpsample variant (``"paper"``), else the class name (``"DySample"``)."""
    return module.variant if isinstance(module, SRFUpsample) else type(module).__name__


class GeneratorExportWrapper(nn.Module):
    """One upsampling call whose output size is read from a second tensor, the form that exports to ONNX.

    ``SRFUpsample.forward`` picks its number of passes with Python math on the shapes, which would freeze the
    exported graph to one input size. For an SRFUpsample this wrapper does exactly one pass (what an FPN asks: a
    target at most twice the input) by calling ``SRFUpsample.single_pass``, the method ``forward`` calls for each
    pass: the learned residual at ``(2H, 2W)`` resized bilinearly to the target, plus the input resized bilinearly
    to the target. Another upsampler (DySample, CARAFE) is called as ``module(x, size=like.shape[-2:])``, whose
    shape arithmetic stays symbolic. The target is the spatial shape of ``like`` (only its shape is read, so it may
    have 0 channels), as an FPN takes it from the lateral feature. For an upsampler that accepts a guide
    (``accepts_guide``, e.g. the ``"guided"`` variant), ``like`` is the guide itself: its contents are read too
    (``guide_channels`` channels at the output size, e.g. the FPN's lateral map).

    Args:
        module: the upsampler to wrap; it is used as is (not copied).

    Shape:
        - x: :math:`(N, C, H, W)`
        - like: :math:`(*, *, H_{out}, W_{out})` with ``H < H_out <= 2H`` or ``H_out == H``, the same for W, and
          the output larger than the input in at least one dimension.
        - Output: :math:`(N, C, H_{out}, W_{out})`

    Example:
        >>> up = SRFUpsample(8, hidden_channels=8, num_blocks=1).eval()
        >>> wrapper = GeneratorExportWrapper(up)
        >>> wrapper(torch.randn(2, 8, 17, 25), torch.empty(2, 0, 33, 49)).shape
        torch.Size([2, 8, 33, 49])
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = check_exportable(module)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` to the spatial size of ``like`` in one call (guided by ``like`` if it takes a guide)."""
        guide = like if getattr(self.module, "accepts_guide", False) else None
        if isinstance(self.module, SRFUpsample):
            return self.module.single_pass(x, like.shape[-2:], guide=guide)
        extra = {} if guide is None else {"guide": guide}
        return self.module(x, size=like.shape[-2:], **extra)


def export_generator(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    fuse: bool = False,
    example_size: tuple[int, int] = (17, 25),
) -> Path:
    """Export an upsampler to ONNX with dynamic batch, height and width; the module itself is not changed.

    Every upsampler of :func:`srf_upsample.list_upsamplers` exports: the SRFUpsample variants (shipped ones
    included), DySample and CARAFE (``srf_upsample.build_upsampler(name, channels)`` builds one).

    The graph has inputs ``x`` ``(N, C, H, W)`` and ``like`` (any tensor whose last two dimensions are the target
    size; its contents are never read, so ``np.empty((1, 0, H_out, W_out))`` does) and output ``y``
    ``(N, C, H_out, W_out)``. The graph of a ``"guided"`` generator (of any upsampler whose ``accepts_guide`` is
    true) has inputs ``x`` and ``guide`` ``(N, C_g, H_out, W_out)`` instead (the guide's shape is the target size,
    its contents are read) and output ``y`` ``(N, C, H_out, W_out)``. A generator runs one pass (see
    :class:`GeneratorExportWrapper`), so targets must satisfy ``H <= H_out <= 2H`` and ``W <= W_out <= 2W`` (what
    FPN asks); for ``scale_factor=2`` pass a ``like`` of size ``(2H, 2W)``. Larger targets give a resized single
    pass, not the chained passes of ``forward``. DySample and CARAFE run their own ``forward``.

    Args:
        module: the upsampler, in any mode; a deep copy is put in eval mode (and fused if ``fuse``) for export.
        path: the ``.onnx`` file to write; parent folders are created.
        opset: ONNX opset version, in ``SUPPORTED_OPSETS`` (18 to 23).
        fuse: fold BatchNorm into the convolutions first (``SRFUpsample.fuse``; SRFUpsample only).
        example_size: ``(H, W)`` of the example input traced; any size works afterwards.

    Returns:
        ``path`` as a Path.

    Shape:
        - x: :math:`(N, C, H, W)`; like: :math:`(*, *, H_{out}, W_{out})`; y: :math:`(N, C, H_{out}, W_{out})`

    Example:
        >>> up = SRFUpsample(8, hidden_channels=8, num_blocks=1)
        >>> export_generator(up, "srf.onnx", fuse=True)  # doctest: +SKIP
        PosixPath('srf.onnx')
    """
    require_export_deps()
    check_exportable(module)
    if fuse and not isinstance(module, SRFUpsample):
        raise ValueError(
            f"fuse=True folds SRFUpsample's BatchNorm, but module is a {type(module).__name__}; leave fuse=False."
        )
    opset = check_opset(opset)
    height, width = check_size_pair("example_size", example_size, minimum=2)
    generator = copy.deepcopy(module).eval()
    if fuse:
        generator.fuse()
    # Batch 2 and a 2-channel ``like``: torch.export specialises dimensions of size 0 and 1 to constants.
    x = torch.randn(2, module.in_channels, height, width)
    batch = torch.export.Dim("batch", min=1)
    out_size = {2: torch.export.Dim("out_height", min=2), 3: torch.export.Dim("out_width", min=2)}
    accepts_guide = getattr(module, "accepts_guide", False)
    if accepts_guide:
        # The guide is read: same batch as x, the generator's guide_channels.
        like = torch.randn(2, module.guide_channels, 2 * height - 1, 2 * width - 1)
        like_shape = {0: torch.export.Dim.DYNAMIC, **out_size}
    else:
        like = torch.empty(2, 2, 2 * height - 1, 2 * width - 1)
        like_shape = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC, **out_size}
    dynamic_shapes = {
        "x": {0: batch, 2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)},
        "like": like_shape,
    }
    path = Path(path)
    with torch.no_grad():
        torch_export(
            GeneratorExportWrapper(generator).eval(),
            (x, like),
            path,
            opset=opset,
            input_names=["x", "guide" if accepts_guide else "like"],
            output_names=["y"],
            dynamic_shapes=dynamic_shapes,
        )
    logger.info("exported %s upsampler (fused=%s) to %s at opset %d", describe(module), fuse, path, opset)
    return path
