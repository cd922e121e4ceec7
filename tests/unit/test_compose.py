"""docker-compose.yml parses with the real Docker Compose CLI, and is secure by default.

`docker compose config` needs no engine: it resolves anchors, merges and interpolation
the way `docker compose up` would, and fails on anything the Compose spec rejects. The
plugin is built by `make setup` (scripts/build_compose.sh) into .local/docker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierflow.config.loader import load_model
from tierflow.config.project import ProjectConfig
from tierflow.config.streaming import StreamingConfig

PROJECT = Path(__file__).resolve().parents[2]
PLUGINS = PROJECT / ".local" / "docker"


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    plugin = PLUGINS / "cli-plugins" / "docker-compose"
    assert plugin.is_file(), "docker compose is not built: run `scripts/setup.sh compose`"
    docker = shutil.which("docker")
    # The docker client runs the plugin; without a client, the plugin runs on its own.
    argv = [docker, "compose"] if docker else [str(plugin)]
    return subprocess.run(
        [*argv, "-f", str(PROJECT / "docker-compose.yml"), *args],
        env=dict(os.environ, DOCKER_CONFIG=str(PLUGINS)),
        capture_output=True, text=True, timeout=60, cwd=PROJECT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    done = compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_docker_compose_config_accepts_the_file() -> None:
    done = compose("config", "--quiet")
    assert done.returncode == 0, done.stderr


def test_a_broken_file_is_refused(tmp_path: Path) -> None:
    # The check can fail: an unknown key under a service is an error.
    broken = tmp_path / "docker-compose.yml"
    text = (PROJECT / "docker-compose.yml").read_text()
    broken.write_text(text.replace("  redis:\n    image:", "  redis:\n    imagge:", 1))
    done = subprocess.run(
        [str(PLUGINS / "cli-plugins" / "docker-compose"), "-f", str(broken), "config", "-q"],
        capture_output=True, text=True, timeout=60, cwd=PROJECT,
    )  # fmt: skip
    assert done.returncode != 0
    assert "imagge" in done.stderr


def test_the_cluster_has_every_service(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert {f"kafka-{i}" for i in (1, 2, 3)} <= set(services)
    assert {"spark-master", "spark-worker-1", "spark-worker-2"} <= set(services)
    assert {"ray-head", "ray-worker", "dask-scheduler", "dask-worker", "redis"} <= set(services)
    assert {"features-1", "features-2", "credentials", "kafka-setup"} <= set(services)
    assert {"minio", "minio-setup"} <= set(services)
    assert services["minio"]["image"].startswith("minio/minio:")
    assert services["kafka-1"]["image"].startswith("apache/kafka:")
    assert services["spark-master"]["build"]["target"] == "spark"


def test_nothing_is_published_beyond_loopback(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)


def test_the_services_are_secure_by_default(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert "/data/users.acl" in " ".join(services["redis"]["command"])
    assert services["spark-master"]["command"][:2] == ["/opt/tierflow/spark-start.sh", "master"]
    assert "--protocol tls" in " ".join(services["dask-scheduler"]["command"])
    assert services["ray-head"]["environment"]["RAY_AUTH_MODE"] == "token"
    spark_start = (PROJECT / "docker" / "spark-start.sh").read_text()
    assert "spark.master.rest.enabled=false" in spark_start
    assert "spark.authenticate=true" in spark_start
    minio_start = (PROJECT / "docker" / "minio-start.sh").read_text()
    assert "MINIO_BROWSER=off" in minio_start
    assert "ports" not in services["minio"]  # the S3 API stays inside the cluster
    minio_setup = (PROJECT / "docker" / "minio-setup.sh").read_text()
    assert "mc admin policy attach store tierflow-tables" in minio_setup
    kafka_start = (PROJECT / "docker" / "kafka-start.sh").read_text()
    for setting in (
        "SASL_SSL://",
        "allow.everyone.if.no.acl.found=false",
        "min.insync.replicas=2",
        "listener.name.controller.ssl.client.auth=required",
    ):
        assert setting in kafka_start, setting  # fmt: skip
    # Secrets are files, never values in the environment of any service.
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN")):
                assert key.endswith(("_FILE", "_PATH")), (name, key, value)
                assert str(value).startswith("/credentials/"), (name, key, value)


def test_the_cluster_profile_parses() -> None:
    folder = PROJECT / "conf" / "profiles" / "cluster"
    streaming = load_model(StreamingConfig, folder / "streaming.yaml")
    assert streaming.security_protocol == "SASL_SSL"
    assert streaming.topic_replication_factor == 3
    project = load_model(ProjectConfig, folder / "tierflow.yaml")
    assert project.online_store.kind == "redis"
    assert project.object_store.endpoint_url == "http://minio:9000"
    # What the compose file gives the daemons matches what the profile asks for.
    compose_file = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    env = compose_file["x-tierflow"]["environment"]
    assert env["TIERFLOW_PROFILE"] == "cluster"
    assert env["TIERFLOW_KAFKA_PASSWORD_FILE"].startswith("/credentials/")
    assert env["TIERFLOW_S3_SECRET_ACCESS_KEY_FILE"].endswith("/minio-tierflow.password")
