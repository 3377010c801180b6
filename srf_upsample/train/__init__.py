"""The bundled trainer (needs the ``[train]`` extra): the paper's three stages on COCO-format data.

Build a stage's config from plain values, then train it::

    from srf_upsample.train import build_config, fit

    config = build_config("stage1", {"data_root": "images", "ann_file": "train.json", "output_dir": "runs/s1"})
    result = fit(config)  # resumes from output_dir when it holds this run's checkpoint

``srf-upsample train <stage>`` (``cli.py``) does the same from the command line. The stages by name are
``STAGE_CONFIGS`` (their settings) and ``STAGES`` (what each builds and steps).
"""

from .config import TrainConfig as TrainConfig
from .config import load_config_file as load_config_file
from .loop import FitResult as FitResult
from .loop import fit as fit
from .stage_configs import STAGE_CONFIGS as STAGE_CONFIGS
from .stage_configs import build_config as build_config
from .stages import STAGES as STAGES
from .stages import Stage as Stage
from .stages import StageModules as StageModules

__all__ = [
    "STAGES",
    "STAGE_CONFIGS",
    "FitResult",
    "Stage",
    "StageModules",
    "TrainConfig",
    "build_config",
    "fit",
    "load_config_file",
]
