"""Typed, frozen configuration parsed once at the entry point."""

from __future__ import annotations

from tierflow.config.loader import FrozenModel, load_model, parse_model
from tierflow.config.services import ServicesConfig

__all__ = ["FrozenModel", "ServicesConfig", "load_model", "parse_model"]
