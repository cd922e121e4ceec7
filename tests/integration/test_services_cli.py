"""`tierflow services up|status|down` end to end, through the real command line.

Runs with its own state folder and ports shifted away from the session's services, so it
can bring everything up and down without disturbing the other tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tierflow.config.services import ServicesConfig
from tierflow.services.process import read_stat

# What the tests start of their own (Redis and Dask, in their own state folder).
pytestmark = [pytest.mark.redis, pytest.mark.dask, pytest.mark.slow]

SHIFT = -10_000
TIERFLOW = str(Path(sys.executable).parent / "tierflow")


def shifted_config(path: Path) -> ServicesConfig:
    doc = ServicesConfig().model_dump()
    for section in ("kafka", "redis", "spark", "dask", "ray", "minio"):
        for key, value in doc[section].items():
            if key.endswith("port"):
                doc[section][key] = value + SHIFT
    del doc["host"]
    path.write_text(yaml.safe_dump(doc))
    return ServicesConfig.model_validate(doc)


@pytest.fixture
def cli(tmp_path):
    conf = tmp_path / "services.yaml"
    config = shifted_config(conf)
    env = dict(os.environ, TIERFLOW_STATE_DIR=str(tmp_path / "state"))

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TIERFLOW, "services", "--services-conf", str(conf), *args],
            env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    run.config = config
    yield run
    run("down", "--purge")  # whatever a failed assertion left running, and its folders


def statuses(cli) -> dict[str, dict]:
    result = cli("status", "--json")
    # 0 only when every service asked about (here all) runs and answers, else 3.
    everything_up = all(s["state"] == "healthy" for s in json.loads(result.stdout))
    assert result.returncode == (0 if everything_up else 3), result.stderr
    return {s["name"]: s for s in json.loads(result.stdout)}


def test_port_in_use_is_a_clear_error(cli):
    port = cli.config.redis.port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        result = cli("up", "redis")
    assert result.returncode == 2
    assert f"port {port} (redis.port) on 127.0.0.1 is already in use" in result.stderr
    assert statuses(cli)["redis"]["state"] == "stopped"


def test_up_status_down_leaves_nothing_running(cli):
    # Redis (one process) and Dask (scheduler, nanny, worker). The session's services prove
    # that Kafka, Spark, MinIO and Ray (a dozen processes of its own making) come up
    # healthy, and conftest checks that each leaves nothing running when it is stopped:
    # a second Ray head here would cost 15 s and show nothing more.
    started = ("redis", "dask")
    result = cli("up", *started)
    assert result.returncode == 0, result.stderr
    before = statuses(cli)
    assert set(before) == {"kafka", "redis", "spark", "dask", "ray", "minio"}
    assert {n: before[n]["state"] for n in started} == dict.fromkeys(started, "healthy")
    assert {s["state"] for n, s in before.items() if n not in started} == {"stopped"}
    pids = [pid for s in before.values() for pid in s["pids"]]
    assert len(pids) >= 4  # redis 1, dask 3

    again = cli("up", "redis")
    assert again.returncode == 0
    assert "already running" in again.stderr
    assert cli("status", *started).returncode == 0
    assert cli("status", "redis", "kafka").returncode == 3  # kafka is down

    result = cli("down")
    assert result.returncode == 0, result.stderr
    after = statuses(cli)
    assert {n: s["state"] for n, s in after.items()} == dict.fromkeys(after, "stopped")
    assert all(s["pids"] == [] for s in after.values())
    assert cli("status", "redis").returncode == 3
    survivors = [p for p in pids if (st := read_stat(p)) is not None and st.state != "Z"]
    assert survivors == []
