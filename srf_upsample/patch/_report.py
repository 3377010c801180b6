"""The report of patch_fpn: one PatchSite per upsampling call site, gathered in a PatchReport, and their builders."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ._discovery import Call, covers
from ._upsamplers import is_upsampler

__all__ = [
    "ALREADY_PATCHED",
    "FX",
    "MODULE",
    "REPLACED",
    "RUNTIME",
    "SKIPPED",
    "PatchReport",
    "PatchSite",
    "group_sites",
    "plain_value",
    "site_from_call",
]

REPLACED = "replaced"
SKIPPED = "skipped"
ALREADY_PATCHED = "already patched"

# How a submodule was patched: its fx graph rewritten, its nn.Upsample modules swapped, or its calls routed at run time.
FX = "fx"
MODULE = "module"
RUNTIME = "runtime"


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
        method: how the submodule holding the site was patched: ``"fx"`` (graph rewritten), ``"module"`` (its
            ``nn.Upsample`` swapped for an upsampling site module), ``"runtime"`` (calls routed while its forward
            runs), or ``""`` for sites outside any patched submodule.
        guide: fx node name of the tensor passed as ``guide=`` to an upsampler that takes one (the map the
            upsampled one is added to or concatenated with); ``None`` where the site runs unguided.
        guide_via: how the upsampled map meets its guide: ``"add"`` or ``"cat"`` (empty without a guide).
        guide_reason: why a site served by a guide-taking upsampler runs its unguided pass (empty otherwise).
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
    method: str = ""
    guide: str | None = None
    guide_via: str = ""
    guide_reason: str = ""


@dataclass(frozen=True)
class PatchReport:
    """What :func:`patch_fpn` found and did, one :class:`PatchSite` per upsampling call site.

    ``str(report)`` is a readable table; :meth:`to_dict` gives plain data (JSON-serialisable).

    Attributes:
        model: class name of the patched model.
        sites: every upsampling call site found, in model order.
        fallbacks: ``(module path, why fx was not used)`` for each submodule patched without fx.

    Example:
        >>> import functools
        >>> from torchvision.ops import FeaturePyramidNetwork
        >>> from srf_upsample import SRFUpsample, patch_fpn
        >>> upsampler = functools.partial(SRFUpsample, hidden_channels=8, num_blocks=1)
        >>> _, report = patch_fpn(FeaturePyramidNetwork([8, 16], 8), upsampler)
        >>> [(site.node, site.action, site.upsampler) for site in report.sites]
        [('interpolate', 'replaced', 'srf_upsampler_c8')]
        >>> report.methods, report.to_dict()["num_replaced"]
        ({'': 'fx'}, 1)
    """

    model: str
    sites: tuple[PatchSite, ...] = field(default_factory=tuple)
    fallbacks: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def methods(self) -> dict[str, str]:
        """How each submodule with a replaced site was patched: ``{module path: "fx" | "module" | "runtime"}``."""
        return {site.module_path: site.method for site in self.replaced}

    @property
    def guided(self) -> tuple[PatchSite, ...]:
        """Replaced sites whose upsampler receives a guide (the map its output is added to or concatenated with)."""
        return tuple(site for site in self.replaced if site.guide is not None)

    @property
    def already_patched(self) -> tuple[PatchSite, ...]:
        """Sites that already called an upsampler before this patch (e.g. a model loaded from a patched checkpoint)."""
        return tuple(site for site in self.sites if site.action == ALREADY_PATCHED)

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
            "num_guided": len(self.guided),
            "fallbacks": [list(item) for item in self.fallbacks],
            "sites": [{key: plain(value) for key, value in asdict(site).items()} for site in self.sites],
        }

    def __str__(self) -> str:
        header = (
            f"patch_fpn report for {self.model}: {len(self.replaced)} replaced, {len(self.skipped)} left alone "
            f"({len(self.sites)} upsampling sites)"
        )
        if not self.sites:
            return header + "\n  no upsampling call sites found; the model is unchanged."
        columns = ("module", "node", "kind", "mode", "size / scale", "in -> out", "via", "action")
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
            if site.guide is not None:
                action += f", guided by {site.guide} ({site.guide_via})"
            elif site.guide_reason:
                action += f", unguided: {site.guide_reason}"
            if site.reason:
                action += f": {site.reason}"
            target = site.kind if site.target == site.kind else f"{site.kind} {site.target}"
            row = (site.module_path or "<model>", site.node, target, str(site.mode), amount, shapes, site.method or "-")
            rows.append((*row, action))
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns) - 1)]
        lines = [header]
        for row in rows:
            cells = [text.ljust(width) for text, width in zip(row, widths, strict=False)]
            lines.append("  " + "  ".join([*cells, row[-1]]))
        lines.extend(f"  {path or '<model>'} patched without fx: {reason}" for path, reason in self.fallbacks)
        return "\n".join(line.rstrip() for line in lines)


def _shape_text(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------------------------------------------
# Report entries for calls seen at run time


def site_from_call(call: Call, action: str, reason: str, upsampler: str | None = None, method: str = "") -> PatchSite:
    """Describe one F.interpolate call recorded while the example ran (a site that fx did not rewrite).

    Args:
        call: the recorded call, its owner chosen.
        action: ``REPLACED``, ``SKIPPED`` or ``ALREADY_PATCHED``.
        reason: why the site is left alone ("" when replaced).
        upsampler: attribute name of the upsampler now serving the site.
        method: how the submodule holding the site was patched (``MODULE``, ``RUNTIME``, or "" if it was not).

    Returns:
        The site, named by the innermost model module whose code makes the call and its file:line.
    """
    path = call.stack[call.owner][0] if call.owner >= 0 else ""
    frame_path, location = call.frame
    if frame_path is not None and covers(path, frame_path):
        path = frame_path
    owner_module = call.modules[call.owner] if call.owner >= 0 else None
    inner = call.modules[call.owner + 1] if call.owner + 1 < len(call.modules) else None
    kind, target = "F.interpolate", "F.interpolate"
    if inner is not None and (is_upsampler(inner) or isinstance(inner, nn.Upsample)) and owner_module is not None:
        kind = "SRFUpsample" if is_upsampler(inner) else "nn.Upsample"
        target = call.stack[call.owner + 1][0][len(path) + 1 if path else 0 :]
        upsampler = target if is_upsampler(inner) else upsampler
    arguments = call.arguments
    return PatchSite(
        module_path=path,
        node=location,
        kind=kind,
        target=target,
        mode=None if kind == "SRFUpsample" else arguments.get("mode", "nearest"),
        align_corners=None if kind == "SRFUpsample" else arguments.get("align_corners"),
        size=plain_value(arguments.get("size")),
        scale_factor=plain_value(arguments.get("scale_factor")),
        in_channels=call.input_shape[1] if call.input_shape and len(call.input_shape) > 1 else None,
        input_shape=call.input_shape,
        output_shape=call.output_shape,
        action=action,
        reason=reason,
        upsampler=upsampler,
        method=method,
    )


def plain_value(value: Any) -> Any:
    """Turn a ``size`` or ``scale_factor`` argument into plain ints, floats and tuples (for the report)."""
    if isinstance(value, torch.Size):
        return tuple(int(v) for v in value)
    if isinstance(value, (list, tuple)):
        return tuple(plain_value(v) for v in value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def group_sites(sites: Iterable[PatchSite]) -> tuple[PatchSite, ...]:
    """Merge run-time calls of one code location (e.g. mask pasting, once per detection) into one site."""
    groups: dict[tuple, list[PatchSite]] = {}
    for site in sites:
        key = (site.module_path, site.node, site.kind, site.target, site.action, site.reason, site.upsampler)
        groups.setdefault(key, []).append(site)
    return tuple(dataclasses.replace(group[0], num_calls=len(group)) for group in groups.values())
