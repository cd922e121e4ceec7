"""MinIO, the S3-compatible object store, built by ``make setup`` and run on loopback.

MinIO always requires its keys: an anonymous request is refused (tested). The key pair
is generated on first start into files of mode 0600 in the service's folder and handed
to the server through its environment, never its command line; clients get the files'
paths (:meth:`MinioService.client_env`), which :mod:`tierflow.storage` reads as the
``s3_access_key_id`` / ``s3_secret_access_key`` secrets. The web console is off.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from tierflow.errors import MissingDependencyError
from tierflow.secrets import write_secret_file
from tierflow.services.base import Command, LocalService, ProbeFailedError

ACCESS_KEY_ID = "tierflow-admin"


class MinioService(LocalService):
    """One ``minio server`` over a folder."""

    name = "minio"
    startup_timeout = 60.0

    def ports(self) -> dict[str, int]:
        """The S3 API port."""
        return {"minio.port": self.config.minio.port}

    @property
    def endpoint(self) -> str:
        """``http://host:port`` of the S3 API."""
        return f"http://{self.host}:{self.config.minio.port}"

    @property
    def _keys_dir(self) -> Path:
        return self.home / "keys"

    def key_files(self) -> tuple[Path, Path]:
        """The files holding the access key id and the secret access key."""
        return self._keys_dir / "access_key_id", self._keys_dir / "secret_access_key"

    def keys(self) -> tuple[str, str]:
        """The access key id and the secret access key (after :meth:`prepare`)."""
        key_id, secret = self.key_files()
        return key_id.read_text().strip(), secret.read_text().strip()

    def prepare(self) -> None:
        """Folders, and the key pair on first start (kept across restarts: data stays readable)."""
        super().prepare()
        key_id, secret = self.key_files()
        if not (key_id.is_file() and secret.is_file()):
            write_secret_file(key_id, ACCESS_KEY_ID)
            write_secret_file(secret, secrets.token_urlsafe(30))

    def _binary(self) -> str:
        built = self.paths.project / ".local" / "minio" / "bin" / "minio"
        if built.is_file():
            return str(built)
        found = shutil.which("minio")
        if found is not None:
            return found
        from tierflow.provision import provide

        provide("minio", self.paths)
        if not built.is_file():
            raise MissingDependencyError(f"the MinIO server was not built at {built}")
        return str(built)

    def commands(self) -> list[Command]:
        """``minio server DATA --address HOST:PORT``, its keys in the environment."""
        key_id, secret = self.keys()
        env = {
            "MINIO_ROOT_USER": key_id,
            "MINIO_ROOT_PASSWORD": secret,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        argv = (
            self._binary(), "server", str(self.data), "--quiet",
            "--address", f"{self.host}:{self.config.minio.port}",
        )  # fmt: skip
        return [Command("minio", argv, env=env)]

    def probe(self) -> str:
        """MinIO's liveness endpoint answers 200 (it needs no keys)."""
        import urllib.error
        import urllib.request

        url = f"{self.endpoint}/minio/health/live"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
                status = response.status
        except (urllib.error.URLError, OSError) as exc:
            raise ProbeFailedError(f"{url}: {exc}") from exc
        if status != 200:
            raise ProbeFailedError(f"{url} answered {status}")
        return f"MinIO at {self.endpoint}"

    def after_start(self) -> None:
        """Create the configured bucket if it is missing."""
        import pyarrow.fs as pafs

        key_id, secret = self.keys()
        filesystem = pafs.S3FileSystem(
            access_key=key_id, secret_key=secret, endpoint_override=self.endpoint.split("://")[1],
            scheme="http", region="us-east-1", allow_bucket_creation=True,
        )  # fmt: skip
        bucket = self.config.minio.bucket
        if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
            filesystem.create_dir(bucket)

    def endpoints(self) -> dict[str, str]:
        """The S3 endpoint and the bucket made at start."""
        return {"s3": self.endpoint, "bucket": f"s3://{self.config.minio.bucket}"}

    def client_env(self) -> dict[str, str]:
        """The endpoint, and the key files as the object store's secrets."""
        key_id, secret = self.key_files()
        return {
            "TIERFLOW_S3_ENDPOINT_URL": self.endpoint,
            "TIERFLOW_S3_ACCESS_KEY_ID_FILE": str(key_id),
            "TIERFLOW_S3_SECRET_ACCESS_KEY_FILE": str(secret),
        }
