"""The report types of patch_fpn: one PatchSite per upsampling call site, gathered in a PatchReport."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ALREADY_PATCHED", "FX", "MODULE", "REPLACED", "RUNTIME", "SKIPPED", "PatchReport", "PatchSite"]

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


@dataclass(frozen=True)
class PatchReport:
    """What :func:`patch_fpn` found and did, one :class:`PatchSite` per upsampling call site.

    ``str(report)`` is a readable table; :meth:`to_dict` gives plain data (JSON-serialisable).

    Attributes:
        model: class name of the patched model.
        sites: every upsampling call site found, in model order.
        fallbacks: ``(module path, why fx was not used)`` for each submodule patched without fx.
    """

    model: str
    sites: tuple[PatchSite, ...] = field(default_factory=tuple)
    fallbacks: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def methods(self) -> dict[str, str]:
        """How each submodule with a replaced site was patched: ``{module path: "fx" | "module" | "runtime"}``."""
        return {site.module_path: site.method for site in self.replaced}

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
