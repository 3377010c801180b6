"""onnxruntime vs. PyTorch on the same random inputs: the parity check behind every export."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import check_int, check_size_pair
from ._backbone import export_copy
from ._generator import check_exportable
from ._onnx import inference_session

__all__ = [
    "DEFAULT_PARITY_SIZES",
    "PARITY_TOLERANCE",
    "ParityResult",
    "check_backbone_parity",
    "check_generator_parity",
    "check_single_pass_sizes",
]

# (input H, W) -> (output H, W) pairs checked by default: odd, non-square, exact 2x and "2x minus one" (FPN's odd
# lateral sizes), all single-pass targets.
DEFAULT_PARITY_SIZES: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((17, 25), (33, 49)),
    ((16, 16), (32, 32)),
    ((5, 7), (9, 13)),
    ((32, 48), (64, 96)),
)

# Relative error = max |onnxruntime - PyTorch| / max |PyTorch|. Both run float32; they differ only in summation order
# (MLAS vs. PyTorch's conv kernels) and in how Resize computes its source coordinates. Each rounding step costs about
# eps = 1.2e-7 relative, a conv sums C*k*k products (error growth ~ sqrt of that) and errors compound over the ~10
# layers of the paper generator, which puts the expected error at 1e-6 .. 1e-5 of the output scale (measured: up to
# ~6e-6, see docs/export.md). 1e-4 leaves >10x headroom yet still catches any real mismatch (a wrong resize mode,
# off-by-one size or lost layer is an O(1e-2 .. 1) error).
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityResult:
    """onnxruntime vs. PyTorch on one input: ``max_abs_diff`` and ``rel_error = max_abs_diff / max |PyTorch|``."""

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float
    rel_error: float

    def __str__(self) -> str:
        size_in = "x".join(map(str, self.input_shape[-2:]))
        size_out = "x".join(map(str, self.output_shape[-2:]))
        return (
            f"{self.name:<8} {size_in:>7} -> {size_out:<7} max_abs_diff={self.max_abs_diff:.3e} "
            f"rel_error={self.rel_error:.3e}"
        )


def _compare(name: str, input_shape: tuple[int, ...], reference: torch.Tensor, result: Any) -> ParityResult:
    result = torch.as_tensor(result)
    if tuple(result.shape) != tuple(reference.shape):
        raise ValueError(
            f"onnxruntime output {name!r} has shape {tuple(result.shape)} but PyTorch gives {tuple(reference.shape)}; "
            "the exported graph does not match the module."
        )
    max_abs_diff = (result.double() - reference.double()).abs().max().item()
    scale = reference.double().abs().max().item()
    return ParityResult(
        name=name,
        input_shape=input_shape,
        output_shape=tuple(reference.shape),
        max_abs_diff=max_abs_diff,
        rel_error=max_abs_diff / max(scale, 1e-12),
    )


def check_single_pass_sizes(sizes: Sequence[tuple[tuple[int, int], tuple[int, int]]]) -> None:
    """Raise unless every ``((H, W), (H_out, W_out))`` entry of ``sizes`` is a single-pass target."""
    for pair in sizes:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"sizes entry {pair!r} must be a pair ((H, W), (H_out, W_out)), e.g. ((17, 25), (33, 49)).")
        height, width = check_size_pair("sizes entry input size", pair[0])
        out_height, out_width = check_size_pair("sizes entry output size", pair[1])
        if not (height <= out_height <= 2 * height and width <= out_width <= 2 * width) or (
            (out_height, out_width) == (height, width)
        ):
            raise ValueError(
                f"sizes entry {pair!r} is not a single-pass target: the exported generator needs "
                "H <= H_out <= 2H and W <= W_out <= 2W with a larger output; pick such a pair."
            )


def check_generator_parity(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    sizes: Sequence[tuple[tuple[int, int], tuple[int, int]]] = DEFAULT_PARITY_SIZES,
    batch_size: int = 2,
    fuse: bool = False,
    num_threads: int | None = None,
    seed: int = 0,
) -> list[ParityResult]:
    """Run an exported upsampler in onnxruntime (CPU) and compare it with ``module(x, size=...)`` in PyTorch.

    Args:
        module: the PyTorch upsampler (a deep copy is evaluated in eval mode, fused if ``fuse``).
        path: the ``.onnx`` file written by :func:`export_generator`.
        sizes: ``((H, W), (H_out, W_out))`` pairs; each must be a single-pass target.
        batch_size: N of the random inputs.
        fuse: compare against the fused module (fused and unfused PyTorch differ by float rounding only).
        num_threads: onnxruntime intra-op threads (``None``: its default).
        seed: seed of the random inputs.

    Returns:
        One :class:`ParityResult` per size pair.

    Example:
        >>> [str(r) for r in check_generator_parity(up, "srf.onnx")]  # doctest: +SKIP
        ['srf        17x25 -> 33x49   max_abs_diff=2.1e-05 rel_error=3.9e-06', ...]
    """
    check_single_pass_sizes(sizes)
    check_int("batch_size", batch_size)
    session = inference_session(path, num_threads)
    check_exportable(module)
    if fuse and not callable(getattr(module, "fuse", None)):
        raise ValueError(f"fuse=True folds SRFUpsample's BatchNorm, but module is a {type(module).__name__}.")
    generator = copy.deepcopy(module).eval()
    if fuse:
        generator.fuse()
    generator_cpu = generator.cpu()
    accepts_guide = getattr(module, "accepts_guide", False)
    rng = torch.Generator().manual_seed(seed)
    results = []
    for (height, width), (out_height, out_width) in sizes:
        x = torch.randn(batch_size, module.in_channels, height, width, generator=rng)
        if accepts_guide:
            guide = torch.randn(batch_size, module.guide_channels, out_height, out_width, generator=rng)
            with torch.no_grad():
                reference = generator_cpu(x, size=(out_height, out_width), guide=guide)
            (output,) = session.run(["y"], {"x": x.numpy(), "guide": guide.numpy()})
        else:
            like = torch.empty(batch_size, 0, out_height, out_width)
            with torch.no_grad():
                reference = generator_cpu(x, size=(out_height, out_width))
            (output,) = session.run(["y"], {"x": x.numpy(), "like": like.numpy()})
        results.append(_compare("y", tuple(x.shape), reference, output))
    return results


def check_backbone_parity(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    image_size: tuple[int, int] = (64, 64),
    batch_size: int = 1,
    fuse: bool = False,
    num_threads: int | None = None,
    seed: int = 0,
) -> list[ParityResult]:
    """Compare an exported backbone (:func:`export_backbone`) with ``model.backbone`` in PyTorch, per FPN level.

    Args:
        model: the patched detector (or backbone) that was exported.
        path: the ``.onnx`` file.
        image_size: ``(H, W)`` of the random images (any size >= 32).
        batch_size: N of the random images.
        fuse: compare against a copy whose SRFUpsample modules are fused.
        num_threads: onnxruntime intra-op threads (``None``: its default).
        seed: seed of the random images.

    Returns:
        One :class:`ParityResult` per pyramid level.

    Example:
        >>> [r.name for r in check_backbone_parity(model, "backbone.onnx")]  # doctest: +SKIP
        ['0', '1', '2', 'pool']
    """
    check_size_pair("image_size", image_size, minimum=32)
    check_int("batch_size", batch_size)
    session = inference_session(path, num_threads)
    backbone = export_copy(model, fuse=fuse)
    images = torch.randn(batch_size, 3, *image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = backbone(images)
    names = [str(key) for key in reference]
    outputs = session.run(names, {session.get_inputs()[0].name: images.numpy()})
    return [
        _compare(name, tuple(images.shape), value, output)
        for name, value, output in zip(names, reference.values(), outputs, strict=True)
    ]
