"""The demo's services: on a configured Kafka cluster it starts nothing of its own."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tierflow.demo.__main__ import DemoServices
from tierflow.project import Project

if TYPE_CHECKING:
    import pytest


def test_a_configured_cluster_is_used_and_nothing_is_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TIERFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TIERFLOW_STREAM_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("TIERFLOW_STREAM_TOPIC_REPLICATION_FACTOR", "3")
    services = DemoServices(Project.load(), "sqlite")
    access = services.kafka()
    assert access.connection.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert access.replication_factor == 3 and access.env == {}
    assert services.started == [] and not (tmp_path / "state" / "kafka").exists()


def test_without_one_the_local_broker_is_the_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TIERFLOW_STREAM_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("TIERFLOW_STATE_DIR", str(tmp_path / "state"))
    services = DemoServices(Project.load(), "sqlite")
    assert not services.external and services.wanted == ["kafka"]
