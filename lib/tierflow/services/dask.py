"""Dask distributed scheduler and one worker (with its nanny), on loopback.

In the secure profile every Dask connection is mutual TLS (``tls://``), with encryption
required: the scheduler only talks to peers that present a certificate of the private CA,
so a client without one cannot submit work. Dask reads the certificate paths from its
own ``DASK_DISTRIBUTED__COMM__TLS__*`` variables, which :meth:`client_env` gives clients.
"""

from __future__ import annotations

import sys
from typing import Any

from tierflow.config.services import DaskServiceConfig
from tierflow.services.base import Command, LocalService, ProbeFailedError


class DaskService(LocalService):
    """``dask scheduler`` and ``dask worker``, run from this interpreter's environment."""

    name = "dask"
    startup_timeout = 60.0

    @property
    def _cfg(self) -> DaskServiceConfig:
        return self.config.dask

    def ports(self) -> dict[str, int]:
        """Scheduler, dashboard, worker and nanny ports."""
        cfg = self._cfg
        return {
            "dask.scheduler_port": cfg.scheduler_port,
            "dask.dashboard_port": cfg.dashboard_port,
            "dask.worker_port": cfg.worker_port,
            "dask.nanny_port": cfg.nanny_port,
        }

    @property
    def protocol(self) -> str:
        """``tls`` in the secure profile, else ``tcp``."""
        return "tls" if self.secure else "tcp"

    @property
    def address(self) -> str:
        """The scheduler address clients connect to."""
        return f"{self.protocol}://{self.host}:{self._cfg.scheduler_port}"

    def _tls_env(self, role: str) -> dict[str, str]:
        if not self.secure:
            return {}
        creds = self.credentials
        prefix = "DASK_DISTRIBUTED__COMM__"
        # Scheduler, workers and nannies present the services' certificate, clients theirs.
        cert, key = (
            (creds.client_cert, creds.client_key)
            if role == "CLIENT"
            else (creds.server_cert, creds.server_key)
        )
        return {
            f"{prefix}REQUIRE_ENCRYPTION": "True",
            f"{prefix}TLS__CA_FILE": str(creds.ca_cert),
            f"{prefix}TLS__{role}__CERT": str(cert),
            f"{prefix}TLS__{role}__KEY": str(key),
        }

    def client_env(self) -> dict[str, str]:
        """The client certificate in the secure profile (Dask's own config variables)."""
        return self._tls_env("CLIENT")

    def commands(self) -> list[Command]:
        """Scheduler first; the worker retries until the scheduler answers."""
        cfg = self._cfg
        # Dask reads DASK_* variables as config; keep its temporary files in our folder.
        env = {"DASK_TEMPORARY_DIRECTORY": str(self.data / "tmp")}
        scheduler = (
            sys.executable, "-m", "distributed.cli.dask_scheduler",
            "--protocol", self.protocol,
            "--host", self.host, "--port", str(cfg.scheduler_port),
            "--dashboard-address", f"{self.host}:{cfg.dashboard_port}",
        )  # fmt: skip
        worker = (
            sys.executable, "-m", "distributed.cli.dask_worker", self.address,
            "--host", self.host, "--protocol", self.protocol,
            "--worker-port", str(cfg.worker_port), "--nanny-port", str(cfg.nanny_port),
            "--nworkers", "1", "--nthreads", str(cfg.nthreads),
            "--memory-limit", cfg.memory_limit,
            "--local-directory", str(self.data / "worker"),
            # The worker's HTTP server (health, metrics) binds 0.0.0.0 unless told otherwise.
            "--dashboard-address", f"{self.host}:0",
        )  # fmt: skip
        return [
            Command("scheduler", scheduler, env | self._tls_env("SCHEDULER")),
            Command("worker", worker, env | self._tls_env("WORKER")),
        ]

    def probe(self) -> str:
        """The scheduler answers ``scheduler_info`` and lists at least one worker."""
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - part of the locked set
            raise ProbeFailedError(f"distributed is not installed: {exc}") from exc
        try:
            with Client(  # type: ignore[no-untyped-call]
                self.address, timeout=3, set_as_default=False, security=self.client_security()
            ) as client:
                info = client.scheduler_info()
        except (OSError, TimeoutError) as exc:
            raise ProbeFailedError(f"scheduler {self.address} did not answer: {exc}") from exc
        workers = info.get("workers", {})
        if not workers:
            raise ProbeFailedError("scheduler answers but no worker has registered yet")
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        return f"scheduler up, {len(workers)} worker(s), {threads} thread(s)"

    def client_security(self) -> Any:
        """A ``distributed.Security`` with the client certificate (None outside secure)."""
        if not self.secure:
            return None
        from distributed import Security

        creds = self.credentials
        return Security(  # type: ignore[no-untyped-call]
            tls_ca_file=str(creds.ca_cert),
            tls_client_cert=str(creds.client_cert),
            tls_client_key=str(creds.client_key),
            require_encryption=True,
        )

    def endpoints(self) -> dict[str, str]:
        """Scheduler address and dashboard."""
        return {
            "scheduler": self.address,
            "dashboard": f"http://{self.host}:{self._cfg.dashboard_port}",
        }
