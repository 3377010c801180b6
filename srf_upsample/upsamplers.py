"""One name per learned upsampler: the registry that builds an upsampler for a channel count from its name.

Every place that takes an upsampler (``patch_fpn``, ``use_srf``, the experiment arms, ``srf-upsample export``) also
takes one of these names. Built-in names map to a factory in ``UPSAMPLERS``; the names of the shipped generators
(``srf_upsample.list_shipped()``) load their trained weights from the package, offline.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ._checks import check_positive_int
from .carafe import CARAFE
from .dysample import DySample
from .hub import CONFIG_NAME, list_shipped, shipped_weights_dir
from .upsample import SRFUpsample

__all__ = [
    "UPSAMPLERS",
    "UpsamplerSpec",
    "UpsamplerTable",
    "build_upsampler",
    "list_upsamplers",
    "resolve_upsampler",
    "upsampler_types",
]


@dataclass(frozen=True)
class UpsamplerSpec:
    """A built-in upsampler: its one-line description and the factory called with the channel count."""

    summary: str
    build: Callable[[int], nn.Module]


UPSAMPLERS: dict[str, UpsamplerSpec] = {
    "carafe": UpsamplerSpec(
        "CARAFE (Wang et al., ICCV 2019): content-aware reassembly with predicted 5x5 kernels", CARAFE
    ),
    "dysample": UpsamplerSpec(
        "DySample (Liu et al., ICCV 2023): bilinear sampling at learned offsets, starts as bilinear", DySample
    ),
    "srf-paper": UpsamplerSpec(
        "SRF-GAN generator, the paper's configuration (SRFUpsample variant 'paper'), untrained",
        functools.partial(SRFUpsample, variant="paper"),
    ),
    "srf-lite": UpsamplerSpec(
        "SRF-GAN generator, light configuration (SRFUpsample variant 'lite'), untrained",
        functools.partial(SRFUpsample, variant="lite"),
    ),
    # patch_fpn passes the guide (the map the output is added to) because the module's accepts_guide is true.
    "srf-guided": UpsamplerSpec(
        "SRF-GAN generator guided by the FPN's lateral map (SRFUpsample variant 'guided'), untrained",
        functools.partial(SRFUpsample, variant="guided"),
    ),
}


class UpsamplerTable(dict[str, str]):
    """Upsampler names mapped to their one-line descriptions; ``str()`` gives one aligned line per name."""

    def __str__(self) -> str:
        width = max((len(name) for name in self), default=0)
        return "\n".join(f"{name:<{width}}  {summary}" for name, summary in self.items())


def _shipped_summary(name: str) -> str:
    config = json.loads((shipped_weights_dir() / name / CONFIG_NAME).read_text())
    return (
        f"shipped SRFUpsample, variant {config.get('variant', 'paper')!r}, {config.get('in_channels')} channels, "
        "trained weights (offline)"
    )


def list_upsamplers() -> UpsamplerTable:
    """Return every upsampler name with its one-line description: the built-in ones, then the shipped generators.

    Returns:
        An :class:`UpsamplerTable` (a dict ``name -> description``); ``print`` it for one line per name.

    Example:
        >>> names = list_upsamplers()
        >>> list(names)[:5]
        ['carafe', 'dysample', 'srf-paper', 'srf-lite', 'srf-guided']
        >>> names["srf-lite-mobilenetv2-fpn"]
        "shipped SRFUpsample, variant 'lite', 256 channels, trained weights (offline)"
        >>> print(str(names).splitlines()[1])  # doctest: +NORMALIZE_WHITESPACE
        dysample DySample (Liu et al., ICCV 2023): bilinear sampling at learned offsets, starts as bilinear
    """
    table = UpsamplerTable((name, spec.summary) for name, spec in UPSAMPLERS.items())
    table.update((name, _shipped_summary(name)) for name in list_shipped())
    return table


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'carafe', got {name!r} of type {type(name).__name__}.")
    if name not in UPSAMPLERS and name not in list_shipped():
        raise ValueError(
            f"Unknown upsampler {name!r}; the known names are {list(list_upsamplers())} "
            "(srf_upsample.list_upsamplers() describes each)."
        )
    return name


def build_upsampler(name: str, channels: int) -> nn.Module:
    """Build the upsampler called ``name`` for feature maps with ``channels`` channels.

    Built-in names give a freshly initialised module (in training mode, as every new ``nn.Module``); a shipped name
    gives its generator with the trained weights, from the package (no download), also in training mode.

    Args:
        name: one of ``list_upsamplers()``.
        channels: the channel count C of the maps it upsamples; a shipped generator serves only its own.

    Returns:
        The module, called like ``F.interpolate``: ``up(x, size=...)`` or ``up(x, scale_factor=...)``.

    Raises:
        TypeError: ``name`` is not a str or ``channels`` not an int.
        ValueError: ``name`` is unknown (the message lists the known names), ``channels`` is not positive, or a
            shipped generator was trained for another channel count.

    Shape:
        - Input of the module: :math:`(N, C, H, W)`; output :math:`(N, C, H_{out}, W_{out})` with
          ``H_out = size[0]`` or ``floor(H * scale_factor)``.

    Example:
        >>> import torch
        >>> up = build_upsampler("dysample", 8)
        >>> up(torch.rand(2, 8, 5, 7), size=(9, 13)).shape
        torch.Size([2, 8, 9, 13])
    """
    name = _check_name(name)
    check_positive_int("channels", channels)
    if name in UPSAMPLERS:
        return UPSAMPLERS[name].build(channels)
    module = SRFUpsample.from_pretrained(name)
    if module.in_channels != channels:
        raise ValueError(
            f"The shipped generator {name!r} takes {module.in_channels}-channel maps, got channels={channels}; use "
            f"it where the FPN has {module.in_channels} channels, or a built-in name such as 'srf-lite' (untrained)."
        )
    return module.train()


def resolve_upsampler(name: str) -> nn.Module | Callable[[int], nn.Module]:
    """What ``patch_fpn(upsampler=name)`` uses: a shipped name's loaded generator, else a factory of channels.

    A shipped generator is one ready module, so (as a module passed to ``patch_fpn``) it serves the sites with its
    channel count and the others are reported as skipped.
    """
    name = _check_name(name)
    if name in UPSAMPLERS:
        return UPSAMPLERS[name].build
    return SRFUpsample.from_pretrained(name).train()


def upsampler_types() -> tuple[type[nn.Module], ...]:
    """The module classes behind the registry's names (an instance of one is recognised as an upsampler)."""
    return (SRFUpsample, DySample, CARAFE)
