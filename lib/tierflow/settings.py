"""Settings from the environment: the ``TIERFLOW_*`` variables, typed, in one model.

Every variable that overrides a setting is a field of :class:`EnvSettings` (the README
lists them). Two families keep their own readers, because they are not fixed names:
secrets (:mod:`tierflow.secrets`: ``TIERFLOW_<NAME>`` or the file named by
``TIERFLOW_<NAME>_FILE``) and ``TIERFLOW_STREAM_<KEY>`` (any key of ``streaming.yaml``,
:mod:`tierflow.config.streaming`).

The environment is read once: :func:`env_settings` parses it the first time and again
only when a ``TIERFLOW_*`` variable has changed since (tests change them; a process
normally never does).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tierflow.errors import ConfigError

PREFIX = "TIERFLOW_"


class EnvSettings(BaseSettings):
    """The ``TIERFLOW_*`` variables; ``None`` where unset (the YAML's value applies)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, frozen=True, extra="ignore", env_ignore_empty=True
    )

    project_dir: Path | None = None
    state_dir: Path | None = None
    jars_dir: Path | None = None
    profile: str | None = None
    data_dir: str | None = None
    logs_dir: str | None = None
    memory_gb: Annotated[float, Field(gt=0)] | None = None
    calibration_dir: str | None = None
    dask_scheduler: str | None = None
    spark_master: str | None = None
    spark_driver_host: str | None = None
    online_store: Literal["sqlite", "redis"] | None = None
    online_db: str | None = None
    redis_url: str | None = None
    services_conf: Path | None = None
    torch_threads: Annotated[int, Field(ge=1)] = 1
    progress: Literal["auto", "lines", "off"] = "auto"


def env_settings() -> EnvSettings:
    """This process's :class:`EnvSettings`.

    Raises:
        ConfigError: a variable's value does not fit (named, with the value).
    """
    return _parse(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIX))))


@lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, str], ...]) -> EnvSettings:
    del items  # the cache key: BaseSettings reads os.environ itself
    try:
        return EnvSettings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = PREFIX + str(error["loc"][0]).upper()
            problems.append(f"{name} = {os.environ.get(name)!r}: {error['msg']}")
        raise ConfigError("invalid environment:\n  " + "\n  ".join(problems)) from None
