"""Process tracking and stopping, with real processes (sleep, bash)."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from tierflow.errors import PortInUseError
from tierflow.services.base import check_port_free
from tierflow.services.process import (
    ProcessRecord,
    launch,
    load_records,
    read_stat,
    save_records,
    stop,
)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_stop_takes_down_the_leader_and_what_it_spawned(tmp_path):
    # A leader that spawns a grandchild which ignores SIGTERM: the sweep must SIGKILL it.
    script = "trap '' TERM; sleep 300 & wait"
    record = launch("stubborn", ["bash", "-c", script], log=tmp_path / "x.log")
    assert wait_for(lambda: len(record.session_members()) >= 2)
    members = record.session_members()
    killed = stop([record], grace=1.0)
    assert not record.is_alive()
    assert record.session_members() == []
    assert set(killed) <= set(members)
    for pid in members:
        stat = read_stat(pid)
        assert stat is None or stat.state == "Z"


def test_a_reused_pid_is_not_taken_for_the_recorded_process(tmp_path):
    record = launch("sleeper", ["sleep", "300"], log=tmp_path / "s.log")
    try:
        assert record.is_alive()
        imposter = ProcessRecord("sleeper", record.pid, record.start_ticks + 1, (), "")
        assert not imposter.is_alive()
        assert stop([imposter], grace=0.5) == []
        assert record.is_alive(), "stop() signalled a process whose start time differs"
    finally:
        stop([record], grace=5)


def test_records_round_trip(tmp_path):
    record = launch(
        "py", [sys.executable, "-c", "import time; time.sleep(30)"], log=tmp_path / "p.log"
    )
    try:
        path = tmp_path / "state" / "processes.json"
        save_records(path, [record])
        assert load_records(path) == [record]
        assert load_records(tmp_path / "none.json") == []
    finally:
        stop([record], grace=5)
    assert not record.is_alive()


def test_output_goes_to_the_log(tmp_path):
    log = tmp_path / "out.log"
    record = launch("echo", ["bash", "-c", "echo hello-$GREETING"], log=log, env={"GREETING": "x"})
    assert wait_for(lambda: not record.is_alive())
    assert log.read_text().strip() == "hello-x"
    assert read_stat(os.getpid()) is not None


def test_port_in_use_names_the_key():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"port {port} \(redis\.port\) on 127\.0\.0\.1"):
            check_port_free("127.0.0.1", port, "redis.port")
    check_port_free("127.0.0.1", port, "redis.port")
