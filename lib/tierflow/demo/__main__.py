"""``python -m tierflow.demo [--scale N] [--online-store sqlite|redis] [--fresh]`` (``make demo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tierflow.config.services import load_services_config
from tierflow.config.streaming import load_streaming_config
from tierflow.demo.pipeline import Demo, DemoOptions, KafkaAccess, load_demo_config
from tierflow.project import Project
from tierflow.services.kafka import KafkaService
from tierflow.services.manager import ServiceManager
from tierflow.services.redis import RedisService
from tierflow.stream.connection import KafkaConnection

#: The Redis database the demo owns (emptied at the start of each run that uses Redis),
#: so that an earlier run's values never meet this one's.
DEMO_REDIS_DB = 15


class DemoServices:
    """Kafka (and Redis) for the live stages: started when needed, stopped if we started them.

    When the streaming settings name a Kafka cluster (``bootstrap_servers``, as the
    ``cluster`` profile does), the demo uses that cluster and the configured Redis and
    starts nothing.
    """

    def __init__(self, project: Project, store: str) -> None:
        self.project = project
        self.streaming = load_streaming_config(project.paths.settings("streaming.yaml"))
        self.external = self.streaming.bootstrap_servers is not None
        config = load_services_config(None, project.paths.settings("services.yaml"))
        self.manager = ServiceManager(
            config, project.paths, progress=lambda m: print(f"   {m}", flush=True)
        )
        self.wanted = ["kafka", *(["redis"] if store == "redis" else [])]
        self.store = store
        self.started: list[str] = []
        self.up = False

    def __enter__(self) -> DemoServices:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.started:
            print(f"\n== Stopping the services this demo started: {', '.join(self.started)}")
            self.manager.down(self.started)

    def _up(self) -> None:
        if self.up or self.external:
            return
        running = {s.name for s in self.manager.status(self.wanted, probe=False)
                   if s.state != "stopped"}  # fmt: skip
        secure = " (secure profile)" if self.manager.config.secure else ""
        print(f"   local services: {', '.join(self.wanted)} on 127.0.0.1{secure}", flush=True)
        self.manager.up(self.wanted)
        self.started = [n for n in self.wanted if n not in running]
        self.up = True

    def kafka(self) -> KafkaAccess:
        """How the demo and its daemons reach Kafka (starting it if needed)."""
        if self.streaming.bootstrap_servers is not None:
            # The daemons read the same settings (profile and environment) themselves.
            servers = self.streaming.bootstrap_servers
            return KafkaAccess(
                KafkaConnection.from_config(servers, self.streaming),
                {},
                self.streaming.topic_replication_factor,
            )
        self._up()
        service = self.manager.service("kafka")
        assert isinstance(service, KafkaService)
        return KafkaAccess(service.connection(), service.client_env(), 1)

    def store_env(self, run_dir: Path) -> dict[str, str]:
        """The environment that points the daemon, the server and the demo at one store."""
        if self.store == "sqlite":
            return {
                "TIERFLOW_ONLINE_STORE": "sqlite",
                "TIERFLOW_ONLINE_DB": str(run_dir / "online.db"),
            }
        import redis

        if self.external:
            from tierflow.secrets import read_secret

            url = self.project.config.online_store.url.rsplit("/", 1)[0] + f"/{DEMO_REDIS_DB}"
            secret = read_secret("redis_password")
            password = secret.get_secret_value() if secret else None
            client: Any = redis.Redis.from_url(url, password=password)
            client.flushdb()
            client.close()
            return {"TIERFLOW_ONLINE_STORE": "redis", "TIERFLOW_REDIS_URL": url}
        self._up()
        service = self.manager.service("redis")
        assert isinstance(service, RedisService)
        base = service.url.rsplit("/", 1)[0]
        url = f"{base}/{DEMO_REDIS_DB}"
        client = redis.Redis.from_url(url, password=service.client_password())
        client.flushdb()
        client.close()
        return service.client_env() | {"TIERFLOW_ONLINE_STORE": "redis", "TIERFLOW_REDIS_URL": url}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options and run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tierflow.demo", description=__doc__)
    parser.add_argument("--scale", type=int, default=1,
                        help="years of flights: 2013 and N-1 time-shifted copies")  # fmt: skip
    parser.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--fresh", action="store_true", help="recompute every stage")
    parser.add_argument("--data-dir", help="data folder (default: conf/tierflow.yaml's)")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error(f"--scale must be at least 1, not {args.scale}")
    project = Project.load(data_dir=args.data_dir)
    demo = Demo(project, load_demo_config(project),
                DemoOptions(args.scale, args.online_store, args.fresh))  # fmt: skip
    print(f"tierflow demo {demo.run_id}: NYC flights 2013, scale {args.scale}, "
          f"online store {args.online_store}; data in {project.data_dir}")  # fmt: skip
    with DemoServices(project, args.online_store) as services:
        return demo.run(services)


if __name__ == "__main__":
    sys.exit(main())
