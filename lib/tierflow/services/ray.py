"""Ray head node with token authentication, every listener on loopback.

``ray start --head --block`` stays in the foreground as the session leader and, on
SIGTERM, drains the node and stops the processes it spawned, so stopping it by PID is
enough; the manager sweeps its session afterwards for anything left.

Ray listens on the address it picks as node IP; outside a private network namespace it
may pick the machine's external address even when told 127.0.0.1. ``make test`` and the
benchmarks therefore run inside a namespace that holds only loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tierflow.config.services import RayServiceConfig
from tierflow.services.base import Command, LocalService, ProbeFailedError, port_answers

# Ray puts unix sockets under <temp>/session_<date>_<time>_<micros>_<pid>/sockets/<name>;
# the kernel limits a socket path to 107 bytes. The session part takes up to 43 bytes
# (7-digit pids), "/sockets/" 9, and the longest names (dashboard modules such as
# dash_MetricsHead) about 25, which leaves 30 for <temp>.
_MAX_TEMP_DIR = 30

_PROBE = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps(ray.cluster_resources()))
"""


class RayHeadService(LocalService):
    """A Ray head node; clients need :meth:`client_env` (auth mode and token path)."""

    name = "ray"
    startup_timeout = 120.0

    @property
    def _cfg(self) -> RayServiceConfig:
        return self.config.ray

    def ports(self) -> dict[str, int]:
        """Every fixed port of the head node (worker ports are a range of their own)."""
        return {
            f"ray.{k}": v
            for k, v in self._cfg.model_dump().items()
            if k.endswith("_port") and k not in ("min_worker_port", "max_worker_port")
        } | {"ray.port": self._cfg.port}

    @property
    def address(self) -> str:
        """GCS address, for ``ray.init(address=...)``."""
        return f"{self.host}:{self._cfg.port}"

    @property
    def dashboard_url(self) -> str:
        """Dashboard and job submission API, for ``ray job submit --address``."""
        return f"http://{self.host}:{self._cfg.dashboard_port}"

    @property
    def token_path(self) -> Path:
        """The authentication token file (mode 0600) clients present."""
        return self.home / "auth_token"

    @property
    def temp_dir(self) -> Path:
        """Ray's session folder: in the project if the path is short enough, else in /tmp."""
        inside = self.home / "tmp"
        if len(str(inside)) <= _MAX_TEMP_DIR:
            return inside
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"tierflow-ray-{digest}"

    def prepare(self) -> None:
        """Create the token once, and link the session folder into the project if elsewhere."""
        super().prepare()
        if not self.token_path.exists():
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        link = self.home / "tmp"
        if self.temp_dir != link and not link.exists():
            link.symlink_to(self.temp_dir, target_is_directory=True)

    def purge(self) -> None:
        """Delete the session folder too when it lives outside the project."""
        if self.temp_dir != self.home / "tmp":
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        super().purge()

    def client_env(self) -> dict[str, str]:
        """What a driver, ``ray job submit`` or a worker process needs to be let in."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray's single-machine mode: node IP resolves to loopback instead of the address
            # Ray would pick for other machines to reach (as on Windows and macOS).
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_ADDRESS": self.address,
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
        }

    def commands(self) -> list[Command]:
        """``ray start --head --block`` with all ports pinned to the configured ones."""
        cfg = self._cfg
        ray_cli = str(Path(sys.executable).parent / "ray")
        env = self.client_env()
        env.pop("RAY_ADDRESS")  # the head must not try to join an existing cluster
        # On SIGTERM the head drains first, for Serve replicas to move away; none run here,
        # and the drain waits its whole 30 s on the detached actors Ray Data and Ray Train
        # leave behind. Stopping takes 2 s instead.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        argv = (
            ray_cli, "start", "--head", "--block",
            "--node-ip-address", self.host,
            "--port", str(cfg.port),
            "--ray-client-server-port", str(cfg.client_server_port),
            "--dashboard-host", self.host,
            "--dashboard-port", str(cfg.dashboard_port),
            "--dashboard-agent-listen-port", str(cfg.dashboard_agent_listen_port),
            "--dashboard-agent-grpc-port", str(cfg.dashboard_agent_grpc_port),
            "--runtime-env-agent-port", str(cfg.runtime_env_agent_port),
            "--metrics-export-port", str(cfg.metrics_export_port),
            "--node-manager-port", str(cfg.node_manager_port),
            "--object-manager-port", str(cfg.object_manager_port),
            "--min-worker-port", str(cfg.min_worker_port),
            "--max-worker-port", str(cfg.max_worker_port),
            "--num-cpus", str(cfg.num_cpus),
            "--object-store-memory", str(cfg.object_store_memory_mb * 1024 * 1024),
            "--temp-dir", str(self.temp_dir),
            "--include-dashboard", "true",
            "--disable-usage-stats",
        )  # fmt: skip
        return [Command("head", argv, env)]

    def probe(self) -> str:
        """A driver connects with the token and reads the cluster resources."""
        # Cheap checks first: a driver that cannot reach the GCS retries for a long time.
        for key in ("port", "dashboard_port"):
            if not port_answers(self.host, getattr(self._cfg, key)):
                raise ProbeFailedError(f"ray.{key} {getattr(self._cfg, key)} is not listening yet")
        env = dict(os.environ) | self.client_env()
        try:
            result = subprocess.run(
                [sys.executable, "-c", _PROBE, self.address],
                capture_output=True, text=True, timeout=60, env=env, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise ProbeFailedError("ray.init did not connect within 60s") from exc
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ProbeFailedError(f"ray.init failed: {last}")
        resources = json.loads(lines[-1])
        if resources.get("CPU", 0) < 1:
            raise ProbeFailedError(f"cluster has no CPU yet: {resources}")
        return f"CPU={resources['CPU']:g}, memory={resources.get('memory', 0) / 2**30:.1f} GiB"

    def endpoints(self) -> dict[str, str]:
        """GCS address, dashboard/job API, token file."""
        return {
            "address": self.address,
            "dashboard": self.dashboard_url,
            "client": f"ray://{self.host}:{self._cfg.client_server_port}",
            "token_file": str(self.token_path),
        }
