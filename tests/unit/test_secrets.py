"""Secrets from the environment or files, typed so that printing them shows stars;
Kafka client options built from the streaming settings; conf profiles; credentials."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from tierflow.config.streaming import StreamingConfig
from tierflow.errors import ConfigError
from tierflow.paths import ProjectPaths
from tierflow.secrets import read_secret, require_secret
from tierflow.services.credentials import PASSWORDS, ServiceCredentials
from tierflow.stream.connection import KafkaConnection, kafka_options

PROJECT = Path(__file__).resolve().parents[2]


def test_a_secret_comes_from_its_variable_or_its_file(tmp_path: Path) -> None:
    assert read_secret("kafka_password", {}) is None
    direct = read_secret("kafka_password", {"TIERFLOW_KAFKA_PASSWORD": "s3cret"})
    assert direct is not None and direct.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(direct) and "s3cret" not in str(direct)
    file = tmp_path / "pw"
    file.write_text("from-a-file\n")
    from_file = read_secret("kafka_password", {"TIERFLOW_KAFKA_PASSWORD_FILE": str(file)})
    assert from_file is not None and from_file.get_secret_value() == "from-a-file"


def test_bad_secret_settings_are_clear_errors(tmp_path: Path) -> None:
    both = {"TIERFLOW_REDIS_PASSWORD": "a", "TIERFLOW_REDIS_PASSWORD_FILE": "/x"}
    with pytest.raises(ConfigError, match="both TIERFLOW_REDIS_PASSWORD and"):
        read_secret("redis_password", both)
    with pytest.raises(ConfigError, match="cannot read the file"):
        read_secret("redis_password", {"TIERFLOW_REDIS_PASSWORD_FILE": str(tmp_path / "no")})
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        read_secret("redis_password", {"TIERFLOW_REDIS_PASSWORD_FILE": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="set TIERFLOW_SPARK_AUTH_SECRET or"):
        require_secret("spark_auth_secret", "the cluster", {})


def test_kafka_options_follow_the_streaming_settings() -> None:
    assert kafka_options("h:1") == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}
    config = StreamingConfig(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="tierflow", ssl_cafile="/ca.pem",
    )  # fmt: skip
    conn = KafkaConnection.from_config("h:1", config, {"TIERFLOW_KAFKA_PASSWORD": "pw"})
    options = conn.options()
    assert options["sasl_plain_password"] == "pw"  # noqa: S105 - the test's own value
    assert options["ssl_cafile"] == "/ca.pem" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert "pw" not in repr(conn)
    with pytest.raises(ConfigError, match="TIERFLOW_KAFKA_PASSWORD"):
        KafkaConnection.from_config("h:1", config, {})
    with pytest.raises(ConfigError, match="needs sasl_username"):
        KafkaConnection.from_config("h:1", StreamingConfig(security_protocol="SASL_SSL"), {})


def test_a_profile_replaces_settings_files_and_an_unknown_one_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIERFLOW_PROFILE", "secure")
    paths = ProjectPaths.discover()
    assert paths.settings("services.yaml") == PROJECT / "conf/profiles/secure/services.yaml"
    assert paths.settings("streaming.yaml") == PROJECT / "conf/streaming.yaml"  # not replaced
    monkeypatch.setenv("TIERFLOW_PROFILE", "nope")
    with pytest.raises(ConfigError, match=r"TIERFLOW_PROFILE = 'nope'.*profiles: cluster, secure"):
        ProjectPaths.discover()


def test_credentials_are_private_and_verify_against_their_ca(tmp_path: Path) -> None:
    creds = ServiceCredentials(tmp_path / "c")
    creds.ensure("10.1.0.2", ("kafka-1",))
    for name in PASSWORDS:
        mode = stat.S_IMODE(creds.password_file(name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert stat.S_IMODE(creds.server_key.stat().st_mode) == 0o600
    before = creds.password("kafka-admin")
    creds.ensure("10.1.0.2", ("kafka-1",))  # idempotent: nothing regenerated
    assert creds.password("kafka-admin") == before
    # The server certificate is accepted for its names by a client trusting the CA only.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(creds.server_cert, creds.server_key)
    client = ssl.create_default_context(cafile=str(creds.ca_cert))

    def handshake(name: str) -> dict:
        to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls_client = client.wrap_bio(to_client, to_server, server_hostname=name)
        tls_server = server.wrap_bio(to_server, to_client, server_side=True)
        for _ in range(10):
            for side in (tls_client, tls_server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
        return tls_client.getpeercert()

    for name in ("kafka-1", "10.1.0.2", "localhost"):
        assert handshake(name)["subject"][0][0][1] == "tierflow-services", name
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake("some-other-host")
