"""patch_fpn: find the feature-map upsampling call sites of a model and route them to learned upsamplers."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ._discovery import Call, Recorder, choose_owners, covers, is_excluded, normalize_example_inputs, owner_call_keys
from ._discovery import record as record_calls
from ._fx_rewrite import rewrite_owner
from ._report import ALREADY_PATCHED, MODULE, SKIPPED, PatchReport, PatchSite, group_sites, site_from_call
from ._runtime import RuntimePlan, plan_runtime
from ._tracing import leaf_types as check_leaf_types
from ._tracing import trace_owner
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
    """Replace, in place, every feature-map enlargement of ``model`` by a learned upsampler (SRFUpsample by default).

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
        upsampler: ``None`` (``SRFUpsample(channels)`` with the paper's configuration); a name from
            :func:`srf_upsample.list_upsamplers` (``"carafe"``, ``"dysample"``, ``"srf-lite"``, ``"srf-paper"``,
            ``"srf-guided"``, or a shipped generator such as ``"srf-lite-mobilenetv2-fpn"``, which serves only sites
            with its channel count); a factory called with the channel count (e.g.
            ``functools.partial(SRFUpsample, variant="lite")``); or a ready module (e.g. from
            ``SRFUpsample.from_pretrained``), which serves only sites with its ``in_channels``. An upsampler whose
            ``accepts_guide`` attribute is true (``"srf-guided"``, or any module that has one) is also called with
            ``guide=`` the map its output is added to, where the neck has one (``report.sites[i].guide`` names it).
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
        TypeError: ``model`` is not an ``nn.Module``, or it is (or holds) a TorchScript module, whose compiled
            forward can be neither traced nor hooked: patch the ``nn.Module`` before ``torch.jit.script`` /
            ``torch.jit.trace``.
        ValueError: ``upsampler`` is an unknown name (the message lists the known ones), the example input does not
            run, a ``concrete_args`` key names no submodule, a container module
            (``nn.Sequential`` ...) that fx cannot trace calls F.interpolate directly, or ``strict=True`` and nothing
            was replaced.

    Example:
        >>> import functools
        >>> import torch
        >>> from torchvision.ops import FeaturePyramidNetwork
        >>> from srf_upsample import SRFUpsample, patch_fpn
        >>> fpn = FeaturePyramidNetwork([8, 16], 8)
        >>> fpn, report = patch_fpn(fpn, functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1))
        >>> len(report.replaced)
        1
        >>> out = fpn({"0": torch.rand(2, 8, 17, 25), "1": torch.rand(2, 16, 9, 13)})
        >>> out["0"].shape
        torch.Size([2, 8, 17, 25])
        >>> fpn, report = patch_fpn(FeaturePyramidNetwork([8, 16], 8), "dysample")  # by name
        >>> type(fpn.srf_upsampler_c8).__name__
        'DySample'
    """
    _check_model(model)
    _check_exclude(exclude)
    provider = UpsamplerProvider(upsampler, share)
    leaf_types = check_leaf_types(leaf_modules)
    concrete = _check_concrete_args(model, concrete_args)
    inputs = normalize_example_inputs(model, example_inputs)

    was_training = model.training
    try:
        model.eval()
        recorder = _record_example(model, inputs, is_built=example_inputs is None)
        choose_owners(recorder.calls)
        to_trace, left_alone = _classify_calls(recorder.calls, exclude)
        roots = _outermost_owners(model, to_trace)
        patches = _build_patches(model, roots, recorder, provider, leaf_types, concrete, exclude)
        left_alone = _drop_covered_sites(left_alone, roots, [path for path, _ in patches.fallbacks])
        result = _swap_in(model, patches)
        provider.installed()
    finally:
        model.train(was_training)
    result.train(was_training)

    report = PatchReport(
        model=type(model).__name__,
        sites=(*patches.sites, *group_sites(left_alone)),
        fallbacks=tuple(patches.fallbacks),
    )
    logger.info(
        "patch_fpn: %d of %d upsampling sites replaced in %s", len(report.replaced), len(report.sites), report.model
    )
    if strict and not report.replaced:
        raise ValueError(f"patch_fpn(strict=True) replaced no upsampling site in {report.model}:\n{report}")
    return result, report


@dataclass
class _Patches:
    """The replacements built for the traced submodules; nothing in the model has changed yet."""

    graphs: dict[str, fx.GraphModule] = field(default_factory=dict)  # submodule path -> rewritten graph module
    plans: list[RuntimePlan] = field(default_factory=list)  # run-time fallbacks
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (submodule path, why fx was not used)
    sites: list[PatchSite] = field(default_factory=list)  # the sites of the traced submodules, in model order


# ----------------------------------------------------------------------------------------------------------------
# Argument checks


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    scripted = next(((p, m) for p, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        # A ScriptModule's forward is compiled TorchScript: fx cannot trace it and it takes no forward hooks, so
        # neither the discovery run nor the fallback can see its calls.
        path, module = scripted
        where = f"model.{path}" if path else "model"
        raise TypeError(
            f"patch_fpn cannot patch a TorchScript module: {where} is a {type(module).__name__} "
            "(from torch.jit.script or torch.jit.trace), whose compiled forward can be neither traced nor hooked. "
            "Call patch_fpn on the original nn.Module, then script or trace the patched model."
        )


def _check_exclude(exclude: Sequence[str]) -> None:
    if isinstance(exclude, str) or not all(isinstance(pattern, str) for pattern in exclude):
        raise TypeError(f"exclude must be a sequence of fnmatch patterns (str), got {exclude!r}.")


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


# ----------------------------------------------------------------------------------------------------------------
# Steps


def _record_example(model: nn.Module, inputs: tuple, is_built: bool) -> Recorder:
    """Run the model once on the example and record its F.interpolate calls; a failure names the example."""
    try:
        return record_calls(model, inputs)
    except Exception as error:
        built = "the example input built for it" if is_built else "example_inputs"
        raise ValueError(
            f"Cannot build an example input for {type(model).__name__}: running it on {built} failed with "
            f"{type(error).__name__}: {error}. Pass example_inputs=(...) with the positional arguments of one "
            "forward call (e.g. the features dict of a neck)."
        ) from error


def _classify_calls(calls: list[Call], exclude: Sequence[str]) -> tuple[dict[str, list[Call]], list[PatchSite]]:
    """Split the recorded calls into candidates per owner path and sites left alone (in call order, with why)."""
    to_trace: dict[str, list[Call]] = {}
    left_alone: list[PatchSite] = []
    for call in calls:
        if call.owner < 0:
            left_alone.append(site_from_call(call, SKIPPED, "the model itself is an upsampler"))
            continue
        path = call.stack[call.owner][0]
        inner = call.modules[call.owner + 1] if call.owner + 1 < len(call.modules) else None
        reason = PARAMETER_REASON if call.is_parameter else direction(call.input_shape, call.output_shape)
        if inner is not None and is_upsampler(inner):
            left_alone.append(site_from_call(call, ALREADY_PATCHED, ""))
        elif is_excluded(path, exclude) or (call.frame[0] is not None and is_excluded(call.frame[0], exclude)):
            left_alone.append(site_from_call(call, SKIPPED, "matched by exclude"))
        elif reason:
            left_alone.append(site_from_call(call, SKIPPED, reason))
        else:
            to_trace.setdefault(path, []).append(call)
    return to_trace, left_alone


def _outermost_owners(model: nn.Module, owners: Iterable[str]) -> list[str]:
    """The owner paths not inside another owner (an inner one is traced as part of it), in model order."""
    roots: list[str] = []
    for path in sorted(owners, key=lambda p: (p.count(".") + bool(p), p)):
        if not any(covers(root, path) for root in roots):
            roots.append(path)
    order = {path: index for index, (path, _) in enumerate(model.named_modules())}
    return sorted(roots, key=order.__getitem__)


def _build_patches(
    model: nn.Module,
    roots: list[str],
    recorder: Recorder,
    provider: UpsamplerProvider,
    leaf_types: tuple[type, ...],
    concrete: dict[str, dict],
    exclude: Sequence[str],
) -> _Patches:
    """Trace and rewrite each owner with fx, or plan its run-time fallback where fx cannot be used."""
    modules = dict(model.named_modules())
    upsampling_ids = frozenset(id(m) for call in recorder.calls for m in call.modules)
    patches = _Patches()
    for path in roots:
        module = modules[path]
        owner_inputs = [recorder.inputs[key] for key in owner_call_keys(recorder.calls, path)]
        gm, why = trace_owner(module, owner_inputs, leaf_types, upsampling_ids, concrete.get(path))
        if gm is not None:
            gm, sites = rewrite_owner(path, module, gm, provider)
            patches.sites.extend(sites)
            if gm is not None:
                patches.graphs[path] = gm
            continue
        under = [call for call in recorder.calls if any(p == path for p, _ in call.stack)]
        plan, sites = plan_runtime(path, module, under, provider, exclude, why)
        _log_fallback(path, module, plan, why)
        patches.fallbacks.append((path, why))
        patches.sites.extend(group_sites(sites))
        if plan is not None:
            patches.plans.append(plan)
    return patches


def _log_fallback(path: str, module: nn.Module, plan: RuntimePlan | None, why: str) -> None:
    # Swapping nn.Upsample modules loses nothing; run-time routing is the one to know about (export, compile).
    is_swap = plan is not None and plan.method == MODULE
    level = logging.INFO if plan is None or is_swap else logging.WARNING
    method = "its nn.Upsample modules swapped" if is_swap else "routed"
    logger.log(level, "patch_fpn: %s (%s) %s without fx: %s", path or "<model>", type(module).__name__, method, why)


def _drop_covered_sites(sites: list[PatchSite], roots: list[str], fallback_paths: list[str]) -> list[PatchSite]:
    """Drop the run-time records of sites that patched owners report from their graphs or plans.

    A site excluded inside a traced owner stays: the owner's graph never sees it (it sits in an excluded child).
    """
    return [
        site
        for site in sites
        if not any(covers(root, site.module_path) for root in fallback_paths)
        and (
            not any(covers(root, site.module_path) for root in roots)
            or (site.action == SKIPPED and "exclude" in site.reason)
        )
    ]


def _swap_in(model: nn.Module, patches: _Patches) -> nn.Module:
    """Put every built replacement in place; return the model, or its rewritten graph if the model was traced."""
    # Swap only now, after every replacement was built, so a failure leaves the model untouched.
    modules = dict(model.named_modules())
    result = model
    for path, gm in patches.graphs.items():
        if not path:
            result = gm
            continue
        parent_name, _, child = path.rpartition(".")
        modules[parent_name].register_module(child, gm)
    current = dict(model.named_modules())
    for plan in patches.plans:
        plan.apply(current)
    return result
