"""Registered transforms: plain functions over Narwhals frames, named in job YAML.

A transform takes one Narwhals ``LazyFrame`` per source (as keyword arguments named
after the sources) plus the job's ``params``, and returns a ``LazyFrame``. Written once
against Narwhals, it runs unchanged on Polars, Dask and Spark.

Example:
    >>> import narwhals as nw
    >>> from tierflow.jobs.registry import transform
    >>> @transform
    ... def paid_orders(orders: nw.LazyFrame, min_total: float = 0.0) -> nw.LazyFrame:
    ...     return orders.filter(nw.col("total") > min_total)
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tierflow.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

_TRANSFORMS: dict[str, Callable[..., Any]] = {}


def transform(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register ``fn`` under its own name (or ``name``) for use as ``transform.function``."""

    def register(func: F) -> F:
        key = name or func.__name__
        existing = _TRANSFORMS.get(key)
        if existing is not None and existing.__module__ != func.__module__:
            raise ConfigError(
                f"transform {key!r} is registered twice: "
                f"{existing.__module__} and {func.__module__}"
            )
        _TRANSFORMS[key] = func
        return func

    return register(fn) if fn is not None else register


def load_transforms(modules: Sequence[str], project: Path) -> None:
    """Import the transform modules (and every module inside a package) so they register."""
    root = str(project)
    if root not in sys.path:
        sys.path.insert(0, root)
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"transform module {module_name!r} not found: {exc}") from None
        if hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, prefix=f"{module_name}."):
                importlib.import_module(info.name)


def get_transform(name: str) -> Callable[..., Any]:
    """The transform registered as ``name``."""
    try:
        return _TRANSFORMS[name]
    except KeyError:
        known = ", ".join(sorted(_TRANSFORMS)) or "none"
        raise ConfigError(f"no transform named {name!r} is registered (known: {known})") from None


def registered() -> list[str]:
    """Names of all registered transforms."""
    return sorted(_TRANSFORMS)
