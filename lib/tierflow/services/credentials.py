"""Credentials of the local services in the secure profile: a private CA, certificates, passwords.

Generated once per state folder by the first ``services up`` that needs them, into
``<state>/credentials/`` with every secret file readable by its owner only. Services read
them from files (config files of mode 0600, never command lines); clients are pointed at
them by ``tierflow services env`` (``TIERFLOW_*_FILE`` variables, CA and client
certificate paths), so no secret is ever printed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.secrets import write_secret_file

#: The users the secure services know.
KAFKA_ADMIN_USER = "admin"  # the brokers' own (inter-broker) user, super user
KAFKA_CLIENT_USER = "tierflow"  # what jobs and daemons use, limited by ACLs
REDIS_USER = "tierflow"
MINIO_USER = "tierflow"  # the compose cluster's MinIO user, limited to the tables' bucket
#: The generated passwords: Kafka's two SCRAM users, Redis's user, Spark's shared secret,
#: Ray's token (the local Ray service keeps its own; clusters use this one), and the
#: compose cluster's MinIO keys, its root's and the tierflow user's (the local MinIO
#: service keeps its own pair).
PASSWORDS = (
    "kafka-admin", "kafka-tierflow", "redis-tierflow", "spark", "ray", "minio-admin",
    "minio-tierflow",
)  # fmt: skip


@dataclass(frozen=True)
class ServiceCredentials:
    """The files under ``folder``; :meth:`ensure` creates whatever is missing."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        """The private CA every client trusts."""
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The CA's key (only used to sign the certificates below)."""
        return self.folder / "ca-key.pem"

    @property
    def minio_key_id(self) -> Path:
        """The access key id of :data:`MINIO_USER` (its secret: ``minio-tierflow``)."""
        return self.folder / "minio-tierflow.id"

    @property
    def server_cert(self) -> Path:
        """The services' certificate (SAN: the bind address and localhost)."""
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        """The services' private key (PKCS#8)."""
        return self.folder / "server-key.pem"

    @property
    def server_bundle(self) -> Path:
        """Key then certificate in one file: Kafka's PEM key store."""
        return self.folder / "server-bundle.pem"

    @property
    def client_cert(self) -> Path:
        """The client certificate for mutual TLS (Dask)."""
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        """The client certificate's key."""
        return self.folder / "client-key.pem"

    def password_file(self, name: str) -> Path:
        """A generated password, one of :data:`PASSWORDS`."""
        return self.folder / f"{name}.password"

    def password(self, name: str) -> str:
        """The password's value (for writing service config files only)."""
        return self.password_file(name).read_text(encoding="utf-8")

    @property
    def redis_acl(self) -> Path:
        """Redis ACL file (``aclfile``): default user off, the ``tierflow`` user."""
        return self.folder / "redis-users.acl"

    def ensure(self, host: str, names: tuple[str, ...] = ()) -> None:
        """Create the CA, certificates and passwords that do not exist yet.

        Args:
            host: The address the services bind (an IP address, put in the certificates).
            names: Host names the services are reached by (a cluster's), also put in the
                certificates' subject alternative names.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        for name in PASSWORDS:
            if not self.password_file(name).exists():
                write_secret_file(self.password_file(name), secrets.token_hex(24))
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            _write_ca(self.ca_cert, self.ca_key)
            # A new CA invalidates certificates signed by an old one.
            for old in (self.server_cert, self.client_cert):
                old.unlink(missing_ok=True)
        if not self.server_cert.exists():
            _write_leaf(self, "tierflow-services", host, names, self.server_cert, self.server_key)
            self.server_bundle.unlink(missing_ok=True)
        if not self.server_bundle.exists():
            write_secret_file(
                self.server_bundle, self.server_key.read_text() + self.server_cert.read_text()
            )
        if not self.client_cert.exists():
            _write_leaf(self, "tierflow-client", host, (), self.client_cert, self.client_key)
        if not self.redis_acl.exists():
            write_secret_file(self.redis_acl, redis_acl_lines(self.password("redis-tierflow")))
        if not self.minio_key_id.exists():
            write_secret_file(self.minio_key_id, MINIO_USER)


def share_with_group(folder: Path, gid: int) -> None:
    """Let group ``gid`` read every file (mode 0640): containers that run as other users.

    In a compose cluster each image has its own user (Kafka's, Spark's, Redis's); they all
    join this one group instead of every file becoming world-readable.
    """
    import os

    os.chown(folder, -1, gid)
    folder.chmod(0o750)
    for path in folder.iterdir():
        os.chown(path, -1, gid)
        path.chmod(0o640)


def redis_acl_lines(password: str) -> str:
    """Redis ACL rules: ``default`` off; ``tierflow`` with data commands only."""
    return (
        "user default off\n"
        # The online store needs data commands only: no CONFIG, DEBUG, ACL, MODULE.
        f"user {REDIS_USER} on >{password} ~* &* +@all -@admin -@dangerous +flushdb +info\n"
    )


def _write_pair(key: Any, cert: Any, key_path: Path, cert_path: Path) -> None:
    """The key (PKCS#8, mode 0600) and its certificate, as PEM."""
    from cryptography.hazmat.primitives import serialization

    write_secret_file(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_ca(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierflow local CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(key, cert, key_path, cert_path)


def _write_leaf(
    creds: ServiceCredentials,
    common_name: str,
    host: str,
    names: tuple[str, ...],
    cert_path: Path,
    key_path: Path,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(creds.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):  # pragma: no cover - we wrote it
        raise TypeError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    addresses = {ipaddress.ip_address(host), ipaddress.ip_address("127.0.0.1")}
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.DNSName(n) for n in ("localhost", *names)),
                    *(x509.IPAddress(a) for a in sorted(addresses)),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(key, cert, key_path, cert_path)
