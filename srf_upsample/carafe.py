"""CARAFE: content-aware reassembly of features, a learned upsampler in plain PyTorch, for cost and AP baselines.

Written from the description in Wang, Chen, Xu, Liu, Loy & Lin, "CARAFE: Content-Aware ReAssembly of FEatures"
(ICCV 2019), with standard operators only (convolutions, softmax, padding, slicing, multiply-adds, pixel shuffle), so
it runs on any device and exports to ONNX without a custom op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ._checks import check_feature_map, check_int, resolve_output_size
from ._interpolate import interpolate
from .upsample import MAX_SCALE_FACTOR

__all__ = ["CARAFE", "INFERENCE_CHANNEL_CHUNK", "reassemble"]

# Channels per block of the inference route. A block's sums (scale**2 x 32 x H x (W + 4) floats) are what the taps
# read and write in turn: the smaller the block, the more of it stays in cache between taps, but the more small
# operations Python dispatches (and, with several threads, the more parallel regions start and join). 32 suits FPN
# levels of 256 channels up to 100x152 (an 800x1216 image).
INFERENCE_CHANNEL_CHUNK = 32


def _check_odd(name: str, value: object, hint: str) -> int:
    value = check_int(name, value, minimum=1)
    if value % 2 == 0:
        raise ValueError(f"{name} must be an odd positive int, got {value!r}; {hint}.")
    return value


def _output_layout(out: torch.Tensor, x: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, s, s, C, H, W) phases -> (N, C, s * H, s * W) in ``x``'s memory format (NCHW or channels_last), one copy."""
    batch, _, _, channels, height, width = out.shape
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.permute(0, 4, 1, 5, 2, 3).reshape(batch, scale * height, scale * width, channels)
        return out.permute(0, 3, 1, 2)
    return out.permute(0, 3, 4, 1, 5, 2).reshape(batch, channels, scale * height, scale * width)


def _reassemble_differentiable(x: torch.Tensor, kernels: torch.Tensor, scale: int) -> torch.Tensor:
    """The route for autograd and export: ``k_up**2`` multiply-adds of shifted views, all phases at once."""
    batch, channels, height, width = x.shape
    k_up = math.isqrt(kernels.shape[1])
    pad = k_up // 2
    padded = F.pad(x, (pad, pad, pad, pad))
    out = None
    for tap in range(k_up * k_up):
        dy, dx = divmod(tap, k_up)
        # (N, 1, C, H, W) neighbours times (N, s*s, 1, H, W) weights, broadcast over phases and channels. In place
        # after the first tap: the sum is never copied, and autograd saves only views of the inputs.
        shifted = padded[:, :, dy : dy + height, dx : dx + width].unsqueeze(1)
        weight = kernels[:, tap].unsqueeze(2)
        out = shifted * weight if out is None else out.addcmul_(shifted, weight)
    return _output_layout(out.view(batch, scale, scale, channels, height, width), x, scale)


def _reassemble_inference(
    x: torch.Tensor, kernels: torch.Tensor, scale: int, channel_chunk: int = INFERENCE_CHANNEL_CHUNK
) -> torch.Tensor:
    """The route without autograd: the same sums on flat rows, in cache-sized blocks, written into one buffer.

    The padded input is flattened, so the neighbour of tap ``(dy, dx)`` is the flat array shifted by
    ``dy * (W + 2p) + dx``: every multiply-add runs over long contiguous rows instead of H short ones. Each output
    row gets ``2p`` extra columns (which read the padding and the next row) that are dropped at the end. The sums of a
    block of ``channel_chunk`` channels (all phases) stay in cache over the ``k_up**2`` taps.
    """
    batch, channels, height, width = x.shape
    k_up = math.isqrt(kernels.shape[1])
    pad = k_up // 2
    padded_width = width + 2 * pad
    length = height * padded_width
    # One extra zero row at the bottom: the extra columns of the last row read up to 2p elements past the padding.
    flat = F.pad(x, (pad, pad, pad, pad + 1)).contiguous().flatten(2).unsqueeze(1)  # (N, 1, C, (H + 2p + 1) * (W + 2p))
    weights = F.pad(kernels, (0, 2 * pad)).flatten(3).unsqueeze(3)  # (N, k*k, s*s, 1, H * (W + 2p))
    out = x.new_empty(batch, scale * scale, channels, length)
    for start in range(0, channels, channel_chunk):
        block = flat[:, :, start : start + channel_chunk]
        acc = out[:, :, start : start + channel_chunk]
        for tap in range(k_up * k_up):
            dy, dx = divmod(tap, k_up)
            offset = dy * padded_width + dx
            if tap == 0:
                torch.mul(block[..., offset : offset + length], weights[:, tap], out=acc)
            else:
                acc.addcmul_(block[..., offset : offset + length], weights[:, tap])
    out = out.view(batch, scale, scale, channels, height, padded_width)[..., :width]
    return _output_layout(out, x, scale)


def reassemble(x: torch.Tensor, kernels: torch.Tensor, scale: int) -> torch.Tensor:
    r"""Reassemble ``x`` with per-output-pixel kernels: CARAFE's upsampling step, without the unfolded tensor.

    Output pixel ``(scale * i + a, scale * j + b)`` is the weighted sum of the ``k_up x k_up`` neighbourhood of input
    pixel ``(i, j)`` (zero outside ``x``) with the kernel of sub-pixel phase ``a * scale + b`` at ``(i, j)``. The sum
    runs at the input's resolution as ``k_up**2`` shifted multiply-adds per phase, accumulated in place, and the
    ``scale**2`` phases are interleaved at the end (a pixel shuffle): the ``k_up**2``-times larger unfolded tensor is
    never built. Computed in ``x``'s dtype; the output keeps ``x``'s memory format (NCHW or channels_last).

    On the CPU without autograd (``torch.no_grad`` / ``torch.inference_mode``, or no input requiring a gradient) and
    outside ``torch.export`` / ``torch.compile``, the sums run on flattened rows in cache-sized channel blocks, written
    into one preallocated buffer (``out=``, which autograd does not support); otherwise (and on GPUs, where cache
    blocks would only multiply kernel launches) on 2D shifted views, which autograd and ONNX export handle. Both give
    the same numbers up to float rounding.

    Args:
        x: the feature map.
        kernels: normalised kernels, phase ``a * scale + b`` (the channel order of ``F.pixel_shuffle``) and tap
            ``ky * k_up + kx`` (row-major over the neighbourhood, ``k_up`` odd).
        scale: the upsampling ratio.

    Returns:
        The reassembled map, ``scale`` times larger per side.

    Shape:
        - x: :math:`(N, C, H, W)`
        - kernels: :math:`(N, k_{up}^2, scale^2, H, W)`
        - Output: :math:`(N, C, scale \cdot H, scale \cdot W)`

    Example:
        >>> x = torch.rand(2, 8, 5, 7)
        >>> centre = torch.zeros(2, 25, 4, 5, 7)
        >>> centre[:, 12] = 1.0  # a one-hot centre tap copies the source pixel: nearest upsampling
        >>> torch.equal(reassemble(x, centre, 2), F.interpolate(x, scale_factor=2, mode="nearest"))
        True
    """
    kernels = kernels.to(x.dtype)
    needs_graph = torch.is_grad_enabled() and (x.requires_grad or kernels.requires_grad)
    if (
        needs_graph
        or x.device.type != "cpu"
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or not all(isinstance(s, int) for s in x.shape)
    ):
        return _reassemble_differentiable(x, kernels, scale)
    return _reassemble_inference(x, kernels, scale)


class CARAFE(nn.Module):
    """CARAFE (Wang et al., ICCV 2019): upsampling by content-aware kernels, called like ``F.interpolate``.

    A kernel prediction module reads the low-resolution input ``x`` (N, C, H, W): a channel compressor (1x1 conv
    ``C -> compressed_channels``) and a content encoder (``k_enc x k_enc`` conv, zero padding, to
    ``scale**2 * k_up**2`` channels), whose output is pixel-shuffled to one ``k_up**2``-logit kernel per output pixel
    and normalised by a softmax over the ``k_up x k_up`` taps. Output pixel ``(i, j)`` is then the kernel-weighted sum
    of the ``k_up x k_up`` neighbourhood of input pixel ``(i // scale, j // scale)``, with zeros outside ``x`` (the
    zero padding of the paper's implementation), the same kernel for every channel. The defaults are the paper's:
    ``scale=2``, ``compressed_channels=64``, ``k_up=5``, ``k_enc=3`` (74 k parameters at ``C=256``).

    The reassembly never builds the ``k_up**2``-times larger unfolded tensor: it is ``k_up**2`` shifted
    multiply-adds at the input's resolution, then an interleave of the ``scale**2`` sub-pixel phases (a pixel
    shuffle) (:func:`reassemble`), in ``x``'s dtype. Its cost in a detector: ``benchmarks/bench_backbone_fpn.py``.

    Initialisation: the paper's implementation's start, not a zero start. The compressor has Xavier-uniform weights,
    the encoder normal weights of std 0.001, both zero biases. Such tiny logits give nearly uniform kernels, so a new
    module is close to (not exactly) a ``k_up x k_up`` box filter (zero-padded, divided by ``k_up**2``) of the input
    followed by nearest upsampling; with the encoder's weights and bias set to zero it is exactly that. It is not
    plain interpolation, so patching a trained detector with a fresh CARAFE changes its outputs until it is trained.

    Sizes: any input size (odd sizes included) and any requested enlargement; the output has exactly the size
    ``F.interpolate`` would give (``size``, or ``floor(H * scale_factor)``; neither means ``scale_factor=scale``).
    One pass makes ``(scale * H, scale * W)``; a larger request chains passes until both sides are reached (at most
    ``MAX_SCALE_FACTOR`` = 16 per side in all). When the last pass's ``scale``-times map differs from the request
    (an odd FPN level asking for ``2H - 1``, e.g. 17x25 -> 33x49, or a ratio such as 1.5), that map is resized
    bilinearly (``align_corners=False``) to the requested size, as :class:`SRFUpsample` resizes its residual.
    Shrinking and same-size requests raise ValueError (use ``F.interpolate`` for them).

    ONNX: ``torch.onnx.export(CARAFE(C), (x,), path, dynamo=True, opset_version=18)`` with dynamic batch, height
    and width gives a graph of standard operators only: Conv, Softmax, Pad, Slice, Mul, Add, Transpose (the phase
    interleave), Reshape, Unsqueeze, Squeeze and the shape arithmetic Shape, Gather, Concat (torch 2.14, checked with
    onnxruntime); a ``size`` other than the ``scale``-times size adds a Resize.

    Args:
        in_channels: channels C of the input.
        scale: the upsampling ratio of one pass (FPN: 2).
        compressed_channels: output channels of the channel compressor.
        k_up: the reassembly kernel size (odd).
        k_enc: the content encoder's kernel size (odd).

    Shape:
        - x: :math:`(N, C, H, W)` floating point
        - Output: :math:`(N, C, H_{out}, W_{out})` with ``H_out = size[0]`` or ``floor(H * scale_factor)``
          (``scale * H`` by default), the same for W.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> up = CARAFE(8)
        >>> x = torch.rand(2, 8, 17, 25)
        >>> up(x).shape
        torch.Size([2, 8, 34, 50])
        >>> up(x, size=(33, 49)).shape
        torch.Size([2, 8, 33, 49])
        >>> _ = up.encoder.weight.data.zero_(), up.encoder.bias.data.zero_()  # uniform kernels: a 5x5 box filter
        >>> box = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=True)
        >>> torch.allclose(up(x), F.interpolate(box, scale_factor=2, mode="nearest"), atol=1e-6)
        True
    """

    def __init__(
        self,
        in_channels: int,
        *,
        scale: int = 2,
        compressed_channels: int = 64,
        k_up: int = 5,
        k_enc: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.scale = check_int("scale", scale, minimum=2, maximum=MAX_SCALE_FACTOR)
        self.compressed_channels = check_int("compressed_channels", compressed_channels, minimum=1)
        self.k_up = _check_odd("k_up", k_up, "the neighbourhood is centred on the source pixel (the paper uses 5)")
        self.k_enc = _check_odd("k_enc", k_enc, "the encoder keeps the input's size with padding k_enc // 2 (paper: 3)")
        self.compressor = nn.Conv2d(in_channels, compressed_channels, 1)
        self.encoder = nn.Conv2d(compressed_channels, scale * scale * k_up * k_up, k_enc, padding=k_enc // 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re-)initialise as the paper's implementation: Xavier-uniform compressor, normal(std 0.001) encoder."""
        # The paper's start (see the class docstring): near-uniform kernels whose logits still depend on the content,
        # so the compressor gets a gradient from the first step (a zero encoder would hold it at zero).
        nn.init.xavier_uniform_(self.compressor.weight)
        nn.init.zeros_(self.compressor.bias)
        nn.init.normal_(self.encoder.weight, std=0.001)
        nn.init.zeros_(self.encoder.bias)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr``."""
        return (
            f"in_channels={self.in_channels}, scale={self.scale}, compressed_channels={self.compressed_channels}, "
            f"k_up={self.k_up}, k_enc={self.k_enc}"
        )

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised reassembly kernels, (N, C, H, W) -> (N, k_up**2, scale**2, H, W) (see :func:`reassemble`).

        ``[:, t, p, i, j]`` is the weight of tap ``t`` for output pixel ``(scale * i + a, scale * j + b)``,
        ``p = a * scale + b``: the encoder's channel ``t * scale**2 + p``, the order in which pixel shuffle would
        place it there. The softmax runs in at least float32 (it does under autocast too).
        """
        logits = self.encoder(self.compressor(x))
        batch, _, height, width = logits.shape
        logits = logits.reshape(batch, self.k_up * self.k_up, self.scale * self.scale, height, width)
        return torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))

    def single_pass(self, x: torch.Tensor, size: Sequence[Any]) -> torch.Tensor:
        """One CARAFE pass to ``size``, without the checks of ``forward``; shapes may be symbolic (export).

        The ``scale``-times map, resized bilinearly to ``size`` unless it already has that size.

        Args:
            x: the feature map to upsample.
            size: the target ``(H_out, W_out)`` (unchecked).

        Shape:
            - x: :math:`(N, C, H, W)`
            - Output: :math:`(N, C, H_{out}, W_{out})` with ``H_out = size[0]``, ``W_out = size[1]``

        Example:
            >>> CARAFE(8).single_pass(torch.randn(2, 8, 17, 25), (33, 49)).shape
            torch.Size([2, 8, 33, 49])
        """
        out = reassemble(x, self.kernels(x), self.scale)
        # statically_known_true: an equality of symbolic sizes (torch.export) is decided without pinning a size.
        if not all(statically_known_true(a == b) for a, b in zip(out.shape[-2:], size, strict=True)):
            out = interpolate(out, size=tuple(size), mode="bilinear")
        return out

    def forward(
        self,
        x: torch.Tensor,
        size: int | Sequence[int] | None = None,
        scale_factor: float | Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Upsample ``x`` (N, C, H, W) to ``size`` or by ``scale_factor`` (default ``scale``), like F.interpolate."""
        check_feature_map(x, self.in_channels)
        if size is None and scale_factor is None:
            scale_factor = self.scale
        height, width = x.shape[-2], x.shape[-1]
        factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        if size is None and all(isinstance(f, (int, float)) and float(f).is_integer() and f > 0 for f in factors):
            # An integer product, equal to F.interpolate's floor(H * s), stays symbolic under torch.export.
            resolve_output_size((height, width), None, scale_factor)
            out_height, out_width = height * int(factors[0]), width * int(factors[1])
        else:
            out_height, out_width = resolve_output_size((height, width), size, scale_factor)
        if not all(isinstance(s, int) for s in (height, width, out_height, out_width)):
            return self.single_pass(x, (out_height, out_width))
        request = (
            f"input is {height}x{width}, requested {out_height}x{out_width} (size={size!r}, "
            f"scale_factor={scale_factor!r})"
        )
        if out_height < height or out_width < width or (out_height, out_width) == (height, width):
            raise ValueError(
                f"CARAFE only enlarges feature maps: {request}. Use F.interpolate for shrinking or same-size resizes."
            )
        if out_height > MAX_SCALE_FACTOR * height or out_width > MAX_SCALE_FACTOR * width:
            raise ValueError(
                f"CARAFE enlarges each side at most MAX_SCALE_FACTOR={MAX_SCALE_FACTOR} times per call: {request}. "
                f"Ask for at most {MAX_SCALE_FACTOR * height}x{MAX_SCALE_FACTOR * width}, and resize further with "
                "F.interpolate if a larger map is really meant."
            )
        # Integer arithmetic, not log(ratio) / log(scale): log(9) / log(3) rounds above 2.
        num_passes, reach = 1, self.scale
        while reach * height < out_height or reach * width < out_width:
            num_passes, reach = num_passes + 1, reach * self.scale
        for index in range(num_passes):
            is_last = index == num_passes - 1
            target = (out_height, out_width) if is_last else (self.scale * x.shape[-2], self.scale * x.shape[-1])
            x = self.single_pass(x, target)
        return x
