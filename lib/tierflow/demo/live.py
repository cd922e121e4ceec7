"""The demo's live half: December through Kafka into the daemon, parity, and serving.

Everything runs through the product's own entry points, as separate processes: the
feature daemon is ``tierflow stream``, the endpoint is ``tierflow serve --model``. The
demo only produces the events (:func:`tierflow.stream.replay.replay`), watches the
store catch up, and asks questions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tierflow.config.features import FeatureViewConfig
from tierflow.stores.base import OnlineStore
from tierflow.stream.connection import KafkaConnection

TIERFLOW = str(Path(sys.executable).parent / "tierflow")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(url: str, body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback URLs the demo built
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


@dataclass
class Process:
    """A child process of the demo, its output in a log file of the run folder."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], env: Mapping[str, str], log: Path) -> Process:
        """Start ``args`` with ``env`` added to this environment."""
        handle = log.open("wb")
        try:
            popen = subprocess.Popen(
                args, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT
            )
        finally:
            handle.close()
        return cls(name, popen, log)

    def check(self) -> None:
        """Raise if the process has died."""
        code = self.popen.poll()
        if code is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {code}; its output ends:\n{tail}")

    def wait_http(self, url: str, timeout: float) -> Any:
        """Poll ``url`` until it answers 200; returns its JSON."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                return _http(url, timeout=2.0)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name}: {url} did not answer in {timeout} s"
                    ) from None
                time.sleep(0.3)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)


@dataclass
class TopicFeed:
    """The events of one topic for the replay, and the views that read it."""

    topic: str
    views: list[FeatureViewConfig]
    events: Any  # Arrow table in event-time order


def december_feeds(
    data_dir: Path, views: Mapping[str, FeatureViewConfig], start_us: int, end_us: int
) -> list[TopicFeed]:
    """Each topic's events with event times in ``[start_us, end_us)``, from the views' tables."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from tierflow.stream.replay import ordered

    by_topic: dict[str, list[FeatureViewConfig]] = {}
    for view in views.values():
        if view.source.topic:
            by_topic.setdefault(view.source.topic, []).append(view)
    feeds = []
    for topic, readers in sorted(by_topic.items()):
        first = readers[0]
        columns = list(dict.fromkeys(c for v in readers for c in v.source.columns))
        table = DeltaTable(str(data_dir / first.source.path)).to_pyarrow_table(columns=columns)
        times = pc.cast(table[first.event_time], pa.int64())
        table = table.filter(pc.and_(pc.greater_equal(times, start_us), pc.less(times, end_us)))
        events, _ = ordered(table, first.event_time)
        feeds.append(TopicFeed(topic, readers, events))
    return feeds


@dataclass
class StreamOutcome:
    """What the streaming stage measured."""

    events: dict[str, int] = field(default_factory=dict)
    bulk_events: int = 0
    bulk_seconds: float = 0.0
    paced_events: int = 0
    paced_rate: float = 0.0
    freshness: dict[str, Any] = field(default_factory=dict)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Bulk phase: events per second from the first send to the store holding the last."""
        return self.bulk_events / self.bulk_seconds if self.bulk_seconds else 0.0


def _split(events: Any, time_column: str, at_us: int) -> tuple[Any, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    times = pc.cast(events[time_column], pa.int64())
    return events.filter(pc.less(times, at_us)), events.filter(pc.greater_equal(times, at_us))


def run_stream(
    feeds: list[TopicFeed],
    *,
    bootstrap: KafkaConnection,
    prefix: str,
    group: str,
    partitions: int,
    replication_factor: int = 1,
    env: Mapping[str, str],
    store: OnlineStore,
    run_dir: Path,
    paced_from_us: int,
    paced_rate: float,
    say: Callable[[str], None],
) -> StreamOutcome:
    """Replay the feeds into ``tierflow stream`` in two phases, with a restart between.

    1. **bulk**: the events before ``paced_from_us`` at full speed, for throughput (from
       the first send until the store holds the last event);
    2. the daemon is stopped with SIGTERM and a new one started: it resumes from the
       offsets in the store;
    3. **paced**: the rest at ``paced_rate`` events per second per topic, for freshness
       (store-write time minus the record's timestamp) at a rate the daemon keeps up with.
    """
    from tierflow.stream.commands import ensure_topic
    from tierflow.stream.parity import end_offsets, wait_caught_up
    from tierflow.stream.replay import replay

    for feed in feeds:
        ensure_topic(bootstrap, prefix + feed.topic, partitions, replication_factor)
    daemon_env = {**env, "TIERFLOW_STREAM_TOPIC_PREFIX": prefix,
                  "TIERFLOW_STREAM_GROUP_ID": group}  # fmt: skip
    views = [v.name for f in feeds for v in f.views]
    outcome = StreamOutcome()
    phases = [_split(f.events, f.views[0].event_time, paced_from_us) for f in feeds]
    for phase in (0, 1):
        log = run_dir / f"daemon-{phase + 1}.log"
        daemon, port = _start_assigned(
            f"daemon {phase + 1}", views, bootstrap, daemon_env, log,
            wanted=len(feeds) * partitions, say=say,
        )  # fmt: skip
        try:
            began = time.monotonic()
            for feed, parts in zip(feeds, phases, strict=True):
                sent = replay(
                    parts[phase], prefix + feed.topic, bootstrap,
                    keys=list(feed.views[0].entities), time_column=feed.views[0].event_time,
                    rate=paced_rate if phase else None,
                )  # fmt: skip
                outcome.events[feed.topic] = outcome.events.get(feed.topic, 0) + sent.sent
                if phase:
                    outcome.paced_events += sent.sent
                else:
                    outcome.bulk_events += sent.sent
                say(f"{'paced' if phase else 'bulk'}: {sent.sent:,} events to "
                    f"{prefix + feed.topic} ({sent.rate:,.0f}/s)")  # fmt: skip
            for feed in feeds:
                ends = end_offsets(bootstrap, prefix + feed.topic)
                wait_caught_up(store, group, prefix + feed.topic, ends, 600, alive=daemon.check)
            if phase:
                outcome.paced_rate = paced_rate
                outcome.freshness = _http(f"http://127.0.0.1:{port}/health").get("freshness", {})
            else:
                outcome.bulk_seconds = time.monotonic() - began
        finally:
            outcome.exit_codes.append(daemon.stop())
        outcome.summaries.append(_last_summary(daemon.log))
    return outcome


def _start_assigned(
    name: str,
    views: list[str],
    bootstrap: KafkaConnection,
    env: Mapping[str, str],
    log: Path,
    *,
    wanted: int,
    say: Callable[[str], None],
    patience_s: float = 60.0,
) -> tuple[Process, int]:
    """Start ``tierflow stream`` and wait until the group has handed it every partition.

    Waiting keeps the join out of the measurements: the first events would otherwise
    wait for it, which is start-up time, not freshness. A daemon the group has not
    assigned anything within ``patience_s`` is stopped and started once more (a new
    member joins afresh), saying so with what the daemon logged; a second miss is an
    error.
    """
    for attempt in (1, 2):
        port = free_port()
        args = [TIERFLOW, "stream", "--bootstrap", str(bootstrap), "--metrics-port", str(port)]
        args += [a for view in views for a in ("--view", view)]
        attempt_log = log if attempt == 1 else log.with_suffix(".retry.log")
        daemon = Process.start("tierflow stream", args, env, attempt_log)
        try:
            daemon.wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
            deadline = time.monotonic() + patience_s
            assigned: list[str] = []
            while len(assigned) < wanted and time.monotonic() < deadline:
                daemon.check()
                time.sleep(0.2)
                assigned = _http(f"http://127.0.0.1:{port}/health").get("assigned", [])
        except BaseException:
            daemon.stop()
            raise
        if len(assigned) >= wanted:
            say(f"{name} up (pid {daemon.popen.pid}, /metrics and /health on "
                f"127.0.0.1:{port})")  # fmt: skip
            return daemon, port
        daemon.stop()
        tail = " | ".join(attempt_log.read_text(errors="replace").splitlines()[-3:])
        message = (
            f"{name} was assigned {len(assigned)} of {wanted} partitions in "
            f"{patience_s:.0f} s; its log ends: {tail[-600:]}"
        )
        if attempt == 2:
            raise TimeoutError(message)
        say(message + "; starting it again")
    raise AssertionError("unreachable")


def _last_summary(log: Path) -> dict[str, Any]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith('{"summary"'):
            return dict(json.loads(line)["summary"])
    return {}


def check_parity(
    feeds: list[TopicFeed], store: OnlineStore, *, group: str, prefix: str, partitions: int
) -> list[Any]:
    """Each view's online values against batch over the same events."""
    from tierflow.stream.parity import compare, expected_values

    results = []
    for feed in feeds:
        for view in feed.views:
            expected = expected_values(feed.events, view, partitions)
            results.append(compare(store, view, expected, group=group, topic=prefix + feed.topic))
    return results


def upcoming_flights(data_dir: Path, after_us: int, count: int) -> list[dict[str, Any]]:
    """``count`` flights scheduled from ``after_us`` on that departed, spread over the evening."""
    rows = evening_flights(data_dir, after_us)
    if not rows:
        return []
    stride = max(1, len(rows) // count)
    return list(rows[::stride][:count])


def evening_flights(data_dir: Path, after_us: int) -> list[dict[str, Any]]:
    """Every flight scheduled in the six hours from ``after_us`` that departed, in order."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = DeltaTable(str(data_dir / "silver" / "flights")).to_pyarrow_table(
        columns=["flight_id", "carrier", "flight", "origin", "dest", "tailnum", "hour",
                 "distance", "plane_age", "sched_dep_at", "arr_delay", "cancelled"],
    )  # fmt: skip
    times = pc.cast(table["sched_dep_at"], pa.int64())
    day_us = 86_400_000_000
    window = pc.and_(pc.greater_equal(times, after_us), pc.less(times, after_us + day_us // 4))
    table = table.filter(pc.and_(window, pc.is_valid(table["arr_delay"])))
    return list(table.sort_by([("sched_dep_at", "ascending"), ("flight_id", "ascending")])
                .to_pylist())  # fmt: skip


def _request_row(flight: Mapping[str, Any]) -> dict[str, Any]:
    return {"carrier": flight["carrier"], "origin": flight["origin"], "dest": flight["dest"],
            "sched_hour": float(flight["hour"]), "distance": flight["distance"],
            "plane_age": flight["plane_age"]}  # fmt: skip


def serve_predictions(
    flights: list[dict[str, Any]],
    *,
    model: str,
    env: Mapping[str, str],
    run_dir: Path,
    traffic: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Start ``tierflow serve --model``, ask it about ``flights``, stop it.

    ``traffic`` (flights too) is asked about as well, a hundred rows a request, for the
    served log the monitoring stage reads; its answers are not returned.
    """
    port = free_port()
    args = [TIERFLOW, "serve", "--model", model, "--port", str(port)]
    server = Process.start("tierflow serve", args, env, run_dir / "serve.log")
    try:
        server.wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        rows = [_request_row(f) for f in flights]
        answer = _http(f"http://127.0.0.1:{port}/v1/predict/{model}", {"rows": rows})
        for i in range(0, len(traffic), 100):
            batch = [_request_row(f) for f in traffic[i : i + 100]]
            _http(f"http://127.0.0.1:{port}/v1/predict/{model}", {"rows": batch})
    finally:
        server.stop()  # SIGTERM: the server writes what it has left of its served log
    out = []
    for flight, row, prediction in zip(flights, rows, answer["predictions"], strict=True):
        when: datetime = flight["sched_dep_at"]
        out.append({
            "flight": f"{flight['carrier']}{flight['flight']}",
            "route": f"{flight['origin']}-{flight['dest']}",
            "scheduled": when.strftime("%Y-%m-%d %H:%M"),
            "score": prediction["score"],
            "carrier_delay_1h": prediction["features"].get("carrier_delays__dep_delay_mean_1h"),
            "origin_delay_1h": prediction["features"].get("origin_delays__dep_delay_mean_1h"),
            "arr_delay": flight["arr_delay"],
            # What was asked and what the server read from the store: batch scoring of
            # these feature rows must give the same scores (tested).
            "request": row,
            "features": prediction["features"],
        })  # fmt: skip
    return out
