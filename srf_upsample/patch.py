"""patch_fpn: find the feature-map upsampling call sites of a model with torch.fx and swap in SRFUpsample."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import inspect
import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .upsample import SRFUpsample

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_LEAF_MODULES",
    "PatchReport",
    "PatchSite",
    "find_upsample_nodes",
    "patch_fpn",
    "replace_upsample_node",
]

logger = logging.getLogger(__name__)

# Modules fx never traces into. SRFUpsample is a leaf so that a patched model is recognised (and not wrapped twice).
DEFAULT_LEAF_MODULES: tuple[type[nn.Module], ...] = (SRFUpsample,)

# Module paths (fnmatch patterns) whose upsampling is not a feature-pyramid site: the image resize/paste of
# torchvision's GeneralizedRCNNTransform and per-RoI heads (e.g. the keypoint head's 2x heatmap upsampling).
DEFAULT_EXCLUDE: tuple[str, ...] = ("transform", "transform.*", "*head*")

# Functions that upsample. F.upsample* are deprecated aliases that fx would otherwise trace through to F.interpolate.
_FUNCTION_KINDS: dict[Callable[..., Any], str] = {
    F.interpolate: "F.interpolate",
    F.upsample: "F.upsample",
    F.upsample_nearest: "F.upsample_nearest",
    F.upsample_bilinear: "F.upsample_bilinear",
}
_ALIAS_NAMES = ("upsample", "upsample_nearest", "upsample_bilinear")
_DEFAULT_MODES = {"F.upsample_nearest": "nearest", "F.upsample_bilinear": "bilinear"}

REPLACED = "replaced"
SKIPPED = "skipped"
ALREADY_PATCHED = "already patched"

Upsampler = nn.Module | Callable[[int], nn.Module]


@dataclass(frozen=True)
class PatchSite:
    """One upsampling call site found by :func:`patch_fpn`.

    Attributes:
        module_path: dotted path of the traced submodule that holds the call (``""`` for the model itself).
        node: fx node name of the call, or ``"call <i>"`` for a call seen at run time in a submodule not traced.
        kind: ``"F.interpolate"``, ``"F.upsample"``, ``"F.upsample_nearest"``, ``"F.upsample_bilinear"``,
            ``"nn.Upsample"`` (or its subclass name) or ``"SRFUpsample"``.
        target: the called function, or the path of the called module inside ``module_path``.
        mode: interpolation mode the original asked for (irrelevant to SRFUpsample, recorded for reference).
        align_corners: ``align_corners`` the original asked for.
        size: constant ``size`` argument, or the value it had on the example input when ``is_size_dynamic``.
        is_size_dynamic: ``size`` is computed from run-time shapes; the patched graph keeps computing it.
        scale_factor: ``scale_factor`` argument.
        in_channels: channels C of the input feature map.
        input_shape: ``(N, C, H, W)`` of the input on the example.
        output_shape: ``(N, C, H_out, W_out)`` of the output on the example.
        action: ``"replaced"``, ``"skipped"`` or ``"already patched"``.
        reason: why a site was skipped (empty when replaced).
        upsampler: name of the submodule now called at this site (replaced and already patched sites).
        num_calls: how many calls of a site that was not traced ran on the example (shapes are from the first).
    """

    module_path: str
    node: str
    kind: str
    target: str
    mode: str | None = None
    align_corners: bool | None = None
    size: Any = None
    is_size_dynamic: bool = False
    scale_factor: Any = None
    in_channels: int | None = None
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    action: str = SKIPPED
    reason: str = ""
    upsampler: str | None = None
    num_calls: int = 1


@dataclass(frozen=True)
class PatchReport:
    """What :func:`patch_fpn` found and did, one :class:`PatchSite` per upsampling call site.

    ``str(report)`` is a readable table; :meth:`to_dict` gives plain data (JSON-serialisable).

    Attributes:
        model: class name of the patched model.
        sites: every upsampling call site found, in model order.
    """

    model: str
    sites: tuple[PatchSite, ...] = field(default_factory=tuple)

    @property
    def replaced(self) -> tuple[PatchSite, ...]:
        """Sites now calling an upsampler module."""
        return tuple(site for site in self.sites if site.action == REPLACED)

    @property
    def skipped(self) -> tuple[PatchSite, ...]:
        """Sites left alone (including already patched ones), each with its reason."""
        return tuple(site for site in self.sites if site.action != REPLACED)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain dicts, lists and scalars."""

        def plain(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

        return {
            "model": self.model,
            "num_replaced": len(self.replaced),
            "num_skipped": len(self.skipped),
            "sites": [{key: plain(value) for key, value in asdict(site).items()} for site in self.sites],
        }

    def __str__(self) -> str:
        header = (
            f"patch_fpn report for {self.model}: {len(self.replaced)} replaced, {len(self.skipped)} left alone "
            f"({len(self.sites)} upsampling sites)"
        )
        if not self.sites:
            return header + "\n  no upsampling call sites found; the model is unchanged."
        columns = ("module", "node", "kind", "mode", "size / scale", "in -> out", "action")
        rows = [columns]
        for site in self.sites:
            if site.size is not None:
                amount = f"size={_shape_text(site.size)}" + (" (runtime)" if site.is_size_dynamic else "")
            elif site.scale_factor is not None:
                amount = f"scale_factor={site.scale_factor}"
            else:
                amount = "-"
            shapes = f"{_shape_text(site.input_shape)} -> {_shape_text(site.output_shape)}"
            action = site.action
            if site.action == REPLACED or site.action == ALREADY_PATCHED:
                action += f" by {site.upsampler}"
            if site.reason:
                action += f": {site.reason}"
            target = site.kind if site.target == site.kind else f"{site.kind} {site.target}"
            rows.append((site.module_path or "<model>", site.node, target, str(site.mode), amount, shapes, action))
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns) - 1)]
        lines = [header]
        for row in rows:
            cells = [text.ljust(width) for text, width in zip(row, widths, strict=False)]
            lines.append("  " + "  ".join([*cells, row[-1]]))
        return "\n".join(line.rstrip() for line in lines)


def _shape_text(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------------------------------------------
# Tracing


class _LeafAwareTracer(fx.Tracer):
    """fx tracer with explicit leaf modules, that keeps ``F.upsample*`` calls as their own nodes."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_ids: frozenset[int] = frozenset()) -> None:
        super().__init__(autowrap_modules=(math,))
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
    return module if isinstance(module, (nn.Upsample, SRFUpsample)) else None


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
        if (node.op == "call_function" and node.target in _FUNCTION_KINDS) or _upsample_module(gm, node) is not None
    ]


def replace_upsample_node(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module | None = None) -> fx.Node:
    """Replace one upsampling node by a call of submodule ``name`` with the node's input and ``size``/``scale_factor``.

    ``size`` computed from run-time shapes stays a graph value, so the rewritten module works at any input size.
    Call ``gm.graph.lint()`` and ``gm.recompile()`` after the last replacement.

    Args:
        gm: the traced module to rewrite in place.
        node: a node returned by :func:`find_upsample_nodes`.
        name: attribute name of the upsampler in ``gm``.
        module: the upsampler; registered under ``name`` unless ``gm`` already has it.

    Returns:
        The new ``call_module`` node.
    """
    arguments = _bound_arguments(gm, node)
    if module is not None and not hasattr(gm, name):
        gm.add_submodule(name, module)
    kwargs = {"size": arguments["size"]} if arguments["size"] is not None else {}
    if arguments["scale_factor"] is not None:
        kwargs = {"scale_factor": arguments["scale_factor"]}
    with gm.graph.inserting_before(node):
        new_node = gm.graph.call_module(name, args=(arguments["input"],), kwargs=kwargs)
    node.replace_all_uses_with(new_node)
    gm.graph.erase_node(node)
    return new_node


def _bound_arguments(gm: fx.GraphModule, node: fx.Node) -> dict[str, Any]:
    """Bind a node's args and kwargs into one dict: input, size, scale_factor, mode, align_corners, kind, target."""
    module = _upsample_module(gm, node)
    if module is not None:
        bound = inspect.signature(module.forward).bind(*node.args, **node.kwargs).arguments
        first = next(iter(bound.values()))
        if isinstance(module, SRFUpsample):
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


def _direction(input_shape: Sequence[int] | None, output_shape: Sequence[int] | None) -> str:
    """Return "" for a true enlargement, else the reason the site is left alone."""
    if input_shape is None or output_shape is None:
        return "no shape on the example input (the call did not run)"
    if len(input_shape) != 4 or len(output_shape) != 4:
        return f"not a 4D feature map (input shape {tuple(input_shape)})"
    height, width = input_shape[-2:]
    out_height, out_width = output_shape[-2:]
    if height == 1 and width == 1:
        return "broadcast from a 1x1 map (e.g. global pooling), not an enlargement"
    if (out_height, out_width) == (height, width):
        return "same-size resize"
    if out_height <= height and out_width <= width:
        return "downsampling"
    if out_height < height or out_width < width:
        return "enlarges one side and shrinks the other"
    return ""


# ----------------------------------------------------------------------------------------------------------------
# Run-time discovery: which submodules call interpolation, and their example inputs


@dataclass
class _Call:
    """One F.interpolate call seen while running the example."""

    stack: tuple[tuple[str, int], ...]  # (path, call id) of each active module, outermost first
    modules: tuple[nn.Module, ...]
    arguments: dict[str, Any]
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    frame: tuple[str | None, str] = (None, "?")  # innermost model module running Python code (methods too), file:line
    owner: int = -1  # index into stack of the module whose code makes the call


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, int, nn.Module, tuple, dict]] = []
        self.calls: list[_Call] = []
        self.inputs: dict[tuple[str, int], tuple[tuple, dict]] = {}
        self.next_id = 0
        self.paths: dict[int, str] = {}

    def _frame_owner(self) -> tuple[str | None, str]:
        """Return the innermost module of the model whose Python code makes this call, and the file:line of the call.

        Hooks only see modules entered through __call__; a helper method called directly (e.g. torchvision's
        transform.postprocess pasting masks) shows up as a Python frame whose ``self`` is the module.
        """
        frame = sys._getframe(2)
        for _ in range(64):
            if frame is None:
                break
            owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
            if owner is not None and id(owner) in self.paths and not isinstance(owner, (nn.Upsample, SRFUpsample)):
                return self.paths[id(owner)], f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"
            frame = frame.f_back
        return None, "?"

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.interpolate and self.stack:
            arguments = inspect.signature(F.interpolate).bind(*args, **kwargs).arguments
            x = arguments["input"]
            for path, call_id, _, module_args, module_kwargs in self.stack:
                # Keep the inputs of every module that (transitively) upsamples: one of them gets traced.
                self.inputs.setdefault((path, call_id), _detach((module_args, module_kwargs)))
            self.calls.append(
                _Call(
                    stack=tuple((path, call_id) for path, call_id, *_ in self.stack),
                    modules=tuple(entry[2] for entry in self.stack),
                    arguments={k: v for k, v in arguments.items() if k != "input"},
                    input_shape=tuple(x.shape) if isinstance(x, torch.Tensor) else None,
                    output_shape=tuple(out.shape) if isinstance(out, torch.Tensor) else None,
                    frame=self._frame_owner(),
                )
            )
        return out


def _detach(value: Any) -> Any:
    return pytree.tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, value)


def _record(model: nn.Module, example_inputs: tuple) -> _Recorder:
    recorder = _Recorder()
    handles = []

    def pre_hook(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            recorder.stack.append((path, recorder.next_id, module, args, kwargs))
            recorder.next_id += 1

        return hook

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        recorder.stack.pop()

    recorder.paths = {id(module): path for path, module in model.named_modules()}
    try:
        for path, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre_hook(path), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, always_call=True))
        with torch.no_grad(), recorder:
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return recorder


# ----------------------------------------------------------------------------------------------------------------
# Example inputs


def _default_example_inputs(model: nn.Module) -> tuple:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import FeaturePyramidNetwork

    if isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform):
        # torchvision detectors take a list of 3xHxW images; the transform resizes them as in real use.
        return ([torch.rand(3, 64, 96), torch.rand(3, 64, 96)],)
    if isinstance(model, FeaturePyramidNetwork):
        channels = [block[0].in_channels for block in model.inner_blocks]
        return ({str(i): torch.rand(2, c, 16 >> i or 1, 24 >> i or 1) for i, c in enumerate(channels)},)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and type(model).forward is not nn.Module.forward:
        return (torch.rand(2, first.in_channels, 64, 96),)
    raise ValueError(
        f"Cannot build an example input for {type(model).__name__}; pass example_inputs=(...) with the positional "
        "arguments of one forward call, e.g. example_inputs=(torch.rand(2, 3, 64, 96),)."
    )


def _normalize_example_inputs(model: nn.Module, example_inputs: Any) -> tuple:
    if example_inputs is None:
        return _default_example_inputs(model)
    if isinstance(example_inputs, tuple) and not hasattr(example_inputs, "_fields"):
        return example_inputs
    if isinstance(example_inputs, (torch.Tensor, list, dict)):
        return (example_inputs,)
    raise TypeError(
        "example_inputs must be a tuple of forward's positional arguments, or one tensor, list or dict, got "
        f"{type(example_inputs).__name__}."
    )


# ----------------------------------------------------------------------------------------------------------------
# Upsampler construction


class _UpsamplerProvider:
    """Hands out the upsampler for each site: shared per channel count, or one per call site."""

    def __init__(self, upsampler: Upsampler | None, share: bool) -> None:
        if upsampler is None:
            upsampler = SRFUpsample
        if not isinstance(upsampler, nn.Module) and not callable(upsampler):
            raise TypeError(
                "upsampler must be an nn.Module, a factory called with the channel count (e.g. SRFUpsample or "
                f"functools.partial(SRFUpsample, variant='lite')), or None, got {type(upsampler).__name__}."
            )
        if not isinstance(share, bool):
            raise TypeError(f"share must be a bool, got {share!r}.")
        self.upsampler = upsampler
        self.share = share
        self.shared: dict[int, nn.Module] = {}

    def mismatch(self, channels: int) -> str:
        """Return why a ready module cannot serve ``channels``, or ""."""
        expected = getattr(self.upsampler, "in_channels", None) if isinstance(self.upsampler, nn.Module) else None
        if isinstance(expected, int) and expected != channels:
            return (
                f"the upsampler module has in_channels={expected} but this site has {channels} channels; "
                "pass a factory (e.g. upsampler=SRFUpsample) to build one per channel count"
            )
        return ""

    def get(self, channels: int, node_name: str) -> tuple[str, nn.Module]:
        if self.share:
            name = f"srf_upsampler_c{channels}"
            if channels not in self.shared:
                self.shared[channels] = self._build(channels, copy_module=False)
            return name, self.shared[channels]
        return f"srf_{node_name}", self._build(channels, copy_module=True)

    def _build(self, channels: int, copy_module: bool) -> nn.Module:
        if isinstance(self.upsampler, nn.Module):
            return copy.deepcopy(self.upsampler) if copy_module else self.upsampler
        module = self.upsampler(channels)
        if not isinstance(module, nn.Module):
            raise TypeError(f"upsampler factory must return an nn.Module, got {type(module).__name__}.")
        return module


# ----------------------------------------------------------------------------------------------------------------
# patch_fpn


def _owner_index(call: _Call) -> int:
    """Index (in the call's module stack) of the module whose own code makes this upsampling call."""
    for index, module in enumerate(call.modules):
        if isinstance(module, SRFUpsample):
            return index - 1
    if isinstance(call.modules[-1], nn.Upsample):
        return len(call.modules) - 2
    return len(call.modules) - 1


def _site_signature(call: _Call) -> tuple:
    channels = call.input_shape[1] if call.input_shape and len(call.input_shape) > 1 else None
    return channels, _direction(call.input_shape, call.output_shape) == ""


def _choose_owners(calls: list[_Call]) -> None:
    """Set each call's owner; move up to the parent where one module is called with different site shapes.

    A submodule called several times (e.g. a helper shared by pyramid levels) is one graph for all its calls; if those
    calls upsample different channel counts, one module per node cannot serve them, so the parent is traced instead
    and each call of the helper becomes its own node.
    """
    for call in calls:
        call.owner = _owner_index(call)
    while True:
        per_call: dict[tuple[str, int], list[tuple]] = {}
        for call in calls:
            if call.owner >= 0:
                per_call.setdefault(call.stack[call.owner], []).append(_site_signature(call))
        per_path: dict[str, set[tuple]] = {}
        for (path, _), signatures in per_call.items():
            per_path.setdefault(path, set()).add(tuple(signatures))
        varying = {path for path, signatures in per_path.items() if len(signatures) > 1}
        moved = False
        for call in calls:
            if call.owner > 0 and call.stack[call.owner][0] in varying:
                call.owner -= 1
                moved = True
        if not moved:
            return


def _excluded(path: str, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


def _runtime_site(call: _Call, index: int, action: str, reason: str, upsampler: str | None = None) -> PatchSite:
    path = call.stack[call.owner][0] if call.owner >= 0 else ""
    frame_path, location = call.frame
    if frame_path is not None and _covers(path, frame_path):
        path = frame_path
    owner_module = call.modules[call.owner] if call.owner >= 0 else None
    inner = call.modules[call.owner + 1] if call.owner + 1 < len(call.modules) else None
    kind, target = "F.interpolate", "F.interpolate"
    if isinstance(inner, (SRFUpsample, nn.Upsample)) and owner_module is not None:
        kind = "SRFUpsample" if isinstance(inner, SRFUpsample) else "nn.Upsample"
        target = call.stack[call.owner + 1][0][len(path) + 1 if path else 0 :]
        upsampler = target if isinstance(inner, SRFUpsample) else upsampler
    arguments = call.arguments
    return PatchSite(
        module_path=path,
        node=location,
        kind=kind,
        target=target,
        mode=None if kind == "SRFUpsample" else arguments.get("mode", "nearest"),
        align_corners=None if kind == "SRFUpsample" else arguments.get("align_corners"),
        size=_plain(arguments.get("size")),
        scale_factor=_plain(arguments.get("scale_factor")),
        in_channels=call.input_shape[1] if call.input_shape and len(call.input_shape) > 1 else None,
        input_shape=call.input_shape,
        output_shape=call.output_shape,
        action=action,
        reason=reason,
        upsampler=upsampler,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Size):
        return tuple(int(v) for v in value)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _patch_owner(
    path: str,
    module: nn.Module,
    inputs: list[tuple[tuple, dict]],
    provider: _UpsamplerProvider,
    leaf_types: tuple[type, ...],
    upsampling_ids: frozenset[int],
) -> tuple[fx.GraphModule | None, list[PatchSite]]:
    """Trace one submodule, shape-propagate the example, and rewrite its enlarging sites. Nothing is swapped here."""
    args, kwargs = inputs[0]
    positional, concrete_args = _bind_inputs(module, args, kwargs)
    gm = None
    errors = []
    # First trace through every submodule (as users expect); if a helper cannot be traced, retry with every
    # submodule that does not upsample as a leaf (it needs no rewriting).
    non_upsampling = frozenset(id(m) for m in module.modules() if id(m) not in upsampling_ids and m is not module)
    for leaf_ids in (frozenset(), non_upsampling):
        try:
            gm = _trace(module, concrete_args, _LeafAwareTracer(leaf_types, leaf_ids))
            ShapeProp(gm).propagate(*positional)
            break
        except Exception as error:  # noqa: BLE001 - fx raises many types; all mean "not traceable this way"
            errors.append(error)
            gm = None
    if gm is None:
        name = path or "<model>"
        raise ValueError(
            f"patch_fpn cannot trace submodule {name!r} ({type(module).__name__}), which calls F.interpolate / "
            f"nn.Upsample, with torch.fx: {type(errors[-1]).__name__}: {errors[-1]}. Pass leaf_modules=[...] with "
            f"the helper module types fx cannot trace, or exclude=[{name!r}] to leave this submodule alone."
        ) from errors[-1]

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
        }
        if arguments["kind"] == "SRFUpsample":
            sites.append(PatchSite(**record, action=ALREADY_PATCHED, reason="", upsampler=str(node.target)))
            continue
        reason = _direction(input_shape, output_shape)
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


def _leaf_types(leaf_modules: Iterable[type[nn.Module]] | None) -> tuple[type, ...]:
    if leaf_modules is None:
        return DEFAULT_LEAF_MODULES
    if isinstance(leaf_modules, type):
        leaf_modules = (leaf_modules,)
    leaf_modules = tuple(leaf_modules)
    for item in leaf_modules:
        if not (isinstance(item, type) and issubclass(item, nn.Module)):
            raise TypeError(f"leaf_modules must hold nn.Module subclasses, got {item!r}.")
    return DEFAULT_LEAF_MODULES + leaf_modules


def patch_fpn(
    model: nn.Module,
    upsampler: Upsampler | None = None,
    *,
    share: bool = True,
    example_inputs: Any = None,
    leaf_modules: Iterable[type[nn.Module]] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    strict: bool = False,
) -> tuple[nn.Module, PatchReport]:
    """Replace, in place, every feature-map enlargement of ``model`` by a learned upsampler (SRFUpsample).

    Runs ``model`` once on ``example_inputs`` (eval mode, no grad) to find which submodules call ``F.interpolate``
    (also via ``F.upsample*`` or ``nn.Upsample``) and what they receive. Each smallest such submodule (the FPN, not
    the detector) is traced with torch.fx, shape-propagated on its recorded input, and each call site that enlarges a
    4D feature map becomes a call of the upsampler with the same input and ``size`` / ``scale_factor`` (a ``size``
    computed from run-time shapes stays computed, so the model runs at any input size). Downsampling, same-size
    resizes, 1x1 broadcasts and sites under ``exclude`` are left alone and reported. The rewritten submodules are
    swapped in only after all were built; every original ``state_dict`` key is kept. ``model.training`` is restored.

    Args:
        model: a neck, a backbone with FPN, or a whole detector.
        upsampler: ``None`` (``SRFUpsample(channels)`` with the paper's configuration), a factory called with the
            channel count (e.g. ``functools.partial(SRFUpsample, variant="lite")``), or a ready module (e.g. from
            ``SRFUpsample.from_pretrained``), which serves only sites with its ``in_channels``.
        share: one upsampler per distinct channel count, named ``srf_upsampler_c<C>`` (the paper shares one generator
            across pyramid levels); ``False`` builds one per call site, named ``srf_<node>`` (a ready module is
            deep-copied).
        example_inputs: positional arguments of one ``model`` call, as a tuple (a single tensor, list or dict is one
            argument). ``None`` builds one for torchvision detectors (two 3x64x96 images), FeaturePyramidNetwork and
            models whose first layer is a Conv2d.
        leaf_modules: extra module types fx must not trace into (helpers with data-dependent control flow).
            SRFUpsample is always a leaf.
        exclude: fnmatch patterns of submodule paths whose upsampling is left alone; the default skips
            torchvision's image transform and detection heads.
        strict: raise ValueError if no site is replaced.

    Returns:
        ``(model, report)``: the patched model (the same object, unless ``model`` itself is the traced submodule,
        then a new ``fx.GraphModule``) and a :class:`PatchReport`.

    Raises:
        ValueError: a submodule holding upsampling cannot be traced (the message names it and gives fx's reason), or
            ``strict=True`` and nothing was replaced.

    Example:
        >>> import functools
        >>> from torchvision.ops import FeaturePyramidNetwork
        >>> fpn = FeaturePyramidNetwork([8, 16], 8)
        >>> fpn, report = patch_fpn(fpn, functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1))
        >>> len(report.replaced)
        1
        >>> out = fpn({"0": torch.rand(2, 8, 17, 25), "1": torch.rand(2, 16, 9, 13)})
        >>> out["0"].shape
        torch.Size([2, 8, 17, 25])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if isinstance(exclude, str) or not all(isinstance(pattern, str) for pattern in exclude):
        raise TypeError(f"exclude must be a sequence of fnmatch patterns (str), got {exclude!r}.")
    provider = _UpsamplerProvider(upsampler, share)
    leaf_types = _leaf_types(leaf_modules)
    inputs = _normalize_example_inputs(model, example_inputs)

    was_training = model.training
    try:
        model.eval()
        try:
            recorder = _record(model, inputs)
        except Exception as error:
            built = "the example input built for it" if example_inputs is None else "example_inputs"
            raise ValueError(
                f"Cannot build an example input for {type(model).__name__}: running it on {built} failed with "
                f"{type(error).__name__}: {error}. Pass example_inputs=(...) with the positional arguments of one "
                "forward call (e.g. the features dict of a neck)."
            ) from error
        calls = recorder.calls
        _choose_owners(calls)
        modules = dict(model.named_modules())
        upsampling_ids = frozenset(id(m) for call in calls for m in call.modules)

        # Group sites by owner; an owner inside another owner is traced as part of it.
        to_trace: dict[str, list[_Call]] = {}
        runtime_sites: list[tuple[int, PatchSite]] = []
        for index, call in enumerate(calls):
            if call.owner < 0:
                runtime_sites.append((index, _runtime_site(call, index, SKIPPED, "the model itself is an upsampler")))
                continue
            path = call.stack[call.owner][0]
            inner = call.modules[call.owner + 1] if call.owner + 1 < len(call.modules) else None
            reason = _direction(call.input_shape, call.output_shape)
            if isinstance(inner, SRFUpsample):
                runtime_sites.append((index, _runtime_site(call, index, ALREADY_PATCHED, "")))
            elif _excluded(path, exclude) or (call.frame[0] is not None and _excluded(call.frame[0], exclude)):
                runtime_sites.append((index, _runtime_site(call, index, SKIPPED, "matched by exclude")))
            elif reason:
                runtime_sites.append((index, _runtime_site(call, index, SKIPPED, reason)))
            else:
                to_trace.setdefault(path, []).append(call)
        owners = sorted(to_trace, key=lambda p: (p.count(".") + bool(p), p))
        roots: list[str] = []
        for path in owners:
            if not any(path == root or not root or path.startswith(root + ".") for root in roots):
                roots.append(path)
        # Sites in traced owners are reported from their graphs; drop the run-time records they cover.
        runtime_sites = [
            (index, site)
            for index, site in runtime_sites
            if not any(_covers(root, site.module_path) for root in roots)
            or (site.action == SKIPPED and "exclude" in site.reason)
        ]

        built: dict[str, fx.GraphModule] = {}
        graph_sites: list[PatchSite] = []
        for path in sorted(roots, key=lambda p: list(modules).index(p)):
            owner_inputs = [recorder.inputs[key] for key in _owner_calls(calls, path, recorder)]
            gm, sites = _patch_owner(path, modules[path], owner_inputs, provider, leaf_types, upsampling_ids)
            graph_sites.extend(sites)
            if gm is not None:
                built[path] = gm

        # Swap only now, after every replacement was built, so a failure leaves the model untouched.
        result = model
        for path, gm in built.items():
            if not path:
                result = gm
                continue
            parent_name, _, child = path.rpartition(".")
            modules[parent_name].register_module(child, gm)
    finally:
        model.train(was_training)
    result.train(was_training)

    sites = tuple(graph_sites) + _group_runtime_sites([site for _, site in sorted(runtime_sites, key=lambda x: x[0])])
    report = PatchReport(model=type(model).__name__, sites=sites)
    logger.info("patch_fpn: %d of %d upsampling sites replaced in %s", len(report.replaced), len(sites), report.model)
    if strict and not report.replaced:
        raise ValueError(f"patch_fpn(strict=True) replaced no upsampling site in {report.model}:\n{report}")
    return result, report


def _group_runtime_sites(sites: list[PatchSite]) -> tuple[PatchSite, ...]:
    """Merge run-time calls of one code location (e.g. mask pasting, once per detection) into one site."""
    groups: dict[tuple, list[PatchSite]] = {}
    for site in sites:
        key = (site.module_path, site.node, site.kind, site.target, site.action, site.reason)
        groups.setdefault(key, []).append(site)
    return tuple(dataclasses.replace(group[0], num_calls=len(group)) for group in groups.values())


def _covers(root: str, path: str) -> bool:
    return not root or path == root or path.startswith(root + ".")


def _owner_calls(calls: list[_Call], path: str, recorder: _Recorder) -> list[tuple[str, int]]:
    """Keys of the recorded inputs of module ``path``, one per call that upsampled, in call order."""
    keys = {key for call in calls for key in call.stack if key[0] == path}
    return sorted(keys, key=lambda key: key[1])
