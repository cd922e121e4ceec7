"""Engines (tiers): the one place that maps an engine name to its implementation.

Each implementation is imported only when chosen, so planning a job imports no engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tierflow.engines.base import EngineOptions

if TYPE_CHECKING:
    from tierflow.config.jobs import EngineName
    from tierflow.engines.base import Engine

__all__ = ["EngineOptions", "create_engine"]


def create_engine(name: EngineName, options: EngineOptions | None = None) -> Engine:
    """Start (or connect to) the engine ``name``."""
    options = options or EngineOptions()
    if name == "single":
        from tierflow.engines.polars_engine import PolarsEngine

        return PolarsEngine(options)
    if name == "dask":
        from tierflow.engines.dask_engine import DaskEngine

        return DaskEngine(options)
    if name == "spark":
        from tierflow.engines.spark_engine import SparkEngine

        return SparkEngine(options)
    raise ValueError(f"unknown engine {name!r}")
