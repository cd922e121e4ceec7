"""Online stores: the one place that maps the configured kind to its implementation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierflow.config.project import OnlineStoreConfig
    from tierflow.stores.base import OnlineStore


def open_store(
    config: OnlineStoreConfig, project: Path, environ: Mapping[str, str] | None = None
) -> OnlineStore:
    """Open the online store ``config`` describes (paths relative to the project).

    Secrets (the Redis password) come from ``environ``, by default the process's.
    """
    if config.kind == "redis":
        from tierflow.secrets import read_secret
        from tierflow.stores.redis_store import RedisOnlineStore

        # The user, if any, is in the URL; the password is a secret, never in conf/.
        password = read_secret("redis_password", environ)
        return RedisOnlineStore(config.url, password=password)
    from tierflow.stores.sqlite_store import SQLiteOnlineStore

    path = Path(config.path)
    return SQLiteOnlineStore(path if path.is_absolute() else project / path)
