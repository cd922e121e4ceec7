"""Configuration of the local services: ports, sizes, bind address.

Defaults live here so the services start with no file at all; ``conf/services.yaml``
overrides them. Ports default to a band (26000-30199) that common tools leave alone, and
Ray's worker ports get a band of their own so that nothing else lands in it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from tierflow.config.loader import FrozenModel, load_model

Port = Annotated[int, Field(ge=1024, le=65535)]
MemorySize = Annotated[str, Field(pattern=r"^[0-9]+[kKmMgG]$")]


class KafkaServiceConfig(FrozenModel):
    """Single-node Apache Kafka broker in KRaft mode (broker and controller in one)."""

    port: Port = 29092
    controller_port: Port = 29093
    heap: MemorySize = "768m"
    num_partitions: Annotated[int, Field(ge=1)] = 3


class RedisServiceConfig(FrozenModel):
    """Redis server (Debian's redis-server)."""

    port: Port = 26379
    maxmemory: Annotated[str, Field(pattern=r"^[0-9]+(kb|mb|gb)$")] = "1gb"


class SparkServiceConfig(FrozenModel):
    """Spark standalone master and one worker, started with ``spark-class``."""

    master_port: Port = 27077
    master_ui_port: Port = 28080
    worker_port: Port = 27078
    worker_ui_port: Port = 28081
    worker_cores: Annotated[int, Field(ge=1)] = 2
    worker_memory: MemorySize = "2g"
    daemon_memory: MemorySize = "512m"


class DaskServiceConfig(FrozenModel):
    """Dask distributed scheduler and one worker (with its nanny)."""

    scheduler_port: Port = 28786
    dashboard_port: Port = 28787
    worker_port: Port = 28788
    nanny_port: Port = 28789
    nthreads: Annotated[int, Field(ge=1)] = 2
    memory_limit: MemorySize = "4g"


class RayServiceConfig(FrozenModel):
    """Ray head node with token authentication; every port pinned so none collide."""

    port: Port = 26390
    client_server_port: Port = 26391
    dashboard_port: Port = 28265
    dashboard_agent_listen_port: Port = 26392
    dashboard_agent_grpc_port: Port = 26393
    runtime_env_agent_port: Port = 26394
    metrics_export_port: Port = 26395
    node_manager_port: Port = 26396
    object_manager_port: Port = 26397
    min_worker_port: Port = 30000
    max_worker_port: Port = 30199
    num_cpus: Annotated[int, Field(ge=1)] = 2
    object_store_memory_mb: Annotated[int, Field(ge=100)] = 1024


class MinioServiceConfig(FrozenModel):
    """MinIO, the S3-compatible object store for tables at ``s3://`` paths."""

    port: Port = 29000
    #: Created at start (if missing), so ``s3://<bucket>/...`` paths work at once.
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")] = "tierflow"


class ServicesConfig(FrozenModel):
    """All local services. ``host`` must be a loopback address: nothing is exposed.

    ``secure`` (the ``secure`` profile) starts every service with authentication and
    encryption: Kafka SASL/SCRAM over TLS with ACLs, Redis ACL users with the default
    user off, Dask over mutual TLS, Spark with ``spark.authenticate`` and encryption,
    Ray with token authentication (always on).
    """

    host: str = "127.0.0.1"
    secure: bool = False
    kafka: KafkaServiceConfig = KafkaServiceConfig()
    redis: RedisServiceConfig = RedisServiceConfig()
    spark: SparkServiceConfig = SparkServiceConfig()
    dask: DaskServiceConfig = DaskServiceConfig()
    ray: RayServiceConfig = RayServiceConfig()
    minio: MinioServiceConfig = MinioServiceConfig()

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
        if not address.is_loopback:
            raise ValueError(f"local services bind a loopback address only, not {value!r}")
        return value

    @model_validator(mode="after")
    def _ports_distinct(self) -> ServicesConfig:
        seen: dict[int, str] = {}
        for key, port in self.all_ports().items():
            if port in seen:
                raise ValueError(f"{key} and {seen[port]} both use port {port}")
            seen[port] = key
        ray = self.ray
        if ray.min_worker_port > ray.max_worker_port:
            raise ValueError(
                f"ray.min_worker_port ({ray.min_worker_port}) is above "
                f"ray.max_worker_port ({ray.max_worker_port})"
            )
        for port, key in seen.items():
            if ray.min_worker_port <= port <= ray.max_worker_port:
                raise ValueError(
                    f"{key} = {port} lies in Ray's worker port range "
                    f"{ray.min_worker_port}-{ray.max_worker_port}"
                )
        return self

    def all_ports(self) -> dict[str, int]:
        """Every single port of every service, keyed by its config path (``kafka.port``)."""
        ports: dict[str, int] = {}
        for section in ("kafka", "redis", "spark", "dask", "ray", "minio"):
            model = getattr(self, section)
            for name, value in model.model_dump().items():
                if name.endswith("port") and name not in ("min_worker_port", "max_worker_port"):
                    ports[f"{section}.{name}"] = value
        return ports


SERVICES_CONF_ENV = "TIERFLOW_SERVICES_CONF"


def load_services_config(path: Path | None, default: Path) -> ServicesConfig:
    """Load the services config.

    Args:
        path: An explicit file (``--services-conf``); it must exist.
        default: The project's ``conf/services.yaml``; used when present, else the
            built-in defaults apply.
    """
    from tierflow.settings import env_settings

    explicit = path or env_settings().services_conf
    if explicit is not None:
        return load_model(ServicesConfig, explicit)
    if default.is_file():
        return load_model(ServicesConfig, default)
    return ServicesConfig()
