"""Dask distributed scheduler and one worker (with its nanny), on loopback."""

from __future__ import annotations

import sys

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
    def address(self) -> str:
        """The scheduler address clients connect to."""
        return f"tcp://{self.host}:{self._cfg.scheduler_port}"

    def commands(self) -> list[Command]:
        """Scheduler first; the worker retries until the scheduler answers."""
        cfg = self._cfg
        # Dask reads DASK_* variables as config; keep its temporary files in our folder.
        env = {"DASK_TEMPORARY_DIRECTORY": str(self.data / "tmp")}
        scheduler = (
            sys.executable, "-m", "distributed.cli.dask_scheduler",
            "--host", self.host, "--port", str(cfg.scheduler_port),
            "--dashboard-address", f"{self.host}:{cfg.dashboard_port}",
        )  # fmt: skip
        worker = (
            sys.executable, "-m", "distributed.cli.dask_worker", self.address,
            "--host", self.host,
            "--worker-port", str(cfg.worker_port), "--nanny-port", str(cfg.nanny_port),
            "--nworkers", "1", "--nthreads", str(cfg.nthreads),
            "--memory-limit", cfg.memory_limit,
            "--local-directory", str(self.data / "worker"),
            # The worker's HTTP server (health, metrics) binds 0.0.0.0 unless told otherwise.
            "--dashboard-address", f"{self.host}:0",
        )  # fmt: skip
        return [Command("scheduler", scheduler, env), Command("worker", worker, env)]

    def probe(self) -> str:
        """The scheduler answers ``scheduler_info`` and lists at least one worker."""
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - part of the locked set
            raise ProbeFailedError(f"distributed is not installed: {exc}") from exc
        try:
            with Client(self.address, timeout=3, set_as_default=False) as client:  # type: ignore[no-untyped-call]
                info = client.scheduler_info()
        except (OSError, TimeoutError) as exc:
            raise ProbeFailedError(f"scheduler {self.address} did not answer: {exc}") from exc
        workers = info.get("workers", {})
        if not workers:
            raise ProbeFailedError("scheduler answers but no worker has registered yet")
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        return f"scheduler up, {len(workers)} worker(s), {threads} thread(s)"

    def endpoints(self) -> dict[str, str]:
        """Scheduler address and dashboard."""
        return {
            "scheduler": self.address,
            "dashboard": f"http://{self.host}:{self._cfg.dashboard_port}",
        }
