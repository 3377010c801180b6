"""The run-time fallback for submodules fx cannot use: swap their nn.Upsample modules, or route their calls by hooks.

Both keep the submodule's own Python code, so control flow on inputs, attention encoders, training-only branches and
any argument type keep working; only the enlarging calls change. The upsamplers are registered on the submodule
(``<path>.srf_upsampler_c<C>``), as with fx, so state-dict keys do not depend on the method.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._discovery import Call, is_excluded
from ._report import ALREADY_PATCHED, MODULE, REPLACED, RUNTIME, SKIPPED, PatchSite, site_from_call
from ._upsamplers import PARAMETER_REASON, UpsamplerProvider, direction, enlarge_or_interpolate, is_upsampler

__all__ = ["RuntimePlan", "RuntimeRouter", "UpsampleSite", "plan_runtime"]

# Without a graph, the call is seen alone: the tensor its output will be added to or concatenated with does not
# exist yet, or is not known to be that tensor, so the guided upsampler runs its unguided pass there.
RUNTIME_GUIDE_REASON = "patched without fx, the map its output meets is not known at the call"

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_INTERPOLATE_SIGNATURE = inspect.signature(F.interpolate)


class UpsampleSite(nn.Upsample):
    """An ``nn.Upsample`` swapped in by :func:`patch_fpn`: enlargements go to the upsampler for the channel count.

    It is still an ``nn.Upsample`` with the original ``size``, ``scale_factor``, ``mode`` and ``align_corners`` and
    the original's extra attributes (frameworks such as ultralytics keep layer bookkeeping on each module), so code
    that inspects the layer keeps working. A call that is not an enlargement, or has a channel count no upsampler
    serves, does exactly what the original did.

    Args:
        original: the module replaced.
        upsamplers: channel count to upsampler. They are registered on a parent module (so each shared upsampler has
            one state-dict key); this module only refers to them.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from srf_upsample import SRFUpsample
        >>> site = UpsampleSite(nn.Upsample(scale_factor=2), {8: SRFUpsample(8, hidden_channels=8, num_blocks=1)})
        >>> site(torch.rand(2, 8, 5, 7)).shape  # 8 channels: the upsampler
        torch.Size([2, 8, 10, 14])
        >>> site(torch.rand(2, 3, 5, 7)).shape  # no upsampler for 3 channels: what nn.Upsample does
        torch.Size([2, 3, 10, 14])
    """

    def __init__(self, original: nn.Upsample, upsamplers: dict[int, nn.Module]) -> None:
        super().__init__(
            size=original.size,
            scale_factor=original.scale_factor,
            mode=original.mode,
            align_corners=original.align_corners,
            recompute_scale_factor=original.recompute_scale_factor,
        )
        for key, value in vars(original).items():
            if not key.startswith("_") and key not in vars(self):
                setattr(self, key, value)
        # A plain dict, not a ModuleDict: the parent owns the upsamplers (one key each even when shared).
        self.upsamplers = dict(upsamplers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Upsample's signature
        upsampler = self.upsamplers.get(int(input.shape[1])) if input.dim() == 4 else None
        if upsampler is None:
            return super().forward(input)
        return enlarge_or_interpolate(
            upsampler,
            input,
            self.size,
            self.scale_factor,
            self.mode,
            self.align_corners,
            self.recompute_scale_factor,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", upsamplers for channels {sorted(self.upsamplers)}"


# Checkpoints that pickle a patched model (ultralytics' last.pt) refer to the class by this public path.
UpsampleSite.__module__ = "srf_upsample.patch"


class RuntimeRouter:
    """Forward hooks of one submodule that route the enlarging F.interpolate calls of its forward to upsamplers.

    The pre-hook enters a TorchFunctionMode, the post-hook (always called) leaves it; every F.interpolate made while
    the forward runs (``nn.Upsample`` and ``F.upsample*`` end there too) reaches the mode. Calls made inside an
    upsampler or an excluded child are not routed (pause hooks on those modules). The router holds names only, so
    the patched model pickles and deep-copies with it.

    Args:
        by_channels: channel count to upsampler attribute name (``share=True``).
        by_call: index of the call within one forward to ``(attribute name, channel count)`` (``share=False``).
    """

    def __init__(self, by_channels: dict[int, str], by_call: dict[int, tuple[str, int]]) -> None:
        self.by_channels = dict(by_channels)
        self.by_call = dict(by_call)
        self._reset()

    def _reset(self) -> None:
        self.paused = 0
        self.modes: list[_RouteMode] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"by_channels": self.by_channels, "by_call": self.by_call}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __call__(self, module: nn.Module, args: tuple, *rest: Any) -> None:
        # Registered as pre-hook (module, args) and as always-called post-hook (module, args, output).
        if rest:
            if self.modes:
                self.modes.pop().__exit__(None, None, None)
            return
        mode = _RouteMode(self, module)
        mode.__enter__()
        self.modes.append(mode)

    def name_for(self, channels: int, index: int) -> str | None:
        """Attribute name of the upsampler for the ``index``-th call of one forward, or None (run the original)."""
        if self.by_call:
            name, expected = self.by_call.get(index, (None, None))
            return name if expected == channels else None
        return self.by_channels.get(channels)


class _PauseHook:
    """Pre/post hook of an upsampler or excluded child inside a routed submodule: its calls are not routed."""

    def __init__(self, router: RuntimeRouter, step: int) -> None:
        self.router = router
        self.step = step

    def __call__(self, module: nn.Module, *args: Any) -> None:
        self.router.paused = max(0, self.router.paused + self.step)


class _RouteMode(TorchFunctionMode):
    def __init__(self, router: RuntimeRouter, owner: nn.Module) -> None:
        super().__init__()
        self.router = router
        self.owner = owner
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.interpolate or self.router.paused:
            return func(*args, **kwargs)
        index = self.count
        self.count += 1
        bound = _INTERPOLATE_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        x = bound.arguments.pop("input")
        is_feature_map = x.dim() == 4 and not isinstance(x, nn.Parameter)
        name = self.router.name_for(int(x.shape[1]), index) if is_feature_map else None
        if name is None:
            return func(*args, **kwargs)
        # The mode is off inside this handler, so the upsampler's own F.interpolate calls are not routed again.
        return enlarge_or_interpolate(getattr(self.owner, name), x, **bound.arguments)


@dataclass
class RuntimePlan:
    """The fallback built for one submodule, applied only once every submodule's patch was built."""

    path: str
    method: str
    upsamplers: dict[str, nn.Module] = field(default_factory=dict)
    swaps: dict[str, UpsampleSite] = field(default_factory=dict)
    router: RuntimeRouter | None = None
    pause_paths: tuple[str, ...] = ()

    def apply(self, modules: dict[str, nn.Module]) -> None:
        """Register the upsamplers and swap the modules (or hooks) in; ``modules`` is ``model.named_modules()``."""
        owner = modules[self.path]
        for name, upsampler in self.upsamplers.items():
            if not hasattr(owner, name):
                owner.register_module(name, upsampler)
        for path, site in self.swaps.items():
            parent_name, _, child = path.rpartition(".")
            modules[parent_name].register_module(child, site)
        if self.router is not None:
            owner.register_forward_pre_hook(self.router)
            owner.register_forward_hook(self.router, always_call=True)
            paused = [modules[path] for path in self.pause_paths]
            paused += [module for module in self.upsamplers.values() if module not in paused]
            for module in paused:
                module.register_forward_pre_hook(_PauseHook(self.router, 1))
                module.register_forward_hook(_PauseHook(self.router, -1), always_call=True)


def _inner(call: Call) -> nn.Module | None:
    return call.modules[call.owner + 1] if 0 <= call.owner < len(call.modules) - 1 else None


def _inner_path(call: Call) -> str:
    return call.stack[call.owner + 1][0]


def _owner_depth(call: Call, path: str) -> int:
    """Index in the call's module stack of the (innermost) call of the submodule at ``path``."""
    return max(i for i, (p, _) in enumerate(call.stack) if p == path)


def _index_in_forward(call: Call, calls: Sequence[Call], path: str) -> int:
    """Position of ``call`` among the routed calls made during the same forward call of the submodule ``path``."""
    key = call.stack[_owner_depth(call, path)]
    return [c for c in calls if key in c.stack].index(call)


def plan_runtime(
    path: str,
    owner: nn.Module,
    calls: Sequence[Call],
    provider: UpsamplerProvider,
    exclude: Sequence[str],
    reason: str,
) -> tuple[RuntimePlan | None, list[PatchSite]]:
    """Build the run-time fallback of submodule ``path`` from the calls recorded under it. Nothing is changed here.

    Args:
        path: dotted path of the submodule (``""`` for the model).
        owner: the submodule.
        calls: every recorded F.interpolate call made while it ran, in order.
        provider: hands out the upsampler of each site.
        exclude: fnmatch patterns of paths left alone.
        reason: why fx was not used (for the error message of an unsupported case).

    Returns:
        ``(plan or None if nothing is replaced, one PatchSite per call, grouped later by code location)``.
    """
    decisions, routed, pause_paths = _decide_calls(path, owner, calls, provider, exclude)
    replaced = [call for call, action, _ in decisions if action == REPLACED]
    is_swap = _is_swap(path, owner, replaced, reason)
    plan = RuntimePlan(path=path, method=MODULE if is_swap else RUNTIME, pause_paths=tuple(sorted(pause_paths)))
    sites: list[PatchSite] = []
    by_channels: dict[int, str] = {}
    by_call: dict[int, tuple[str, int]] = {}
    per_module: dict[str, dict[int, nn.Module]] = {}
    for call, action, why in decisions:
        if action != REPLACED:
            sites.append(site_from_call(call, action, why, method=plan.method if action == SKIPPED else ""))
            continue
        channels = call.input_shape[1]
        if is_swap:
            site_name = _swap_site_name(call, path, replaced, provider.share)
            name, upsampler = _get(provider, plan, channels, site_name)
            per_module.setdefault(_inner_path(call), {})[channels] = upsampler
        else:
            index = _index_in_forward(call, routed, path)
            name, upsampler = _get(provider, plan, channels, f"call{index}")
            if provider.share:
                by_channels[channels] = name
            else:
                by_call[index] = (name, channels)
        site = site_from_call(call, REPLACED, "", upsampler=name, method=plan.method)
        if getattr(upsampler, "accepts_guide", False):
            site = dataclasses.replace(site, guide_reason=RUNTIME_GUIDE_REASON)
        sites.append(site)
    if not replaced:
        return None, sites
    if is_swap:
        _add_swaps(plan, owner, per_module)
    else:
        plan.router = RuntimeRouter(by_channels, by_call)
    return plan, sites


def _decide_calls(
    path: str, owner: nn.Module, calls: Sequence[Call], provider: UpsamplerProvider, exclude: Sequence[str]
) -> tuple[list[tuple[Call, str, str]], list[Call], set[str]]:
    """Decide each call's action; return ``(call, action, reason)`` per call, the routed calls and the paused paths.

    The routed calls are those the router sees (not inside an upsampler or an excluded child); the paused paths are
    the children whose calls the router must not see.
    """
    routed: list[Call] = []
    decisions: list[tuple[Call, str, str]] = []
    pause_paths: set[str] = set()
    for call in calls:
        inside = [p for p, _ in call.stack[_owner_depth(call, path) + 1 :]]
        upsampler_at = next((i for i, m in enumerate(call.modules) if is_upsampler(m)), None)
        if upsampler_at is not None:
            decisions.append((call, ALREADY_PATCHED, ""))
            pause_paths.update(p for p, _ in call.stack[upsampler_at : upsampler_at + 1] if p != path)
            continue
        excluded = next((p for p in inside if is_excluded(p, exclude)), None)
        frame_path = call.frame[0]
        if excluded is None and frame_path is not None and frame_path != path and is_excluded(frame_path, exclude):
            excluded = frame_path
        if excluded is not None:
            decisions.append((call, SKIPPED, "matched by exclude"))
            if excluded in dict(owner.named_modules(prefix=path)):
                pause_paths.add(excluded)
            continue
        routed.append(call)
        why = PARAMETER_REASON if call.is_parameter else direction(call.input_shape, call.output_shape)
        if not why:
            why = provider.mismatch(call.input_shape[1])
        decisions.append((call, REPLACED if not why else SKIPPED, why))
    return decisions, routed, pause_paths


def _is_swap(path: str, owner: nn.Module, replaced: Sequence[Call], reason: str) -> bool:
    """True if every replaced call is an nn.Upsample module call (swap the modules), False to route at run time."""
    is_swap = bool(replaced) and all(isinstance(_inner(call), nn.Upsample) for call in replaced)
    if replaced and not is_swap and isinstance(owner, _CONTAINERS):
        raise ValueError(
            f"patch_fpn cannot patch submodule {path or '<model>'!r} ({type(owner).__name__}): {reason}, and its "
            "enlarging calls are not nn.Upsample modules, so they can only be routed at run time, which needs a "
            "module with its own forward (not a container). Pass exclude=[...] to leave it alone, or "
            "concrete_args / leaf_modules so that fx can trace it."
        )
    return is_swap


def _swap_site_name(call: Call, path: str, replaced: Sequence[Call], share: bool) -> str:
    """Name a swapped nn.Upsample's site (used with ``share=False``): its path in the owner, ``.`` as ``_``.

    ``_c<C>`` is added where one nn.Upsample serves several channel counts.
    """
    upsample_path = _inner_path(call)
    channels = call.input_shape[1]
    site_name = (upsample_path[len(path) + 1 :] if path else upsample_path).replace(".", "_")
    if not share and any(
        c is not call and _inner_path(c) == upsample_path and c.input_shape[1] != channels for c in replaced
    ):
        site_name += f"_c{channels}"
    return site_name


def _add_swaps(plan: RuntimePlan, owner: nn.Module, per_module: dict[str, dict[int, nn.Module]]) -> None:
    """Build the UpsampleSite replacing each nn.Upsample (path -> channel count -> upsampler)."""
    modules = dict(owner.named_modules(prefix=plan.path))
    for upsample_path, upsamplers in per_module.items():
        plan.swaps[upsample_path] = UpsampleSite(modules[upsample_path], upsamplers)
    if isinstance(owner, _CONTAINERS):
        # A container's forward iterates its children: keep the upsamplers on the sites instead.
        for site in plan.swaps.values():
            for channels, upsampler in site.upsamplers.items():
                site.register_module(f"upsampler_c{channels}", upsampler)
        plan.upsamplers.clear()


def _get(provider: UpsamplerProvider, plan: RuntimePlan, channels: int, site_name: str) -> tuple[str, nn.Module]:
    name, upsampler = provider.get(channels, site_name)
    plan.upsamplers.setdefault(name, upsampler)
    return name, plan.upsamplers[name]
