"""Flat, prefixed state dicts: several named modules in one ``safetensors`` file (``"<name>.<key>"``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..hub import load_state_dict_strict

__all__ = ["load_prefixed", "state_for_save", "strip_prefix"]


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose key starts with ``prefix`` (e.g. ``"detector."``), with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def load_prefixed(modules: Mapping[str, nn.Module], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (keys ``"<name>.<key>"``) strictly into each module of ``modules`` by name."""
    for name, module in modules.items():
        load_state_dict_strict(module, strip_prefix(state, name + "."), source=f"{name} weights of {source}")


def state_for_save(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat state dict ``"<name>.<key>"`` on the CPU, every tensor its own contiguous copy."""
    # Clone: a shared G sits under several names of the patched FPN, and safetensors refuses shared storage.
    return {
        f"{name}.{key}": value.detach().cpu().clone().contiguous()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
