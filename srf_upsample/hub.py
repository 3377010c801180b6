"""Hub glue: file names, shipped-name resolution and strict, all-or-nothing weight loading."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id
from torch import nn

from ._checks import check_device

__all__ = [
    "CONFIG_NAME",
    "SAFE_WEIGHTS_NAME",
    "SRFHubMixin",
    "list_shipped",
    "load_state_dict_strict",
    "read_safetensors",
    "shipped_weights_dir",
    "state_dict_differences",
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
        raise FileNotFoundError(
            f"Weights file {str(path)!r} does not exist; save_pretrained() writes it next to {CONFIG_NAME}: save the "
            "module again, or pass the folder that holds both."
        )
    try:
        return safetensors.torch.load_file(str(path), device=str(device))
    # safetensors raises SafetensorError / OSError / ValueError depending on the damage; the message says which, so the
    # library's own traceback is left out.
    except Exception as error:
        raise ValueError(
            f"Weights file {str(path)!r} is not a readable safetensors file ({type(error).__name__}: {error}); "
            "it may be truncated or corrupt: save or download it again."
        ) from None


def state_dict_differences(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> dict[str, list[str]]:
    """How ``given`` fails to fit ``expected`` key for key: ``missing``, ``unexpected`` and ``shape`` (each sorted).

    Example:
        >>> state_dict_differences({"w": torch.zeros(2)}, {"w": torch.zeros(3), "b": torch.zeros(1)})
        {'missing': [], 'unexpected': ['b'], 'shape': ['w: given (3,), expected (2,)']}
    """
    return {
        "missing": sorted(key for key in expected if key not in given),
        "unexpected": sorted(key for key in given if key not in expected),
        "shape": [
            f"{key}: given {tuple(given[key].shape)}, expected {tuple(expected[key].shape)}"
            for key in sorted(expected)
            if key in given and given[key].shape != expected[key].shape
        ],
    }


def load_state_dict_strict(
    module: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "state dict"
) -> None:
    """Load ``state_dict`` into ``module`` only if every key and shape matches; otherwise raise and change nothing.

    ``nn.Module.load_state_dict`` copies tensors one by one and can fail half way; this checks everything first.
    """
    differences = state_dict_differences(module.state_dict(), state_dict)
    problems = [
        f"{label} {items[:5]}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        for label, items in (
            ("missing keys", differences["missing"]),
            ("unexpected keys", differences["unexpected"]),
            ("shape mismatches", differences["shape"]),
        )
        if items
    ]
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
        """Load a module from a folder, a shipped short name or a Hub repo id; returns it in ``eval()`` mode.

        Every mistake that can be seen before loading is a ValueError (TypeError for a wrong type) that names the
        argument, the value and the fix, raised before anything is read or downloaded: a path to a missing folder, a
        ``map_location`` this machine lacks, a ``config.json`` that is not a JSON object, has a key the class does not
        take, or describes another class. Weights that do not match the config, or a damaged weights file, are a
        ValueError as well (``load_state_dict_strict``, ``read_safetensors``).
        """
        name = str(pretrained_model_name_or_path)
        check_device("map_location", kwargs.get("map_location", "cpu"))
        if not os.path.isdir(name) and name in list_shipped():
            name = str(shipped_weights_dir() / name)
        if os.path.isdir(name):
            config_file = Path(name) / CONFIG_NAME
            if not config_file.is_file():
                raise ValueError(f"Folder {name!r} has no {CONFIG_NAME}; was it written by save_pretrained()?")
        elif os.path.exists(name):
            raise ValueError(
                f"pretrained_model_name_or_path={name!r} is a file, not a folder: pass the folder that "
                f"save_pretrained() wrote (it holds {CONFIG_NAME} and {SAFE_WEIGHTS_NAME})."
            )
        elif not _is_repo_id(name):
            raise ValueError(
                f"pretrained_model_name_or_path={name!r}: the local folder {name!r} does not exist (and the name is "
                f"neither a shipped name, {list_shipped()}, nor a Hub repo id such as 'owner/name'). Check the path, "
                "or write a generator there first with save_pretrained()."
            )
        else:
            try:
                config_file = Path(
                    hf_hub_download(
                        repo_id=name,
                        filename=CONFIG_NAME,
                        revision=kwargs.get("revision"),
                        cache_dir=kwargs.get("cache_dir"),
                        local_files_only=kwargs.get("local_files_only", False),
                        token=kwargs.get("token"),
                    )
                )
            except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
                raise ValueError(
                    f"Could not find pretrained weights {name!r}: it is not a local folder, not a shipped name "
                    f"(shipped: {list_shipped()}), and the Hub could not provide it at revision "
                    f"{kwargs.get('revision') or 'main'} ({type(error).__name__}). Offline (HF_HUB_OFFLINE=1) only "
                    "repos already in the Hub cache resolve; check the name or download it first."
                ) from None
        cls._check_config(_read_config(config_file, name), name)
        return super().from_pretrained(name, **kwargs)

    @classmethod
    def _config_keys(cls) -> list[str]:
        """The constructor arguments a ``config.json`` of this class may hold."""
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return sorted(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    @classmethod
    def _check_config(cls, config: dict[str, Any], source: str) -> None:
        """Raise a ValueError if ``config`` has a key that ``cls.__init__`` does not take, listing the valid ones."""
        unknown = sorted(set(config) - set(cls._config_keys()))
        if unknown:
            raise ValueError(
                f"{CONFIG_NAME} of {source!r} has keys that {cls.__name__} does not take: {unknown}. Valid keys: "
                f"{cls._config_keys()}; fix or remove the others{_other_classes_hint(cls, config)}."
            )

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
        given = dict(model_kwargs)
        # The mixin passes only the fields config.json holds (plus the caller's keyword arguments), so a field that
        # is still missing here was absent from the file.
        for name, value in cls._legacy_config_defaults.items():
            model_kwargs.setdefault(name, value)
        try:
            model = cls(**model_kwargs)
        except (TypeError, ValueError) as error:
            hint = _other_classes_hint(cls, given) or ", or write the folder again with save_pretrained()"
            raise ValueError(
                f"{CONFIG_NAME} of {model_id!r} does not describe a {cls.__name__} ({str(error).rstrip('.')}); "
                f"fix that value{hint}."
            ) from None
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
        # Read on the CPU and move the built module after: a damaged file and a missing device are different errors,
        # and check_device (in from_pretrained) has already vouched for map_location.
        state_dict = read_safetensors(model_file)
        load_state_dict_strict(model, state_dict, source=f"weights from {model_id!r}")
        model.to(map_location)
        model.eval()
        return model


def _is_repo_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub repo id (``name`` or ``owner/name``), as opposed to a path."""
    if name.startswith((".", "~")) or os.sep in name.replace("/", ""):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _read_config(config_file: Path, source: str) -> dict[str, Any]:
    """Read a ``config.json`` and check that it is a JSON object; the errors name the file and the fix."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{CONFIG_NAME} of {source!r} is not valid JSON ({error}); write it again with save_pretrained()."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{CONFIG_NAME} of {source!r} must be a JSON object of constructor arguments such as "
            f'{{"in_channels": 256}}, got a JSON {type(config).__name__}; write it again with save_pretrained().'
        )
    return config


def _other_classes_hint(cls: type, config: dict[str, Any]) -> str:
    """A message tail naming the other SRFHubMixin classes that ``config`` builds; empty if there is none.

    It catches a folder loaded with the wrong class, e.g. a discriminator's with ``SRFUpsample.from_pretrained``.
    """
    fits = []
    for other in _hub_classes():
        if other is cls or not set(config) <= set(other._config_keys()):
            continue
        try:
            other(**config)
        except (TypeError, ValueError):
            continue
        fits.append(other.__name__)
    return "".join(f", or, as it describes a {name}, load it with {name}.from_pretrained()" for name in sorted(fits))


def _hub_classes() -> list[type]:
    found, pending = [], list(SRFHubMixin.__subclasses__())
    while pending:
        subclass = pending.pop()
        found.append(subclass)
        pending += subclass.__subclasses__()
    return found
