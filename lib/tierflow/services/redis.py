"""Redis from Debian's redis-server package, on loopback with append-only persistence."""

from __future__ import annotations

from tierflow.services.base import Command, LocalService, ProbeFailedError, require_executable


class RedisService(LocalService):
    """One redis-server in the foreground."""

    name = "redis"
    startup_timeout = 30.0

    def ports(self) -> dict[str, int]:
        """The client port."""
        return {"redis.port": self.config.redis.port}

    @property
    def url(self) -> str:
        """``redis://host:port/0``."""
        return f"redis://{self.host}:{self.config.redis.port}/0"

    def commands(self) -> list[Command]:
        """``redis-server`` with its options on the command line (no config file to drift)."""
        server = require_executable(
            "redis-server", "install it with `make setup` (apt-get install redis-server)"
        )
        cfg = self.config.redis
        argv = (
            server,
            "--bind", self.host,
            "--port", str(cfg.port),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.data),
            "--save", "",
            "--appendonly", "yes",
            "--maxmemory", cfg.maxmemory,
            "--logfile", "",
        )  # fmt: skip
        return [Command("redis-server", argv)]

    def probe(self) -> str:
        """PING answered with PONG."""
        import redis

        client = redis.Redis(
            host=self.host, port=self.config.redis.port, socket_timeout=2, socket_connect_timeout=2
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
