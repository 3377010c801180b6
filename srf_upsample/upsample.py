"""SRFUpsample: the SRF-GAN generator G, a learned drop-in for ``F.interpolate`` on feature maps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ._blocks import NORMS, Chain, GuideModulation, ResidualBlock, SeparableResidualBlock
from ._checks import (
    check_choice,
    check_feature_map,
    check_guide,
    check_int,
    check_number,
    check_positive_int,
    resolve_output_size,
)
from ._fast_pass import may_run_inplace, shortcut_plus_tail
from ._interpolate import interpolate
from .hub import SRFHubMixin

__all__ = ["MAX_SCALE_FACTOR", "NORMS", "SRFUpsample", "VARIANTS"]

# Per-variant defaults for the arguments left as None. "paper" is section 3.1 of the paper; "lite" is ours (README);
# "guided" is ours too: the lite trunk plus a branch reading the map the output meets (docs/guided_generator.md).
VARIANTS: dict[str, dict[str, int]] = {
    "paper": {"hidden_channels": 256, "num_blocks": 5},
    "lite": {"hidden_channels": 64, "num_blocks": 2},
    "guided": {"hidden_channels": 64, "num_blocks": 2},
}

# The largest enlargement one call may ask for, per side: 16 = four chained x2 passes, twice FPN's largest step
# (P5 -> P2 is x8). The generator learns one x2 step; without a cap, a typo such as scale_factor=1e6 keeps chaining
# passes until memory runs out instead of failing at once.
MAX_SCALE_FACTOR = 16


def _guide_width(hidden_channels: int) -> int:
    """Width of the guided variant's guide branch: a quarter of the hidden width (16 for lite's 64), at least 1.

    Fixed by ``hidden_channels`` (not a config field): the branch runs at the output size (4x the trunk's pixels), so
    it is kept narrow; backbone + FPN of Mask R-CNN R50 then costs 1.008x lite's (docs/guided_generator.md, "Cost").
    """
    return max(1, hidden_channels // 4)


def _request(x: torch.Tensor, out_size: tuple[int, int], size: object, scale_factor: object) -> str:
    height, width = x.shape[-2:]
    return (
        f"input is {height}x{width}, requested {out_size[0]}x{out_size[1]} "
        f"(size={size!r}, scale_factor={scale_factor!r})"
    )


class SRFUpsample(
    nn.Module,
    SRFHubMixin,
    library_name="srf_upsample",
    tags=["srf-gan", "feature-upsampling", "fpn", "object-detection"],
    repo_url="https://github.com/srf-upsample/srf_upsample",
):
    """Learned feature-map upsampling (the SRF-GAN generator G), called like ``F.interpolate``.

    The ``"paper"`` variant is section 3.1 of Lee & Bae: a 3x3 conv + LeakyReLU(0.2), ``num_blocks`` residual blocks
    (3x3 conv, norm, LeakyReLU, 3x3 conv, norm, identity shortcut), a conv block (3x3 conv + LeakyReLU) and a
    deconvolution block (``deconv_kernel`` x ``deconv_kernel`` transposed conv, stride 2, padding
    ``deconv_kernel / 2 - 1``, + LeakyReLU) that double the resolution exactly, and a 1x1 conv back to
    ``in_channels``. The result is a residual added to the input upsampled bilinearly. The 6x6 deconvolution (the
    default) is what the paper's Table 1 (+10 M parameters per detector) and the authors' released generator imply;
    ``deconv_kernel=4`` gives the 4x4 one of earlier versions (``docs/paper_fidelity.md``).

    The ``"lite"`` variant (ours, not the paper's) keeps that idea, a learned residual over bilinear, with a cheaper
    residual branch: a 1x1 conv ``in_channels -> hidden_channels`` (64) + LeakyReLU; ``num_blocks`` (2)
    depthwise-separable residual blocks (each 3x3 conv of the paper's block becomes a depthwise 3x3 and a pointwise
    1x1, followed by the norm); a 1x1 conv to ``4 * hidden_channels``, pixel shuffle x2 and LeakyReLU instead of the
    deconvolution (so ``deconv_kernel`` does not apply); and the 1x1 conv back to ``in_channels``. About 69 k
    parameters and 3.6 GFLOPs at FPN's P3->P2 step of an 800x1216 image, against 9.5 M and 295 GFLOPs for
    ``"paper"``. For inference call ``.eval().fuse()``; on CPU, ``.to(memory_format=torch.channels_last)`` speeds up
    the lite variant further (``benchmarks/RESULTS.md``). In eval mode without autograd, an exact x2 pass of the lite
    variant takes a rearranged route that moves less memory and computes the same function up to float rounding
    (the same layers, activations in place, the tail fused into the shortcut: ``docs/performance.md``); set the
    attribute ``use_fast_inference = False`` to time or debug the plain route, and ``uses_fast_pass(x, size)`` says
    which route a pass takes.

    The ``"guided"`` variant (ours, beyond the paper: ``docs/guided_generator.md``) is the lite generator plus a guide
    branch: called as ``up(x, size=..., guide=lateral)`` with the map the output will be added to or concatenated
    with (``guide_channels`` channels, exactly the output size), it projects the guide to a quarter of the hidden
    width (1x1 conv, depthwise 3x3, LeakyReLU) and modulates the upsampled hidden map per pixel,
    ``hidden * (1 + gamma) + beta``,
    before the tail. The 1x1 conv predicting ``gamma, beta`` starts at zero, so a fresh guided generator computes
    exactly what the lite generator with the same trunk weights computes, and a trained lite state dict loads into
    it (``load_state_dict(..., strict=False)`` misses only the ``guide.*`` keys) as a known starting point. Without
    ``guide`` it runs the unguided pass: the lite generator's function (the finest level of a pyramid has no finer
    map to guide it). With a guide and neither ``size`` nor ``scale_factor``, the output takes the guide's size.

    ``norm`` is the normalisation of the residual blocks. ``"none"`` (default, as in the authors' released code):
    one generator serves every pyramid level (P5->P4, P4->P3, P3->P2), and BatchNorm would normalise each level with
    its own statistics in training but with running statistics mixed over all levels in eval mode, so G would
    compute something else at inference than it learned. Without normalisation, the last conv of every residual
    block starts at zero, so each block starts as the identity. ``"batch"`` is the paper's text (BN after each conv
    of the residual blocks).

    One generator pass doubles H and W. For other targets: ``n = max(1, ceil(log2(max(H_out / H, W_out / W))))``
    passes are chained; every pass but the last outputs exactly ``(2H, 2W)``; in the last pass the learned residual
    (computed at twice the pass input) is resized bilinearly to the exact target and the shortcut is the pass input
    resized bilinearly to the exact target. So 17x25 -> 33x49 is one pass whose 34x50 residual is resized to 33x49.
    One call enlarges each side at most ``MAX_SCALE_FACTOR`` = 16 times (four chained passes); a larger request is
    a ValueError, not a run until memory is exhausted.

    Args:
        in_channels: channels C of the feature maps it upsamples (256 in FPN).
        hidden_channels: width of the body; ``None`` takes the variant's default (paper: 256, lite: 64).
        num_blocks: number of residual blocks; ``None`` takes the variant's default (paper: 5, lite: 2).
        variant: ``"paper"``, ``"lite"`` or ``"guided"``.
        negative_slope: slope of every LeakyReLU (paper: 0.2).
        zero_init_residual: start the learned residual at zero, so that a fresh module equals bilinear
            interpolation (not in the paper; off by default).
        deconv_kernel: kernel size of the paper variant's transposed conv, an even int >= 2 (stride 2, padding
            ``deconv_kernel / 2 - 1``: exactly x2); 6 by default, 4 for generators saved before this argument
            existed. The lite variant has no deconvolution and ignores it.
        norm: normalisation in the residual blocks, ``"none"`` (default) or ``"batch"`` (the paper's text).
        guide_channels: channels C_g of the guide of the ``"guided"`` variant; ``None`` means ``in_channels`` (an
            FPN's lateral map). Other variants take no guide and need ``None``.

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: :math:`(N, C, H_{out}, W_{out})` with ``H_out = size[0]`` or ``floor(H * scale_factor)``;
          the default is ``scale_factor=2``. The output must be at least as large as the input in both dimensions,
          larger in one, and at most ``MAX_SCALE_FACTOR`` (16) times as large in each; ``H, W >= 1``.
        - guide (``"guided"`` only): :math:`(N, C_g, H_{out}, W_{out})`; it enters the last pass.

    Example:
        >>> up = SRFUpsample(8, hidden_channels=8, num_blocks=1)
        >>> up(torch.randn(2, 8, 17, 25), size=(33, 49)).shape
        torch.Size([2, 8, 33, 49])
        >>> up(torch.randn(2, 8, 5, 6), scale_factor=4).shape
        torch.Size([2, 8, 20, 24])
        >>> old = SRFUpsample(8, hidden_channels=8, num_blocks=1, deconv_kernel=4, norm="batch")
        >>> old(torch.randn(2, 8, 5, 7)).shape
        torch.Size([2, 8, 10, 14])
        >>> guided = SRFUpsample(8, hidden_channels=8, num_blocks=1, variant="guided")
        >>> guided(torch.randn(2, 8, 17, 25), guide=torch.randn(2, 8, 33, 49)).shape
        torch.Size([2, 8, 33, 49])
    """

    # Constructor arguments added after generators were first shipped, with the behaviour they had before. A
    # config.json without the field was written then, so from_pretrained reads a missing field as this value
    # (SRFHubMixin); new saves always write every field.
    _legacy_config_defaults: ClassVar[dict[str, Any]] = {"deconv_kernel": 4, "norm": "batch"}

    def __init__(
        self,
        in_channels: int = 256,
        *,
        hidden_channels: int | None = None,
        num_blocks: int | None = None,
        variant: str = "paper",
        negative_slope: float = 0.2,
        zero_init_residual: bool = False,
        deconv_kernel: int = 6,
        norm: str = "none",
        guide_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_choice("variant", variant, list(VARIANTS))
        defaults = VARIANTS[variant]
        hidden_channels = defaults["hidden_channels"] if hidden_channels is None else hidden_channels
        num_blocks = defaults["num_blocks"] if num_blocks is None else num_blocks
        check_positive_int("hidden_channels", hidden_channels)
        check_int("num_blocks", num_blocks, minimum=0)
        check_number("negative_slope", negative_slope, minimum=0.0)
        check_int(
            "deconv_kernel",
            deconv_kernel,
            minimum=2,
            multiple_of=2,
            hint="use 6 (the default) or 4 (generators saved before deconv_kernel existed): stride 2 and padding "
            "deconv_kernel / 2 - 1 then give exactly 2H x 2W",
        )
        check_choice("norm", norm, list(NORMS))
        if variant == "guided":
            guide_channels = in_channels if guide_channels is None else guide_channels
            check_positive_int("guide_channels", guide_channels)
        elif guide_channels is not None:
            raise ValueError(
                f"guide_channels applies only to variant='guided', got guide_channels={guide_channels!r} with "
                f"variant={variant!r}; build SRFUpsample(..., variant='guided') or leave guide_channels=None."
            )
        self.guide_channels = guide_channels
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.num_blocks = num_blocks
        self.variant = variant
        self.negative_slope = float(negative_slope)
        self.zero_init_residual = bool(zero_init_residual)
        self.deconv_kernel = deconv_kernel
        self.norm = norm
        self.is_fused = False
        # Not a constructor argument (config.json describes weights, not how to run them): benchmarks and tests set it
        # to False on an instance to run the plain route of the lite variant.
        self.use_fast_inference = True

        if variant == "paper":
            self.head = Chain(nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.LeakyReLU(negative_slope))
            self.body = nn.Sequential(
                *(ResidualBlock(hidden_channels, negative_slope, norm) for _ in range(num_blocks))
            )
            # Output (H - 1) * 2 - 2 * padding + kernel = 2H for any even kernel with padding = kernel / 2 - 1.
            self.upsample = Chain(
                nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
                nn.LeakyReLU(negative_slope),
                nn.ConvTranspose2d(
                    hidden_channels, hidden_channels, deconv_kernel, stride=2, padding=deconv_kernel // 2 - 1
                ),
                nn.LeakyReLU(negative_slope),
            )
        else:
            self.head = Chain(nn.Conv2d(in_channels, hidden_channels, 1), nn.LeakyReLU(negative_slope))
            self.body = nn.Sequential(
                *(SeparableResidualBlock(hidden_channels, negative_slope, norm) for _ in range(num_blocks))
            )
            # The LeakyReLU comes before the pixel shuffle, which only moves values: the same function as after it,
            # at no extra cost, and one that the in-place route can apply to the conv's output directly. Neither
            # layer has weights, so the order changes no state-dict key.
            self.upsample = Chain(
                nn.Conv2d(hidden_channels, 4 * hidden_channels, 1),
                nn.LeakyReLU(negative_slope),
                nn.PixelShuffle(2),
            )
        self.tail = nn.Conv2d(hidden_channels, in_channels, 1)
        if variant == "guided":
            self.guide = GuideModulation(guide_channels, hidden_channels, _guide_width(hidden_channels), negative_slope)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re-)initialise every weight; safe to call again."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                # The paper gives no scheme; He init matched to the LeakyReLU slope keeps activations in scale.
                nn.init.kaiming_normal_(module.weight, a=self.negative_slope, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
        if self.norm == "none":
            # Without BN to tame them, the residual blocks start as the identity: the conv that ends each residual
            # branch starts at zero (Fixup / "zero_init_residual" of torchvision's ResNet, which zeroes the last BN
            # instead), so the activations of a fresh body keep the scale of its input however many blocks it has.
            for block in self.body:
                nn.init.zeros_(block.last_conv.weight)
                nn.init.zeros_(block.last_conv.bias)
        if self.zero_init_residual:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)
        if self.variant == "guided":
            # The guide branch starts as the identity, so a fresh guided G is the lite G of its trunk weights (or
            # bilinear, with zero_init_residual) and training starts from that known point (docs/guided_generator.md).
            self.guide.reset_zero()

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr``."""
        return (
            f"{self.in_channels}, hidden_channels={self.hidden_channels}, num_blocks={self.num_blocks}, "
            f"variant={self.variant!r}, negative_slope={self.negative_slope}, "
            f"zero_init_residual={self.zero_init_residual}, deconv_kernel={self.deconv_kernel}, norm={self.norm!r}, "
            f"is_fused={self.is_fused}" + (f", guide_channels={self.guide_channels}" if self.accepts_guide else "")
        )

    @property
    def accepts_guide(self) -> bool:
        """Whether ``forward`` takes ``guide=`` (the ``"guided"`` variant); ``patch_fpn`` wires guides only then."""
        return self.variant == "guided"

    def _features(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Head, body and upsampling block: ``(N, C, H, W)`` -> ``(N, hidden_channels, 2H, 2W)``, before the tail."""
        hidden = self.head(x, inplace=inplace)
        for block in self.body:
            hidden = block(hidden, inplace=inplace)
        return self.upsample(hidden, inplace=inplace)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The learned branch of one pass: ``(N, C, H, W)`` -> ``(N, C, 2H, 2W)``."""
        return self.tail(self._features(x))

    def forward(
        self,
        x: torch.Tensor,
        size: int | Sequence[int] | None = None,
        scale_factor: float | Sequence[float] | None = None,
        guide: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Upsample ``x`` to ``size`` or by ``scale_factor`` (default 2), like ``F.interpolate``.

        ``guide`` (``"guided"`` variant only) is the map of the output's size that the output meets next (an FPN's
        lateral map); without it the guided variant runs its unguided pass. With a guide and neither ``size`` nor
        ``scale_factor``, the output takes the guide's size.
        """
        check_feature_map(x, self.in_channels)
        height, width = x.shape[-2], x.shape[-1]
        if guide is not None and size is None and scale_factor is None and isinstance(guide, torch.Tensor):
            size = tuple(guide.shape[-2:])
        out_height, out_width = resolve_output_size((height, width), size, scale_factor)
        if out_height < height or out_width < width or (out_height == height and out_width == width):
            raise ValueError(
                f"SRFUpsample only enlarges feature maps: {_request(x, (out_height, out_width), size, scale_factor)}. "
                "Use F.interpolate for shrinking or same-size resizes."
            )
        if out_height > MAX_SCALE_FACTOR * height or out_width > MAX_SCALE_FACTOR * width:
            raise ValueError(
                f"SRFUpsample enlarges each side at most MAX_SCALE_FACTOR={MAX_SCALE_FACTOR} times per call (four "
                f"chained x2 passes): {_request(x, (out_height, out_width), size, scale_factor)}. Ask for at most "
                f"{MAX_SCALE_FACTOR * height}x{MAX_SCALE_FACTOR * width}, and resize further with F.interpolate if a "
                "larger map is really meant."
            )
        if guide is not None:
            check_guide(guide, x, (out_height, out_width), self.guide_channels, self.variant)
        num_passes = max(1, math.ceil(math.log2(max(out_height / height, out_width / width))))
        for index in range(num_passes):
            is_last = index == num_passes - 1
            target = (out_height, out_width) if is_last else (2 * x.shape[-2], 2 * x.shape[-1])
            # The guide has the final size, so it enters the last pass; earlier passes of a chain run unguided.
            x = self.single_pass(x, target, guide=guide if is_last else None)
        return x

    def single_pass(self, x: torch.Tensor, size: Sequence[Any], guide: torch.Tensor | None = None) -> torch.Tensor:
        """One generator pass to ``size``, without the checks of ``forward``; shapes may be symbolic.

        The one implementation of a pass, used by ``forward`` for each pass and by the ONNX export
        (``srf_upsample.export``), where ``x``'s shape and ``size`` are symbolic and ``forward``'s Python shape math
        would pin the graph to one input size. The learned residual, computed at ``(2H, 2W)``, is resized bilinearly
        to ``size``; the shortcut is ``x`` resized bilinearly to ``size``.

        Args:
            x: the feature map to upsample.
            size: the target ``(H_out, W_out)``, with ``H <= H_out <= 2H`` and ``W <= W_out <= 2W`` (unchecked:
                ``forward`` guarantees it; other targets give a resized single pass).
            guide: the guided variant's guide at ``size`` (unchecked); ``None`` runs the unguided pass.

        Shape:
            - x: :math:`(N, C, H, W)`
            - guide: :math:`(N, C_g, H_{out}, W_{out})`
            - Output: :math:`(N, C, H_{out}, W_{out})` with ``H_out = size[0]``, ``W_out = size[1]``

        Example:
            >>> up = SRFUpsample(8, hidden_channels=8, num_blocks=1)
            >>> up.single_pass(torch.randn(2, 8, 17, 25), (33, 49)).shape
            torch.Size([2, 8, 33, 49])
        """
        if guide is not None:
            return self._guided_pass(x, size, guide)
        if self.uses_fast_pass(x, size):
            return self._fast_lite_pass(x)
        residual = self.residual(x)
        # With symbolic sizes (torch.export, dynamic shapes) a Python comparison would pin the graph to one input
        # size, so the residual is always resized there. That changes no number: bilinear resizing to the same size
        # with align_corners=False samples every pixel at its own centre (weights 1 and 0), an exact identity. In
        # eager mode the sizes are plain ints and the no-op resize is skipped.
        is_concrete = all(type(s) is int for s in (*residual.shape[-2:], *size))
        if not (is_concrete and tuple(residual.shape[-2:]) == tuple(size)):
            residual = interpolate(residual, size=size, mode="bilinear")
        shortcut = interpolate(x, size=size, mode="bilinear")
        # Under autocast the residual comes out in the low-precision dtype while the shortcut stays float32.
        return shortcut + residual.to(shortcut.dtype)

    def uses_fast_pass(self, x: torch.Tensor, size: Sequence[Any]) -> bool:
        """Whether ``single_pass(x, size)`` (without a guide) takes the lite variant's in-place inference route.

        It does for the lite variant (and the guided one without a guide), in eval mode, without autograd or
        autocast, for an exact x2 of a contiguous input with no BatchNorm left to apply, unless
        ``use_fast_inference`` is False. Both routes run the same layers and compute the same function up to float
        rounding. A guided pass with a guide runs in place under the same conditions, at any single-pass size.
        """
        return may_run_inplace(self, x, size) and tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])

    def _guided_pass(self, x: torch.Tensor, size: Sequence[Any], guide: torch.Tensor) -> torch.Tensor:
        """One pass of the guided variant: the lite trunk, its hidden map modulated by the guide, then the tail.

        The hidden map (computed at ``(2H, 2W)``) is resized bilinearly to ``size`` before the modulation, because
        the guide lives at ``size``. The unguided pass resizes after the 1x1 tail instead; both resizes and the tail
        are linear per pixel with weights summing to 1, so they commute and a guide branch at zero gives the unguided
        output (exactly at x2, up to float rounding otherwise). In inference the in-place route of
        ``_fast_pass`` applies: activations in place, the tail fused into the shortcut as one GEMM.
        """
        is_inplace = may_run_inplace(self, x, size)
        hidden = self._features(x, inplace=is_inplace)
        is_concrete = all(type(s) is int for s in (*hidden.shape[-2:], *size))
        if not (is_concrete and tuple(hidden.shape[-2:]) == tuple(size)):
            hidden = interpolate(hidden, size=size, mode="bilinear")
        hidden = self.guide(hidden, guide, inplace=is_inplace)
        if is_inplace:
            return shortcut_plus_tail(x, self.tail, hidden, size)
        shortcut = interpolate(x, size=size, mode="bilinear")
        return shortcut + self.tail(hidden).to(shortcut.dtype)

    def _fast_lite_pass(self, x: torch.Tensor) -> torch.Tensor:
        """The lite pass for an exact x2 in inference, rearranged to move less memory (``_fast_pass``); same result.

        The layers up to the tail are those of ``residual`` (``_features``), run in place.
        """
        hidden = self._features(x, inplace=True)
        return shortcut_plus_tail(x, self.tail, hidden, (2 * x.shape[-2], 2 * x.shape[-1]))

    @torch.no_grad()
    def fuse(self) -> SRFUpsample:
        """Fold every BatchNorm into the convolution before it, in place, for inference; returns ``self``.

        Needs eval mode (BN then uses running statistics). With ``norm="none"`` there is nothing to fold and the
        weights stay as they are, but the module is marked fused all the same. A fused module cannot be saved with
        ``save_pretrained`` (its weights no longer match the config); save before fusing.
        """
        if self.training:
            raise ValueError("fuse() needs eval mode (BatchNorm running statistics); call .eval() first.")
        if not self.is_fused:
            for block in self.body:
                block.fuse()
            self.is_fused = True
        return self

    def _save_pretrained(self, save_directory: Path) -> None:
        if self.is_fused:
            raise ValueError(
                "This SRFUpsample is fused; its weights no longer match its config. Save it before fuse()."
            )
        super()._save_pretrained(save_directory)
