"""ONNX export of SRFUpsample generators and of patched detector backbones, with an onnxruntime parity check.

The optional ``[export]`` extra (``onnx``, ``onnxscript``, ``onnxruntime``) is imported here only, inside functions, so
``import srf_upsample`` never needs it. Graphs are written by ``torch.onnx.export(..., dynamo=True)`` and hold only
standard operators of the default ONNX domain (see ``docs/export.md``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .upsample import SRFUpsample

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_PARITY_SIZES",
    "PARITY_TOLERANCE",
    "SUPPORTED_OPSETS",
    "GeneratorExportWrapper",
    "ParityResult",
    "check_backbone_parity",
    "check_generator_parity",
    "export_backbone",
    "export_generator",
    "main",
    "onnx_operators",
]

logger = logging.getLogger(__name__)

# 18 is the lowest opset the dynamo exporter implements natively (below it, it converts versions after the fact and
# may fail); 23 is the highest that onnxruntime 1.18+ ... 1.32 runs for every operator we emit.
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(18, 24)

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

_INSTALL_HINT = 'pip install "srf_upsample[export]"'


def _check_size_pair(name: str, value: object, *, minimum: int) -> None:
    """Raise a ValueError unless ``value`` is a pair (H, W) of ints >= ``minimum``."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < minimum for s in value)
    ):
        raise ValueError(f"{name} must be a pair (H, W) of ints >= {minimum}, got {value!r}.")


def _require_export_deps() -> tuple[Any, Any]:
    """Import and return ``(onnx, onnxruntime)``; raise an ImportError naming the pip command if one is missing."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs the optional packages onnx, onnxscript and onnxruntime ({error}). "
            f"Install them with: {_INSTALL_HINT}"
        ) from error
    return onnx, onnxruntime


def _check_opset(opset: object) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {opset!r} of type {type(opset).__name__}.")
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(
            f"opset must be between {SUPPORTED_OPSETS.start} and {SUPPORTED_OPSETS.stop - 1}, got {opset}. "
            f"The dynamo exporter of torch {torch.__version__.split('+')[0]} implements opset 18 and newer, and "
            f"onnxruntime runs up to {SUPPORTED_OPSETS.stop - 1}; pass --opset {DEFAULT_OPSET} (the default)."
        )
    return opset


class GeneratorExportWrapper(nn.Module):
    """One SRFUpsample pass whose output size is read from a second tensor, the form that exports to ONNX.

    ``SRFUpsample.forward`` picks its number of passes with Python math on the shapes, which would freeze the
    exported graph to one input size. This wrapper does exactly one pass (what an FPN asks: a target at most twice
    the input) by calling ``SRFUpsample._one_pass``, the method ``forward`` calls for each pass: the learned residual
    at ``(2H, 2W)`` resized bilinearly to the target, plus the input resized bilinearly to the target. The target is
    the spatial shape of ``like`` (only its shape is read, so it may have 0 channels), as an FPN takes it from the
    lateral feature.

    Args:
        module: the generator to wrap; it is used as is (not copied).

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

    def __init__(self, module: SRFUpsample) -> None:
        super().__init__()
        if not isinstance(module, SRFUpsample):
            raise TypeError(f"module must be an SRFUpsample, got {type(module).__name__}.")
        self.module = module

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` to the spatial size of ``like`` in one generator pass."""
        return self.module._one_pass(x, like.shape[-2:])


class _SinglePassUpsample(nn.Module):
    """Stands in for an SRFUpsample inside a patched neck during export: same call, one pass, no Python shape math.

    ``SRFUpsample.forward`` validates sizes and counts passes with Python comparisons, which pins every image size
    of an exported neck; FPN targets are at most twice the input, so one pass is what it computes anyway.
    """

    def __init__(self, module: SRFUpsample) -> None:
        super().__init__()
        self.module = module

    def forward(
        self, x: torch.Tensor, size: Any = None, scale_factor: float | Sequence[float] | None = None
    ) -> torch.Tensor:
        if size is None:
            factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor or 2,) * 2
            if any(float(f) not in (1.0, 2.0) for f in factors):
                raise ValueError(
                    f"export supports scale_factor 2 (or size=) in patched necks, got scale_factor={scale_factor!r}."
                )
            size = (x.shape[-2] * int(factors[0]), x.shape[-1] * int(factors[1]))
        elif isinstance(size, int):
            size = (size, size)
        return self.module._one_pass(x, size)


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


def _inference_session(path: str | os.PathLike, num_threads: int | None) -> Any:
    _, onnxruntime = _require_export_deps()
    options = onnxruntime.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_operators(path: str | os.PathLike) -> list[str]:
    """Return the sorted operator types of an ONNX file; raise if one is outside the default ONNX domain.

    Nodes of the main graph, of nested graphs (If/Loop bodies) and of local functions are all listed, so a custom
    or ``com.microsoft`` operator cannot hide in a subgraph.

    Args:
        path: an ``.onnx`` file.

    Returns:
        The distinct ``op_type`` values, sorted, e.g. ``['Add', 'Concat', 'Conv', ...]``.

    Example:
        >>> onnx_operators("srf.onnx")  # doctest: +SKIP
        ['Add', 'Concat', 'Conv', 'ConvTranspose', 'LeakyRelu', 'Resize', 'Shape']
    """
    onnx, _ = _require_export_deps()
    model = onnx.load(str(path))
    local_functions = {(function.domain, function.name) for function in model.functions}
    found: set[str] = set()
    nonstandard: set[str] = set()

    def visit(nodes: Any) -> None:
        for node in nodes:
            if node.domain in ("", "ai.onnx"):
                found.add(node.op_type)
            elif (node.domain, node.op_type) not in local_functions:
                nonstandard.add(f"{node.domain}::{node.op_type}")
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g.node)
                for graph in attribute.graphs:
                    visit(graph.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
    if nonstandard:
        raise ValueError(
            f"{str(path)!r} uses operators outside the default ONNX domain: {sorted(nonstandard)}; "
            "only standard operators are supported by this package's export."
        )
    return sorted(found)


def _torch_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    opset: int,
    input_names: list[str],
    output_names: list[str] | None,
    dynamic_shapes: Any,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        opset_version=opset,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )
    program.save(str(path))


def export_generator(
    module: SRFUpsample,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    fuse: bool = False,
    example_size: tuple[int, int] = (17, 25),
) -> Path:
    """Export a generator to ONNX with dynamic batch, height and width; the module itself is not changed.

    The graph has inputs ``x`` ``(N, C, H, W)`` and ``like`` (any tensor whose last two dimensions are the target
    size; its contents are never read, so ``np.empty((1, 0, H_out, W_out))`` does) and output ``y``
    ``(N, C, H_out, W_out)``. It runs one generator pass (see :class:`GeneratorExportWrapper`), so targets must
    satisfy ``H <= H_out <= 2H`` and ``W <= W_out <= 2W`` (what FPN asks); for ``scale_factor=2`` pass a ``like`` of
    size ``(2H, 2W)``. Larger targets give a resized single pass, not the chained passes of ``forward``.

    Args:
        module: the generator, in any mode; a deep copy is put in eval mode (and fused if ``fuse``) for export.
        path: the ``.onnx`` file to write; parent folders are created.
        opset: ONNX opset version, in ``SUPPORTED_OPSETS`` (18 to 23).
        fuse: fold BatchNorm into the convolutions first (``SRFUpsample.fuse``).
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
    _require_export_deps()
    if not isinstance(module, SRFUpsample):
        raise TypeError(
            f"module must be an SRFUpsample, got {type(module).__name__}; "
            "for a detector patched with patch_fpn use export_backbone."
        )
    opset = _check_opset(opset)
    _check_size_pair("example_size", example_size, minimum=2)
    generator = copy.deepcopy(module).eval()
    if fuse:
        generator.fuse()
    height, width = example_size
    # Batch 2 and a 2-channel ``like``: torch.export specialises dimensions of size 0 and 1 to constants.
    x = torch.randn(2, module.in_channels, height, width)
    like = torch.empty(2, 2, 2 * height - 1, 2 * width - 1)
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = {
        "x": {0: batch, 2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)},
        "like": {
            0: torch.export.Dim.DYNAMIC,
            1: torch.export.Dim.DYNAMIC,
            2: torch.export.Dim("out_height", min=2),
            3: torch.export.Dim("out_width", min=2),
        },
    }
    path = Path(path)
    with torch.no_grad():
        _torch_export(
            GeneratorExportWrapper(generator).eval(),
            (x, like),
            path,
            opset=opset,
            input_names=["x", "like"],
            output_names=["y"],
            dynamic_shapes=dynamic_shapes,
        )
    logger.info("exported %s generator (fused=%s) to %s at opset %d", module.variant, fuse, path, opset)
    return path


def _check_sizes(sizes: Sequence[tuple[tuple[int, int], tuple[int, int]]]) -> None:
    for pair in sizes:
        (height, width), (out_height, out_width) = pair
        if not (height <= out_height <= 2 * height and width <= out_width <= 2 * width) or (
            (out_height, out_width) == (height, width)
        ):
            raise ValueError(
                f"sizes entry {pair!r} is not a single-pass target: the exported generator needs "
                "H <= H_out <= 2H and W <= W_out <= 2W with a larger output; pick such a pair."
            )


def check_generator_parity(
    module: SRFUpsample,
    path: str | os.PathLike,
    *,
    sizes: Sequence[tuple[tuple[int, int], tuple[int, int]]] = DEFAULT_PARITY_SIZES,
    batch_size: int = 2,
    fuse: bool = False,
    num_threads: int | None = None,
    seed: int = 0,
) -> list[ParityResult]:
    """Run an exported generator in onnxruntime (CPU) and compare it with ``module(x, size=...)`` in PyTorch.

    Args:
        module: the PyTorch generator (a deep copy is evaluated in eval mode, fused if ``fuse``).
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
    _check_sizes(sizes)
    session = _inference_session(path, num_threads)
    generator = copy.deepcopy(module).eval()
    if fuse:
        generator.fuse()
    generator_cpu = generator.cpu()
    rng = torch.Generator().manual_seed(seed)
    results = []
    for (height, width), (out_height, out_width) in sizes:
        x = torch.randn(batch_size, module.in_channels, height, width, generator=rng)
        like = torch.empty(batch_size, 0, out_height, out_width)
        with torch.no_grad():
            reference = generator_cpu(x, size=(out_height, out_width))
        (output,) = session.run(["y"], {"x": x.numpy(), "like": like.numpy()})
        results.append(_compare("y", tuple(x.shape), reference, output))
    return results


def _swap_in_single_pass(backbone: nn.Module) -> None:
    """Replace every SRFUpsample submodule of ``backbone`` (a private copy) by its export stand-in, in place."""
    targets = [name for name, m in backbone.named_modules(remove_duplicate=False) if isinstance(m, SRFUpsample)]
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child_name, _SinglePassUpsample(getattr(parent, child_name)))


def _find_backbone(model: nn.Module) -> nn.Module:
    """The part of a detector that exports: ``model.backbone`` (torchvision detectors) or the model itself."""
    return model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model


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
    SRFUpsample of the copy is called as a single pass to the size the neck asks for (the same numbers as
    ``forward`` for FPN targets, which are at most twice the input), so no image size is baked into the graph.

    Args:
        model: a torchvision detector (or a bare backbone module) patched with ``patch_fpn``.
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
    _require_export_deps()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    opset = _check_opset(opset)
    backbone = _find_backbone(model)
    if not any(isinstance(m, SRFUpsample) for m in backbone.modules()):
        raise ValueError(
            f"model ({type(model).__name__}) has no SRFUpsample in its backbone: it is not patched. "
            "Call `model, report = srf_upsample.patch_fpn(model)` first, or use export_generator for a bare "
            "SRFUpsample."
        )
    _check_size_pair("image_size", image_size, minimum=32)
    backbone = copy.deepcopy(backbone).eval()
    if fuse:
        for m in backbone.modules():
            if isinstance(m, SRFUpsample):
                m.fuse()
    _swap_in_single_pass(backbone)
    images = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        levels = list(backbone(images).keys())
        _torch_export(
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
    session = _inference_session(path, num_threads)
    backbone = copy.deepcopy(_find_backbone(model)).eval()
    if fuse:
        for m in backbone.modules():
            if isinstance(m, SRFUpsample):
                m.fuse()
    images = torch.randn(batch_size, 3, *image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = backbone(images)
    names = [str(key) for key in reference]
    outputs = session.run(names, {session.get_inputs()[0].name: images.numpy()})
    return [
        _compare(name, tuple(images.shape), value, output)
        for name, value, output in zip(names, reference.values(), outputs, strict=True)
    ]


def _parse_size_pair(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        source, target = text.split(":")
        height, width = (int(v) for v in source.lower().split("x"))
        out_height, out_width = (int(v) for v in target.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected HxW:HOUTxWOUT such as 17x25:33x49, got {text!r}") from error
    return (height, width), (out_height, out_width)


def main(argv: list[str] | None = None) -> int:
    """Run ``srf-upsample export <name-or-dir> out.onnx [--fuse] [--opset N]``; returns the exit code.

    Loads the generator with ``SRFUpsample.from_pretrained``, exports it, prints the operators of the graph and the
    onnxruntime vs. PyTorch parity on several input sizes, and fails (exit code 1) above ``PARITY_TOLERANCE``.
    """
    parser = argparse.ArgumentParser(
        prog="srf-upsample export",
        description="Export an SRFUpsample generator to ONNX and check it in onnxruntime (CPU).",
    )
    parser.add_argument("name_or_dir", help="a shipped name, a folder written by save_pretrained, or a Hub repo id")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions before export")
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset ({SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}, default {DEFAULT_OPSET})",
    )
    parser.add_argument("--revision", default=None, help="Hub revision (for repo ids)")
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_parse_size_pair,
        default=list(DEFAULT_PARITY_SIZES),
        metavar="HxW:HOUTxWOUT",
        help="parity-check sizes (default: 17x25:33x49 16x16:32x32 5x7:9x13 32x48:64x96)",
    )
    args = parser.parse_args(argv)
    try:
        _require_export_deps()
        _check_opset(args.opset)
        _check_sizes(args.sizes)
        module = SRFUpsample.from_pretrained(args.name_or_dir, revision=args.revision)
        path = export_generator(module, args.output, opset=args.opset, fuse=args.fuse)
        operators = onnx_operators(path)
        results = check_generator_parity(module, path, sizes=args.sizes, fuse=args.fuse)
    except (ImportError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"srf-upsample export: error: {error}", file=sys.stderr)
        return 2
    print(
        f"exported {args.name_or_dir!r} ({module.variant}, in_channels={module.in_channels}, fused={args.fuse}) "
        f"to {path} (opset {args.opset}, torch {torch.__version__})"
    )
    print(f"operators ({len(operators)}, all in the default ONNX domain): {', '.join(operators)}")
    print(f"parity, onnxruntime CPU vs PyTorch eager, float32 (tolerance: rel_error <= {PARITY_TOLERANCE:g}):")
    for result in results:
        print(f"  {result}")
    worst = max(result.rel_error for result in results)
    if worst > PARITY_TOLERANCE:
        print(f"FAILED: rel_error {worst:.3e} exceeds {PARITY_TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0
