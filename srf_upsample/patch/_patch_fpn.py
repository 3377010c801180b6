"""patch_fpn: find the feature-map upsampling call sites of a model and route them to learned upsamplers."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import fx, nn

from ._discovery import (
    _Call,
    _choose_owners,
    _covers,
    _excluded,
    _group_runtime_sites,
    _normalize_example_inputs,
    _owner_calls,
    _record,
    _runtime_site,
)
from ._fx_rewrite import leaf_types as _leaf_types
from ._fx_rewrite import rewrite_owner, trace_owner
from ._report import ALREADY_PATCHED, MODULE, SKIPPED, PatchReport, PatchSite
from ._runtime import RuntimePlan, plan_runtime
from ._upsamplers import PARAMETER_REASON, Upsampler, UpsamplerProvider, direction, is_upsampler

__all__ = ["DEFAULT_EXCLUDE", "patch_fpn"]

logger = logging.getLogger(__name__)

# Module paths (fnmatch patterns) whose upsampling is not a feature-pyramid site: the image resize/paste of
# torchvision's GeneralizedRCNNTransform and per-RoI heads (e.g. the keypoint head's 2x heatmap upsampling).
DEFAULT_EXCLUDE: tuple[str, ...] = ("transform", "transform.*", "*head*")


def patch_fpn(
    model: nn.Module,
    upsampler: Upsampler | None = None,
    *,
    share: bool = True,
    example_inputs: Any = None,
    leaf_modules: Iterable[type[nn.Module]] | None = None,
    concrete_args: Mapping[str, Mapping[str, Any]] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    strict: bool = False,
) -> tuple[nn.Module, PatchReport]:
    """Replace, in place, every feature-map enlargement of ``model`` by a learned upsampler (SRFUpsample).

    Runs ``model`` once on ``example_inputs`` (eval mode, no grad) to find which submodules call ``F.interpolate``
    (also via ``F.upsample*`` or ``nn.Upsample``) and what they receive. Each smallest such submodule (the FPN, not
    the detector) is traced with torch.fx in eval and in train mode, shape-propagated on its recorded input, and each
    call site that enlarges a 4D feature map becomes a call of the upsampler with the same input and ``size`` /
    ``scale_factor`` (a ``size`` computed from run-time shapes stays computed, so the model runs at any input size).
    Where fx cannot trace a submodule, or its train and eval graphs differ, its own forward is kept: its
    ``nn.Upsample`` modules are swapped for :class:`UpsampleSite` modules if those are all its sites, else its
    enlarging calls are routed at run time by forward hooks. ``report.sites[i].method`` says which. At every replaced
    site, a call that is not an enlargement on the actual input runs the original interpolation. Downsampling,
    same-size resizes, 1x1 broadcasts and sites under ``exclude`` are left alone and reported. The patched submodules
    are swapped in only after all were built; every original ``state_dict`` key is kept. ``model.training`` is
    restored.

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
        concrete_args: per submodule path (``""`` for the model), the ``concrete_args`` fx traces its forward with,
            merged over the ones built from the example (``{"neck": {"num_levels": 3}}``).
        exclude: fnmatch patterns of submodule paths whose upsampling is left alone; the default skips
            torchvision's image transform and detection heads.
        strict: raise ValueError if no site is replaced.

    Returns:
        ``(model, report)``: the patched model (the same object, unless ``model`` itself is the traced submodule,
        then a new ``fx.GraphModule``) and a :class:`PatchReport`.

    Raises:
        ValueError: the example input does not run, a ``concrete_args`` key names no submodule, a container module
            (``nn.Sequential`` ...) that fx cannot trace calls F.interpolate directly, or ``strict=True`` and nothing
            was replaced.

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
    provider = UpsamplerProvider(upsampler, share)
    leaf_types = _leaf_types(leaf_modules)
    concrete = _check_concrete_args(model, concrete_args)
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
            reason = PARAMETER_REASON if call.is_parameter else direction(call.input_shape, call.output_shape)
            if inner is not None and is_upsampler(inner):
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
        built: dict[str, fx.GraphModule] = {}
        plans: list[RuntimePlan] = []
        fallbacks: list[tuple[str, str]] = []
        owner_sites: list[PatchSite] = []
        for path in sorted(roots, key=lambda p: list(modules).index(p)):
            module = modules[path]
            owner_inputs = [recorder.inputs[key] for key in _owner_calls(calls, path, recorder)]
            gm, why = trace_owner(module, owner_inputs, leaf_types, upsampling_ids, concrete.get(path))
            if gm is not None:
                gm, sites = rewrite_owner(path, module, gm, provider)
                owner_sites.extend(sites)
                if gm is not None:
                    built[path] = gm
                continue
            fallbacks.append((path, why))
            under = [call for call in calls if any(p == path for p, _ in call.stack)]
            plan, sites = plan_runtime(path, module, under, provider, exclude, why)
            # Swapping nn.Upsample modules loses nothing; run-time routing is the one to know about (export, compile).
            level = logging.INFO if plan is None or plan.method == MODULE else logging.WARNING
            method = "its nn.Upsample modules swapped" if plan is not None and plan.method == MODULE else "routed"
            name = path or "<model>"
            logger.log(level, "patch_fpn: %s (%s) %s without fx: %s", name, type(module).__name__, method, why)
            owner_sites.extend(_group_runtime_sites(sites))
            if plan is not None:
                plans.append(plan)
        fallback_paths = [path for path, _ in fallbacks]
        # Sites in patched owners are reported from their graphs or plans; drop the run-time records they cover.
        runtime_sites = [
            (index, site)
            for index, site in runtime_sites
            if not any(_covers(root, site.module_path) for root in fallback_paths)
            and (
                not any(_covers(root, site.module_path) for root in roots)
                or (site.action == SKIPPED and "exclude" in site.reason)
            )
        ]

        # Swap only now, after every replacement was built, so a failure leaves the model untouched.
        result = model
        for path, gm in built.items():
            if not path:
                result = gm
                continue
            parent_name, _, child = path.rpartition(".")
            modules[parent_name].register_module(child, gm)
        current = dict(model.named_modules())
        for plan in plans:
            plan.apply(current)
        provider.installed()
    finally:
        model.train(was_training)
    result.train(was_training)

    sites = tuple(owner_sites) + _group_runtime_sites([site for _, site in sorted(runtime_sites, key=lambda x: x[0])])
    report = PatchReport(model=type(model).__name__, sites=sites, fallbacks=tuple(fallbacks))
    logger.info("patch_fpn: %d of %d upsampling sites replaced in %s", len(report.replaced), len(sites), report.model)
    if strict and not report.replaced:
        raise ValueError(f"patch_fpn(strict=True) replaced no upsampling site in {report.model}:\n{report}")
    return result, report


def _check_concrete_args(model: nn.Module, concrete_args: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict]:
    if concrete_args is None:
        return {}
    if not isinstance(concrete_args, Mapping) or not all(
        isinstance(key, str) and isinstance(value, Mapping) for key, value in concrete_args.items()
    ):
        raise TypeError(
            "concrete_args must map submodule paths to dicts of forward arguments, e.g. "
            f"{{'neck': {{'num_levels': 3}}}} (\"\" for the model itself), got {concrete_args!r}."
        )
    paths = dict(model.named_modules())
    unknown = [key for key in concrete_args if key not in paths]
    if unknown:
        raise ValueError(
            f"concrete_args names submodules that {type(model).__name__} does not have: {unknown}. Use dotted paths "
            'as in model.named_modules() ("" for the model itself); the report of a first patch_fpn call lists '
            "the submodules that hold upsampling."
        )
    return {key: dict(value) for key, value in concrete_args.items()}
