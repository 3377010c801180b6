"""What a stage's step calls on the trainer: autocast, the checked and scaled backward and step, and D's logits.

:class:`StepTools` is the trainer's (``loop._Trainer``) side of a step under ``--amp`` and DDP; the stage's own
arithmetic stays in ``stages.py``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from .run_folder import DIVERGED_NAME, write_json

__all__ = ["AMP_DTYPES", "StepTools"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class StepTools:
    """Autocast, backward and optimizer steps for a trainer that sets the attributes below.

    Attributes:
        config: the stage's config (``stage``, ``batch_size`` name a divergence).
        amp_dtype: the autocast dtype of ``--amp``, ``None`` in float32.
        device: where the step runs.
        scaler: the grad scaler (enabled under float16 only).
        optimizers: one optimizer per trained module, by name.
        discriminator: D, for :meth:`fake_logits`.
        discriminator_levels: D applied per level (DDP-wrapped under several processes).
        is_main, step, output_dir: who writes ``diverged.json``, at which step, where.
    """

    config: Any
    amp_dtype: torch.dtype | None
    device: torch.device
    scaler: torch.amp.GradScaler
    optimizers: dict[str, torch.optim.Optimizer]
    discriminator: nn.Module | None
    discriminator_levels: nn.Module
    is_main: bool
    step: int
    output_dir: Path

    def autocast(self):
        """The autocast context of ``--amp`` (a no-op in float32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _check_finite(self, name: str, loss: torch.Tensor) -> None:
        # Training on NaN silently wastes the rest of the run; stop at the first non-finite loss instead.
        if not torch.isfinite(loss).all():
            if self.is_main:  # so that experiment tables can tell a diverged run from one not run yet
                record = {"stage": self.config.stage, "step": self.step + 1, "loss": name, "value": str(loss.item())}
                write_json(self.output_dir / DIVERGED_NAME, record)
            raise FloatingPointError(
                f"{name} is {loss.item()} at step {self.step + 1}: training diverged. Lower --lr (the paper's 0.02 is "
                f"for 16 images per step; scale it linearly: 0.02 * batch_size / 16 = "
                f"{0.02 * self.config.batch_size / 16:g}) or lengthen warmup_iters; resume restarts from the last "
                "checkpoint."
            )

    def backward_and_step(self, name: str, loss: torch.Tensor, optimizer: str) -> None:
        """Check ``loss`` (named ``name`` in errors), backpropagate it (scaled under fp16 AMP), step ``optimizer``."""
        self._check_finite(name, loss)
        # Labels for torch.profiler (benchmarks/bench_stage_steps.py); free when no profiler runs.
        with record_function(f"backward ({optimizer})"):
            self.scaler.scale(loss).backward()
        with record_function(f"optimizer step ({optimizer})"):
            self.scaler.step(self.optimizers[optimizer])

    def fake_logits(self, sr: list[torch.Tensor]) -> list[torch.Tensor]:
        """D's logits on ``sr`` for G's (or M's) adversarial loss, gradients reaching ``sr``."""
        wrapper = self.discriminator_levels
        # D is not stepped on this loss and its gradients are zeroed before its next step: recording its parameters
        # as constants skips computing their gradients in the backward (about a third of D's backward), while the
        # gradient that reaches ``sr`` is the same.
        trainable = [param for param in self.discriminator.parameters() if param.requires_grad]
        for param in trainable:
            param.requires_grad_(False)
        try:
            with self.autocast():
                if isinstance(wrapper, DistributedDataParallel):
                    # D is not stepped here: skip all-reducing its gradients.
                    with wrapper.no_sync():
                        logits = wrapper(sr)
                else:
                    logits = wrapper(sr)
        finally:
            for param in trainable:
                param.requires_grad_(True)
        return [logit.float() for logit in logits]
