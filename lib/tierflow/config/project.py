"""Project-wide settings (``conf/tierflow.yaml``): data folder, transforms, tier thresholds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tierflow.config.loader import FrozenModel, load_model

GiB = 1024**3


class TierThresholds(FrozenModel):
    """When each engine is chosen, by the estimated in-memory size of a job's inputs.

    Defaults follow the ML project checklist: pandas/Polars for data that fits
    comfortably in memory, Dask for roughly 1-100 GB, Spark beyond. The single-node tier
    is further capped by ``single_node_memory_fraction`` of this machine's RAM, because
    joins and aggregations need several times the input size.
    """

    single_max_gb: Annotated[float, Field(gt=0)] = 1.0
    dask_max_gb: Annotated[float, Field(gt=0)] = 100.0
    single_node_memory_fraction: Annotated[float, Field(gt=0, le=1)] = 0.25

    @model_validator(mode="after")
    def _ordered(self) -> TierThresholds:
        if self.single_max_gb > self.dask_max_gb:
            raise ValueError(
                f"single_max_gb ({self.single_max_gb}) is above dask_max_gb ({self.dask_max_gb})"
            )
        return self


class OnlineStoreConfig(FrozenModel):
    """Where online features live: an embedded SQLite file (default) or Redis.

    A Redis user goes in the URL (``redis://tierflow@host:port/0``); its password is a
    secret, from ``TIERFLOW_REDIS_PASSWORD`` or the file ``TIERFLOW_REDIS_PASSWORD_FILE``
    (see :mod:`tierflow.secrets`), never from this file.
    """

    kind: Literal["sqlite", "redis"] = "sqlite"
    path: str = ".local/online/features.db"
    url: str = "redis://127.0.0.1:26379/0"


class ObjectStoreConfig(FrozenModel):
    """S3-compatible object storage for tables at ``s3://bucket/key`` paths (MinIO, AWS S3).

    Where the store is lives here; who you are does not: the access key pair is a secret,
    ``TIERFLOW_S3_ACCESS_KEY_ID`` and ``TIERFLOW_S3_SECRET_ACCESS_KEY`` (or their
    ``_FILE`` variants, see :mod:`tierflow.secrets`). Without them the AWS default chain
    applies (``AWS_*`` variables, instance roles). ``$TIERFLOW_S3_ENDPOINT_URL`` overrides
    ``endpoint_url`` (``tierflow services env minio`` prints it for the local MinIO).
    """

    endpoint_url: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")] | None = None
    region: Annotated[str, Field(min_length=1)] = "us-east-1"
    #: ``bucket.host`` addressing instead of ``host/bucket``; default: virtual-hosted for
    #: AWS, path style (what MinIO needs) whenever ``endpoint_url`` is set.
    virtual_hosted_style: bool | None = None


class ServingConfig(FrozenModel):
    """The online feature HTTP endpoint."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1024, le=65535)] = 28300
    max_entities: Annotated[int, Field(ge=1)] = 1000


class ProjectConfig(FrozenModel):
    """Settings that apply to every job of the project."""

    data_dir: str = "data"
    logs_dir: str = "logs"
    transform_modules: tuple[str, ...] = ("jobs.transforms",)
    tiers: TierThresholds = TierThresholds()
    online_store: OnlineStoreConfig = OnlineStoreConfig()
    serving: ServingConfig = ServingConfig()
    object_store: ObjectStoreConfig = ObjectStoreConfig()
    materialize_chunk_rows: Annotated[int, Field(ge=100)] = 200_000

    @classmethod
    def load(cls, path: Path) -> ProjectConfig:
        """``path`` (``conf/tierflow.yaml``) if present, else the defaults."""
        return load_model(cls, path) if path.is_file() else cls()


DATA_DIR_ENV = "TIERFLOW_DATA_DIR"


def resolve_data_dir(project: Path, config: ProjectConfig, override: str | None = None) -> Path:
    """The data folder: ``--data-dir``, else ``$TIERFLOW_DATA_DIR``, else the config's."""
    raw = override or os.environ.get(DATA_DIR_ENV) or config.data_dir
    path = Path(raw)
    return path if path.is_absolute() else (project / path).resolve()
