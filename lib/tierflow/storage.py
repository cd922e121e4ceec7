"""Object storage for tables: how every library tierflow uses reaches ``s3://`` paths.

A table path is either local or an object-store URI (``s3://bucket/key``, MinIO or AWS
S3). delta-rs, pyarrow, Polars and Spark (S3A) each take the same settings in their own
spelling; :class:`ObjectStore` is the one place that spells them, so a job, a source, a
quarantine table or ``tierflow tables`` reach the store the same way on every engine.

The store's address comes from ``tierflow.yaml`` (``object_store:``) or
``$TIERFLOW_S3_ENDPOINT_URL``; its credentials are secrets (``TIERFLOW_S3_ACCESS_KEY_ID``,
``TIERFLOW_S3_SECRET_ACCESS_KEY``, or their ``_FILE`` variants). Each process resolves
them from its own settings and environment the first time it touches an ``s3://`` path,
so a cluster's workers use their own mounted secrets.

Delta commits on S3 need an atomic "create if absent"; delta-rs gets it from conditional
writes (``If-None-Match``), which AWS S3 and MinIO support, so no lock table is needed.
Spark writes through Delta's single-driver S3 log store: one Spark application at a time
may write a given table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from deltalake import DeltaTable
    from pydantic import SecretStr

    from tierflow.config.project import ObjectStoreConfig

ENDPOINT_ENV = "TIERFLOW_S3_ENDPOINT_URL"
_OBJECT_URI = re.compile(r"^s3a?://", re.IGNORECASE)


def is_object_uri(path: str) -> bool:
    """True for ``s3://`` and ``s3a://`` locations."""
    return bool(_OBJECT_URI.match(path))


def split_uri(path: str) -> str:
    """``bucket/key`` of ``s3://bucket/key`` (what pyarrow's S3 filesystem takes)."""
    return path.split("://", 1)[1].rstrip("/")


@dataclass(frozen=True)
class ObjectStore:
    """Where the object store is and how to log in, in each library's spelling."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    virtual_hosted_style: bool = True
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None

    @classmethod
    def from_config(
        cls, config: ObjectStoreConfig, environ: Mapping[str, str] | None = None
    ) -> ObjectStore:
        """The store of ``tierflow.yaml``'s ``object_store`` with this environment's secrets.

        Raises:
            ConfigError: only one of the two key secrets is set, or the endpoint from
                ``$TIERFLOW_S3_ENDPOINT_URL`` is not an http(s) URL.
        """
        from tierflow.secrets import read_secret, variable

        environ = os.environ if environ is None else environ
        endpoint = environ.get(ENDPOINT_ENV) or config.endpoint_url
        if endpoint and not re.match(r"^https?://[^/\s]+/?$", endpoint):
            raise ConfigError(
                f"{ENDPOINT_ENV} = {endpoint!r}: not an endpoint URL (http(s)://host:port)"
            )
        key_id = read_secret("s3_access_key_id", environ)
        secret = read_secret("s3_secret_access_key", environ)
        if (key_id is None) != (secret is None):
            have, lack = (
                ("s3_access_key_id", "s3_secret_access_key")
                if key_id
                else ("s3_secret_access_key", "s3_access_key_id")
            )
            raise ConfigError(
                f"{variable(have)} is set but {variable(lack)} is not: "
                "object storage needs both keys (or neither, for the AWS default chain)"
            )
        virtual = config.virtual_hosted_style
        return cls(
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            region=config.region,
            virtual_hosted_style=(not endpoint) if virtual is None else virtual,
            access_key_id=key_id,
            secret_access_key=secret,
        )

    @property
    def configured(self) -> bool:
        """Whether anything was set (an endpoint or keys): Spark then loads the S3 jars."""
        return self.endpoint_url is not None or self.access_key_id is not None

    @property
    def _http(self) -> bool:
        return bool(self.endpoint_url and self.endpoint_url.startswith("http://"))

    def _keys(self) -> tuple[str, str] | None:
        if self.access_key_id is None or self.secret_access_key is None:
            return None
        return self.access_key_id.get_secret_value(), self.secret_access_key.get_secret_value()

    def delta_options(self) -> dict[str, str]:
        """delta-rs (object_store) ``storage_options``; Polars takes the same keys."""
        options = {
            "AWS_REGION": self.region,
            "AWS_CONDITIONAL_PUT": "etag",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": str(self.virtual_hosted_style).lower(),
        }
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self._http:
                options["AWS_ALLOW_HTTP"] = "true"
        keys = self._keys()
        if keys:
            options["AWS_ACCESS_KEY_ID"], options["AWS_SECRET_ACCESS_KEY"] = keys
        return options

    def arrow_filesystem(self) -> pafs.S3FileSystem:
        """Pyarrow's S3 filesystem (paths are ``bucket/key``, see :func:`split_uri`)."""
        import pyarrow.fs as pafs

        kwargs: dict[str, Any] = {
            "region": self.region,
            "force_virtual_addressing": self.virtual_hosted_style,
        }
        if self.endpoint_url:
            scheme, host = self.endpoint_url.split("://", 1)
            kwargs |= {"endpoint_override": host, "scheme": scheme}
        keys = self._keys()
        if keys:
            kwargs["access_key"], kwargs["secret_key"] = keys
        return pafs.S3FileSystem(**kwargs)

    def hadoop_conf(self) -> dict[str, str]:
        """S3A settings for Spark's Hadoop configuration; ``s3://`` goes through S3A too.

        Set on the running session (:func:`tierflow.spark.get_spark`), never as
        ``--conf``: the keys would show on the driver's command line.
        """
        conf = {
            "fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
            "fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
            "fs.s3a.endpoint.region": self.region,
            "fs.s3a.path.style.access": str(not self.virtual_hosted_style).lower(),
        }
        if self.endpoint_url:
            conf["fs.s3a.endpoint"] = self.endpoint_url
            conf["fs.s3a.connection.ssl.enabled"] = str(not self._http).lower()
        keys = self._keys()
        if keys:
            conf["fs.s3a.aws.credentials.provider"] = (
                "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
            )
            conf["fs.s3a.access.key"], conf["fs.s3a.secret.key"] = keys
        return conf


class _Process:
    """This process's store, resolved on first use."""

    store: ObjectStore | None = None


def configure(store: ObjectStore | None) -> None:
    """Use ``store`` for this process's ``s3://`` paths (None: resolve again on next use)."""
    _Process.store = store


def current() -> ObjectStore:
    """This process's store: the one configured, else the project's settings and secrets."""
    if _Process.store is None:
        from tierflow.config.project import ProjectConfig
        from tierflow.paths import ProjectPaths

        paths = ProjectPaths.discover()
        config = ProjectConfig.load(paths.settings("tierflow.yaml"))
        _Process.store = ObjectStore.from_config(config.object_store)
    return _Process.store


def storage_options(path: str) -> dict[str, str] | None:
    """delta-rs ``storage_options`` for ``path``: the store's for ``s3://``, else None."""
    return current().delta_options() if is_object_uri(path) else None


def delta_path(path: str) -> str:
    """The table URI delta-rs takes: ``s3a://`` spelled ``s3://``."""
    return re.sub(r"^s3a://", "s3://", path, flags=re.IGNORECASE)


def delta_table(path: str, version: int | None = None) -> DeltaTable:
    """The Delta table at ``path`` (local or ``s3://``), at ``version`` or the newest."""
    from deltalake import DeltaTable

    return DeltaTable(delta_path(path), version=version, storage_options=storage_options(path))


def is_delta_table(path: str) -> bool:
    """Whether a Delta table exists at ``path`` (local or ``s3://``)."""
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(delta_path(path), storage_options=storage_options(path))


def arrow_location(path: str) -> tuple[pafs.FileSystem | None, str]:
    """``(filesystem, path)`` for pyarrow: the store's S3 filesystem for ``s3://``.

    Other URIs get pyarrow's own filesystem for their scheme; local paths come back with
    no filesystem (pyarrow's default, the local one).
    """
    if is_object_uri(path):
        return current().arrow_filesystem(), split_uri(path)
    if "://" in path:
        import pyarrow.fs as pafs

        filesystem, inner = pafs.FileSystem.from_uri(path)
        return filesystem, inner
    return None, path


def for_workers(paths: list[str] | str) -> ObjectStore | None:
    """The store to hand to tasks on other processes when any of ``paths`` is ``s3://``.

    Dask tasks get the client's store as an argument (over the cluster's comms, TLS in
    the secure profile): a worker started without the object store's settings then
    reads the same tables as the client.
    """
    items = [paths] if isinstance(paths, str) else paths
    return current() if any(is_object_uri(p) for p in items) else None


def adopt(store: ObjectStore | None) -> None:
    """In a task: use the store its client handed over (no-op for local paths)."""
    if store is not None and store != _Process.store:
        configure(store)


def polars_options(path: str) -> dict[str, str] | None:
    """Polars' ``storage_options`` for ``path`` (object_store's keys, lower case)."""
    options = storage_options(path)
    return {k.lower(): v for k, v in options.items()} if options else None


def locate(path: str, base: Path) -> str:
    """``path`` as given when it is an ``s3://`` URI or absolute, else under ``base``."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(base / path)
