"""Data set registry: `get_dataset(name, data_dir=...)` and `list_datasets()`.

Each data module registers its data sets with `@register("name")` on a factory
`(data_dir: Path | None, **options) -> Dataset`. Modules are imported lazily, on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from suite.data.base import SPLITS, DataError, Dataset, DataSpec

__all__ = ["DataError", "DataSpec", "Dataset", "SPLITS", "register", "get_dataset", "dataset_names"]

_MODULES = ("suite.data.toys", "suite.data.mnist", "suite.data.cifar", "suite.data.text8", "suite.data.embedded",
            "suite.data.truth")
_REGISTRY: dict[str, Callable[..., Dataset]] = {}
_loaded = False


def register(name: str):
    def deco(factory: Callable[..., Dataset]):
        if name in _REGISTRY:
            raise ValueError(f"data set {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in _MODULES:
            importlib.import_module(m)


def dataset_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_dataset(name: str, data_dir: str | Path | None = None, **options) -> Dataset:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](Path(data_dir) if data_dir is not None else None, **options)
