"""fx rewriting of one traced submodule: trace it in train and eval mode, route its enlarging nodes to upsamplers."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

from ..upsample import SRFUpsample
from ._discovery import _plain
from ._report import ALREADY_PATCHED, FX, REPLACED, SKIPPED, PatchSite
from ._upsamplers import PARAMETER_REASON, UpsamplerProvider, direction, enlarge_or_interpolate, is_upsampler

__all__ = [
    "DEFAULT_LEAF_MODULES",
    "find_upsample_nodes",
    "leaf_types",
    "replace_upsample_node",
    "rewrite_owner",
    "trace_owner",
]

# Modules fx never traces into. SRFUpsample is a leaf so that a patched model is recognised (and not wrapped twice).
DEFAULT_LEAF_MODULES: tuple[type[nn.Module], ...] = (SRFUpsample,)

# Functions that upsample. F.upsample* are deprecated aliases that fx would otherwise trace through to F.interpolate.
_FUNCTION_KINDS: dict[Callable[..., Any], str] = {
    F.interpolate: "F.interpolate",
    F.upsample: "F.upsample",
    F.upsample_nearest: "F.upsample_nearest",
    F.upsample_bilinear: "F.upsample_bilinear",
}
_ALIAS_NAMES = ("upsample", "upsample_nearest", "upsample_bilinear")
_DEFAULT_MODES = {"F.upsample_nearest": "nearest", "F.upsample_bilinear": "bilinear"}


class _LeafAwareTracer(fx.Tracer):
    """fx tracer with explicit leaf modules, that keeps ``F.upsample*`` calls as their own nodes."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_ids: frozenset[int] = frozenset()) -> None:
        # enlarge_or_interpolate is what patched graphs call; it stays one node when a patched module is traced again.
        super().__init__(autowrap_modules=(math,), autowrap_functions=(enlarge_or_interpolate,))
        self.leaf_types = leaf_types
        self.leaf_ids = leaf_ids

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaf_types) or id(m) in self.leaf_ids:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        # F.upsample calls F.interpolate without a torch-function check, so fx would record F.interpolate and the
        # report could not say what the user wrote. Wrap the aliases for the duration of the trace.
        originals = {name: getattr(F, name) for name in _ALIAS_NAMES}
        try:
            for name, function in originals.items():
                setattr(F, name, self._wrap(function))
            return super().trace(root, concrete_args)
        finally:
            for name, function in originals.items():
                setattr(F, name, function)

    def create_arg(self, a: Any) -> Any:
        # A patched graph passes its upsampler module to enlarge_or_interpolate; record it as a get_attr.
        if isinstance(a, nn.Module):
            return self.create_node("get_attr", self.path_of_module(a), (), {})
        return super().create_arg(a)

    def _wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if any(isinstance(leaf, fx.Proxy) for leaf in pytree.tree_leaves((args, kwargs))):
                return self.create_proxy("call_function", function, args, kwargs)
            return function(*args, **kwargs)

        return wrapper


def _placeholders(value: Any) -> Any:
    """Map tensors inside a dict/list/tuple to ``fx.PH`` and keep the structure (for ``concrete_args``)."""
    if isinstance(value, torch.Tensor):
        return fx.PH
    if isinstance(value, dict):
        return type(value)((key, _placeholders(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_placeholders(item) for item in value)
    return value


def _bind_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[list[Any], dict[str, Any] | None]:
    """Return the positional inputs of ``module.forward`` and the ``concrete_args`` to trace it with."""
    try:
        signature = inspect.signature(module.forward)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return list(args), None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
        return list(args), None
    bound.apply_defaults()
    concrete: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # Numbers (a target height, a scale) stay graph inputs: fixing them would pin the traced module to the
            # example's sizes. A neck with control flow on them is not traceable and gets the run-time fallback.
            continue
        if not isinstance(value, torch.Tensor):
            # Containers of tensors become placeholders per leaf; flags and None are fixed at their example value.
            concrete[name] = _placeholders(value)
    return list(bound.arguments.values()), concrete or None


def _trace(module: nn.Module, concrete_args: dict[str, Any] | None, tracer: _LeafAwareTracer) -> fx.GraphModule:
    graph = tracer.trace(module, concrete_args=concrete_args)
    if getattr(graph._codegen, "pytree_info", None) is not None:
        # With fx.PH inside concrete_args, fx's pytree codegen prints placeholder defaults into a tuple unpacking
        # (a SyntaxError); drop them there and put the defaults back on forward's signature (_restore_defaults).
        for node in graph.nodes:
            if node.op == "placeholder":
                node.args = ()
    gm = fx.GraphModule(tracer.root, graph, class_name=type(module).__name__)
    _restore_defaults(gm, module)
    return gm


def _restore_defaults(gm: fx.GraphModule, module: nn.Module) -> None:
    """Give the generated forward the original defaults, so callers may still omit arguments that have one."""
    if getattr(gm.graph._codegen, "pytree_info", None) is None:
        return
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return
    defaults = []
    for parameter in reversed(parameters):
        if parameter.default is inspect.Parameter.empty or parameter.kind is not parameter.POSITIONAL_OR_KEYWORD:
            break
        defaults.append(parameter.default)
    if defaults:
        type(gm).forward.__defaults__ = tuple(reversed(defaults))


# ----------------------------------------------------------------------------------------------------------------
# Graph passes


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
    """
    return [
        node
        for node in gm.graph.nodes
        if (node.op == "call_function" and (node.target in _FUNCTION_KINDS or node.target is enlarge_or_interpolate))
        or _upsample_module(gm, node) is not None
    ]


def replace_upsample_node(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module | None = None) -> fx.Node:
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

    Returns:
        The new ``call_function`` node.
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
    with gm.graph.inserting_before(node):
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
        return {
            "input": bound["x"],
            "size": bound.get("size"),
            "scale_factor": bound.get("scale_factor"),
            "mode": None,
            "align_corners": None,
            "kind": "SRFUpsample",
            "target": str(upsampler.target) if isinstance(upsampler, fx.Node) else "upsampler",
        }
    module = _upsample_module(gm, node)
    if module is not None:
        bound = inspect.signature(module.forward).bind(*node.args, **node.kwargs).arguments
        first = next(iter(bound.values()))
        if is_upsampler(module):
            return {
                "input": first,
                "size": bound.get("size"),
                "scale_factor": bound.get("scale_factor"),
                "mode": None,
                "align_corners": None,
                "kind": "SRFUpsample",
                "target": str(node.target),
            }
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


def leaf_types(leaf_modules: Iterable[type[nn.Module]] | None) -> tuple[type, ...]:
    if leaf_modules is None:
        return DEFAULT_LEAF_MODULES
    if isinstance(leaf_modules, type):
        leaf_modules = (leaf_modules,)
    leaf_modules = tuple(leaf_modules)
    for item in leaf_modules:
        if not (isinstance(item, type) and issubclass(item, nn.Module)):
            raise TypeError(f"leaf_modules must hold nn.Module subclasses, got {item!r}.")
    return DEFAULT_LEAF_MODULES + leaf_modules


def trace_owner(
    module: nn.Module,
    inputs: list[tuple[tuple, dict]],
    leaf_types: tuple[type, ...],
    upsampling_ids: frozenset[int],
    concrete_args: dict[str, Any] | None = None,
) -> tuple[fx.GraphModule | None, str]:
    """Trace one submodule in eval and in train mode and shape-propagate the eval graph on its recorded input.

    Args:
        module: the submodule, in eval mode.
        inputs: its recorded ``(args, kwargs)`` calls; the first is the example.
        leaf_types: module types fx must not trace into.
        upsampling_ids: ids of the modules that (transitively) upsample; the others may become leaves.
        concrete_args: the user's ``concrete_args`` for this submodule, merged over the ones built from the example.

    Returns:
        ``(graph module, "")``, or ``(None, why fx cannot be used)`` when tracing fails or the train-mode graph differs
        from the eval-mode one (an ``if self.training:`` branch that one graph would freeze).
    """
    args, kwargs = inputs[0]
    positional, built_args = _bind_inputs(module, args, kwargs)
    if concrete_args:
        built_args = {**(built_args or {}), **concrete_args}
        positional = _with_fixed_values(module, args, kwargs, concrete_args) or positional
    errors: list[Exception] = []
    # First trace through every submodule (as users expect); if a helper cannot be traced, retry with every
    # submodule that does not upsample as a leaf (it needs no rewriting).
    non_upsampling = frozenset(id(m) for m in module.modules() if id(m) not in upsampling_ids and m is not module)
    for leaf_ids in (frozenset(), non_upsampling):
        try:
            gm = _trace(module, built_args, _LeafAwareTracer(leaf_types, leaf_ids))
            ShapeProp(gm).propagate(*positional)
        except Exception as error:  # noqa: BLE001 - fx raises many types; all mean "not traceable this way"
            errors.append(error)
            continue
        dropped = [name for name in _dropped_parameters(module, gm) if name not in (concrete_args or {})]
        if dropped:
            return None, f"fx's graph no longer takes forward argument(s) {dropped} (fixed at their example value)"
        # Trace again in train mode: a graph freezes `if self.training:` to one side, so fx is used only if the two
        # graphs agree (tracing runs no module, so BatchNorm statistics are untouched).
        module.train()
        try:
            train_code = _trace(module, built_args, _LeafAwareTracer(leaf_types, leaf_ids)).code
        except Exception as error:  # noqa: BLE001 - as above
            return None, f"fx traces it in eval mode but not in train mode ({type(error).__name__}: {error})"
        finally:
            module.eval()
        if train_code != gm.code:
            return None, "its fx graph differs between train and eval mode (a branch on self.training)"
        return gm, ""
    error = errors[-1]
    return None, f"torch.fx cannot trace it ({type(error).__name__}: {_first_line(error)})"


def _with_fixed_values(module: nn.Module, args: tuple, kwargs: dict, fixed: dict[str, Any]) -> list[Any] | None:
    """The example's forward arguments with the caller's fixed ``concrete_args`` values put in (for ShapeProp)."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    values = {name: value for name, value in fixed.items() if not any(v is fx.PH for v in pytree.tree_leaves(value))}
    return [values.get(name, value) for name, value in bound.arguments.items()]


def _dropped_parameters(module: nn.Module, gm: fx.GraphModule) -> list[str]:
    """Names of ``module.forward`` parameters the traced forward cannot take (callers may pass them by keyword)."""
    try:
        original = inspect.signature(module.forward).parameters
        traced = inspect.signature(gm.forward).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in traced.values()):
        return []
    return [name for name, p in original.items() if p.kind is not p.VAR_POSITIONAL and name not in traced]


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0].split(". ")[0] if text else ""


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
        x = arguments["input"]
        input_meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
        output_meta = node.meta.get("tensor_meta")
        input_shape = tuple(input_meta.shape) if input_meta is not None and hasattr(input_meta, "shape") else None
        output_shape = tuple(output_meta.shape) if output_meta is not None and hasattr(output_meta, "shape") else None
        channels = input_shape[1] if input_shape and len(input_shape) > 1 else None
        is_dynamic = _is_dynamic(arguments["size"])
        record = {
            "module_path": path,
            "node": node.name,
            "kind": arguments["kind"],
            "target": arguments["target"],
            "mode": arguments["mode"],
            "align_corners": arguments["align_corners"],
            "size": _plain(_example_value(arguments["size"])),
            "is_size_dynamic": is_dynamic,
            "scale_factor": _plain(_example_value(arguments["scale_factor"])),
            "in_channels": channels,
            "input_shape": input_shape,
            "output_shape": output_shape,
            "method": FX,
        }
        if arguments["kind"] == "SRFUpsample":
            sites.append(PatchSite(**record, action=ALREADY_PATCHED, reason="", upsampler=arguments["target"]))
            continue
        reason = direction(input_shape, output_shape)
        if not reason and isinstance(x, fx.Node) and x.op == "get_attr":
            reason = PARAMETER_REASON
        if not reason and not (input_meta.dtype.is_floating_point):
            reason = f"not a floating point feature map ({input_meta.dtype})"
        if not reason:
            reason = provider.mismatch(channels)
        if reason:
            sites.append(PatchSite(**record, action=SKIPPED, reason=reason))
            continue
        name, upsampler = provider.get(channels, node.name)
        replace_upsample_node(gm, node, name, upsampler)
        sites.append(PatchSite(**record, action=REPLACED, upsampler=name))
    if not any(site.action == REPLACED for site in sites):
        return None, sites
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    _restore_defaults(gm, module)
    _restore_missing(module, gm)
    return gm, sites
