"""Spark standalone master and one worker, started with ``spark-class``.

The pyspark package is a complete SPARK_HOME except for ``sbin/``: there are no
``start-master.sh``/``start-worker.sh`` scripts, so the daemons are started the way those
scripts would, with ``bin/spark-class`` and the daemon's main class.

The REST submission server is always off. In the secure profile master, worker and every
application share a secret (``spark.authenticate``) and encrypt their RPC traffic
(``spark.network.crypto.enabled``): a driver without the secret cannot register with the
master. The daemons get the secret in Spark's own ``_SPARK_AUTH_SECRET`` variable, never on
a command line; drivers get it from :func:`tierflow.spark.spark_auth` (a properties file
of mode 0600).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tierflow.config.services import SparkServiceConfig
from tierflow.jvm import java_executable, spark_home
from tierflow.services.base import Command, LocalService, ProbeFailedError


class SparkStandaloneService(LocalService):
    """Master and worker, each bound to loopback, UIs included."""

    name = "spark"

    @property
    def _cfg(self) -> SparkServiceConfig:
        return self.config.spark

    def ports(self) -> dict[str, int]:
        """RPC and web UI ports of master and worker."""
        cfg = self._cfg
        return {
            "spark.master_port": cfg.master_port,
            "spark.master_ui_port": cfg.master_ui_port,
            "spark.worker_port": cfg.worker_port,
            "spark.worker_ui_port": cfg.worker_ui_port,
        }

    @property
    def master_url(self) -> str:
        """``spark://host:port`` to pass as ``--master``."""
        return f"spark://{self.host}:{self._cfg.master_port}"

    @property
    def master_ui(self) -> str:
        """The master's web UI (its ``/json/`` answers the health probe)."""
        return f"http://{self.host}:{self._cfg.master_ui_port}"

    def _env(self) -> dict[str, str]:
        home = spark_home()
        return {
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": self.host,
            "SPARK_PUBLIC_DNS": self.host,
            "SPARK_LOG_DIR": str(self.logs),
            "SPARK_WORKER_DIR": str(self.data / "work"),
            "SPARK_DAEMON_MEMORY": self._cfg.daemon_memory,
            "SPARK_NO_DAEMONIZE": "1",
            # The REST submission server accepts unauthenticated job submissions: off.
            "SPARK_MASTER_OPTS": f"-Dspark.master.rest.enabled=false {self._auth_opts()}".strip(),
            "SPARK_WORKER_OPTS": self._auth_opts(),
            "JAVA_HOME": str(_java_home()),
        }

    def _auth_opts(self) -> str:
        if not self.secure:
            return ""
        return "-Dspark.authenticate=true -Dspark.network.crypto.enabled=true"

    def client_env(self) -> dict[str, str]:
        """Secure profile: where drivers find the shared secret (a ``*_FILE`` variable)."""
        if not self.secure:
            return {}
        return {"TIERFLOW_SPARK_AUTH_SECRET_FILE": str(self.credentials.password_file("spark"))}

    def commands(self) -> list[Command]:
        """``spark-class ...Master`` then ``spark-class ...Worker``."""
        cfg = self._cfg
        spark_class = str(spark_home() / "bin" / "spark-class")
        env = self._env()
        if self.secure:
            # Spark's daemons read the shared secret from this variable (not argv).
            env["_SPARK_AUTH_SECRET"] = self.credentials.password("spark")
        master = (
            spark_class, "org.apache.spark.deploy.master.Master",
            "--host", self.host, "--port", str(cfg.master_port),
            "--webui-port", str(cfg.master_ui_port),
        )  # fmt: skip
        worker = (
            spark_class, "org.apache.spark.deploy.worker.Worker",
            "--host", self.host, "--port", str(cfg.worker_port),
            "--webui-port", str(cfg.worker_ui_port),
            "--cores", str(cfg.worker_cores), "--memory", cfg.worker_memory,
            "--work-dir", str(self.data / "work"),
            self.master_url,
        )  # fmt: skip
        return [Command("master", master, env), Command("worker", worker, env)]

    def probe(self) -> str:
        """The master UI's JSON says ALIVE with at least one alive worker."""
        try:
            with urllib.request.urlopen(f"{self.master_ui}/json/", timeout=3) as resp:  # noqa: S310
                state = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ProbeFailedError(f"master UI {self.master_ui} did not answer: {exc}") from exc
        if state.get("status") != "ALIVE":
            raise ProbeFailedError(f"master status is {state.get('status')!r}")
        workers = int(state.get("aliveworkers", 0))
        if workers < 1:
            raise ProbeFailedError("master is ALIVE but no worker has registered yet")
        return f"master ALIVE, {workers} worker(s), {state.get('cores')} core(s)"

    def endpoints(self) -> dict[str, str]:
        """Master URL and web UI."""
        return {"master": self.master_url, "ui": self.master_ui}


def _java_home() -> str:
    from pathlib import Path

    # spark-class looks for $JAVA_HOME/bin/java first; resolve the java on PATH to its home.
    return str(Path(java_executable()).resolve().parent.parent)
