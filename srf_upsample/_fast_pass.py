"""The generator's in-place inference route: when it may run, and its tail fused into the shortcut as one GEMM.

On CPU the lite generator is memory-bound: its high-resolution tensors cost more than its FLOPs. In inference
(``SRFUpsample`` in eval mode, no autograd, no autocast) its activations and its blocks' additions are written in
place, and two rearrangements, each exact up to float rounding, remove high-resolution passes: the tail's bias is added
to ``x`` before the bilinear shortcut (bilinear weights sum to 1, so ``up(x + b) = up(x) + b``) at a quarter of the
pixels; and the tail 1x1 conv and the final sum become one in-place GEMM on the shortcut (``shortcut += W @ hidden``),
instead of a conv writing the residual and an add reading it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._interpolate import interpolate

__all__ = ["may_run_inplace", "shortcut_plus_tail"]


def may_run_inplace(generator: nn.Module, x: torch.Tensor, size: Sequence[Any]) -> bool:
    """Whether ``generator``'s pass of ``x`` to ``size`` may write in place (so no autograd, no autocast, no BN)."""
    return (
        generator.use_fast_inference
        and generator.variant != "paper"
        and not generator.training
        and not torch.is_grad_enabled()
        and (generator.norm == "none" or generator.is_fused)
        and all(type(s) is int for s in (*x.shape, *size))
        and x.is_contiguous()
        and not torch.is_autocast_enabled(x.device.type)
    )


def shortcut_plus_tail(x: torch.Tensor, tail: nn.Conv2d, hidden: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``up(x) + tail(hidden)`` as ``up(x + b)`` plus one in-place GEMM of the 1x1 ``tail`` on ``hidden``.

    Shape:
        - x: :math:`(N, C, H, W)`
        - hidden: :math:`(N, C_h, H_{out}, W_{out})`
        - Output: :math:`(N, C, H_{out}, W_{out})` with ``(H_out, W_out) = size``

    Example:
        >>> tail = nn.Conv2d(4, 3, 1)
        >>> x, hidden = torch.randn(2, 3, 5, 6), torch.randn(2, 4, 10, 12)
        >>> with torch.no_grad():
        ...     out = shortcut_plus_tail(x, tail, hidden, (10, 12))
        ...     plain = interpolate(x, size=(10, 12), mode="bilinear") + tail(hidden)
        >>> out.shape, bool(torch.allclose(out, plain, atol=1e-5))
        (torch.Size([2, 3, 10, 12]), True)
    """
    n, c = x.shape[:2]
    out = interpolate(x + tail.bias.view(1, -1, 1, 1), size=size, mode="bilinear")
    weight = tail.weight.view(c, -1).expand(n, -1, -1)
    out.view(n, c, -1).baddbmm_(weight, hidden.reshape(n, hidden.shape[1], -1))
    return out
