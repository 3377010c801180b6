"""The generator a training stage starts from: built afresh from the config, or loaded from a trained one."""

from __future__ import annotations

from ..hub import state_dict_differences
from ..upsample import SRFUpsample
from .config import TrainConfig

__all__ = ["load_start_generator", "new_generator"]


def new_generator(config: TrainConfig) -> SRFUpsample:
    """A fresh G from the config's ``fpn_channels`` and ``generator_*`` fields."""
    options = {"norm": config.generator_norm, "deconv_kernel": config.generator_deconv_kernel}
    return SRFUpsample(
        config.fpn_channels,
        hidden_channels=config.generator_hidden_channels,
        num_blocks=config.generator_num_blocks,
        zero_init_residual=config.generator_zero_init_residual,
        variant=config.generator_variant,
        **{name: value for name, value in options.items() if value is not None},
    )


def load_start_generator(generator: SRFUpsample, source: str) -> None:
    """Load the trained generator ``source`` (folder or shipped name) into the fresh ``generator`` of the config.

    The same variant loads every weight (strictly). A ``"lite"`` generator into a ``"guided"`` one loads the lite trunk,
    which the guided variant shares key for key; only the guide branch (``guide.*``) keeps its fresh start, whose
    modulation is zero, so the guided G starts as exactly that lite G (docs/guided_generator.md). Anything else, or any
    other missing, unexpected or differently shaped key, is a ValueError and ``generator`` is left unchanged.
    """
    start = SRFUpsample.from_pretrained(source)
    allowed = {generator.variant} | ({"lite"} if generator.variant == "guided" else set())
    if start.variant not in allowed:
        raise ValueError(
            f"generator={source!r} is a {start.variant!r} generator, but generator_variant is "
            f"{generator.variant!r}: a G starts from a trained generator of its own variant"
            + (", or a guided G from a trained lite G (its trunk)" if generator.variant == "guided" else "")
            + f". Pass a {' or '.join(sorted(allowed))} generator folder, or set generator_variant to "
            f"{start.variant!r}."
        )
    if start.negative_slope != generator.negative_slope:
        raise ValueError(
            f"generator={source!r} was built with negative_slope={start.negative_slope}, the trainer builds "
            f"{generator.negative_slope}: its weights would compute another function. Train from scratch instead."
        )
    given = start.state_dict()
    problems = state_dict_differences(generator.state_dict(), given)
    trunk_only = start.variant != generator.variant  # a lite trunk into a guided G: the guide branch stays fresh
    if trunk_only:
        problems["missing"] = [key for key in problems["missing"] if not key.startswith("guide.")]
    if any(problems.values()):
        listed = "; ".join(
            f"{kind}: {', '.join(keys[:3])}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            for kind, keys in problems.items()
            if keys
        )
        raise ValueError(
            f"generator={source!r} does not fit the G this config builds ({listed}). Set fpn_channels, "
            f"generator_hidden_channels and generator_num_blocks to that generator's (in_channels="
            f"{start.in_channels}, hidden_channels={start.hidden_channels}, num_blocks={start.num_blocks})."
        )
    generator.load_state_dict(given, strict=not trunk_only)
