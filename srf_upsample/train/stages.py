"""What each training stage does: the modules it builds and its training step, one :class:`Stage` subclass each.

A stage holds its config (``stage_configs.py``: the settings, data only) and gives the trainer (``loop.py``) what it
calls: :meth:`Stage.build`, :meth:`Stage.step` and :meth:`Stage.recorded`. The trainer never asks which stage it
runs. Adding a stage is a config class in ``stage_configs.STAGE_CONFIGS`` (new fields, if any) and a :class:`Stage`
subclass in :data:`STAGES` under the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from ..discriminator import FeaturePatchDiscriminator
from ..hub import load_state_dict_strict, read_safetensors
from ..losses import (
    discriminator_loss,
    downsample_targets,
    feature_l1_loss,
    generator_adversarial_loss,
    integral_loss,
    srf_extractor_loss,
)
from ..upsample import SRFUpsample
from .config import TrainConfig
from .data import scale_targets
from .feature_cache import batch_features
from .models import DetectorSpec, patch_generator, patch_upsampler, set_fpn_interpolation
from .pyramid import downsample_images, extract_levels, guide_sources, prepare_batch, target_batch_size
from .run_folder import CHECKPOINT_NAME, DISCRIMINATOR_DIR, GENERATOR_DIR, MANIFEST_NAME, read_json, read_manifest
from .start_generator import load_start_generator, new_generator
from .state_dicts import strip_prefix

__all__ = ["STAGES", "Baseline", "Stage", "Stage1", "Stage2", "Stage3", "StageModules", "stage_for"]


@dataclass
class StageModules:
    """What a stage's ``build`` returns: the modules it trains and how the trainer treats each.

    Attributes:
        modules: the trained modules by name; each gets one SGD optimizer and is checkpointed under ``"<name>."``.
        folders: ``save_pretrained`` folders written with every checkpoint (``generator/``, ``discriminator/``).
        generator: G, trained alone (stage 1) or patched into the detector; ``None`` without one.
        discriminator: D, when the stage trains one.
        extractor: the frozen multi-scale extractor F, when the stage has a target for G.
        detector_spec: how ``modules["detector"]`` was built (recorded in the manifest to rebuild it).
        captures_fpn: keep the detector's FPN outputs of each forward (stage 2's Eq. 3 in the same pass as L_DET).
    """

    modules: dict[str, nn.Module]
    folders: dict[str, nn.Module] = field(default_factory=dict)
    generator: nn.Module | None = None
    discriminator: nn.Module | None = None
    extractor: nn.Module | None = None
    detector_spec: DetectorSpec | None = None
    captures_fpn: bool = False


def _discriminator_update(trainer: Any, real: list[torch.Tensor], sr: list[torch.Tensor]) -> torch.Tensor:
    """D's step on Eq. (1): real features against ``sr`` detached; returns the detached loss."""
    trainer.optimizers["discriminator"].zero_grad(set_to_none=True)
    with trainer.autocast(), record_function("D forward + Eq. (1)"):
        logits = trainer.discriminator_levels(list(real) + [feat.detach() for feat in sr])
        logits = [logit.float() for logit in logits]
        loss = discriminator_loss(logits[: len(real)], logits[len(real) :])
    trainer.backward_and_step("loss_d", loss, "discriminator")
    return loss.detach()


class Stage:
    """A training stage over its ``config``; this base holds the detection step and the blocks stages share.

    Args:
        config: the stage's settings (a validated ``stage_configs`` class).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def build(self, num_classes: int) -> StageModules:
        """Build the modules this stage trains (seeded by the trainer just before)."""
        raise NotImplementedError(f"{type(self).__name__} builds nothing; a training stage overrides build.")

    def step(self, trainer: Any, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """One detection step (baseline and stage 3): the detector's summed losses, backpropagated and stepped."""
        with trainer.autocast():
            detection = trainer.detector(images, targets)
        total = sum(value.float() for value in detection.values())
        trainer.optimizers["detector"].zero_grad(set_to_none=True)
        trainer.backward_and_step("loss", total, "detector")
        out = {"loss": total.detach()}
        out.update({name: value.detach() for name, value in detection.items()})
        return out

    def recorded(self, built: StageModules) -> dict[str, Any]:
        """The config as it ran, for the manifest.

        G's and D's fields are those of the modules that trained (loaded from ``init`` in stages 2 and 3), ``None``
        where the stage has none.
        """
        values = self.config.to_dict()
        generator, discriminator = built.generator, built.discriminator
        for name in ("variant", "hidden_channels", "num_blocks", "zero_init_residual", "norm", "deconv_kernel"):
            values[f"generator_{name}"] = getattr(generator, name, None) if generator is not None else None
        values["discriminator_hidden_channels"] = (
            list(discriminator.hidden_channels) if discriminator is not None else None
        )
        if discriminator is None:
            values["adversarial_weight"] = None
        return values

    # ---- shared building blocks
    def read_init(self) -> dict[str, Any]:
        """The manifest of ``init``: a run of one of ``INIT_FROM``, finished unless ``allow_unfinished_init``."""
        config = self.config
        manifest = read_manifest(config.init, config.INIT_FROM)
        self._refuse_unfinished(config.init, manifest, "--init")
        return manifest

    def _refuse_unfinished(self, directory: str, manifest: dict[str, Any], flag: str) -> None:
        if manifest.get("finished") or self.config.allow_unfinished_init:
            return
        total = manifest.get("config", {}).get("max_iters", "?")
        raise ValueError(
            f"{flag} {directory!r} is a {manifest.get('stage')} run that stopped at step {manifest.get('step')} of "
            f"{total}: it has not finished. Finish it first (rerun its command: it resumes), or pass "
            "--allow-unfinished-init to start from its last checkpoint anyway."
        )

    def detector_spec(self, num_classes: int, *, anchor_scale: float = 1.0) -> DetectorSpec:
        """The spec of the config's detector (``anchor_scale`` is 1 except for stage 2's half-size M)."""
        return DetectorSpec.from_values(
            self.config.to_dict(),
            num_classes=num_classes,
            anchor_scale=anchor_scale,
            frozen_batchnorm=bool(self.config.backbone_weights),
        )

    def new_detector(self, spec: DetectorSpec, detector_weights: str | None = None) -> nn.Module:
        """The detector of ``spec`` from the config's backbone weights and ``detector_weights`` (or the config's)."""
        config = self.config
        return spec.build(
            backbone_weights=config.backbone_weights, detector_weights=detector_weights or config.detector_weights
        )

    def frozen_extractor(self, num_classes: int) -> nn.Module:
        """F: the backbone (body + FPN) of the trained detector of ``extractor_weights``, frozen, in eval mode."""
        config = self.config
        if not (config.extractor_weights or config.detector_weights or config.allow_untrained_extractor):
            raise ValueError(
                f"{config.stage} trains against the FPN of a trained detector (F, section 4.1), but neither "
                "--extractor-weights nor --detector-weights is given: F would be an ImageNet body under a randomly "
                "initialised FPN, and G would learn to imitate noise. Train the baseline first and pass "
                "--extractor-weights <baseline output dir>/checkpoint.safetensors (set allow_untrained_extractor=true "
                "only for smoke tests)."
            )
        weights = config.extractor_weights or config.detector_weights
        run = Path(weights).parent if weights else None
        if run is not None and (run / MANIFEST_NAME).is_file():  # the weights of one of our runs: finished?
            self._refuse_unfinished(str(run), read_json(run / MANIFEST_NAME), "--extractor-weights from")
        extractor = self.new_detector(self.detector_spec(num_classes), weights).backbone
        return extractor.eval().requires_grad_(False)


class Stage1(Stage):
    """Stage 1, SRF-GAN (section 4.1): G and D against a frozen F."""

    def build(self, num_classes: int) -> StageModules:
        """F from the trained detector, a fresh G and D; both train, both are saved as folders."""
        config = self.config
        extractor = self.frozen_extractor(num_classes)
        generator = new_generator(config)
        if config.generator:
            load_start_generator(generator, config.generator)
        discriminator = FeaturePatchDiscriminator(
            config.fpn_channels, hidden_channels=config.discriminator_hidden_channels
        )
        modules = {"generator": generator, "discriminator": discriminator}
        return StageModules(
            modules,
            folders={GENERATOR_DIR: generator, DISCRIMINATOR_DIR: discriminator},
            generator=generator,
            discriminator=discriminator,
            extractor=extractor,
        )

    def step(self, trainer: Any, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """One D step on Eq. (1), then one G step on Eq. (2) through the updated D (its output not detached).

        The guided G gets, at each level but the FPN's finest, the lateral map of I_lr it meets inside the FPN
        (``pyramid.guide_sources``); the other variants get no guide.
        """
        image_keys = [target.get("dataset_key") for target in targets]
        sources = guide_sources(trainer.keys) if getattr(trainer.generator, "accepts_guide", False) else None
        with torch.no_grad(), trainer.autocast(), record_function("F levels (cache lookup or compute)"):
            # F per image (cached when feature_cache is on: F is frozen, the keys name deterministic views).
            target_feats, low_feats, guides = batch_features(
                trainer.extractor,
                images,
                image_keys,
                trainer.keys,
                degradation=self.config.degradation,
                cache=trainer.feature_cache,
                guide_sources=sources,
            )
        sizes = [feat.shape[-2:] for feat in target_feats]
        with trainer.autocast(), record_function("G forward"):
            sr = trainer.generator_levels(low_feats, sizes, guides)  # guides: all None unless G is guided
        sr = [feat.float() for feat in sr]
        d_loss = _discriminator_update(trainer, target_feats, sr)
        # G step: D's output is not detached, so the adversarial gradient reaches G; only G's optimizer steps.
        trainer.optimizers["generator"].zero_grad(set_to_none=True)
        with record_function("D forward + Eq. (2)"):
            l1 = feature_l1_loss(sr, target_feats)
            adversarial = generator_adversarial_loss(trainer.fake_logits(sr))
            # Eq. (2) as srf_loss computes it (L1 + lambda * L_adv), with its two parts kept for the log.
            weight = self.config.adversarial_weight
            g_loss = l1 + weight * adversarial if weight else l1
        trainer.backward_and_step("loss_g", g_loss, "generator")
        return {
            "loss_d": d_loss,
            "loss_g": g_loss.detach(),
            "loss_g_l1": l1.detach(),
            "loss_g_adv": adversarial.detach(),
        }


class Stage2(Stage):
    """Stage 2, multi-scale SRF extractor (section 4.2): M on I_lr with L_INT, D continued from stage 1."""

    def build(self, num_classes: int) -> StageModules:
        """F, then M (half-size anchors) with the stage-1 G patched in and D continued (or neither: arm C)."""
        config = self.config
        extractor = self.frozen_extractor(num_classes)
        spec = self.detector_spec(num_classes, anchor_scale=config.anchor_scale)
        # M: fresh (ImageNet body) in the paper's text; init_from_extractor starts it from F's detector.
        detector = self.new_detector(spec, config.extractor_weights if config.init_from_extractor else None)
        if not config.use_generator:
            return StageModules({"detector": detector}, extractor=extractor, detector_spec=spec, captures_fpn=True)
        init = Path(config.init)
        self.read_init()
        generator = SRFUpsample.from_pretrained(str(init / GENERATOR_DIR)).train()
        discriminator = FeaturePatchDiscriminator.from_pretrained(str(init / DISCRIMINATOR_DIR)).train()
        if discriminator.in_channels != config.fpn_channels:
            raise ValueError(
                f"The stage-1 discriminator in {str(init)!r} judges {discriminator.in_channels}-channel "
                f"features but fpn_channels is {config.fpn_channels}: use the stage-1 run's fpn_channels."
            )
        patch_generator(detector, generator)
        return StageModules(
            {"detector": detector, "discriminator": discriminator},
            folders={GENERATOR_DIR: generator},
            generator=generator,
            discriminator=discriminator,
            extractor=extractor,
            detector_spec=spec,
            captures_fpn=True,
        )

    def step(self, trainer: Any, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """M on I_lr: L_INT = Eq. (3) on its FPN levels (captured in the same forward) + the detection losses."""
        low_images = downsample_images(images, self.config.degradation)
        low_targets = scale_targets(targets, images, low_images)
        with torch.no_grad(), trainer.autocast(), record_function("F(I_tr)"):
            # I_tr padded to twice the detector's padded I_lr batch, so P_tr level i is exactly 2x M's level i.
            size = target_batch_size(low_images, trainer.modules["detector"].transform.size_divisible)
            batch = prepare_batch(images, size=size)
            target_feats = [feat.float() for feat in extract_levels(trainer.extractor, batch, trainer.keys)]
        with trainer.autocast(), record_function("M forward (detector on I_lr, G inside)"):
            detection = trainer.detector(low_images, low_targets)
        sr = [feat.float() for feat in trainer.hook.pop(trainer.keys)]
        out: dict[str, torch.Tensor] = {}
        if trainer.discriminator is not None:
            real = downsample_targets(target_feats, [feat.shape[-2:] for feat in sr])
            out["loss_d"] = _discriminator_update(trainer, real, sr)
            trainer.optimizers["detector"].zero_grad(set_to_none=True)
            with record_function("D forward + Eq. (3)"):
                srf = srf_extractor_loss(
                    sr, target_feats, trainer.fake_logits(sr), adversarial_weight=self.config.adversarial_weight
                )
        else:
            # Arm C of the protocol: the same pre-training without G and D, i.e. the L1 term of Eq. (3) alone.
            trainer.optimizers["detector"].zero_grad(set_to_none=True)
            srf = feature_l1_loss(sr, downsample_targets(target_feats, [feat.shape[-2:] for feat in sr]))
        total = integral_loss(srf, {name: value.float() for name, value in detection.items()})
        trainer.backward_and_step("loss_int", total, "detector")
        out.update({"loss_int": total.detach(), "loss_srf": srf.detach()})
        out.update({name: value.detach() for name, value in detection.items()})
        return out


class Stage3(Stage):
    """Stage 3, target detector (section 4.3): the detection step at full resolution with G from stage 2."""

    def build(self, num_classes: int) -> StageModules:
        """A fresh detector with G patched in (fine-tuned unless frozen), and with ``reuse=extractor`` M's backbone."""
        config = self.config
        manifest = self.read_init() if config.init else {"has_generator": True}
        spec = self.detector_spec(num_classes)
        detector = self.new_detector(spec)
        has_generator = manifest.get("has_generator", True)
        if not has_generator and config.reuse != "extractor":
            raise ValueError(
                f"{config.init!r} is a stage-2 run without a generator (use_generator=false): "
                "stage 3 can only reuse its extractor (--reuse extractor)."
            )
        generator = None
        if config.use_new_generator:
            generator = new_generator(config)
        elif has_generator:
            generator = SRFUpsample.from_pretrained(config.generator or str(Path(config.init) / GENERATOR_DIR)).train()
        if generator is not None:
            patch_generator(detector, generator)
        if config.reuse == "extractor":
            state = read_safetensors(Path(config.init) / CHECKPOINT_NAME)
            load_state_dict_strict(
                detector.backbone,
                strip_prefix(state, "detector.backbone."),
                source=f"the stage-2 extractor of {config.init!r}",
            )
        if config.freeze_generator and generator is not None:
            generator.requires_grad_(False)
        folders = {GENERATOR_DIR: generator} if generator is not None else {}
        return StageModules({"detector": detector}, folders=folders, generator=generator, detector_spec=spec)


class Baseline(Stage):
    """The detector alone with its plain interpolation (A1 of Table 4): the detection step."""

    def build(self, num_classes: int) -> StageModules:
        """A fresh detector; its FPN's nearest upsampling swapped for ``interpolation`` or learned upsamplers."""
        config = self.config
        spec = self.detector_spec(num_classes)
        detector = self.new_detector(spec)
        if config.interpolation != "nearest":
            set_fpn_interpolation(detector, config.interpolation)
        if config.upsampler != "interpolate":
            patch_upsampler(detector, config.upsampler)  # one per site, as in the DySample and CARAFE papers
        return StageModules({"detector": detector}, detector_spec=spec)


# The training stages by name (the names of ``stage_configs.STAGE_CONFIGS``; ``evaluate`` trains nothing).
STAGES: dict[str, type[Stage]] = {"stage1": Stage1, "stage2": Stage2, "stage3": Stage3, "baseline": Baseline}


def stage_for(config: TrainConfig) -> Stage:
    """The :class:`Stage` that trains ``config`` (``STAGES[config.stage]``); a config of no training stage raises."""
    if config.stage not in STAGES:
        raise ValueError(
            f"stage {config.stage!r} is not a training stage; train one of {list(STAGES)} (``evaluate`` runs through "
            "srf-upsample train evaluate)."
        )
    return STAGES[config.stage](config)
