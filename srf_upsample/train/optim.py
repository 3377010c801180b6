"""The optimisation schedule of every stage: SGD with momentum, linear warm-up and step decay at milestones."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["lr_lambda", "optimizers_for", "sgd"]


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """The lr factor at a step: linear warm-up from ``warmup_factor``, times ``gamma`` per milestone passed."""
    milestones = sorted(config.milestones)

    def factor(step: int) -> float:
        warm = 1.0
        if step < config.warmup_iters:
            alpha = step / config.warmup_iters
            warm = config.warmup_factor * (1 - alpha) + alpha
        return warm * config.gamma ** bisect.bisect_right(milestones, step)

    return factor


def sgd(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.SGD:
    """SGD over the trainable ``params`` with the config's lr, momentum and weight decay."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("Nothing to train: every parameter is frozen.")
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def optimizers_for(
    modules: Mapping[str, nn.Module], config: TrainConfig
) -> tuple[dict[str, torch.optim.Optimizer], dict[str, torch.optim.lr_scheduler.LRScheduler]]:
    """One SGD optimizer per module (by name) and its schedule."""
    optimizers = {name: sgd(module.parameters(), config) for name, module in modules.items()}
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config)) for name, opt in optimizers.items()}
    return optimizers, schedulers
