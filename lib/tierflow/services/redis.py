"""Redis from Debian's redis-server package, on loopback with append-only persistence.

In the secure profile the server reads a config file (mode 0600) with ACL users: the
``default`` user is off, so a client that does not log in can run no command at all, and
the ``tierflow`` user's password is a generated credential, never on a command line.
"""

from __future__ import annotations

from pathlib import Path

from tierflow.secrets import write_secret_file
from tierflow.services.base import Command, LocalService, ProbeFailedError, require_executable
from tierflow.services.credentials import REDIS_USER, redis_acl_lines


class RedisService(LocalService):
    """One redis-server in the foreground."""

    name = "redis"
    startup_timeout = 30.0

    def ports(self) -> dict[str, int]:
        """The client port."""
        return {"redis.port": self.config.redis.port}

    @property
    def url(self) -> str:
        """``redis://[user@]host:port/0`` (never with a password)."""
        user = f"{REDIS_USER}@" if self.secure else ""
        return f"redis://{user}{self.host}:{self.config.redis.port}/0"

    @property
    def _conf_file(self) -> Path:
        return self.home / "config" / "redis.conf"

    def _settings(self) -> list[tuple[str, str]]:
        cfg = self.config.redis
        return [
            ("bind", self.host),
            ("port", str(cfg.port)),
            ("protected-mode", "yes"),
            ("daemonize", "no"),
            ("dir", str(self.data)),
            ("save", '""'),
            ("appendonly", "yes"),
            ("maxmemory", cfg.maxmemory),
            ("logfile", '""'),
        ]

    def prepare(self) -> None:
        """Write the config file; in the secure profile it holds the ACL users."""
        super().prepare()
        lines = [f"{key} {value}" for key, value in self._settings()]
        if self.secure:
            lines += redis_acl_lines(self.credentials.password("redis-tierflow")).splitlines()
        write_secret_file(self._conf_file, "\n".join(lines) + "\n")

    def commands(self) -> list[Command]:
        """``redis-server`` with the written config file."""
        server = require_executable(
            "redis-server", "install it with `make setup` (apt-get install redis-server)"
        )
        return [Command("redis-server", (server, str(self._conf_file)))]

    def client_password(self) -> str | None:
        """The ``tierflow`` user's password (secure profile), for the probe and tests."""
        return self.credentials.password("redis-tierflow") if self.secure else None

    def probe(self) -> str:
        """PING answered with PONG (as the ``tierflow`` user in the secure profile)."""
        import redis

        client = redis.Redis.from_url(
            self.url, password=self.client_password(), socket_timeout=2, socket_connect_timeout=2
        )
        try:
            if not client.ping():
                raise ProbeFailedError("PING did not return PONG")
            version = client.info("server").get("redis_version", "?")
        except redis.RedisError as exc:
            raise ProbeFailedError(f"PING failed: {exc}") from exc
        finally:
            client.close()
        return f"PONG from redis {version}"

    def endpoints(self) -> dict[str, str]:
        """The Redis URL."""
        return {"url": self.url}

    def client_env(self) -> dict[str, str]:
        """The URL, and in the secure profile the password file."""
        env = {"TIERFLOW_REDIS_URL": self.url}
        if self.secure:
            env["TIERFLOW_REDIS_PASSWORD_FILE"] = str(
                self.credentials.password_file("redis-tierflow")
            )
        return env
