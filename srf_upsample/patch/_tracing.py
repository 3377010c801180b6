"""Tracing one submodule with torch.fx: in train and eval mode, with explicit leaves, shape-propagated on its input."""

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
from ._upsamplers import enlarge_or_interpolate

__all__ = ["DEFAULT_LEAF_MODULES", "leaf_types", "restore_defaults", "trace_owner"]

# Modules fx never traces into. SRFUpsample is a leaf so that a patched model is recognised (and not wrapped twice).
DEFAULT_LEAF_MODULES: tuple[type[nn.Module], ...] = (SRFUpsample,)

# F.upsample* are deprecated aliases that fx would otherwise trace through to F.interpolate.
_ALIAS_NAMES = ("upsample", "upsample_nearest", "upsample_bilinear")


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
    restore_defaults(gm, module)
    return gm


def restore_defaults(gm: fx.GraphModule, module: nn.Module) -> None:
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


def leaf_types(leaf_modules: Iterable[type[nn.Module]] | None) -> tuple[type, ...]:
    """Return the module types fx must not trace into: the defaults plus the caller's ``leaf_modules``, checked."""
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
