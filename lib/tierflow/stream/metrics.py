"""Prometheus metrics, a health endpoint and structured (JSON) logs for the daemons."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StreamMetrics:
    """The daemon's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "tierflow_stream_events", "Events applied (valid, not late)", ["topic"], registry=r
        )
        self.events_per_second = Gauge(
            "tierflow_stream_events_per_second",
            "Events consumed per second (last 10 s)",
            registry=r,
        )
        self.lag = Gauge(
            "tierflow_stream_consumer_lag",
            "Messages behind the partition's end",
            ["topic", "partition"],
            registry=r,
        )
        self.freshness = Histogram(
            "tierflow_stream_freshness_seconds",
            "Store write time minus the event's Kafka record timestamp",
            registry=r,
            buckets=_FRESHNESS_BUCKETS,
        )
        self.late = Counter(
            "tierflow_stream_late_events",
            "Events beyond the allowed lateness",
            ["view"],
            registry=r,
        )
        self.dead_letters = Counter(
            "tierflow_stream_dead_letters",
            "Messages sent to the dead-letter topic",
            ["topic", "kind"],
            registry=r,
        )
        self.skipped = Counter(
            "tierflow_stream_replays_skipped",
            "Messages at or below the store's offset, skipped (already applied)",
            ["topic"],
            registry=r,
        )
        self.store_write = Histogram(
            "tierflow_stream_store_write_seconds",
            "Latency of one partition commit",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.rows_written = Counter(
            "tierflow_stream_rows_written", "Online rows applied", ["view"], registry=r
        )
        self.stale_commits = Counter(
            "tierflow_stream_stale_commits",
            "Commits refused because another consumer moved on",
            registry=r,
        )
        self._recent: deque[tuple[float, int]] = deque()
        # Raw freshness of the latest events, for exact percentiles in /health.
        self.freshness_samples: deque[float] = deque(maxlen=100_000)

    def consumed(self, count: int) -> None:
        """Record ``count`` consumed messages for the events/s gauge."""
        now = time.monotonic()
        self._recent.append((now, count))
        while self._recent and self._recent[0][0] < now - 10:
            self._recent.popleft()
        span = max(now - self._recent[0][0], 1.0) if self._recent else 1.0
        self.events_per_second.set(sum(c for _, c in self._recent) / span)

    def observe_freshness(self, seconds: float) -> None:
        """One event's store-write time minus its record timestamp."""
        self.freshness.observe(seconds)
        self.freshness_samples.append(seconds)

    def freshness_percentiles(self) -> dict[str, float | None]:
        """p50 and p99 freshness (ms) of the latest events."""
        if not self.freshness_samples:
            return {"p50_ms": None, "p99_ms": None}
        ordered = sorted(self.freshness_samples)

        def pick(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        return {"p50_ms": pick(0.50), "p99_ms": pick(0.99)}

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)


class OpsServer:
    """``/metrics`` (Prometheus) and ``/health`` (JSON) on a loopback port, in a thread."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: StreamMetrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, status, kind = owner.metrics.exposition(), 200, CONTENT_TYPE_LATEST
                elif self.path == "/health":
                    ok, detail = owner.health()
                    body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
                    status, kind = (200 if ok else 503), "application/json"
                else:
                    body, status, kind = b'{"error": "not found"}', 404, "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return  # requests are not worth a log line each

        self.metrics = metrics
        self.health = health
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_logging(level: int = logging.INFO) -> None:
    """Route the ``tierflow`` loggers, and the Kafka client's warnings, to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tierflow")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    # The Kafka client's own warnings (a coordinator lost, a join refused) belong in the
    # same log: they are what explains a daemon that waits.
    client = logging.getLogger("kafka")
    client.handlers[:] = [handler]
    client.setLevel(max(level, logging.WARNING))
    client.propagate = False
    # Its group membership at info too (a few lines per rebalance): a member that joined
    # and was given no partitions, or one still joining, is told apart from a stuck one.
    for name in ("kafka.coordinator", "kafka.consumer.subscription_state"):
        logging.getLogger(name).setLevel(level)
