"""Snapshots of the process-wide state a test must leave as it found it, and what differs between two of them."""

from __future__ import annotations

import logging
import os
import random
import sys
from typing import Any

import numpy as np
import torch

__all__ = ["SEED", "SELF_SET_ENV", "process_state", "reseed", "rng_states", "set_rng_states", "state_changes"]

SEED = 0  # the torch, random and numpy seed every test starts from
# Environment variables that are not a test's doing: pytest names the running test in PYTEST_CURRENT_TEST, and torch's
# inductor (torch.compile, torch.export) records its cache folder and compile-worker settings there at its first use.
SELF_SET_ENV = frozenset(
    {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "TORCH_WARM_POOL", "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"}
)


def _handlers(logger: logging.Logger) -> tuple[logging.Handler, ...]:
    # Not a test's doing: pytest's logging plugin attaches its own capture handlers around each phase, and torch's
    # LazyTraceHandler on the "torch.__trace" logger removes itself at its first record (the first torch.export or
    # torch.compile of the process) unless TORCH_TRACE names a folder.
    return tuple(
        h
        for h in logger.handlers
        if not type(h).__module__.startswith("_pytest") and type(h).__name__ != "LazyTraceHandler"
    )


def _loggers() -> dict[str, tuple[Any, ...]]:
    loggers = {"<root>": logging.getLogger()}
    loggers.update(
        {name: obj for name, obj in logging.Logger.manager.loggerDict.items() if isinstance(obj, logging.Logger)}
    )
    return {name: (lg.level, _handlers(lg), lg.propagate, lg.disabled) for name, lg in loggers.items()}


def process_state() -> dict[str, Any]:
    """The process-wide settings a test must not leave changed, by name."""
    state: dict[str, Any] = {
        "torch.get_num_threads()": torch.get_num_threads(),
        "torch.get_num_interop_threads()": torch.get_num_interop_threads(),
        "torch.get_default_dtype()": torch.get_default_dtype(),
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.is_deterministic_algorithms_warn_only_enabled()": torch.is_deterministic_algorithms_warn_only_enabled(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.is_inference_mode_enabled()": torch.is_inference_mode_enabled(),
        "torch.is_anomaly_enabled()": torch.is_anomaly_enabled(),
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark,
        "torch.backends.cudnn.deterministic": torch.backends.cudnn.deterministic,
        "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "os.environ": {k: v for k, v in os.environ.items() if k not in SELF_SET_ENV},
        "os.getcwd()": os.getcwd(),
        "logging.disable level": logging.root.manager.disable,
        "loggers": _loggers(),
    }
    if "matplotlib" in sys.modules:  # read without resolving an "auto" backend (which would import pyplot)
        state["matplotlib backend"] = dict.__getitem__(sys.modules["matplotlib"].rcParams, "backend")
    return state


def state_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two :func:`process_state` snapshots, one line per setting (or variable, or logger)."""
    changes = []
    for key in before.keys() | after.keys():
        old, new = before.get(key, "<unset>"), after.get(key, "<unset>")
        if old == new or key == "matplotlib backend" and "<unset>" in (old, new):  # imported during the test
            continue
        if key == "os.environ":
            names = sorted(n for n in old.keys() | new.keys() if old.get(n) != new.get(n))
            changes += [
                f"environment variable {n}: {old.get(n, '<unset>')!r} -> {new.get(n, '<unset>')!r}" for n in names
            ]
        elif key == "loggers":  # loggers created during the test (by an import) are new, not changed
            names = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
            fields = ("level", "handlers", "propagate", "disabled")
            for n in names:
                diff = ", ".join(
                    f"{f} {a!r} -> {b!r}" for f, a, b in zip(fields, old[n], new[n], strict=True) if a != b
                )
                changes.append(f"logger {n!r}: {diff}")
        else:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return sorted(changes)


def rng_states() -> tuple[Any, Any, Any]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def set_rng_states(states: tuple[Any, Any, Any]) -> None:
    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])


def reseed(seed: int = SEED) -> None:
    """Seed torch (CPU and CUDA), ``random`` and numpy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
