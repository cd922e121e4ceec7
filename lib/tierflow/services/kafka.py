"""Single-node Apache Kafka broker in KRaft mode, from the jars fetched from Maven Central."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path

from tierflow.config.services import KafkaServiceConfig
from tierflow.errors import ServiceError
from tierflow.jvm import classpath, java_executable
from tierflow.services.base import Command, LocalService, ProbeFailedError, port_answers
from tierflow.services.process import tail

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
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{cfg.controller_port}",
            "listeners": f"PLAINTEXT://{host}:{cfg.port},CONTROLLER://{host}:{cfg.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{cfg.port},CONTROLLER://{host}:{cfg.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

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
        self._server_properties.write_text(self._properties())
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
            return
        log = self.logs / "format.log"
        with log.open("ab") as out:
            result = subprocess.run(
                [
                    java, "-cp", cp, "kafka.tools.StorageTool", "format", "--standalone",
                    "--cluster-id", _cluster_id(), "--config", str(self._server_properties),
                ],
                stdout=out, stderr=subprocess.STDOUT, check=False, timeout=120,
            )  # fmt: skip
        if result.returncode != 0:
            raise ServiceError(f"formatting kafka storage failed; {log}:\n{tail(log)}")
        marker.write_text(json.dumps({"controller": f"{self.host}:{self._cfg.controller_port}"}))

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
                bootstrap_servers=self.bootstrap_servers,
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
