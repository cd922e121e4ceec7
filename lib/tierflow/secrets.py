"""Secrets: read from the environment or from files, never from ``conf/`` or argv.

Every secret tierflow uses has a name (``kafka_password``); its value comes from the
variable ``TIERFLOW_KAFKA_PASSWORD`` or from the file named by
``TIERFLOW_KAFKA_PASSWORD_FILE`` (Docker and Kubernetes secrets are mounted as files).
Values are :class:`pydantic.SecretStr`, whose ``repr`` and ``str`` print stars, so a
secret that ends up in a log line, an exception or a run record shows as ``**********``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from tierflow.errors import ConfigError

#: The secrets tierflow reads, with what each is for.
KNOWN_SECRETS: dict[str, str] = {
    "kafka_password": "the SASL password of the Kafka user (streaming.yaml's sasl_username)",
    "redis_password": "the password of the Redis user (the user named in the Redis URL)",
    "spark_auth_secret": "Spark's shared secret (spark.authenticate)",
    "s3_access_key_id": "the access key id for S3-compatible object storage",
    "s3_secret_access_key": "the secret access key for S3-compatible object storage",
}


def variable(name: str) -> str:
    """The environment variable that holds secret ``name``."""
    return f"TIERFLOW_{name.upper()}"


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> SecretStr | None:
    """Secret ``name`` from ``TIERFLOW_<NAME>`` or the file ``TIERFLOW_<NAME>_FILE``.

    Returns:
        The secret, or None when neither variable is set.

    Raises:
        ConfigError: both are set, or the file cannot be read or is empty.
    """
    if name not in KNOWN_SECRETS:
        raise ValueError(f"unknown secret {name!r}")
    environ = os.environ if environ is None else environ
    direct, file_var = variable(name), variable(name) + "_FILE"
    value, path = environ.get(direct), environ.get(file_var)
    if value and path:
        raise ConfigError(f"both {direct} and {file_var} are set; set one ({KNOWN_SECRETS[name]})")
    if value:
        return SecretStr(value)
    if not path:
        return None
    try:
        # Trailing newlines come from `echo` and editors, never from a generated secret.
        text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{file_var} = {path!r}: cannot read the file ({exc.strerror})") from None
    if not text:
        raise ConfigError(f"{file_var} = {path!r}: the file is empty")
    return SecretStr(text)


def require_secret(name: str, why: str, environ: Mapping[str, str] | None = None) -> SecretStr:
    """Like :func:`read_secret`, but a missing secret is an error saying what needs it."""
    secret = read_secret(name, environ)
    if secret is None:
        raise ConfigError(
            f"{why} needs {KNOWN_SECRETS[name]}: set {variable(name)} or {variable(name)}_FILE"
        )
    return secret


def write_secret_file(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` readable by its owner only (created, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(value)
    path.chmod(0o600)
