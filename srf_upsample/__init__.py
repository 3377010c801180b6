"""srf_upsample: SRF-GAN learned feature upsampling for FPN-style detector necks."""

from .carafe import CARAFE as CARAFE
from .discriminator import FeaturePatchDiscriminator as FeaturePatchDiscriminator
from .dysample import DySample as DySample
from .hub import list_shipped as list_shipped
from .losses import discriminator_loss as discriminator_loss
from .losses import feature_l1_loss as feature_l1_loss
from .losses import generator_adversarial_loss as generator_adversarial_loss
from .losses import integral_loss as integral_loss
from .losses import srf_extractor_loss as srf_extractor_loss
from .losses import srf_loss as srf_loss
from .patch import PatchReport as PatchReport
from .patch import PatchSite as PatchSite
from .patch import patch_fpn as patch_fpn
from .upsample import SRFUpsample as SRFUpsample
from .upsamplers import build_upsampler as build_upsampler
from .upsamplers import list_upsamplers as list_upsamplers

__version__ = "0.1.0"

__all__ = [
    "CARAFE",
    "DySample",
    "FeaturePatchDiscriminator",
    "PatchReport",
    "PatchSite",
    "SRFUpsample",
    "__version__",
    "build_upsampler",
    "discriminator_loss",
    "feature_l1_loss",
    "generator_adversarial_loss",
    "integral_loss",
    "list_shipped",
    "list_upsamplers",
    "patch_fpn",
    "srf_extractor_loss",
    "srf_loss",
]
