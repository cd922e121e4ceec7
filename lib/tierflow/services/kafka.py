"""Single-node Apache Kafka broker in KRaft mode, from the jars fetched from Maven Central.

In the secure profile the client listener is SASL_SSL with SCRAM-SHA-512 users, the
controller listener is SSL with client certificates, and the StandardAuthorizer denies
whatever no ACL allows: the ``tierflow`` user gets topic and group rights, no cluster or
ACL administration; the brokers' ``admin`` user and certificate are the super users.
SCRAM users are created when the storage is formatted, from a Java argument file of mode
0600 (a password never shows on a command line).
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path

from pydantic import SecretStr

from tierflow.config.services import KafkaServiceConfig
from tierflow.errors import ServiceError
from tierflow.jvm import classpath, java_executable
from tierflow.secrets import write_secret_file
from tierflow.services.base import Command, LocalService, ProbeFailedError, port_answers
from tierflow.services.credentials import KAFKA_ADMIN_USER, KAFKA_CLIENT_USER
from tierflow.services.process import tail
from tierflow.stream.connection import KafkaConnection

_SCRAM = "SCRAM-SHA-512"

_LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: INFO
      - name: state.change.logger
        level: WARN
"""


def _cluster_id() -> str:
    # Kafka's own Uuid.toString(): URL-safe base64 without padding, never starting with "-".
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaService(LocalService):
    """One process that is broker and controller; storage formatted on first start."""

    name = "kafka"

    @property
    def _cfg(self) -> KafkaServiceConfig:
        return self.config.kafka

    def ports(self) -> dict[str, int]:
        """Client listener and controller listener."""
        return {"kafka.port": self._cfg.port, "kafka.controller_port": self._cfg.controller_port}

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the client listener."""
        return f"{self.host}:{self._cfg.port}"

    def _properties(self) -> str:
        cfg, host = self._cfg, self.host
        props = self._plaintext_properties() if not self.secure else self._secure_properties()
        props |= {
            "log.dirs": str(self.data),
            "num.partitions": str(cfg.num_partitions),
            "auto.create.topics.enable": "true",
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Local use: consumer groups form at once instead of waiting 3 s.
            "group.initial.rebalance.delay.ms": "0",
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{cfg.controller_port}",
            "controller.listener.names": "CONTROLLER",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _plaintext_properties(self) -> dict[str, str]:
        cfg, host = self._cfg, self.host
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{cfg.controller_port}",
            "listeners": f"PLAINTEXT://{host}:{cfg.port},CONTROLLER://{host}:{cfg.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{cfg.port},CONTROLLER://{host}:{cfg.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        }

    def _secure_properties(self) -> dict[str, str]:
        cfg, host, creds = self._cfg, self.host, self.credentials
        admin_password = creds.password("kafka-admin")
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{KAFKA_ADMIN_USER}" password="{admin_password}";'
        )
        return {
            "listeners": f"SASL_SSL://{host}:{cfg.port},CONTROLLER://{host}:{cfg.controller_port}",
            "advertised.listeners": f"SASL_SSL://{host}:{cfg.port},CONTROLLER://{host}:{cfg.controller_port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": _SCRAM,
            "sasl.mechanism.inter.broker.protocol": _SCRAM,
            f"listener.name.sasl_ssl.{_SCRAM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(creds.server_bundle),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(creds.ca_cert),
            # The controller listener takes the brokers' own certificate only.
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{KAFKA_ADMIN_USER};User:CN=tierflow-services",
        }

    @property
    def _server_properties(self) -> Path:
        return self.home / "config" / "server.properties"

    def prepare(self) -> None:
        """Write the configuration and format the storage once (KRaft needs it)."""
        super().prepare()
        java = java_executable()
        cp = classpath(self.paths.kafka_jars, "Kafka broker")
        config_dir = self.home / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        # Mode 0600: in the secure profile it holds the brokers' SASL password.
        write_secret_file(self._server_properties, self._properties())
        (config_dir / "log4j2.yaml").write_text(_LOG4J2)

        marker = self.home / "formatted.json"
        if (self.data / "meta.properties").exists():
            formatted = json.loads(marker.read_text()) if marker.exists() else {}
            if formatted.get("controller") != f"{self.host}:{self._cfg.controller_port}":
                raise ServiceError(
                    f"kafka storage in {self.data} was formatted for controller "
                    f"{formatted.get('controller')}, but the configuration now says "
                    f"{self.host}:{self._cfg.controller_port}; remove it with "
                    "`tierflow services down kafka --purge` and start again"
                )
            # SCRAM users exist only if the storage was formatted in the secure profile.
            if bool(formatted.get("secure", False)) != self.secure:
                was = "secure" if formatted.get("secure") else "plaintext"
                now = "secure" if self.secure else "plaintext"
                raise ServiceError(
                    f"kafka storage in {self.data} was formatted for the {was} profile, "
                    f"and this start is {now}; use another state folder "
                    "(TIERFLOW_STATE_DIR) or remove it with "
                    "`tierflow services down kafka --purge` and start again"
                )
            return
        log = self.logs / "format.log"
        args = [
            "-cp", cp, "kafka.tools.StorageTool", "format", "--standalone",
            "--cluster-id", _cluster_id(), "--config", str(self._server_properties),
        ]  # fmt: skip
        if self.secure:
            for user, name in (
                (KAFKA_ADMIN_USER, "kafka-admin"),
                (KAFKA_CLIENT_USER, "kafka-tierflow"),
            ):
                password = self.credentials.password(name)
                args += ["--add-scram", f"{_SCRAM}=[name={user},password={password}]"]
        # The java launcher reads its arguments from a file: no password in `ps`.
        argfile = config_dir / "format.args"
        write_secret_file(argfile, "\n".join(f'"{a}"' for a in args) + "\n")
        try:
            with log.open("ab") as out:
                result = subprocess.run(
                    [java, f"@{argfile}"],
                    stdout=out, stderr=subprocess.STDOUT, check=False, timeout=120,
                )  # fmt: skip
        finally:
            argfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServiceError(f"formatting kafka storage failed; {log}:\n{tail(log)}")
        marker.write_text(
            json.dumps(
                {"controller": f"{self.host}:{self._cfg.controller_port}", "secure": self.secure}
            )
        )

    def commands(self) -> list[Command]:
        """``kafka.Kafka server.properties`` on the fetched classpath."""
        heap = self._cfg.heap
        argv = (
            java_executable(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'config' / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.logs}",
            "-cp", classpath(self.paths.kafka_jars, "Kafka broker"),
            "kafka.Kafka", str(self._server_properties),
        )  # fmt: skip
        return [Command("broker", argv)]

    def probe(self) -> str:
        """A metadata request answered by the broker."""
        try:
            from kafka import KafkaAdminClient
            from kafka.errors import KafkaError
        except ImportError as exc:  # pragma: no cover - part of the locked set
            raise ProbeFailedError(f"kafka-python is not installed: {exc}") from exc
        if not port_answers(self.host, self._cfg.port):
            raise ProbeFailedError(f"{self.bootstrap_servers} is not listening yet")
        try:
            admin = KafkaAdminClient(
                **self.connection(KAFKA_ADMIN_USER).options(),
                client_id="tierflow-probe",
                request_timeout_ms=3000,
                bootstrap_timeout_ms=3000,
            )
        except (KafkaError, OSError) as exc:
            raise ProbeFailedError(f"no metadata from {self.bootstrap_servers}: {exc!r}") from exc
        try:
            cluster = admin.describe_cluster()
        except (KafkaError, OSError) as exc:
            raise ProbeFailedError(f"describe_cluster failed: {exc!r}") from exc
        finally:
            admin.close()
        brokers = cluster.get("brokers", [])
        if not brokers:
            raise ProbeFailedError("cluster metadata lists no broker yet")
        return f"cluster {cluster.get('cluster_id')}, {len(brokers)} broker(s)"

    def endpoints(self) -> dict[str, str]:
        """The bootstrap servers."""
        return {"bootstrap_servers": self.bootstrap_servers}

    def connection(self, user: str = KAFKA_CLIENT_USER) -> KafkaConnection:
        """How ``user`` connects (PLAINTEXT outside the secure profile)."""
        if not self.secure:
            return KafkaConnection(self.bootstrap_servers)
        name = "kafka-admin" if user == KAFKA_ADMIN_USER else "kafka-tierflow"
        return KafkaConnection(
            self.bootstrap_servers,
            security_protocol="SASL_SSL",
            sasl_mechanism=_SCRAM,
            username=user,
            password=SecretStr(self.credentials.password(name)),
            ca_file=str(self.credentials.ca_cert),
        )

    def client_env(self) -> dict[str, str]:
        """Streaming settings and the password file of the ``tierflow`` user."""
        conn = self.connection()
        env = {"TIERFLOW_STREAM_BOOTSTRAP_SERVERS": conn.bootstrap_servers}
        if conn.uses_sasl:
            env |= {
                "TIERFLOW_STREAM_SECURITY_PROTOCOL": conn.security_protocol,
                "TIERFLOW_STREAM_SASL_MECHANISM": str(conn.sasl_mechanism),
                "TIERFLOW_STREAM_SASL_USERNAME": str(conn.username),
                "TIERFLOW_STREAM_SSL_CAFILE": str(conn.ca_file),
                # The file, never the value: the daemons read it themselves.
                "TIERFLOW_KAFKA_PASSWORD_FILE": str(
                    self.credentials.password_file("kafka-tierflow")
                ),
            }
        return env

    def after_start(self) -> None:
        """Secure profile: the ``tierflow`` user's ACLs (idempotent).

        Topics: read, write, create, describe (and their configs); consumer groups: read,
        describe. Nothing on the cluster itself and no ACL administration.
        """
        if not self.secure:
            return
        from kafka import KafkaAdminClient
        from kafka.admin import (
            ACL,
            ACLOperation,
            ACLPermissionType,
            ACLResourcePatternType,
            ResourcePattern,
            ResourceType,
        )

        wanted = {
            ResourceType.TOPIC: (
                ACLOperation.READ, ACLOperation.WRITE, ACLOperation.CREATE,
                ACLOperation.DESCRIBE, ACLOperation.DESCRIBE_CONFIGS,
            ),
            ResourceType.GROUP: (ACLOperation.READ, ACLOperation.DESCRIBE),
        }  # fmt: skip
        acls = [
            ACL(
                principal=f"User:{KAFKA_CLIENT_USER}",
                host="*",
                operation=operation,
                permission_type=ACLPermissionType.ALLOW,
                resource_pattern=ResourcePattern(kind, "*", ACLResourcePatternType.LITERAL),
            )
            for kind, operations in wanted.items()
            for operation in operations
        ]
        admin = KafkaAdminClient(
            **self.connection(KAFKA_ADMIN_USER).options(), client_id="tierflow-acls"
        )
        try:
            result = admin.create_acls(acls)
        finally:
            admin.close()
        if result.get("failed"):
            raise ServiceError(
                f"kafka: creating the tierflow user's ACLs failed: {result['failed']}"
            )
