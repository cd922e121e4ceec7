"""Bring local services up and down, and report whether they answer.

``up`` starts only what is not already running, waits until each service answers its
health probe, and on failure stops what it started and shows the log. ``down`` stops
exactly the processes ``up`` recorded, by PID.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tierflow.config.services import ServicesConfig
from tierflow.errors import ServiceError
from tierflow.paths import ProjectPaths
from tierflow.services import SERVICE_NAMES, service_class
from tierflow.services.base import LocalService, ProbeFailedError, check_port_free
from tierflow.services.process import (
    ProcessRecord,
    launch,
    load_records,
    save_records,
    stop,
    tail,
)

State = Literal["healthy", "starting", "unhealthy", "stopped"]


@dataclass(frozen=True)
class ServiceStatus:
    """What ``status`` knows of one service."""

    name: str
    state: State
    pids: tuple[int, ...] = ()
    detail: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)


def _python_env() -> dict[str, str]:
    # Services that run Python on their own (Ray job entrypoints, Spark's Python workers)
    # must find this environment's interpreter and packages first.
    bin_dir = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PYSPARK_PYTHON": sys.executable,
    }


class ServiceManager:
    """Starts, stops and checks the local services of one project state folder."""

    def __init__(
        self,
        config: ServicesConfig,
        paths: ProjectPaths,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.paths = paths
        self._progress = progress or (lambda _msg: None)

    def service(self, name: str) -> LocalService:
        """The service object for ``name``."""
        return service_class(name)(self.config, self.paths)

    @staticmethod
    def resolve(names: Sequence[str] | None) -> list[str]:
        """Validate service names; none means all, in dependency-free start order."""
        if not names:
            return list(SERVICE_NAMES)
        unknown = [n for n in names if n not in SERVICE_NAMES]
        if unknown:
            raise ServiceError(
                f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICE_NAMES)}"
            )
        return [n for n in SERVICE_NAMES if n in names]

    def _records_path(self, name: str) -> Path:
        return self.paths.service_dir(name) / "processes.json"

    def records(self, name: str) -> list[ProcessRecord]:
        """The processes recorded for ``name`` by the last ``up``."""
        return load_records(self._records_path(name))

    def live_pids(self, name: str) -> list[int]:
        """PIDs of recorded processes of ``name`` still running, with their sessions."""
        pids: set[int] = set()
        for record in self.records(name):
            if record.is_alive():
                pids.add(record.pid)
            pids.update(record.session_members())
        return sorted(pids)

    # -- status -----------------------------------------------------------------------

    def status(
        self, names: Sequence[str] | None = None, *, probe: bool = True
    ) -> list[ServiceStatus]:
        """Report each service: healthy only when it answers its probe."""
        return [self._status_one(name, probe=probe) for name in self.resolve(names)]

    def _status_one(self, name: str, *, probe: bool) -> ServiceStatus:
        service = self.service(name)
        pids = tuple(self.live_pids(name))
        if not pids:
            return ServiceStatus(name, "stopped")
        if not probe:
            return ServiceStatus(name, "starting", pids, "not probed", service.endpoints())
        try:
            detail = service.probe()
        except ProbeFailedError as exc:
            return ServiceStatus(name, "unhealthy", pids, str(exc), service.endpoints())
        return ServiceStatus(name, "healthy", pids, detail, service.endpoints())

    # -- up ---------------------------------------------------------------------------

    def up(self, names: Sequence[str] | None = None) -> list[ServiceStatus]:
        """Start the named services (all by default) and wait until each answers."""
        return [self._up_one(name) for name in self.resolve(names)]

    def _up_one(self, name: str) -> ServiceStatus:
        service = self.service(name)
        if self.live_pids(name):
            self._progress(f"{name}: already running, checking that it answers")
            return self._wait_healthy(service, self.records(name), started_now=False)
        for key, port in service.ports().items():
            check_port_free(self.config.host, port, key)
        self._progress(f"{name}: starting")
        service.prepare()
        records: list[ProcessRecord] = []
        path = self._records_path(name)
        try:
            for command in service.commands():
                log = service.logs / f"{command.name}.log"
                env = _python_env() | dict(command.env)
                records.append(
                    launch(command.name, command.argv, log=log, env=env, cwd=command.cwd)
                )
                # Saved after every launch: a crash between launches still lets `down` find them.
                save_records(path, records)
            status = self._wait_healthy(service, records, started_now=True)
            service.after_start()
            return status
        except BaseException:
            stop(records, grace=15)
            path.unlink(missing_ok=True)
            raise

    def _wait_healthy(
        self, service: LocalService, records: list[ProcessRecord], *, started_now: bool
    ) -> ServiceStatus:
        deadline = time.monotonic() + service.startup_timeout
        last_error = "no answer yet"
        while True:
            dead = [r for r in records if not r.is_alive()]
            if dead and started_now:
                first = dead[0]
                raise ServiceError(
                    f"{service.name}: process {first.name!r} (pid {first.pid}) exited during "
                    f"start; last lines of {first.log}:\n{tail(first.log)}"
                )
            try:
                detail = service.probe()
            except ProbeFailedError as exc:
                last_error = str(exc)
            else:
                pids = tuple(self.live_pids(service.name))
                self._progress(f"{service.name}: healthy ({detail})")
                return ServiceStatus(service.name, "healthy", pids, detail, service.endpoints())
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {r.log}\n{tail(r.log, 15)}" for r in records)
                raise ServiceError(
                    f"{service.name}: no healthy answer within {service.startup_timeout:.0f}s "
                    f"({last_error})\n{logs}"
                )
            time.sleep(0.5)

    # -- down -------------------------------------------------------------------------

    def down(
        self, names: Sequence[str] | None = None, *, purge: bool = False
    ) -> list[ServiceStatus]:
        """Stop the named services (all by default), by the PIDs ``up`` recorded.

        Args:
            names: Services to stop; all when empty.
            purge: Also delete each service's data and logs.
        """
        statuses = []
        # Stop in reverse start order, so dependants go before what they depend on.
        for name in reversed(self.resolve(names)):
            records = self.records(name)
            if records:
                self._progress(f"{name}: stopping pids {', '.join(map(str, self.live_pids(name)))}")
                killed = stop(records)
                if killed:
                    self._progress(f"{name}: had to SIGKILL {killed}")
            self._records_path(name).unlink(missing_ok=True)
            if purge:
                self.service(name).purge()
            statuses.append(self._status_one(name, probe=False))
        return list(reversed(statuses))
