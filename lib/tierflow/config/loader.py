"""Load YAML files into frozen pydantic models with errors that name file, key and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tierflow.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class FrozenModel(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors (typos show)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else item)
    return "".join(parts) or "<root>"


def _describe(errors: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in errors.errors():
        key = _key_path(tuple(err["loc"]))
        value = err.get("input")
        shown = "<missing>" if err["type"] == "missing" else repr(value)
        lines.append(f"  {key} = {shown}: {err['msg']}")
    return "\n".join(lines)


def parse_model(model: type[M], data: Any, source: str) -> M:
    """Validate ``data`` (already parsed YAML/JSON) into ``model``.

    Args:
        model: The pydantic model class.
        data: The parsed document.
        source: What to call the document in errors, usually its file path.

    Raises:
        ConfigError: naming ``source``, each offending key path and its value.
    """
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


#: Parsed files by (model, path, modification time, size): a process parses each once.
_PARSED: dict[tuple[type[BaseModel], str, int, int], BaseModel] = {}


def load_model(model: type[M], path: Path) -> M:
    """Read the YAML file at ``path`` into ``model`` (once per process, unless it changes).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not fit the model.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    key = (model, str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    known = _PARSED.get(key)
    if known is None:
        known = _PARSED[key] = _read(model, path)
    return known  # type: ignore[return-value]  # stored under its own model


def _read(model: type[M], path: Path) -> M:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_model(model, data, str(path))
