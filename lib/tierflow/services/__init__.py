"""Local services (Kafka, Redis, Spark standalone, Dask, Ray, MinIO), real and on loopback.

``SERVICE_NAMES`` is the one list of services; :func:`service_class` is the one place
that maps a name to its implementation, imported only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tierflow.errors import ServiceError

if TYPE_CHECKING:
    from tierflow.services.base import LocalService

SERVICE_NAMES: tuple[str, ...] = ("kafka", "redis", "spark", "dask", "ray", "minio")


def service_class(name: str) -> type[LocalService]:
    """Return the implementation of service ``name``.

    Raises:
        ServiceError: ``name`` is not a known service.
    """
    if name == "kafka":
        from tierflow.services.kafka import KafkaService

        return KafkaService
    if name == "redis":
        from tierflow.services.redis import RedisService

        return RedisService
    if name == "spark":
        from tierflow.services.spark import SparkStandaloneService

        return SparkStandaloneService
    if name == "dask":
        from tierflow.services.dask import DaskService

        return DaskService
    if name == "ray":
        from tierflow.services.ray import RayHeadService

        return RayHeadService
    if name == "minio":
        from tierflow.services.minio import MinioService

        return MinioService
    raise ServiceError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")
