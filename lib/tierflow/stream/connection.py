"""How every tierflow Kafka client connects: bootstrap servers plus security settings.

Built once at the entry point from ``streaming.yaml`` (``security_protocol``,
``sasl_mechanism``, ``sasl_username``, ``ssl_cafile``) and the ``kafka_password`` secret
(``TIERFLOW_KAFKA_PASSWORD`` or ``TIERFLOW_KAFKA_PASSWORD_FILE``); clients take
:meth:`KafkaConnection.options` as keyword arguments. A plain ``host:port`` string stands
for a PLAINTEXT connection, so code and tests against the loopback profile stay simple.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tierflow.errors import ConfigError
from tierflow.secrets import require_secret

T = TypeVar("T")
log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pydantic import SecretStr

    from tierflow.config.streaming import StreamingConfig


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers and the security settings to reach them."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None

    def __str__(self) -> str:
        return self.bootstrap_servers

    @property
    def uses_sasl(self) -> bool:
        """Whether clients log in with a user and password."""
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        """Whether the connection is encrypted."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_config(
        cls,
        bootstrap_servers: str,
        config: StreamingConfig,
        environ: Mapping[str, str] | None = None,
    ) -> KafkaConnection:
        """The connection ``config`` describes, with the password from the environment.

        Raises:
            ConfigError: SASL without a user or mechanism, or without the password secret.
        """
        protocol = config.security_protocol
        password = None
        if protocol.startswith("SASL_"):
            if not (config.sasl_username and config.sasl_mechanism):
                raise ConfigError(
                    f"streaming: security_protocol = {protocol!r} needs sasl_username and "
                    "sasl_mechanism"
                )
            password = require_secret("kafka_password", f"Kafka over {protocol}", environ)
        return cls(
            bootstrap_servers=bootstrap_servers,
            security_protocol=protocol,
            sasl_mechanism=config.sasl_mechanism if protocol.startswith("SASL_") else None,
            username=config.sasl_username if protocol.startswith("SASL_") else None,
            password=password,
            ca_file=config.ssl_cafile,
        )

    def options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's producer, consumer and admin client."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            opts["ssl_check_hostname"] = True
            if self.ca_file:
                opts["ssl_cafile"] = self.ca_file
        if self.uses_sasl:
            assert self.password is not None  # from_config requires it
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.username
            opts["sasl_plain_password"] = self.password.get_secret_value()
        return opts


def kafka_options(connection: KafkaConnection | str) -> dict[str, Any]:
    """:meth:`KafkaConnection.options` for a connection or a PLAINTEXT ``host:port``."""
    if isinstance(connection, str):
        connection = KafkaConnection(connection)
    return connection.options()


def through_failover(call: Callable[[], T], what: str, *, patience_s: float = 180.0,
                     pause_s: float = 0.5) -> T:  # fmt: skip
    """``call()``, made again while a lost broker's partitions move to new leaders.

    Right after a broker is lost, the metadata may still name it (``UnknownBrokerIdError``),
    its connections may be timing out, or no leader may answer yet; the same call a moment
    later reaches a live broker. Other errors, and these after ``patience_s``, are raised.
    """
    from kafka.errors import (
        KafkaConnectionError,
        KafkaTimeoutError,
        NodeNotReadyError,
        UnknownBrokerIdError,
    )

    failover = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, UnknownBrokerIdError)
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return call()
        except failover:
            if time.monotonic() > deadline:
                raise
            log.warning("no broker answers for %s yet; asking again", what)
            time.sleep(pause_s)
