"""Online stores: the one place that maps the configured kind to its implementation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierflow.config.project import OnlineStoreConfig
    from tierflow.stores.base import OnlineStore


def open_store(config: OnlineStoreConfig, project: Path) -> OnlineStore:
    """Open the online store ``config`` describes (paths relative to the project)."""
    if config.kind == "redis":
        from tierflow.stores.redis_store import RedisOnlineStore

        password = config.password.get_secret_value() if config.password else None
        password = password or os.environ.get("TIERFLOW_REDIS_PASSWORD") or None
        return RedisOnlineStore(config.url, password=password)
    from tierflow.stores.sqlite_store import SQLiteOnlineStore

    path = Path(config.path)
    return SQLiteOnlineStore(path if path.is_absolute() else project / path)
