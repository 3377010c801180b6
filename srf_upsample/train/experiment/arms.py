"""The one registry of the protocol: each arm and each pre-training run it starts from is one table row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...upsample import VARIANTS

__all__ = [
    "ARMS",
    "ARM_QUESTIONS",
    "BASELINE",
    "GENERATOR_VARIANTS",
    "PRETRAINING",
    "Arm",
    "Pretraining",
    "arm_order",
    "find_arm",
]

# The generator variants an SRF arm can take: the model's own list, so a new variant needs no change here.
GENERATOR_VARIANTS = tuple(sorted(VARIANTS))
# Every pre-training run learns against this arm's trained detector, so it runs for every seed whatever the arms.
BASELINE = "A1"


@dataclass(frozen=True)
class Pretraining:
    """A run that arms start from, shared by every arm of one seed that names it.

    Args:
        name: folder name; ``{variant}`` is replaced by the generator variant (``stage1-{variant}``).
        stage: the trainer stage (``stage1``, ``stage2``).
        settings: the experiment section its settings come from (``stage1``, ``stage2``).
        init: the pre-training run it starts from (``--init``); ``None``: it starts from the trained baseline alone.
        values: stage-only trainer settings of this run, e.g. ``{"use_generator": False}``.
        rank: order within its budget tier (its variant's: 0 for the first variant, 2 for the others; 0 without a
            variant), on the scale of the arms' ranks (:class:`Arm`); a run starts before those that start from it.
        new_generator: it trains a generator built afresh from the variant's generator settings (stage 1).
    """

    name: str
    stage: str
    settings: str
    rank: int
    init: str | None = None
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    new_generator: bool = False


@dataclass(frozen=True)
class Arm:
    """One arm of the protocol: a target detector trained on the experiment's one schedule, one per seed.

    Args:
        name: the arm's name; an arm with a generator is named ``<name>-<variant>`` per variant (``A2-lite``).
        question: what the arm answers (the table's reading).
        stage: the trainer stage of its target run (``baseline`` or ``stage3``).
        init: the pre-training run it starts from (a :data:`PRETRAINING` name), or :data:`BASELINE` (the trained A1
            of the same seed); ``None``: from the ImageNet backbone.
        init_as: how it starts from ``init``: ``"init"`` (the whole run folder, ``--init``), ``"generator"`` (only
            its generator, ``--generator <run>/generator``) or ``"detector_weights"`` (the run's final detector
            weights, ``--detector-weights <run>/checkpoint.safetensors``).
        values: stage-only trainer settings, e.g. ``{"reuse": "extractor"}`` or ``{"interpolation": "bilinear"}``.
        has_variant: one arm per generator variant.
        new_generator: its stage trains a generator built afresh from the variant's stage-1 generator settings.
        tier: budget tier: tier 0 runs for every seed before tier 1 (a non-first variant's arms run last, tier 2).
        rank: order within a tier (the budget order of ``EXPERIMENT.md``).
        references: the arms it is paired against, per seed (``AP - reference``); ``{variant}`` is its own variant.
        contrast: for each reference beyond A1 and B, what that difference measures (a sentence under the table).
    """

    name: str
    question: str
    stage: str
    init: str | None = None
    init_as: str = "init"
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    has_variant: bool = False
    new_generator: bool = False
    tier: int = 0
    rank: int = 0
    references: tuple[str, ...] = ("A1", "B")
    contrast: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


PRETRAINING = {
    run.name: run
    for run in (
        Pretraining("stage1-{variant}", "stage1", "stage1", rank=2, new_generator=True),
        Pretraining("stage2-{variant}", "stage2", "stage2", rank=2, init="stage1-{variant}"),
        Pretraining("stage2-C", "stage2", "stage2", rank=3, values=MappingProxyType({"use_generator": False})),
    )
}

_EXTRACTOR = MappingProxyType({"reuse": "extractor"})
# In the table's reading order; ``rank`` gives the budget order.
ARMS = {
    arm.name: arm
    for arm in (
        Arm("A1", "the baseline (nearest-neighbour FPN)", "baseline", references=()),
        Arm(
            "B",
            "is SRF just bilinear? (bilinear FPN, nothing learned)",
            "baseline",
            values=MappingProxyType({"interpolation": "bilinear"}),
            rank=1,
            references=("A1",),
        ),
        Arm(
            "A2",
            "does the stage-1 generator alone help?",
            "stage3",
            init="stage1-{variant}",
            init_as="generator",
            has_variant=True,
            tier=1,
            rank=5,
            references=("A1", "B", "DySample"),
            contrast=MappingProxyType({"DySample": "SRF's G against the light learned peer; above 0: G beats it"}),
        ),
        Arm(
            "A5",
            "the paper's full method (stage 1 -> 2 -> 3, reuse M)",
            "stage3",
            init="stage2-{variant}",
            values=_EXTRACTOR,
            has_variant=True,
            rank=2,
            references=("A1", "B", "C"),
            contrast=MappingProxyType({"C": "what G adds to the same stage-2 pre-training"}),
        ),
        Arm(
            "A5g",
            "the paper's 'reuse G' after stage 2",
            "stage3",
            init="stage2-{variant}",
            values=MappingProxyType({"reuse": "generator"}),
            has_variant=True,
            tier=1,
            rank=4,
        ),
        Arm(
            "C",
            "is A5's gain from G or from the extra stage-2 pre-training?",
            "stage3",
            init="stage2-C",
            values=_EXTRACTOR,
            rank=3,
        ),
        Arm(
            "E2E",
            "does G's GAN pre-training matter? (the same G from its bilinear start, trained by L_DET alone)",
            "stage3",
            values=MappingProxyType({"generator_zero_init_residual": True}),
            has_variant=True,
            new_generator=True,
            tier=1,
            rank=6,
            references=("A1", "B", "A2-{variant}"),
            contrast=MappingProxyType({"A2-{variant}": "end to end against G's GAN pre-training; below 0: it helps"}),
        ),
        Arm(
            "DySample",
            "does any learned upsampler help here? (the light peer DySample, bilinear start, trained end to end)",
            "baseline",
            values=MappingProxyType({"upsampler": "dysample"}),
            tier=1,
            rank=7,
        ),
        Arm(
            "CARAFE",
            "does a content-aware learned upsampler help here? (CARAFE, kernels set to start as bilinear "
            "interpolation, trained end to end)",
            "baseline",
            values=MappingProxyType({"upsampler": "carafe"}),
            tier=1,
            rank=9,
            references=("A1", "B", "DySample"),
            contrast=MappingProxyType({"DySample": "the two learned peers against each other; above 0: CARAFE wins"}),
        ),
        Arm(
            "A1+",
            "what does training A1 once more give? (A1's whole trained detector trained again on the target "
            "schedule; not the extra training C gets: stage 2 on half-size images, then stage 3 with new heads)",
            "baseline",
            init=BASELINE,
            init_as="detector_weights",
            tier=1,
            rank=8,
            references=("A1", "B", "C"),
            contrast=MappingProxyType(
                {"C": "A1 trained once more against C's stage 2 + stage 3: two kinds of extra training, not equal"}
            ),
        ),
    )
}
ARM_QUESTIONS = {name: arm.question for name, arm in ARMS.items()}


def find_arm(name: str) -> tuple[Arm, str | None]:
    """The registry row of a table arm such as ``"A5-lite"``, and its variant (``None`` for arms without one)."""
    head, _, variant = name.partition("-")
    arm = ARMS.get(head)
    if arm is None or arm.has_variant != bool(variant) or (variant and variant not in GENERATOR_VARIANTS):
        raise ValueError(
            f"Unknown arm {name!r}; arms are {[a for a in ARMS if not ARMS[a].has_variant]} and "
            f"{[f'{a}-<variant>' for a in ARMS if ARMS[a].has_variant]} with variant in {list(GENERATOR_VARIANTS)}."
        )
    return arm, variant or None


def arm_order(name: str) -> tuple[int, str]:
    """Sort key of table arms: the registry's reading order, then the name (unknown names last)."""
    head = name.split("-")[0]
    return (list(ARMS).index(head) if head in ARMS else 99, name)
