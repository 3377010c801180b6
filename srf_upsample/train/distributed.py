"""Processes and devices: the torchrun environment, the training device, and checks that ranks stay in step."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from .._checks import check_device

__all__ = ["all_ranks_true", "gather_parameter_hashes", "init_distributed", "parameter_hash", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names (``auto``: CUDA when there is one, else the CPU); one this machine lacks raises."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device("device (--device)", name)


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` from torchrun's environment; joins the process group when there are several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def parameter_hash(modules: Mapping[str, nn.Module]) -> str:
    """A SHA-256 of every parameter of ``modules`` (names and bytes), equal on ranks that DDP kept in sync."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        for key, param in sorted(modules[name].named_parameters()):
            digest.update(key.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_parameter_hashes(modules: Mapping[str, nn.Module], world_size: int) -> list[str]:
    """All-gather :func:`parameter_hash` of every rank; raise if they differ (DDP must keep the ranks identical)."""
    digest = parameter_hash(modules)
    if world_size == 1:
        return [digest]
    gathered: list[str] = [""] * world_size
    dist.all_gather_object(gathered, digest)
    if len(set(gathered)) != 1:
        raise RuntimeError(
            f"Parameters differ across ranks after training ({gathered}); gradients were not "
            "all-reduced (call the DDP wrapper, not .module)."
        )
    return gathered


def all_ranks_true(flag: bool, world_size: int, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (a MIN all-reduce; the flag itself with one process)."""
    if world_size == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
