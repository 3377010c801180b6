"""torchvision FPN detectors by name: building them offline, patching G into them, rebuilding trained ones."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision import models
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from .._checks import check_choice, check_int, check_number
from .._interpolate import interpolate
from ..hub import load_state_dict_strict, read_safetensors
from .state_dicts import strip_prefix

__all__ = [
    "BACKBONES",
    "CARAFE_INACTIVE_WEIGHT",
    "DETECTORS",
    "END_TO_END_STARTS",
    "DEFAULT_ANCHOR_SIZES",
    "INTERPOLATION_MODES",
    "DetectorSpec",
    "FixedInterpolation",
    "build_detector",
    "detector_first_level",
    "disable_detector_resize",
    "enable_detector_resize",
    "level_keys",
    "load_weights_file",
    "patch_generator",
    "patch_upsampler",
    "set_fpn_interpolation",
    "start_carafe_as_bilinear",
]

logger = logging.getLogger(__name__)

DETECTORS = {"fasterrcnn": FasterRCNN, "maskrcnn": MaskRCNN, "retinanet": RetinaNet, "fcos": FCOS}
BACKBONES = ("resnet50", "resnet18", "mobilenet_v2")
# Heads that do not use P2: their torchvision FPN starts at C3 and adds P6/P7 (LastLevelP6P7).
_P3_DETECTORS = ("retinanet", "fcos")
# mobilenet_v2().features: the last block at strides 4, 8, 16, 32 and its output channels.
_MOBILENET_V2_LAYERS = {3: 24, 6: 32, 13: 96, 18: 1280}
# torchvision's R-CNN anchors, one size per FPN output P2-P6.
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)
# The fixed interpolations an FPN may use instead of its nearest upsampling (arm B of the protocol: bilinear).
INTERPOLATION_MODES = ("nearest", "bilinear", "bicubic")


def detector_first_level(detector: str) -> int:
    """Return the finest top-down FPN level of a detector: 2 (P2) for R-CNNs, 3 (P3) for RetinaNet and FCOS."""
    return 3 if detector in _P3_DETECTORS else 2


def level_keys(detector: str, levels: Sequence[int]) -> list[str]:
    """Map pyramid levels (2 = P2, ...) to the keys of the torchvision FPN's output dict ('0', '1', ...)."""
    first = detector_first_level(detector)
    keys = []
    for level in levels:
        if not first <= level <= 5:
            raise ValueError(
                f"levels must lie in P{first}..P5 for detector {detector!r} (the top-down FPN levels), got P{level}."
            )
        keys.append(str(level - first))
    return keys


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``.safetensors`` file or a torch ``.pth``/``.pt`` file (weights only)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises several types for corrupt / pickled files
        raise ValueError(
            f"Weights file {path!r} is not a readable torch state dict ({type(error).__name__}: {error})."
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"Weights file {path!r} holds a {type(state).__name__}, not a state dict.")
    return state


def _load_classifier_weights(model: nn.Module, path: str, name: str) -> None:
    state = load_weights_file(path)
    load_state_dict_strict(model, state, source=f"{name} ImageNet weights from {path!r}")


def _frozen_copy(builder, state: dict[str, torch.Tensor]) -> nn.Module:
    # FrozenBatchNorm2d drops num_batches_tracked itself, so a strict load of a BatchNorm state dict works.
    model = builder(norm_layer=misc_ops.FrozenBatchNorm2d)
    model.load_state_dict(state, strict=True)
    return model


def _classifier(backbone: str, backbone_weights: str | None, frozen_batchnorm: bool) -> nn.Module:
    builder = models.mobilenet_v2 if backbone == "mobilenet_v2" else getattr(models, backbone)
    model = builder(weights=None)
    if backbone_weights:
        _load_classifier_weights(model, backbone_weights, backbone)
    if frozen_batchnorm:
        # As torchvision does for pretrained backbones: BN statistics frozen, small detection batches.
        model = _frozen_copy(lambda **kw: builder(weights=None, **kw), model.state_dict())
    return model


def _build_backbone(
    backbone: str,
    detector: str,
    backbone_weights: str | None,
    trainable_layers: int | None,
    frozen_batchnorm: bool,
    fpn_channels: int = 256,
) -> BackboneWithFPN:
    check_choice("backbone", backbone, BACKBONES)
    is_p3 = detector in _P3_DETECTORS
    extra_blocks = LastLevelP6P7(fpn_channels, fpn_channels) if is_p3 else LastLevelMaxPool()
    model = _classifier(backbone, backbone_weights, frozen_batchnorm)
    if backbone in ("resnet50", "resnet18"):
        if trainable_layers is None:
            trainable_layers = 3 if backbone_weights else 5  # torchvision's defaults
        returned = [2, 3, 4] if is_p3 else [1, 2, 3, 4]
        body = _resnet_fpn_extractor(model, trainable_layers, returned_layers=returned, extra_blocks=extra_blocks)
        if fpn_channels != 256:  # torchvision's helper always builds a 256-channel FPN
            in_channels = [block[0].in_channels for block in body.fpn.inner_blocks]
            body.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=extra_blocks)
            body.out_channels = fpn_channels
        return body
    layer_ids = list(_MOBILENET_V2_LAYERS)[1:] if is_p3 else list(_MOBILENET_V2_LAYERS)
    features = model.features
    if trainable_layers is not None:
        # trainable_layers counts feature blocks from the top, as for ResNet stages (0 = all frozen).
        for index, block in enumerate(features):
            if index < len(features) - trainable_layers:
                block.requires_grad_(False)
    return BackboneWithFPN(
        features,
        return_layers={str(index): str(position) for position, index in enumerate(layer_ids)},
        in_channels_list=[_MOBILENET_V2_LAYERS[index] for index in layer_ids],
        out_channels=fpn_channels,
        extra_blocks=extra_blocks,
    )


def build_detector(
    detector: str,
    backbone: str,
    num_classes: int,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    backbone_weights: str | None = None,
    detector_weights: str | None = None,
    trainable_backbone_layers: int | None = None,
    anchor_sizes: Sequence[int] | None = None,
    anchor_scale: float = 1.0,
    frozen_batchnorm: bool | None = None,
    detector_kwargs: dict | None = None,
    fpn_channels: int = 256,
) -> nn.Module:
    """Build a torchvision FPN detector by name, never downloading weights.

    Args:
        detector: one of ``fasterrcnn``, ``maskrcnn``, ``retinanet``, ``fcos``.
        backbone: one of ``resnet50``, ``resnet18``, ``mobilenet_v2``.
        num_classes: classes including background (the trainer uses categories + 1).
        min_size: shorter side the detector resizes to at evaluation (training disables its resize).
        max_size: longer-side cap at evaluation.
        backbone_weights: local ImageNet classifier weights for the backbone (e.g. ``mobilenet_v2-b0353104.pth``),
            loaded strictly.
        detector_weights: local weights of the whole detector (``.safetensors`` or ``.pth``; keys may carry the
            ``detector.`` prefix of our checkpoints), loaded strictly.
        trainable_backbone_layers: backbone stages left trainable (torchvision's rule; default 3 with
            ``backbone_weights``, else all).
        anchor_sizes: one anchor size per FPN output (R-CNNs: 5, P2-P6), e.g. ``[8, 16, 32, 64, 128]`` for small
            objects; default torchvision's.
        anchor_scale: multiplies every anchor size (stage 2 trains on half-size images: 0.5 keeps each object
            matched to the anchors it has at full size). R-CNNs only.
        frozen_batchnorm: use FrozenBatchNorm2d in the backbone; default: when ``backbone_weights`` is given
            (torchvision's rule). Rebuilding a trained detector without its ImageNet file passes ``True``.
        detector_kwargs: more keyword arguments of the torchvision detector class, e.g.
            ``{"box_batch_size_per_image": 128}`` (JSON values only).
        fpn_channels: channels of every FPN level (torchvision: 256); the RPN and box heads follow it, and G and D
            must be built for it. Fewer channels make a CPU-sized detector (the FPN and RPN at P2 dominate its cost).

    Returns:
        The detector in train mode.
    """
    check_choice("detector", detector, list(DETECTORS))
    check_int("num_classes", num_classes, minimum=2, hint="background + at least one class")
    check_int("fpn_channels", fpn_channels, hint="torchvision's FPN has 256")
    check_number("anchor_scale", anchor_scale, minimum=0, is_open=True)
    if frozen_batchnorm is None:
        frozen_batchnorm = bool(backbone_weights)
    body = _build_backbone(
        backbone, detector, backbone_weights, trainable_backbone_layers, frozen_batchnorm, fpn_channels
    )
    kwargs: dict = {"min_size": min_size, "max_size": max_size, **(detector_kwargs or {})}
    if anchor_sizes or anchor_scale != 1.0:
        if detector in _P3_DETECTORS:
            raise ValueError(
                f"anchor_sizes and anchor_scale are supported for fasterrcnn and maskrcnn only, not "
                f"{detector!r}; leave them unset (anchor_scale=1)."
            )
        sizes = list(anchor_sizes or DEFAULT_ANCHOR_SIZES)
        if len(sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per FPN output (5: P2-P6), got {sizes}.")
        kwargs["rpn_anchor_generator"] = AnchorGenerator(
            tuple((max(1, round(s * anchor_scale)),) for s in sizes), ((0.5, 1.0, 2.0),) * 5
        )
    model = DETECTORS[detector](body, num_classes=num_classes, **kwargs)
    if detector_weights:
        state = load_weights_file(detector_weights)
        if any(key.startswith("detector.") for key in state):
            state = strip_prefix(state, "detector.")
        load_state_dict_strict(model, state, source=f"detector weights from {detector_weights!r}")
    return model


def _identity_resize(image: torch.Tensor, target: dict | None = None):
    return image, target


def disable_detector_resize(model: nn.Module) -> None:
    """Stop the detector's transform from resizing: the data pipeline already did, and I_lr must stay half-size."""
    model.transform.resize = _identity_resize


def enable_detector_resize(model: nn.Module) -> None:
    """Give the detector's transform its own resize back (evaluation feeds original images)."""
    if "resize" in vars(model.transform):
        del model.transform.resize


def patch_generator(model: nn.Module, generator: nn.Module) -> nn.Module:
    """Put ``generator`` in place of every F.interpolate of the detector's FPN (one G shared), via ``patch_fpn``.

    A guided generator must get its guide (the site's lateral map) at every site; an unguided site is a ValueError.
    """
    from ..patch import patch_fpn

    fpn_channels = getattr(getattr(model, "backbone", None), "out_channels", None)
    generator_channels = getattr(generator, "in_channels", None)
    if fpn_channels is not None and generator_channels is not None and fpn_channels != generator_channels:
        raise ValueError(
            f"The generator takes {generator_channels}-channel features but the detector's FPN has {fpn_channels} "
            "channels: train G for this FPN (fpn_channels in the stage-1 config) or build the detector with "
            f"fpn_channels={generator_channels}."
        )
    _, report = patch_fpn(model, upsampler=generator, share=True, strict=True)
    logger.info("patched the FPN: %s", report)
    unguided = [site for site in report.replaced if site.guide is None]
    if getattr(generator, "accepts_guide", False) and unguided:
        # A guided G that gets no guide runs its unguided pass: training it so would silently train a lite G.
        reasons = "; ".join(f"{site.node}: {site.guide_reason or 'no guide'}" for site in unguided)
        raise ValueError(
            f"The guided generator got no guide at {len(unguided)} of the FPN's {len(report.replaced)} upsampling "
            f"sites ({reasons}); it would run unguided there. Use a detector whose FPN adds each upsampled map to a "
            "same-size lateral map (torchvision's FeaturePyramidNetwork), or generator_variant='lite'."
        )
    return model


# Before normalisation, the weight of each of CARAFE's taps outside bilinear's 2x2 neighbourhood at the start: small,
# so the start is bilinear to within 21 * 1e-3 / 1.021 (about 2 %) of each kernel's mass, yet not so small that
# those taps' logits (log 1e-3, 6 to 7 below the active ones) could never be trained up by SGD.
CARAFE_INACTIVE_WEIGHT = 1e-3


def start_carafe_as_bilinear(module: nn.Module) -> nn.Module:
    """Set a CARAFE's kernel encoder so that it starts as 2x bilinear interpolation (arm CARAFE); returns it.

    CARAFE's output pixel ``(2i + a, 2j + b)`` is a softmax-weighted sum over the ``k_up x k_up`` neighbourhood of
    input pixel ``(i, j)``. ``F.interpolate(..., scale_factor=2, mode="bilinear", align_corners=False)`` is such a
    sum with fixed weights: per side 0.75 on pixel ``i`` and 0.25 on ``i - 1`` (phase 0) or ``i + 1`` (phase 1),
    their products in 2D. A softmax cannot give other taps an exact zero, so the encoder's weights are zeroed (the
    kernels no longer depend on the content until trained) and its bias is set to ``log`` of those weights, with
    :data:`CARAFE_INACTIVE_WEIGHT` on every other tap. The interior then matches bilinear to within about 2 % of
    the kernel mass; at the one-pixel border CARAFE's zero padding stands where bilinear repeats the edge pixel.
    This is as close to bilinear (what the DySample arm starts from) as the softmax allows while keeping every tap
    trainable.

    Args:
        module: a :class:`srf_upsample.carafe.CARAFE` with ``scale=2`` and ``k_up >= 3``.

    Returns:
        ``module``, changed in place.
    """
    if module.scale != 2 or module.k_up < 3:
        raise ValueError(
            f"start_carafe_as_bilinear needs scale=2 and k_up >= 3 (bilinear's 2x2 neighbourhood), got "
            f"scale={module.scale}, k_up={module.k_up}."
        )
    k_up, centre = module.k_up, module.k_up // 2
    # Per side, phase -> {offset from the source pixel: weight} of 2x bilinear interpolation (align_corners=False).
    side = {0: {-1: 0.25, 0: 0.75}, 1: {0: 0.75, 1: 0.25}}
    weights = torch.full((k_up * k_up, 4), CARAFE_INACTIVE_WEIGHT)
    for tap in range(k_up * k_up):
        dy, dx = divmod(tap, k_up)
        for phase in range(4):
            a, b = divmod(phase, 2)
            weight = side[a].get(dy - centre, 0.0) * side[b].get(dx - centre, 0.0)
            if weight:
                weights[tap, phase] = weight
    with torch.no_grad():
        module.encoder.weight.zero_()
        # The encoder's channel tap * scale**2 + phase is that tap's logit for that phase (CARAFE.kernels).
        module.encoder.bias.copy_(weights.log().reshape(-1))
    return module


# The upsamplers the baseline stage can train end to end (config ``upsampler``), each with the step that gives it
# its start after the registry built it: DySample starts as bilinear by construction (None: nothing to do), CARAFE
# is set to start so.
END_TO_END_STARTS: dict[str, Any] = {"dysample": None, "carafe": start_carafe_as_bilinear}


def patch_upsampler(detector: nn.Module, name: str) -> nn.Module:
    """Arms DySample and CARAFE: every FPN upsampling site of ``detector`` gets its own upsampler called ``name``.

    The upsampler is built by the registry (:func:`srf_upsample.build_upsampler`), one per site as in the DySample
    and CARAFE papers, then given its start from :data:`END_TO_END_STARTS`; the detector trains it end to end.

    Args:
        detector: a detector built by :func:`build_detector`.
        name: a key of :data:`END_TO_END_STARTS` (``"dysample"``, ``"carafe"``).

    Returns:
        ``detector``, patched in place.
    """
    from ..patch import patch_fpn
    from ..upsamplers import build_upsampler

    if name not in END_TO_END_STARTS:
        raise ValueError(f"upsampler must be one of {list(END_TO_END_STARTS)} here, got {name!r}.")
    start = END_TO_END_STARTS[name]

    def build(channels: int) -> nn.Module:
        module = build_upsampler(name, channels)
        return start(module) if start is not None else module

    _, report = patch_fpn(detector, upsampler=build, share=False, strict=True)
    logger.info("patched the FPN with %s: %s", name, report)
    return detector


def set_fpn_interpolation(detector: nn.Module, mode: str) -> None:
    """Arm B of the protocol: the FPN's nearest upsampling replaced by ``mode`` interpolation, nothing learned."""
    from ..patch import patch_fpn

    patch_fpn(detector, upsampler=FixedInterpolation(mode), share=True, strict=True)


class FixedInterpolation(nn.Module):
    """``F.interpolate`` with a fixed mode, called like :class:`~srf_upsample.SRFUpsample` (no parameters)."""

    def __init__(self, mode: str = "bilinear") -> None:
        super().__init__()
        self.mode = check_choice("interpolation", mode, INTERPOLATION_MODES)

    def forward(
        self, x: torch.Tensor, size: Sequence[int] | None = None, scale_factor: float | Sequence[float] | None = None
    ) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``, as ``F.interpolate(x, size, scale_factor, mode)``."""
        return interpolate(x, size=size, scale_factor=scale_factor, mode=self.mode)

    def extra_repr(self) -> str:
        """The mode."""
        return f"mode={self.mode!r}"


@dataclass(frozen=True)
class DetectorSpec:
    """Everything :func:`build_detector` needs to rebuild a detector without its training files (JSON values only).

    One spec serves the trainer (it builds from its config), a run folder's ``manifest.json`` (``"detector"``: the
    spec that was built) and a shipped detector folder (``detector.json``), so all three rebuild the same way, with
    the defaults written here once.
    """

    detector: str
    backbone: str
    num_classes: int
    min_size: int = 800
    max_size: int = 1333
    trainable_backbone_layers: int | None = None
    anchor_sizes: list[int] | None = None
    anchor_scale: float = 1.0
    detector_kwargs: dict[str, Any] | None = None
    fpn_channels: int = 256
    # None: frozen when ImageNet weights are loaded (torchvision's rule); a rebuild without them passes the saved value.
    frozen_batchnorm: bool | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **overrides: Any) -> DetectorSpec:
        """The spec from a mapping holding its fields (a config, a manifest entry, ``detector.json``).

        Other keys are ignored, missing optional ones take the defaults above, ``overrides`` win.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        picked = {key: value for key, value in values.items() if key in names}
        picked.update(overrides)
        missing = sorted(
            field.name
            for field in dataclasses.fields(cls)
            if field.name not in picked and field.default is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"A detector spec needs {missing}; got the keys {sorted(values)}.")
        return cls(**picked)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values."""
        return dataclasses.asdict(self)

    def build(self, *, backbone_weights: str | None = None, detector_weights: str | None = None) -> nn.Module:
        """The detector (train mode), with local ImageNet ``backbone_weights`` and/or ``detector_weights`` loaded."""
        return build_detector(
            self.detector,
            self.backbone,
            self.num_classes,
            min_size=self.min_size,
            max_size=self.max_size,
            backbone_weights=backbone_weights,
            detector_weights=detector_weights,
            trainable_backbone_layers=self.trainable_backbone_layers,
            anchor_sizes=self.anchor_sizes,
            anchor_scale=self.anchor_scale,
            frozen_batchnorm=self.frozen_batchnorm,
            detector_kwargs=self.detector_kwargs,
            fpn_channels=self.fpn_channels,
        )
