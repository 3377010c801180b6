"""The fair protocol as a command: every arm on one target schedule, over seeds, with a paired results table.

Arms (one row per seed each; see ``docs/experiment.md``) are the rows of one registry, :data:`.arms.ARMS`:

- ``A1``: the detector as it is (nearest-neighbour FPN upsampling).
- ``B``: A1 with bilinear FPN upsampling (G has a bilinear shortcut: is "SRF" just bilinear?).
- ``A2-<v>``: the stage-1 generator (trained against the trained A1's FPN) patched into a fresh detector, stage 3.
- ``A5-<v>``: stage 1 -> stage 2 (SRF extractor, L_INT) -> stage 3 reusing the extractor (the paper's full method).
- ``A5g-<v>``: as A5, but stage 3 takes only G from stage 2 into a fresh detector.
- ``C``: the stage-2 pre-training of A5 without G and D (half-size images, L1 to F, L_DET), then stage 3 reusing it.

``<v>`` is a generator variant (``srf_upsample.upsample.VARIANTS``: ``lite``, ``paper``). Every target detector is
trained from one :class:`DetectorSchedule` object, applied last over everything else, so no arm can get another
schedule; :func:`summarize` checks it again in every run's saved config, with the detector's image sizes, anchors and
FPN width.

Modules: ``arms`` (the registry), ``config`` (the experiment file), ``plan`` (runs and their order), ``run`` (the
process scheduler), ``summary`` (reading finished runs), ``stats``, ``report`` (Markdown, curves), ``intervals``
(one paired difference's interval and variance split), ``readout`` (:func:`report_experiment`: the report step over
folds, with ``readout_text`` and ``forest``), ``folds`` (k-fold splits of one COCO file), ``launch`` (local
processes or one submitit job per run), ``cli``.
"""

from .archive import open_runs as open_runs
from .arms import ARM_QUESTIONS as ARM_QUESTIONS
from .arms import ARMS as ARMS
from .arms import GENERATOR_VARIANTS as GENERATOR_VARIANTS
from .arms import Arm as Arm
from .cli import main as main
from .config import DEFAULT_ARMS as DEFAULT_ARMS
from .config import DetectorSchedule as DetectorSchedule
from .config import ExperimentConfig as ExperimentConfig
from .config import load_experiment as load_experiment
from .intervals import paired_interval as paired_interval
from .plan import Job as Job
from .plan import plan_jobs as plan_jobs
from .plan import select_arms as select_arms
from .plan import select_jobs as select_jobs
from .readout import report_experiment as report_experiment
from .report import markdown_table as markdown_table
from .report import plot_curves as plot_curves
from .report import pooled_markdown as pooled_markdown
from .report import pooled_reading as pooled_reading
from .run import run_jobs as run_jobs
from .stats import pool_paired as pool_paired
from .summary import METRICS as METRICS
from .summary import summarize as summarize

__all__ = [
    "ARMS",
    "ARM_QUESTIONS",
    "DEFAULT_ARMS",
    "GENERATOR_VARIANTS",
    "METRICS",
    "Arm",
    "DetectorSchedule",
    "ExperimentConfig",
    "Job",
    "load_experiment",
    "main",
    "open_runs",
    "markdown_table",
    "paired_interval",
    "plan_jobs",
    "select_arms",
    "select_jobs",
    "plot_curves",
    "pool_paired",
    "pooled_markdown",
    "pooled_reading",
    "report_experiment",
    "run_jobs",
    "summarize",
]
