"""The contract every local service implements, and the checks they share.

A service says which ports it needs, how to prepare its folder, which long-running
commands to start (in order), how to ask it whether it answers, and what a client needs
to reach it. Starting, stopping and waiting live in :mod:`tierflow.services.manager`.
"""

from __future__ import annotations

import shutil
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tierflow.config.services import ServicesConfig
from tierflow.errors import MissingDependencyError, PortInUseError
from tierflow.paths import ProjectPaths
from tierflow.services.credentials import ServiceCredentials


@dataclass(frozen=True)
class Command:
    """One long-running process of a service."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class ProbeFailedError(Exception):
    """The service did not answer the health probe (yet)."""


class LocalService(ABC):
    """A service tierflow runs on this machine, bound to loopback."""

    name: ClassVar[str]
    #: Seconds to wait for the first healthy answer after start.
    startup_timeout: ClassVar[float] = 90.0

    def __init__(self, config: ServicesConfig, paths: ProjectPaths) -> None:
        self.config = config
        self.paths = paths

    @property
    def home(self) -> Path:
        """The service's folder: data, logs, process records."""
        return self.paths.service_dir(self.name)

    @property
    def logs(self) -> Path:
        """The folder of the service's log files."""
        return self.home / "logs"

    @property
    def data(self) -> Path:
        """The folder of the service's persistent data."""
        return self.home / "data"

    @property
    def secure(self) -> bool:
        """Whether the service runs with authentication and encryption (secure profile)."""
        return self.config.secure

    @property
    def credentials(self) -> ServiceCredentials:
        """The secure profile's CA, certificates and passwords (shared by all services)."""
        return ServiceCredentials(self.paths.state / "credentials")

    def prepare_credentials(self) -> None:
        """Create the credentials on first use (the secure profile only)."""
        if self.secure:
            self.credentials.ensure(self.host)

    @property
    def host(self) -> str:
        """The loopback address every listener binds."""
        return self.config.host

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Ports the service listens on, keyed by their config path."""

    def prepare(self) -> None:
        """Create files the service needs before its first start (default: folders only)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        self.prepare_credentials()

    @abstractmethod
    def commands(self) -> list[Command]:
        """The processes to start, in order."""

    @abstractmethod
    def probe(self) -> str:
        """Ask the service whether it answers.

        Returns:
            A one-line description of what answered.

        Raises:
            ProbeFailedError: it does not answer (yet).
        """

    @abstractmethod
    def endpoints(self) -> dict[str, str]:
        """Addresses a client uses, by name."""

    def after_start(self) -> None:  # noqa: B027 - optional hook, most services need none
        """Set up what needs the running service (Kafka's ACLs); default: nothing."""

    def client_env(self) -> dict[str, str]:
        """Environment variables a client process needs (default: none)."""
        return {}

    def purge(self) -> None:
        """Delete the service's data and logs (only while it is stopped)."""
        shutil.rmtree(self.home, ignore_errors=True)


def require_executable(name: str, install_hint: str) -> str:
    """Return the path of executable ``name`` or fail with how to install it."""
    path = shutil.which(name)
    if path is None:
        raise MissingDependencyError(f"`{name}` was not found on PATH; {install_hint}")
    return path


def check_port_free(host: str, port: int, key: str) -> None:
    """Fail with a clear message when ``host:port`` is already bound by someone.

    SO_REUSEADDR mirrors what the servers themselves set, so a port that merely has
    connections in TIME_WAIT is not reported as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {port} ({key}) on {host} is already in use ({exc.strerror}); "
                f"stop whatever holds it or set {key} in conf/services.yaml"
            ) from None


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
