"""The secure profile: every service refuses clients that do not authenticate, tierflow's
own clients get in with the generated credentials, and no secret reaches a log.

The services are the project's own (`ServiceManager`), started from
``conf/profiles/secure/services.yaml`` in a state folder of their own, on ports moved
away from the session's plaintext services so both can run at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import copy_data
from tierflow.config.loader import load_model
from tierflow.config.services import ServicesConfig
from tierflow.examples.flights import flights_table
from tierflow.examples.retail import generate
from tierflow.paths import ProjectPaths
from tierflow.project import Project
from tierflow.services.credentials import REDIS_USER
from tierflow.services.manager import ServiceManager
from tierflow.stores.redis_store import RedisOnlineStore
from tierflow.stream.connection import KafkaConnection
from tierflow.stream.parity import compare, end_offsets, expected_values, wait_caught_up
from tierflow.stream.replay import ordered, replay

PROJECT = Path(__file__).resolve().parents[2]
TIERFLOW = str(Path(sys.executable).parent / "tierflow")
pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

# The session's plaintext services use the profile's ports; these move every one by 100.
MOVED = {
    "kafka": {"port": 29192, "controller_port": 29193},
    "redis": {"port": 26479},
    "spark": {"master_port": 27177, "master_ui_port": 28180, "worker_port": 27178,
              "worker_ui_port": 28181},
    "dask": {"scheduler_port": 28886, "dashboard_port": 28887, "worker_port": 28888,
             "nanny_port": 28889},
}  # fmt: skip
SERVICES = ["kafka", "redis", "dask", "spark"]


class Secure:
    """The running secure services and what a client needs to reach them."""

    def __init__(self, manager: ServiceManager) -> None:
        self.manager = manager
        self.env: dict[str, str] = {}
        for name in SERVICES:
            self.env |= manager.service(name).client_env()

    def service(self, name: str) -> Any:
        return self.manager.service(name)

    def secrets(self) -> dict[str, str]:
        """Every generated password, by file name."""
        folder = self.service("redis").credentials.folder
        return {p.name: p.read_text() for p in folder.glob("*.password")}

    def client_env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        return base | self.env | extra


@pytest.fixture(scope="module")
def secure(tmp_path_factory, project_paths: ProjectPaths) -> Iterator[Secure]:
    profile = load_model(ServicesConfig, PROJECT / "conf" / "profiles" / "secure" / "services.yaml")
    assert profile.secure
    config = profile.model_copy(
        update={name: getattr(profile, name).model_copy(update=ports)
                for name, ports in MOVED.items()}
    )  # fmt: skip
    state = tmp_path_factory.mktemp("secure-state")
    paths = ProjectPaths(project=project_paths.project, state=state, jars=project_paths.jars)
    manager = ServiceManager(config, paths)
    try:
        manager.up(SERVICES)
        yield Secure(manager)
    finally:
        manager.down(SERVICES)


def kafka(secure: Secure, **changes: Any) -> KafkaConnection:
    conn = secure.service("kafka").connection()
    return KafkaConnection(**{**conn.__dict__, **changes})


# --- refusals ---------------------------------------------------------------------------


def test_kafka_refuses_clients_that_do_not_log_in_and_limits_the_tierflow_user(
    secure: Secure,
) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )
    from kafka.errors import KafkaError
    from pydantic import SecretStr

    bootstrap = secure.service("kafka").bootstrap_servers
    # No TLS, no login: the SASL_SSL listener never answers a metadata request.
    with pytest.raises((KafkaError, OSError)):
        KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                         api_version_auto_timeout_ms=3000)  # fmt: skip
    # TLS and the right user, wrong password: refused at login.
    wrong = kafka(secure, password=SecretStr("not-the-password"))
    with pytest.raises((KafkaError, OSError)):
        admin = KafkaAdminClient(**wrong.options(), request_timeout_ms=5000,
                                 api_version_auto_timeout_ms=5000)  # fmt: skip
        try:
            admin.list_topics()
        finally:
            admin.close()
    # The tierflow user gets in, but may not read or change the ACLs.
    admin = KafkaAdminClient(**kafka(secure).options())
    try:
        admin.list_topics()
        everything = ACLFilter(
            principal=None, host="*", operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None,
                                                   ACLResourcePatternType.ANY),
        )  # fmt: skip
        with pytest.raises(KafkaError, match=r"(?i)authoriz"):
            admin.describe_acls(everything)
    finally:
        admin.close()


def test_redis_default_user_is_off(secure: Secure) -> None:
    import redis

    redis_service = secure.service("redis")
    port = redis_service.config.redis.port
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    not_it = "not-the-password"
    wrong = redis.Redis(host="127.0.0.1", port=port, username=REDIS_USER, password=not_it)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    user = redis.Redis.from_url(redis_service.url, password=redis_service.client_password())
    assert user.ping()
    # The store's user holds data commands only.
    with pytest.raises(redis.ResponseError, match="no permissions"):
        user.config_get("requirepass")
    for client in (anonymous, wrong, user):
        client.close()


def test_dask_scheduler_refuses_clients_without_a_certificate(secure: Secure) -> None:
    import asyncio
    import socket
    import ssl

    from distributed import Client
    from distributed.comm import connect

    dask = secure.service("dask")
    host, port = dask.address.removeprefix("tls://").rsplit(":", 1)
    # Dask's own handshake in the clear: the TLS listener hangs up.
    with pytest.raises(OSError):
        asyncio.run(connect(f"tcp://{host}:{port}", timeout=5))

    # Encrypted and trusting the CA: without a client certificate the server ends the
    # connection at the handshake; with one it stays open (the control).
    def attempt(with_certificate: bool) -> str:
        context = ssl.create_default_context(cafile=str(dask.credentials.ca_cert))
        if with_certificate:
            context.load_cert_chain(dask.credentials.client_cert, dask.credentials.client_key)
        try:
            with (
                socket.create_connection((host, int(port)), timeout=3) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                if not tls.recv(1):  # the scheduler's first bytes, or a timeout while it waits
                    return "refused"
        except (ssl.SSLError, ConnectionError):
            return "refused"
        except TimeoutError:
            pass
        return "accepted"

    assert attempt(with_certificate=False) == "refused"
    assert attempt(with_certificate=True) == "accepted"
    with Client(dask.address, timeout=10, set_as_default=False,
                security=dask.client_security()) as client:  # fmt: skip
        assert client.submit(sum, [1, 2, 3]).result() == 6


@pytest.mark.spark
@pytest.mark.spark_cluster
def test_spark_master_registers_no_driver_without_the_secret(secure: Secure, tmp_path) -> None:
    spark = secure.service("spark")
    script = tmp_path / "driver.py"
    # The driver also reads its own UI's environment page (REST API): the secret must be
    # redacted there.
    script.write_text(
        "import sys, urllib.request\n"
        "from tierflow.spark import get_spark\n"
        "s = get_spark(sys.argv[1], master=sys.argv[2], conf={'spark.ui.enabled': 'true'})\n"
        "print('COUNT', s.range(1000).count(), flush=True)\n"
        "sc = s.sparkContext\n"
        "url = f'{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/environment'\n"
        "open(sys.argv[3], 'wb').write(urllib.request.urlopen(url, timeout=10).read())\n"
        "s.stop()\n"
    )
    environment = tmp_path / "environment.json"
    without = {k: v for k, v in secure.client_env().items() if "SPARK_AUTH_SECRET" not in k}
    intruder = subprocess.Popen(
        [sys.executable, str(script), "without-the-secret", spark.master_url, "/dev/null"],
        env=without, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, str(script), "with-the-secret", spark.master_url, str(environment)],
            env=secure.client_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "COUNT 1000" in done.stdout
        shown = environment.read_text()
        assert "spark.authenticate.secret" in shown  # the key is listed...
        assert spark.credentials.password("spark") not in shown  # ...its value is not
        # Both drivers have had their JVM up and tried to register for the same time.
        with urllib.request.urlopen(f"{spark.master_ui}/json/", timeout=5) as resp:
            state = json.load(resp)
        apps = [a["name"] for a in state["activeapps"] + state["completedapps"]]
        assert "with-the-secret" in apps
        assert "without-the-secret" not in apps
        assert intruder.poll() is None or intruder.returncode != 0
    finally:
        intruder.kill()
        out = intruder.communicate()[0]
    assert "COUNT" not in out


# --- tierflow's own clients, unchanged ----------------------------------------------------


def test_jobs_and_the_streaming_daemon_run_unchanged_on_the_secure_services(
    secure: Secure, tmp_path_factory, unique_name
) -> None:
    data = copy_data(
        generate(tmp_path_factory.mktemp("secure-jobs") / "data", orders=2_000, files=2),
        tmp_path_factory.mktemp("secure-data") / "data",
    )
    logs = tmp_path_factory.mktemp("secure-logs")
    env = secure.client_env(TIERFLOW_LOGS_DIR=str(logs))
    dask = secure.service("dask")
    run = subprocess.run(
        [TIERFLOW, "run", "orders_clean", "--engine", "dask", "--scheduler", dask.address,
         "--data-dir", str(data)],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"on dask ({dask.address}, 1 workers)" in run.stdout

    # Streaming: the daemon reads Kafka over SASL_SSL and writes Redis as its ACL user.
    project = Project.load()
    view = project.feature_view("carrier_delays")
    prefix = unique_name("secure") + "."
    group = unique_name("group")
    topic = prefix + view.source.topic
    conn = kafka(secure)
    events, _ = ordered(flights_table((1,)), view.event_time)
    events = events.slice(0, 3000)
    from tierflow.stream.commands import ensure_topic

    ensure_topic(conn, topic, 2)
    redis_service = secure.service("redis")
    url = redis_service.url.rsplit("/", 1)[0] + "/3"
    store_env = {"TIERFLOW_ONLINE_STORE": "redis", "TIERFLOW_REDIS_URL": url}
    daemon_out = logs / "daemon.out"
    daemon = subprocess.Popen(
        [TIERFLOW, "stream", "--view", view.name, "--metrics-port", "0"],
        cwd=PROJECT, env=env | store_env | {"TIERFLOW_STREAM_TOPIC_PREFIX": prefix,
                                            "TIERFLOW_STREAM_GROUP_ID": group},
        stdout=daemon_out.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    store = RedisOnlineStore(url, password=redis_service.client_password())
    try:
        sent = replay(events, topic, conn, keys=list(view.entities), time_column=view.event_time)
        assert sent.sent == events.num_rows
        ends = end_offsets(conn, topic)

        def alive() -> None:
            assert daemon.poll() is None, daemon_out.read_text()[-3000:]

        wait_caught_up(store, group, topic, ends, 180, alive=alive)
        expected = expected_values(events, view, 2)
        result = compare(store, view, expected, group=group, topic=topic)
        assert result.ok and result.values_compared > 0, (result.mismatches[:3], result)
    finally:
        daemon.terminate()
        assert daemon.wait(60) == 0, daemon_out.read_text()[-3000:]
        store.client.flushdb()
        store.close()

    # No generated secret in anything this test or the services wrote.
    state = secure.manager.paths.state
    # Only the credentials and the services' own config files (mode 0600) may hold them.
    allowed = {state / "credentials", *(state / name / "config" for name in SERVICES)}
    leaks = [
        f"{name} in {path}"
        for name, value in secure.secrets().items()
        for root in (logs, state)
        for path in root.rglob("*")
        if path.is_file() and path.parent not in allowed and value.encode() in path.read_bytes()
    ]
    assert not leaks, leaks
