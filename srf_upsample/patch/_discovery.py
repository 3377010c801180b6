"""Run-time discovery of upsampling call sites: run the model once, record each F.interpolate call and its owner."""

from __future__ import annotations

import fnmatch
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from ._upsamplers import direction, is_upsampler

__all__ = [
    "Call",
    "Recorder",
    "choose_owners",
    "covers",
    "is_excluded",
    "normalize_example_inputs",
    "owner_call_keys",
    "record",
]


@dataclass
class Call:
    """One F.interpolate call seen while running the example."""

    stack: tuple[tuple[str, int], ...]  # (path, call id) of each active module, outermost first
    modules: tuple[nn.Module, ...]
    arguments: dict[str, Any]
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    is_parameter: bool = False  # the input is an nn.Parameter (a position embedding resized), not a feature map
    frame: tuple[str | None, str] = (None, "?")  # innermost model module running Python code (methods too), file:line
    owner: int = -1  # index into stack of the module whose code makes the call


class Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, int, nn.Module, tuple, dict]] = []
        self.calls: list[Call] = []
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
            is_site = isinstance(owner, nn.Upsample) or (owner is not None and is_upsampler(owner))
            if owner is not None and id(owner) in self.paths and not is_site:
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
                Call(
                    stack=tuple((path, call_id) for path, call_id, *_ in self.stack),
                    modules=tuple(entry[2] for entry in self.stack),
                    arguments={k: v for k, v in arguments.items() if k != "input"},
                    input_shape=tuple(x.shape) if isinstance(x, torch.Tensor) else None,
                    is_parameter=isinstance(x, nn.Parameter),
                    output_shape=tuple(out.shape) if isinstance(out, torch.Tensor) else None,
                    frame=self._frame_owner(),
                )
            )
        return out


def _detach(value: Any) -> Any:
    return pytree.tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, value)


def record(model: nn.Module, example_inputs: tuple) -> Recorder:
    """Run ``model`` once on ``example_inputs`` (no grad) and record every F.interpolate call and the module stack."""
    recorder = Recorder()
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


def normalize_example_inputs(model: nn.Module, example_inputs: Any) -> tuple:
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


def _owner_index(call: Call) -> int:
    """Index (in the call's module stack) of the module whose own code makes this upsampling call."""
    for index, module in enumerate(call.modules):
        if is_upsampler(module):
            return index - 1
    if isinstance(call.modules[-1], nn.Upsample):
        return len(call.modules) - 2
    return len(call.modules) - 1


def _site_signature(call: Call) -> tuple:
    channels = call.input_shape[1] if call.input_shape and len(call.input_shape) > 1 else None
    return channels, direction(call.input_shape, call.output_shape) == ""


def choose_owners(calls: list[Call]) -> None:
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


def is_excluded(path: str, exclude: Sequence[str]) -> bool:
    """Return True if ``path`` matches one of the fnmatch patterns in ``exclude``."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


def covers(root: str, path: str) -> bool:
    """Return True if submodule ``path`` is ``root`` or inside it (``""`` is the model and covers every path)."""
    return not root or path == root or path.startswith(root + ".")


def owner_call_keys(calls: list[Call], path: str) -> list[tuple[str, int]]:
    """Keys of the recorded inputs of module ``path``, one per call that upsampled, in call order."""
    keys = {key for call in calls for key in call.stack if key[0] == path}
    return sorted(keys, key=lambda key: key[1])
