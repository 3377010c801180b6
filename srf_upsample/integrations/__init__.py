"""Glue for training frameworks; each submodule imports its framework (an optional extra) only when imported."""

__all__: list[str] = []
