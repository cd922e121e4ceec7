"""Project-wide settings (``conf/tierflow.yaml``): data folder, transforms, tier thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tierflow.config.loader import FrozenModel, load_model

GiB = 1024**3


class TierThresholds(FrozenModel):
    """Fixed size thresholds: when any is set, they choose the tier instead of the planner.

    Left unset (the default), the planner measures: it predicts each tier's time and
    memory from a calibration of this machine and of the configured clusters, and picks
    the fastest tier that can hold the job (see :mod:`tierflow.jobs.planner`). Set here,
    the checklist's rule applies: single-node while the estimated input is at most
    ``single_max_gb`` and at most ``single_node_memory_fraction`` of this machine's
    memory, Dask up to ``dask_max_gb``, Spark beyond.
    """

    single_max_gb: Annotated[float, Field(gt=0)] | None = None
    dask_max_gb: Annotated[float, Field(gt=0)] | None = None
    single_node_memory_fraction: Annotated[float, Field(gt=0, le=1)] | None = None

    @property
    def fixed(self) -> bool:
        """Whether the user set thresholds (the rule replaces the measured planner)."""
        return any(v is not None for v in self.model_dump().values())

    @property
    def single_gb(self) -> float:
        """``single_max_gb``, or its default of 1 GiB."""
        return 1.0 if self.single_max_gb is None else self.single_max_gb

    @property
    def dask_gb(self) -> float:
        """``dask_max_gb``, or its default of 100 GiB."""
        return 100.0 if self.dask_max_gb is None else self.dask_max_gb

    @property
    def single_fraction(self) -> float:
        """``single_node_memory_fraction``, or its default of a quarter."""
        return (
            0.25 if self.single_node_memory_fraction is None else self.single_node_memory_fraction
        )

    @model_validator(mode="after")
    def _ordered(self) -> TierThresholds:
        if self.single_gb > self.dask_gb:
            raise ValueError(
                f"single_max_gb ({self.single_gb}) is above dask_max_gb ({self.dask_gb})"
            )
        return self


class PlannerConfig(FrozenModel):
    """What the measuring planner may assume about this machine."""

    #: Memory tierflow may use here, in GiB (default: the machine's, or its cgroup's
    #: limit when lower). ``$TIERFLOW_MEMORY_GB`` overrides.
    memory_gb: Annotated[float, Field(gt=0)] | None = None
    #: Share of that memory one single-node job may use at its peak.
    memory_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    #: Where calibrations are stored (relative to the project folder).
    calibration_dir: str = ".local/calibration"


class ClustersConfig(FrozenModel):
    """Clusters the planner may send work to (asked for their workers' cores and memory).

    ``$TIERFLOW_DASK_SCHEDULER``, ``$TIERFLOW_SPARK_MASTER`` and ``--scheduler`` /
    ``--master`` override these. Without them the Dask and Spark tiers run on this
    machine (a LocalCluster, ``local[*]``).
    """

    dask_scheduler: Annotated[str, Field(pattern=r"^(tcp|tls)://[^/\s]+$")] | None = None
    spark_master: Annotated[str, Field(pattern=r"^spark://[^/\s]+$")] | None = None
    #: The master's web UI, whose JSON lists the workers (default: its host, port 8080).
    spark_master_ui: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")] | None = None


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
    #: Keep every row a model scores, with its served features, in a Delta table per
    #: model under ``log_path`` (relative to the data folder): what ``tierflow monitor
    #: consistency`` and ``drift`` read.
    log_served: bool = True
    log_path: str = "served"
    log_flush_seconds: Annotated[float, Field(gt=0)] = 5.0


class TrackingConfig(FrozenModel):
    """Where training runs and models are recorded (MLflow)."""

    #: A tracking URI (``http://host:5000``, ``sqlite:///path``); ``MLFLOW_TRACKING_URI``
    #: wins; unset, an embedded SQLite store in the data folder.
    uri: str | None = None


class MonitoringConfig(FrozenModel):
    """Thresholds of ``tierflow monitor``."""

    #: A feature (or the score) whose population stability index against training is
    #: above this is flagged, and the command exits 1.
    psi_threshold: Annotated[float, Field(gt=0)] = 0.25
    #: A feature whose served values differ from batch's on more than this share of the
    #: rows compared is flagged by ``tierflow monitor consistency`` (exit 1).
    mismatch_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.0
    #: Two numbers are the same value when they differ by at most this, relative.
    mismatch_tolerance: Annotated[float, Field(ge=0)] = 1e-9


class ProjectConfig(FrozenModel):
    """Settings that apply to every job of the project."""

    data_dir: str = "data"
    logs_dir: str = "logs"
    transform_modules: tuple[str, ...] = ("jobs.transforms",)
    tiers: TierThresholds = TierThresholds()
    planner: PlannerConfig = PlannerConfig()
    clusters: ClustersConfig = ClustersConfig()
    online_store: OnlineStoreConfig = OnlineStoreConfig()
    serving: ServingConfig = ServingConfig()
    tracking: TrackingConfig = TrackingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    object_store: ObjectStoreConfig = ObjectStoreConfig()
    materialize_chunk_rows: Annotated[int, Field(ge=100)] = 200_000

    @classmethod
    def load(cls, path: Path) -> ProjectConfig:
        """``path`` (``conf/tierflow.yaml``) if present, else the defaults."""
        return load_model(cls, path) if path.is_file() else cls()


def resolve_data_dir(project: Path, config: ProjectConfig, override: str | None = None) -> Path:
    """The data folder: ``--data-dir``, else ``$TIERFLOW_DATA_DIR``, else the config's."""
    from tierflow.settings import env_settings

    raw = override or env_settings().data_dir or config.data_dir
    path = Path(raw)
    return path if path.is_absolute() else (project / path).resolve()
