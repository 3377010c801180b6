"""The ONNX side of export: the optional dependencies, the opset, ``torch.onnx.export`` and onnxruntime sessions.

The optional ``[export]`` extra (``onnx``, ``onnxscript``, ``onnxruntime``) is imported here only, inside functions, so
``import srf_upsample`` never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_int

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "check_opset",
    "inference_session",
    "onnx_operators",
    "require_export_deps",
    "torch_export",
]

# 18 is the lowest opset the dynamo exporter implements natively (below it, it converts versions after the fact and
# may fail); 23 is the highest that onnxruntime 1.18+ ... 1.32 runs for every operator we emit.
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(18, 24)

_INSTALL_HINT = 'pip install "srf_upsample[export]"'


def require_export_deps() -> tuple[Any, Any]:
    """Import and return ``(onnx, onnxruntime)``; raise an ImportError naming the pip command if one is missing."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs the optional packages onnx, onnxscript and onnxruntime ({error}). "
            f"Install them with: {_INSTALL_HINT}"
        ) from None
    return onnx, onnxruntime


def check_opset(opset: object) -> int:
    """Return ``opset`` if it is an int in ``SUPPORTED_OPSETS``, else raise."""
    return check_int(
        "opset",
        opset,
        minimum=SUPPORTED_OPSETS.start,
        maximum=SUPPORTED_OPSETS.stop - 1,
        hint=f"the dynamo exporter of torch {torch.__version__.split('+')[0]} implements opset 18 and newer, and "
        f"onnxruntime runs up to {SUPPORTED_OPSETS.stop - 1}: pass --opset {DEFAULT_OPSET} (the default)",
    )


def inference_session(path: str | os.PathLike, num_threads: int | None = None) -> Any:
    """An onnxruntime CPU session for an exported file, with ``num_threads`` intra-op threads (``None``: its default).

    Args:
        path: an ``.onnx`` file.
        num_threads: onnxruntime intra-op threads; inter-op parallelism is then switched off.

    Returns:
        An ``onnxruntime.InferenceSession`` on ``CPUExecutionProvider``.
    """
    _, onnxruntime = require_export_deps()
    options = onnxruntime.SessionOptions()
    if num_threads is not None:
        check_int("num_threads", num_threads)
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
    onnx, _ = require_export_deps()
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


def torch_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    opset: int,
    input_names: list[str],
    output_names: list[str] | None,
    dynamic_shapes: Any,
) -> None:
    """Write ``module(*args)`` to ``path`` with ``torch.onnx.export(..., dynamo=True)``; parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _caller_process_state_kept():
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


@contextlib.contextmanager
def _caller_process_state_kept() -> Iterator[None]:
    """Undo what the dynamo exporter changes in the process: environment variables and torch's trace-log handlers.

    Its first use sets ``TORCHINDUCTOR_CACHE_DIR`` and takes the handler off torch's ``torch.__trace`` logger; an
    export call should leave the caller's process as it found it.
    """
    environ = dict(os.environ)
    trace_logger = logging.getLogger("torch.__trace")
    handlers = list(trace_logger.handlers)
    try:
        yield
    finally:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
        trace_logger.handlers[:] = handlers
