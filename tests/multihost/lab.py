"""Hosts on one machine: network namespaces joined by veth pairs to a bridge of our own.

Each host is a namespace with loopback and one interface ``10.231.<net>.<n>/24``; the
other end of its veth pair sits in a switch namespace, enslaved to a bridge. Nothing is
connected to the machine's own interfaces, so the hosts reach each other and nothing
else. Cutting a host off is taking its switch port down: its processes keep running,
isolated, the way a host behind a failed link looks to the rest of the cluster.

Every process started on a host is a session leader whose PID is recorded; ``destroy``
stops those sessions by PID, then any process still living in one of the lab's
namespaces (found by the namespace's inode, by PID), then deletes the namespaces.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tierflow.services.process import ProcessRecord, launch, stop


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Lab:
    """The namespaces, addresses and processes of one lab."""

    hosts: dict[str, str]  # name -> address
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    net: int = 231
    processes: list[ProcessRecord] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)  # deleted by destroy

    def ns(self, host: str) -> str:
        """The namespace of ``host``."""
        return f"tf{self.tag}-{host}"

    @property
    def switch(self) -> str:
        """The namespace holding the bridge."""
        return f"tf{self.tag}-switch"

    def _port(self, index: int) -> str:
        return f"tf{self.tag}p{index}"

    def create(self) -> None:
        """Create the switch and every host, each linked to the bridge."""
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        _ip("-n", self.switch, "link", "set", "lo", "up")
        for index, (host, address) in enumerate(self.hosts.items(), start=1):
            ns, inner, port = self.ns(host), f"tf{self.tag}h{index}", self._port(index)
            _ip("netns", "add", ns)
            _ip("link", "add", inner, "type", "veth", "peer", "name", port)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", port, "netns", self.switch)
            _ip("-n", ns, "link", "set", inner, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")

    def cut(self, host: str) -> None:
        """Take ``host``'s switch port down: it can reach no one, no one can reach it."""
        index = list(self.hosts).index(host) + 1
        _ip("-n", self.switch, "link", "set", self._port(index), "down")

    def start(
        self,
        host: str,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> ProcessRecord:
        """Start ``argv`` on ``host`` as a new session leader; its PID is recorded."""
        record = launch(name, ["ip", "netns", "exec", self.ns(host), *argv], log=log, env=env)
        self.processes.append(record)
        return record

    @property
    def temp(self) -> Path:
        """A short scratch folder (Ray's unix socket paths must stay short)."""
        return Path(f"/tmp/tf{self.tag}")

    def save(self, path: Path) -> None:
        """Write what another process needs to drive this lab."""
        path.write_text(json.dumps({"hosts": self.hosts, "tag": self.tag, "net": self.net}))

    @classmethod
    def load(cls, path: Path) -> Lab:
        """The lab another process saved (without its processes)."""
        doc = json.loads(path.read_text())
        return cls(hosts=doc["hosts"], tag=doc["tag"], net=doc["net"])

    def _inodes(self) -> dict[int, str]:
        found = {}
        for ns in [self.switch, *(self.ns(h) for h in self.hosts)]:
            path = Path("/run/netns") / ns
            if path.exists():
                found[path.stat().st_ino] = ns
        return found

    def _pids_inside(self) -> list[int]:
        inodes = self._inodes()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                inode = os.stat(entry / "ns" / "net").st_ino
            except OSError:
                continue
            if inode in inodes:
                pids.append(int(entry.name))
        return pids

    def destroy(self) -> list[int]:
        """Stop every process of the lab, by PID, and delete the namespaces.

        Returns:
            PIDs that had to be killed after the recorded sessions were stopped.
        """
        stop(self.processes, grace=20)
        self.scratch.append(self.temp)
        stragglers = self._pids_inside()
        for pid in stragglers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self._pids_inside() and time.monotonic() < deadline:
            time.sleep(0.2)
        for ns in [*(self.ns(h) for h in self.hosts), self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)
        return stragglers
