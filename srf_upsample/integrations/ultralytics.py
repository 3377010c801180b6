"""Train an ultralytics YOLO / RT-DETR with SRFUpsample in its neck, using ultralytics' own trainer.

ultralytics builds a fresh network inside its trainer (``Model.train`` calls ``trainer.get_model``), so a model
patched beforehand is not the one trained. :func:`use_srf` patches the model it is given and registers an
``on_pretrain_routine_start`` callback that wraps the trainer's ``get_model``: every network the trainer builds is
patched before its optimizer and EMA exist, so the generators train with the detector and are saved inside
``last.pt`` / ``best.pt``. ``YOLO("runs/.../last.pt")`` then loads with SRF inside (``srf_upsample`` must be
importable, as the checkpoint pickles its modules). Any upsampler name works the same way:
``use_srf(YOLO("yolov8n.yaml"), "carafe")`` (names: ``srf_upsample.list_upsamplers()``).

The guided generator (``variant="guided"``) works here too, but runs its unguided pass: ultralytics' layer-routing
forward does not trace with fx, so the upsampling layers are swapped one by one and the skip map each output is
concatenated with is not known at the call (``report.sites[i].guide_reason`` says so; docs/guided_generator.md).

Example:
    >>> from ultralytics import YOLO  # doctest: +SKIP
    >>> from srf_upsample.integrations.ultralytics import use_srf  # doctest: +SKIP
    >>> model = use_srf(YOLO("yolov8n.yaml"))  # doctest: +SKIP
    >>> model.train(data="data.yaml", epochs=3, imgsz=640)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from torch import nn

from ..patch import PatchReport, Upsampler, patch_fpn

__all__ = ["srf_callback", "use_srf"]

logger = logging.getLogger(__name__)

_INSTALL = "pip install 'srf_upsample[ultralytics]'"


def _require_ultralytics() -> None:
    try:
        import ultralytics  # noqa: F401
    except ImportError as error:
        raise ImportError(f"srf_upsample.integrations.ultralytics needs ultralytics; run `{_INSTALL}`.") from error


def _patch_network(network: nn.Module, patch_kwargs: dict[str, Any]) -> PatchReport:
    kwargs = dict(patch_kwargs)
    strict = kwargs.pop("strict", True)
    _, report = patch_fpn(network, **kwargs)
    if strict and not report.replaced and not report.already_patched:
        raise ValueError(
            f"srf_upsample found no upsampling site to replace in {report.model}:\n{report}\nPass strict=False to "
            "train it unpatched anyway."
        )
    logger.info("srf_upsample: patched %s: %d upsampling sites replaced", report.model, len(report.replaced))
    return report


def srf_callback(upsampler: Upsampler | None = None, **patch_kwargs: Any) -> Any:
    """Return an ``on_pretrain_routine_start`` callback that makes a trainer patch every network it builds.

    Use it where you hold a trainer rather than a ``YOLO`` object:
    ``trainer.add_callback("on_pretrain_routine_start", srf_callback())``.

    Args:
        upsampler: as in :func:`srf_upsample.patch_fpn` (``None``: ``SRFUpsample(C)``; a name such as
            ``"carafe"``; a factory; a ready module).
        **patch_kwargs: further keyword arguments of :func:`srf_upsample.patch_fpn` (``share``, ``exclude``, ...).

    Returns:
        The callback, called by ultralytics with the trainer.
    """
    patch_kwargs = {"upsampler": upsampler, "strict": True, **patch_kwargs}

    def on_pretrain_routine_start(trainer: Any) -> None:
        if getattr(trainer.get_model, "_srf_patched", False):
            return
        build = trainer.get_model

        @functools.wraps(build)
        def get_model(cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
            network = build(cfg=cfg, weights=weights, verbose=verbose)
            _patch_network(network, patch_kwargs)
            if weights is not None and hasattr(network, "load"):
                # The unpatched network took the detector weights; load again so that trained generators in
                # `weights` (a patched checkpoint being resumed or fine-tuned) are kept too.
                network.load(weights, verbose=False)
            return network

        get_model._srf_patched = True  # type: ignore[attr-defined]
        trainer.get_model = get_model
        if isinstance(getattr(trainer, "model", None), nn.Module):  # a network built before the callback ran
            _patch_network(trainer.model, patch_kwargs)

    return on_pretrain_routine_start


def use_srf(model: Any, upsampler: Upsampler | None = None, **patch_kwargs: Any) -> Any:
    """Patch an ultralytics ``YOLO`` / ``RTDETR`` model in place and make its ``train()`` keep the patch.

    The ``nn.Upsample`` layers of the neck are swapped for upsampling sites that call one upsampler per channel
    count (``model.model.srf_upsampler_c<C>``, an ``SRFUpsample`` unless ``upsampler`` names another); ``predict``,
    ``val``, ``train`` and checkpoints all use them.

    Args:
        model: an ``ultralytics.YOLO`` (or ``RTDETR``) object, built from a YAML or loaded from a checkpoint.
        upsampler: as in :func:`srf_upsample.patch_fpn`: a name of :func:`srf_upsample.list_upsamplers` (e.g.
            ``"carafe"``, ``"dysample"``, ``"srf-lite"``, or a shipped generator, which serves the sites with its
            channel count); ``SRFUpsample.from_pretrained(...)`` for a trained generator; or
            ``functools.partial(SRFUpsample, variant="lite")``.
        **patch_kwargs: further keyword arguments of :func:`srf_upsample.patch_fpn`.

    Returns:
        ``model``, whose ``model.srf_report`` is the :class:`~srf_upsample.PatchReport` of its network.

    Raises:
        TypeError: ``model`` is not an ultralytics model object.
        ValueError: ``upsampler`` is an unknown name (the message lists the known ones), or no upsampling site was
            replaced and none was patched before (``strict=True`` is the default here; a model loaded from a patched
            checkpoint is kept as it is).
    """
    _require_ultralytics()
    from ultralytics.engine.model import Model

    if not isinstance(model, Model):
        raise TypeError(
            f"model must be an ultralytics model object such as YOLO('yolov8n.yaml'), got {type(model).__name__}; "
            "for a bare nn.Module call srf_upsample.patch_fpn(module) instead."
        )
    patch_kwargs = {"upsampler": upsampler, "strict": True, **patch_kwargs}
    model.srf_report = _patch_network(model.model, patch_kwargs)
    model.add_callback("on_pretrain_routine_start", srf_callback(**patch_kwargs))
    return model
