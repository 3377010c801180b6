"""fx rewriting of one traced submodule: find its upsampling nodes and route the enlarging ones to upsamplers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils import _pytree as pytree

from ._guides import guide_for, precedes
from ._report import ALREADY_PATCHED, FX, REPLACED, SKIPPED, PatchSite, plain_value
from ._tracing import restore_defaults
from ._upsamplers import PARAMETER_REASON, UpsamplerProvider, direction, enlarge_or_interpolate, is_upsampler

__all__ = ["find_upsample_nodes", "replace_upsample_node", "rewrite_owner"]

# Functions that upsample; the tracer keeps F.upsample* calls as their own nodes (see _tracing).
_FUNCTION_KINDS: dict[Callable[..., Any], str] = {
    F.interpolate: "F.interpolate",
    F.upsample: "F.upsample",
    F.upsample_nearest: "F.upsample_nearest",
    F.upsample_bilinear: "F.upsample_bilinear",
}
_DEFAULT_MODES = {"F.upsample_nearest": "nearest", "F.upsample_bilinear": "bilinear"}


def _upsample_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    return module if isinstance(module, nn.Upsample) or is_upsampler(module) else None


def find_upsample_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """Return the nodes of ``gm`` that upsample: F.interpolate / F.upsample* calls, nn.Upsample and SRFUpsample calls.

    Only reads the graph. Nodes inside a loop of the original code are separate nodes (fx unrolls loops).

    Args:
        gm: a traced module.

    Returns:
        The matching nodes, in graph order.

    Example:
        >>> import torch.nn.functional as F
        >>> from torch import fx, nn
        >>> class TopDown(nn.Module):
        ...     def forward(self, coarse, fine):
        ...         return fine + F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")
        >>> gm = fx.symbolic_trace(TopDown())
        >>> [node.name for node in find_upsample_nodes(gm)]
        ['interpolate']
    """
    return [
        node
        for node in gm.graph.nodes
        if (node.op == "call_function" and (node.target in _FUNCTION_KINDS or node.target is enlarge_or_interpolate))
        or _upsample_module(gm, node) is not None
    ]


def replace_upsample_node(
    gm: fx.GraphModule,
    node: fx.Node,
    name: str,
    module: nn.Module | None = None,
    guide: fx.Node | None = None,
    consumer: fx.Node | None = None,
) -> fx.Node:
    """Replace one upsampling node by a call of submodule ``name`` with the node's input and ``size``/``scale_factor``.

    ``size`` computed from run-time shapes stays a graph value, so the rewritten module works at any input size. The
    new node calls :func:`enlarge_or_interpolate` with the upsampler (a ``get_attr`` of ``name``), not the upsampler
    itself: on an input where the call is not an enlargement (two levels that round to the same size) it runs the
    original interpolation with the original ``mode`` and ``align_corners``. Call ``gm.graph.lint()`` and
    ``gm.recompile()`` after the last replacement.

    Args:
        gm: the traced module to rewrite in place.
        node: a node returned by :func:`find_upsample_nodes`.
        name: attribute name of the upsampler in ``gm``.
        module: the upsampler; registered under ``name`` unless ``gm`` already has it.
        guide: a node (from ``_guides.find_guide``) passed as ``guide=``; the new call goes right before ``consumer``
            (the add or cat) when the guide is computed after ``node``.
        consumer: the node that uses both the output and ``guide``.

    Returns:
        The new ``call_function`` node.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import fx, nn
        >>> from srf_upsample import SRFUpsample
        >>> class TopDown(nn.Module):
        ...     def forward(self, coarse, fine):
        ...         return fine + F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")
        >>> gm = fx.symbolic_trace(TopDown())
        >>> node = find_upsample_nodes(gm)[0]
        >>> upsampler = SRFUpsample(8, hidden_channels=8, num_blocks=1)
        >>> replace_upsample_node(gm, node, "srf_upsampler_c8", upsampler).name
        'enlarge_or_interpolate'
        >>> gm.graph.lint()
        >>> _ = gm.recompile()
        >>> gm(torch.rand(2, 8, 5, 7), torch.rand(2, 8, 10, 14)).shape  # size still follows `fine`, any input size
        torch.Size([2, 8, 10, 14])
    """
    arguments = _bound_arguments(gm, node)
    if module is not None and not hasattr(gm, name):
        gm.add_submodule(name, module)
    kwargs = {"size": arguments["size"]} if arguments["size"] is not None else {}
    if arguments["scale_factor"] is not None:
        kwargs = {"scale_factor": arguments["scale_factor"]}
    kwargs.update(
        mode=arguments["mode"],
        align_corners=arguments["align_corners"],
        recompute_scale_factor=arguments["recompute_scale_factor"],
        antialias=arguments["antialias"],
    )
    anchor = node
    if guide is not None:
        kwargs["guide"] = guide
        if not precedes(guide, node):
            if consumer is None:
                raise ValueError(
                    f"guide {guide.name} comes after {node.name}; pass the consumer node to insert before."
                )
            anchor = consumer
    with gm.graph.inserting_before(anchor):
        upsampler = gm.graph.get_attr(name)
        new_node = gm.graph.call_function(enlarge_or_interpolate, args=(upsampler, arguments["input"]), kwargs=kwargs)
    node.replace_all_uses_with(new_node)
    gm.graph.erase_node(node)
    return new_node


def _bound_arguments(gm: fx.GraphModule, node: fx.Node) -> dict[str, Any]:
    """Bind a node's args and kwargs into one dict: input, size, scale_factor, mode, align_corners, kind, target."""
    if node.op == "call_function" and node.target is enlarge_or_interpolate:
        bound = inspect.signature(enlarge_or_interpolate).bind(*node.args, **node.kwargs).arguments
        upsampler = bound["upsampler"]
        target = str(upsampler.target) if isinstance(upsampler, fx.Node) else "upsampler"
        return _upsampler_call(bound["x"], bound, target)
    module = _upsample_module(gm, node)
    if module is not None:
        bound = inspect.signature(module.forward).bind(*node.args, **node.kwargs).arguments
        first = next(iter(bound.values()))
        if is_upsampler(module):
            return _upsampler_call(first, bound, str(node.target))
        kind = "nn.Upsample" if type(module) is nn.Upsample else f"nn.Upsample ({type(module).__name__})"
        return {
            "input": first,
            "size": module.size,
            "scale_factor": module.scale_factor,
            "mode": module.mode,
            "align_corners": module.align_corners,
            "recompute_scale_factor": module.recompute_scale_factor,
            "antialias": False,
            "kind": kind,
            "target": str(node.target),
        }
    kind = _FUNCTION_KINDS[node.target]
    bound = inspect.signature(node.target).bind(*node.args, **node.kwargs).arguments
    mode = bound.get("mode", _DEFAULT_MODES.get(kind, "nearest"))
    align_corners = bound.get("align_corners", True if kind == "F.upsample_bilinear" else None)
    return {
        "input": bound["input"],
        "size": bound.get("size"),
        "scale_factor": bound.get("scale_factor"),
        "mode": mode,
        "align_corners": align_corners,
        "recompute_scale_factor": bound.get("recompute_scale_factor"),
        "antialias": bound.get("antialias", False),
        "kind": kind,
        "target": kind,
    }


def _upsampler_call(x: Any, bound: dict[str, Any], target: str) -> dict[str, Any]:
    """The bound arguments of a node that already calls an upsampler (a patched graph traced again)."""
    return {
        "input": x,
        "size": bound.get("size"),
        "scale_factor": bound.get("scale_factor"),
        "mode": None,
        "align_corners": None,
        "kind": "SRFUpsample",
        "target": target,
    }


def _example_value(value: Any) -> Any:
    """Turn a node argument into what it was on the example input (shape nodes resolved through their meta)."""
    if isinstance(value, fx.Node):
        return value.meta.get("example_value")
    if isinstance(value, (list, tuple)):
        return tuple(_example_value(item) for item in value)
    return value


def _is_dynamic(value: Any) -> bool:
    return any(isinstance(leaf, fx.Node) for leaf in pytree.tree_leaves(value))


def _attach_example_values(gm: fx.GraphModule) -> None:
    """Give shape-valued nodes (``x.shape[-2:]``, ``x.size(2)``) their example value, for the report only."""
    interpreter_values: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            interpreter_values[node] = meta
        value = None
        try:
            if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
                source = interpreter_values.get(node.args[0])
                value = tuple(source.shape) if source is not None else None
            elif node.op == "call_method" and node.target == "size":
                source = interpreter_values.get(node.args[0])
                if source is not None:
                    value = tuple(source.shape) if len(node.args) == 1 else source.shape[node.args[1]]
            elif node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node):
                base = node.args[0].meta.get("example_value")
                if base is not None and isinstance(base, tuple):
                    value = node.target(base, *node.args[1:])
        except Exception:  # noqa: BLE001 - report decoration only; a failure just leaves the value unknown
            value = None
        if value is not None:
            node.meta["example_value"] = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else value


def _restore_missing(original: nn.Module, gm: fx.GraphModule) -> None:
    """Re-attach submodules, parameters and buffers that fx dropped because forward never used them.

    GraphModule only copies what the graph references; restoring the rest keeps every original state_dict key, so
    pretrained checkpoints of the unpatched model still load.
    """
    existing = dict(gm.named_modules())
    for name, module in original.named_modules():
        if not name or name in existing:
            continue
        parent_name, _, child = name.rpartition(".")
        if parent_name in existing:
            existing[parent_name].add_module(child, module)
            existing.update({f"{name}.{sub}" if sub else name: m for sub, m in module.named_modules()})
    for name, module in original.named_modules():
        target = existing.get(name)
        if target is None or target is module:
            continue
        for key, parameter in module.named_parameters(recurse=False):
            if key not in target._parameters:
                target.register_parameter(key, parameter)
        for key, buffer in module.named_buffers(recurse=False):
            if key not in target._buffers:
                target.register_buffer(key, buffer, persistent=key not in module._non_persistent_buffers_set)
    for key, value in vars(original).items():
        # Plain attributes (out_channels, num_levels, ...) that the parent module may read.
        if not key.startswith("_") and key != "training" and not hasattr(gm, key):
            setattr(gm, key, value)


def _site_record(path: str, node: fx.Node, arguments: dict[str, Any]) -> dict[str, Any]:
    """The report fields of an upsampling node that every outcome shares (shapes from shape propagation)."""
    x = arguments["input"]
    input_meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
    output_meta = node.meta.get("tensor_meta")
    input_shape = tuple(input_meta.shape) if input_meta is not None and hasattr(input_meta, "shape") else None
    output_shape = tuple(output_meta.shape) if output_meta is not None and hasattr(output_meta, "shape") else None
    return {
        "module_path": path,
        "node": node.name,
        "kind": arguments["kind"],
        "target": arguments["target"],
        "mode": arguments["mode"],
        "align_corners": arguments["align_corners"],
        "size": plain_value(_example_value(arguments["size"])),
        "is_size_dynamic": _is_dynamic(arguments["size"]),
        "scale_factor": plain_value(_example_value(arguments["scale_factor"])),
        "in_channels": input_shape[1] if input_shape and len(input_shape) > 1 else None,
        "input_shape": input_shape,
        "output_shape": output_shape,
        "method": FX,
    }


def _skip_reason(x: Any, record: dict[str, Any], provider: UpsamplerProvider) -> str:
    """Why a site is left as it is (not enlarging, a parameter, not floating point, no matching upsampler) or ``""``."""
    reason = direction(record["input_shape"], record["output_shape"])
    if not reason and isinstance(x, fx.Node) and x.op == "get_attr":
        reason = PARAMETER_REASON
    if not reason and not x.meta["tensor_meta"].dtype.is_floating_point:
        reason = f"not a floating point feature map ({x.meta['tensor_meta'].dtype})"
    return reason or provider.mismatch(record["in_channels"])


def rewrite_owner(
    path: str, module: nn.Module, gm: fx.GraphModule, provider: UpsamplerProvider
) -> tuple[fx.GraphModule | None, list[PatchSite]]:
    """Rewrite the enlarging sites of a traced submodule (see :func:`replace_upsample_node`). Nothing is swapped here.

    Args:
        path: dotted path of the submodule in the model (for the report).
        module: the original submodule (its unused children and attributes are carried over).
        gm: its shape-propagated graph from :func:`trace_owner`.
        provider: hands out the upsampler of each site.

    Returns:
        ``(rewritten graph module or None if nothing was replaced, one PatchSite per upsampling node)``.
    """
    _attach_example_values(gm)
    sites = []
    for node in find_upsample_nodes(gm):
        arguments = _bound_arguments(gm, node)
        record = _site_record(path, node, arguments)
        if arguments["kind"] == "SRFUpsample":
            sites.append(PatchSite(**record, action=ALREADY_PATCHED, reason="", upsampler=arguments["target"]))
            continue
        reason = _skip_reason(arguments["input"], record, provider)
        if reason:
            sites.append(PatchSite(**record, action=SKIPPED, reason=reason))
            continue
        name, upsampler = provider.get(record["in_channels"], node.name)
        guide, consumer, via = guide_for(node, name, upsampler, record["output_shape"])
        replace_upsample_node(gm, node, name, upsampler, guide=guide, consumer=consumer)
        guide_fields = {"guide": guide.name, "guide_via": via} if guide is not None else {"guide_reason": via}
        sites.append(PatchSite(**record, action=REPLACED, upsampler=name, **guide_fields))
    if not any(site.action == REPLACED for site in sites):
        return None, sites
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    restore_defaults(gm, module)
    _restore_missing(module, gm)
    return gm, sites
