"""Hub glue: file names, shipped-name resolution and strict, all-or-nothing weight loading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from torch import nn

__all__ = [
    "CONFIG_NAME",
    "SAFE_WEIGHTS_NAME",
    "SRFHubMixin",
    "list_shipped",
    "load_state_dict_strict",
    "read_safetensors",
    "shipped_weights_dir",
]

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"


def shipped_weights_dir() -> Path:
    """Return the folder that holds the generators shipped with the package.

    A wheel installs the generator folders of ``weights/`` as ``srf_upsample/_shipped_weights`` (see
    ``[tool.hatch.build.targets.wheel.force-include]`` in pyproject.toml); a source checkout (editable install) reads
    all of ``weights/`` beside the package, including the DeepForest detector that only the examples load.
    """
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "_shipped_weights"
    return installed if installed.is_dir() else package_dir.parent / "weights"


def list_shipped() -> list[str]:
    """Return the short names of the shipped generators (folders of ``weights/`` with a config and weights)."""
    root = shipped_weights_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file() and (p / SAFE_WEIGHTS_NAME).is_file())


def read_safetensors(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a missing, truncated or corrupt file into a clear ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
    try:
        return safetensors.torch.load_file(str(path), device=str(device))
    except Exception as error:  # safetensors raises SafetensorError / OSError / ValueError depending on the damage
        raise ValueError(
            f"Weights file {str(path)!r} is not a readable safetensors file ({type(error).__name__}: {error}); "
            "it may be truncated or corrupt: save or download it again."
        ) from error


def load_state_dict_strict(
    module: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "state dict"
) -> None:
    """Load ``state_dict`` into ``module`` only if every key and shape matches; otherwise raise and change nothing.

    ``nn.Module.load_state_dict`` copies tensors one by one and can fail half way; this checks everything first.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}")
    if problems:
        raise ValueError(
            f"Cannot load {source} into {type(module).__name__}: " + "; ".join(problems) + ". "
            "The config that built the module must match the weights (e.g. in_channels, hidden_channels); "
            "the module was left unchanged."
        )
    module.load_state_dict(state_dict, strict=True)


class SRFHubMixin(PyTorchModelHubMixin):
    """PyTorchModelHubMixin with shipped short names, strict loading and clear errors.

    ``from_pretrained(name_or_path_or_repo_id, revision=...)`` resolves, in order: a local folder, a shipped name
    (see ``list_shipped()``), a Hub repo id (through the Hub cache; with ``HF_HUB_OFFLINE=1`` only the cache).

    A subclass lists in ``_legacy_config_defaults`` the constructor arguments it gained after weights were published,
    each with the value that reproduces the old behaviour: a ``config.json`` without such a field was written before
    the argument existed, so the field is read as that value, not as the (possibly different) current default.
    """

    _legacy_config_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any):  # type: ignore[override]
        """Load a module from a folder, a shipped short name or a Hub repo id; returns it in ``eval()`` mode."""
        name = str(pretrained_model_name_or_path)
        if not os.path.isdir(name) and name in list_shipped():
            name = str(shipped_weights_dir() / name)
        if os.path.isdir(name):
            if not (Path(name) / CONFIG_NAME).is_file():
                raise ValueError(f"Folder {name!r} has no {CONFIG_NAME}; was it written by save_pretrained()?")
            with open(Path(name) / CONFIG_NAME, encoding="utf-8") as f:
                try:
                    json.load(f)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{CONFIG_NAME} in {name!r} is not valid JSON: {error}.") from error
        else:
            try:
                hf_hub_download(
                    repo_id=name,
                    filename=CONFIG_NAME,
                    revision=kwargs.get("revision"),
                    cache_dir=kwargs.get("cache_dir"),
                    local_files_only=kwargs.get("local_files_only", False),
                    token=kwargs.get("token"),
                )
            except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
                raise ValueError(
                    f"Could not find pretrained weights {name!r}: it is not a local folder, not a shipped name "
                    f"(shipped: {list_shipped()}), and the Hub could not provide it at revision "
                    f"{kwargs.get('revision') or 'main'} ({type(error).__name__}). Offline (HF_HUB_OFFLINE=1) only "
                    "repos already in the Hub cache resolve; check the name or download it first."
                ) from error
        return super().from_pretrained(name, **kwargs)

    @classmethod
    def _from_pretrained(  # type: ignore[override]
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ):
        if not strict:
            raise ValueError("strict=False is not supported: srf_upsample always loads every weight or none.")
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, SAFE_WEIGHTS_NAME)
        else:
            model_file = hf_hub_download(
                repo_id=model_id,
                filename=SAFE_WEIGHTS_NAME,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        state_dict = read_safetensors(model_file, device=map_location)
        # The mixin passes only the fields config.json holds (plus the caller's keyword arguments), so a field that
        # is still missing here was absent from the file.
        for name, value in cls._legacy_config_defaults.items():
            model_kwargs.setdefault(name, value)
        model = cls(**model_kwargs)
        load_state_dict_strict(model, state_dict, source=f"weights from {model_id!r}")
        model.to(map_location)
        model.eval()
        return model
