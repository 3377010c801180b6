"""Where an upsampled map's guide comes from in an fx graph: the same-size map it meets next (add or channel concat)."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

__all__ = ["NO_GUIDE_REASON", "find_guide", "guide_for", "node_shape", "precedes"]

# Where an upsampled map meets a same-size map: an add (torchvision's FPN: inner_lateral + interpolate(...)) or a
# channel concat (PANet / YOLO necks: torch.cat([up(x), skip], 1)). The other operand becomes the guide.
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_", "__add__", "__radd__", "__iadd__")
_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)
NO_GUIDE_REASON = "its output meets no same-size map in an add or a channel concat"


def node_shape(node: Any) -> tuple[int, ...] | None:
    """The shape-propagated shape of ``node``'s value, or ``None`` (not a node, or no shape recorded)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _depends_on(node: fx.Node, ancestor: fx.Node) -> bool:
    """Whether ``node``'s value is computed from ``ancestor``'s."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current is ancestor:
            return True
        if current in seen:
            continue
        seen.add(current)
        stack.extend(current.all_input_nodes)
    return False


def _operands(user: fx.Node, node: fx.Node) -> tuple[str, list[Any]] | None:
    """``("add" | "cat", the other operands)`` if ``user`` adds or channel-concatenates ``node`` with others."""
    if (
        user.op == "call_function"
        and user.target in _ADD_FUNCTIONS
        or (user.op == "call_method" and user.target in _ADD_METHODS)
    ):
        operands = list(user.args[:2])
        if len(operands) == 2 and operands.count(node) == 1 and "alpha" not in user.kwargs:
            return "add", [operand for operand in operands if operand is not node]
        return None
    if user.op == "call_function" and user.target in _CAT_FUNCTIONS:
        tensors = user.args[0] if user.args else user.kwargs.get("tensors")
        dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
        if isinstance(tensors, (list, tuple)) and dim in (1, -3) and list(tensors).count(node) == 1:
            return "cat", [tensor for tensor in tensors if tensor is not node]
    return None


def find_guide(node: fx.Node, output_shape: tuple[int, ...] | None) -> tuple[fx.Node | None, fx.Node | None, str]:
    """Find the map that an upsampling node's output meets next, to pass as ``guide=``. Only reads the graph.

    The guide is the other operand of an add (shape equal to the output's) or the one other tensor of a channel
    concat (``dim=1``; same batch and size, any channel count) that uses the node's output, shape-propagated.

    Args:
        node: an upsampling node of a shape-propagated graph.
        output_shape: its output's ``(N, C, H_out, W_out)`` on the example.

    Returns:
        ``(guide node, the add / cat node, "add" | "cat")``, or ``(None, None, why there is no guide)``.
    """
    if output_shape is None or len(output_shape) != 4:
        return None, None, "no output shape on the example"
    why = NO_GUIDE_REASON
    for user in node.users:
        found = _operands(user, node)
        if found is None:
            continue
        via, others = found
        if len(others) != 1 or not isinstance(others[0], fx.Node):
            why = f"it is concatenated with {len(others)} maps, not one"
            continue
        other = others[0]
        shape = node_shape(other)
        meta = other.meta.get("tensor_meta")
        if shape is None or len(shape) != 4 or not meta.dtype.is_floating_point:
            why = f"the map it meets in {user.name} is not a floating point 4D map"
            continue
        is_match = (
            shape == output_shape if via == "add" else (shape[0], *shape[2:]) == (output_shape[0], *output_shape[2:])
        )
        if not is_match:
            why = f"the map it meets in {user.name} has shape {shape}, not the output's {output_shape}"
            continue
        if _depends_on(other, node):
            why = f"the map it meets in {user.name} is computed from the upsampled map itself"
            continue
        if not precedes(other, node) and len(node.users) != 1:
            why = f"the map it meets in {user.name} is computed after the upsampled map is used elsewhere"
            continue
        return other, user, via
    return None, None, why


def precedes(first: fx.Node, second: fx.Node) -> bool:
    """Whether ``first`` stands before ``second`` in their graph."""
    for current in first.graph.nodes:
        if current is first:
            return True
        if current is second:
            return False
    return False


def guide_for(
    node: fx.Node, name: str, upsampler: nn.Module, output_shape: tuple[int, ...] | None
) -> tuple[fx.Node | None, fx.Node | None, str]:
    """Where a guide-taking upsampler's guide comes from.

    Returns:
        ``(guide, consumer, via)`` as :func:`find_guide` (``via`` says why not when ``guide`` is None); an upsampler
        without a guide gets ``(None, None, "")``.
    """
    if not getattr(upsampler, "accepts_guide", False):
        return None, None, ""
    guide, consumer, via = find_guide(node, output_shape)
    guide_channels = getattr(upsampler, "guide_channels", None)
    if guide is not None and guide_channels is not None and node_shape(guide)[1] != guide_channels:
        via = (
            f"the map it meets in {consumer.name} has {node_shape(guide)[1]} channels but {name} takes "
            f"guide_channels={guide_channels}"
        )
        return None, None, via
    return guide, consumer, via
