"""Online stores, serving and materialization against the real services.

Redis and SQLite return the same values; the HTTP endpoint serves them with 4xx for bad
requests; a materialization killed with SIGKILL and started again ends equal to an
uninterrupted one, a second run changes nothing, and memory follows the chunk size.
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
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support import project_for
from tierflow.engines import create_engine
from tierflow.examples.flights import write_flights
from tierflow.features.materialize import materialize
from tierflow.features.online import FeatureRequestError, UnknownViewError, get_online_features
from tierflow.stores.base import OnlineRow
from tierflow.stores.redis_store import RedisOnlineStore
from tierflow.stores.sqlite_store import SQLiteOnlineStore

PROJECT = Path(__file__).resolve().parents[2]
TIERFLOW = str(Path(sys.executable).parent / "tierflow")
END = "2013-01-25T10:30:00Z"
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    data = tmp_path_factory.mktemp("online") / "data"
    write_flights(data, months=(1,))
    return data


def dump_sqlite(path: Path, view: str) -> dict[str, tuple[int, str]]:
    import sqlite3

    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT entity, window_end, payload FROM online_features WHERE view = ?", (view,)
        ).fetchall()
    return {entity: (window_end, payload) for entity, window_end, payload in rows}


@pytest.mark.redis
def test_redis_and_sqlite_hold_and_return_the_same_values(
    flights, tmp_path, redis_url, unique_name
):
    project = project_for(flights)
    views = project.feature_views()
    engine = create_engine("single")
    end = datetime(2013, 1, 25, 10, 30, tzinfo=timezone.utc)
    redis_store = RedisOnlineStore(redis_url)
    sqlite_store = SQLiteOnlineStore(tmp_path / "online.db")
    names = ["carrier_delays", "route_history"]
    for name in names:
        redis_store.clear(name)
        for store in (redis_store, sqlite_store):
            materialize(
                views[name],
                project.view_source(views[name]),
                engine,
                store,
                end=end,
                chunk_rows=5_000,
            )
    carriers = [{"carrier": c} for c in ("AA", "UA", "DL", "B6", "EV", "XX")]
    from_redis = get_online_features(redis_store, views, ["carrier_delays"], carriers)
    from_sqlite = get_online_features(sqlite_store, views, ["carrier_delays"], carriers)
    assert from_redis == from_sqlite
    assert from_redis[0]["carrier_delays__departures_24h"] > 0
    assert from_redis[-1]["carrier_delays__departures_24h"] == 0  # unknown carrier: empty
    assert from_redis[-1]["carrier_delays__window_end_us"] is None
    routes = [{"origin": "JFK", "dest": "LAX"}, {"origin": "EWR", "dest": "ORD"}]
    both = get_online_features(
        redis_store,
        views,
        ["carrier_delays", "route_history"],
        [r | {"carrier": "AA"} for r in routes],
    )
    assert both == get_online_features(
        sqlite_store,
        views,
        ["carrier_delays", "route_history"],
        [r | {"carrier": "AA"} for r in routes],
    )
    assert both[0]["route_history__arrivals_7d"] > 0
    # One call across views, absent keys first, between and last, and a view asked for
    # nothing: the same answer, in the same places, from both stores.
    route = views["route_history"].entities
    known, unknown = {"origin": "JFK", "dest": "LAX"}, {"origin": "NO", "dest": "PE"}
    mixed = [
        ("carrier_delays", [("XX",), ("AA",), ("YY",)]),
        ("empty", []),
        ("route_history", [tuple(r[k] for k in route) for r in (known, unknown)]),
    ]
    answers = redis_store.read_many(mixed)
    assert answers == sqlite_store.read_many(mixed)
    assert [[v is not None for v in view] for view in answers] == [
        [False, True, False], [], [True, False],
    ]  # fmt: skip
    assert redis_store.read_many([("carrier_delays", [])]) == [[]]
    assert (
        redis_store.count("carrier_delays") == sqlite_store.count("carrier_delays") == 15
    )  # carriers flying in January

    # Writes never go back in time; checkpoints land with their batch.
    for store in (redis_store, sqlite_store):
        applied = store.write(
            "carrier_delays", [OnlineRow(("AA",), {"x": 1}, 0)], ttl_us=10**9, checkpoint=("t", "1")
        )
        assert applied == 0 and store.get_checkpoint("t") == "1"
        assert store.read("carrier_delays", [("AA",)])[0].window_end_us > 0
        applied = store.write("tmp", [OnlineRow(("k",), {"x": 1}, 5)], ttl_us=1_000)
        assert applied == 1
    time.sleep(0.05)
    assert redis_store.read("tmp", [("k",)]) == [None]  # expired after 1 ms
    assert sqlite_store.read("tmp", [("k",)]) == [None]

    with pytest.raises(UnknownViewError, match="unknown view"):
        get_online_features(sqlite_store, views, ["nope"], carriers)
    with pytest.raises(FeatureRequestError, match=r"entities\[0\]: missing key 'carrier'"):
        get_online_features(sqlite_store, views, ["carrier_delays"], [{"airline": "AA"}])
    with pytest.raises(
        FeatureRequestError, match=r"entities\[0\].carrier: expected a string, got int"
    ):
        get_online_features(sqlite_store, views, ["carrier_delays"], [{"carrier": 7}])
    redis_store.close()
    sqlite_store.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_http_endpoint_serves_features_and_rejects_bad_requests(flights, tmp_path):
    env = dict(os.environ, TIERFLOW_DATA_DIR=str(flights), TIERFLOW_ONLINE_STORE="sqlite")
    store_path = tmp_path / "serve.db"
    with SQLiteOnlineStore(store_path) as store:
        project = project_for(flights)
        view = project.feature_view("carrier_delays")
        end = datetime(2013, 1, 25, tzinfo=timezone.utc)
        materialize(
            view,
            project.view_source(view),
            create_engine("single"),
            store,
            chunk_rows=5_000,
            end=end,
        )
        expected = get_online_features(
            store, project.feature_views(), ["carrier_delays"], [{"carrier": "AA"}]
        )
    port = free_port()
    env["TIERFLOW_ONLINE_DB"] = str(store_path)
    server = subprocess.Popen(
        [TIERFLOW, "serve", "--port", str(port)],
        cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1) as resp:
                    health = json.load(resp)
                break
            except OSError:
                time.sleep(0.1)
        assert health["status"] == "ok"
        status, body = post(
            f"{base}/v1/features",
            json.dumps({"views": ["carrier_delays"], "entities": [{"carrier": "AA"}]}).encode(),
        )
        assert status == 200 and body["features"] == expected
        with urllib.request.urlopen(f"{base}/v1/views", timeout=5) as resp:
            listed = json.load(resp)
        assert "carrier_delays__departures_24h" in listed["carrier_delays"]["features"]
        cases = [
            (b"{not json", 400, "not valid JSON"),
            (b"[1, 2]", 400, "JSON object"),
            (
                json.dumps({"views": "carrier_delays", "entities": []}).encode(),
                400,
                "list of view names",
            ),
            (
                json.dumps({"views": ["nope"], "entities": [{"carrier": "AA"}]}).encode(),
                404,
                "unknown view",
            ),
            (
                json.dumps({"views": ["carrier_delays"], "entities": [{}]}).encode(),
                400,
                "missing key 'carrier'",
            ),
            (
                json.dumps({"views": ["carrier_delays"], "entities": [{"carrier": 1}]}).encode(),
                400,
                "expected a string",
            ),
            (
                json.dumps(
                    {"views": ["carrier_delays"], "entities": [{"carrier": "AA"}] * 1001}
                ).encode(),
                400,
                "above the limit",
            ),
        ]
        for payload, code, reason in cases:
            status, body = post(f"{base}/v1/features", payload)
            assert (status, reason in body["error"]) == (code, True), (payload, status, body)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)


def materialize_cli(data: Path, db: Path, *extra: str) -> subprocess.Popen[str]:
    # Every bucket's progress as a line of its own: the test kills at one.
    env = dict(os.environ, TIERFLOW_DATA_DIR=str(data), TIERFLOW_ONLINE_STORE="sqlite",
               TIERFLOW_PROGRESS="lines")  # fmt: skip
    return subprocess.Popen(
        [TIERFLOW, "materialize", "route_history", "--end", END, "--engine", "single", *extra],
        cwd=PROJECT, env=env | {"TIERFLOW_ONLINE_DB": str(db)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_materialize_killed_and_restarted_equals_one_uninterrupted_run(flights, tmp_path):
    whole, interrupted = tmp_path / "whole.db", tmp_path / "interrupted.db"
    run = materialize_cli(flights, whole, "--buckets", "12")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "buckets 12/12" in out

    run = materialize_cli(flights, interrupted, "--buckets", "12")
    lines = []
    for line in run.stderr:
        lines.append(line)
        if ": 5/12 buckets" in line:
            run.send_signal(signal.SIGKILL)
            break
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL, "".join(lines)
    partial = dump_sqlite(interrupted, "route_history")
    assert 0 < len(partial) < len(dump_sqlite(whole, "route_history"))

    again = materialize_cli(flights, interrupted, "--buckets", "12")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming at bucket 6/12" in err, err
    assert dump_sqlite(interrupted, "route_history") == dump_sqlite(whole, "route_history")

    before = dump_sqlite(whole, "route_history")
    repeat = materialize_cli(flights, whole, "--buckets", "12")
    out, err = repeat.communicate(timeout=300)
    assert repeat.returncode == 0 and "already materialized" in err and "(already done)" in out
    assert dump_sqlite(whole, "route_history") == before


PEAK_RSS = """
import resource, sys
from datetime import datetime, timezone
from pathlib import Path
from tierflow.config.features import FeatureViewConfig
from tierflow.config.jobs import SourceConfig
from tierflow.engines import create_engine
from tierflow.features.materialize import materialize
from tierflow.jobs.sources import resolve_source
from tierflow.stores.sqlite_store import SQLiteOnlineStore
view = FeatureViewConfig.model_validate({
    "name": "big", "entities": ["k"], "event_time": "ts", "step": "1h", "ttl": "1d",
    "source": {"format": "parquet", "path": sys.argv[1], "columns": {
        "k": {"type": "int64"}, "ts": {"type": "timestamp"}, "x": {"type": "float64"}}},
    "features": [{"name": "n", "agg": "count", "window": "6h"}, {"name": "m", "agg": "mean", "column": "x", "window": "6h"}],
})
source = resolve_source("big", SourceConfig(format="parquet", path=sys.argv[1]), Path("/"))
with SQLiteOnlineStore(Path(sys.argv[2])) as store:
    result = materialize(view, source, create_engine("single"), store, chunk_rows=int(sys.argv[3]),
                         end=datetime(2024, 1, 3, tzinfo=timezone.utc))
print(result.rows_written, result.buckets, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def big_events(path: Path, rows: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(5)
    start = 1_704_067_200_000_000  # 2024-01-01
    table = pa.table({
        "k": pa.array(rng.integers(0, rows // 4, rows), pa.int64()),
        "ts": pa.array(start + rng.integers(0, 48 * 3_600_000_000, rows), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "x": pa.array(rng.normal(size=rows)),
    })  # fmt: skip
    path.mkdir(parents=True)
    for i in range(8):
        pq.write_table(table.slice(i * rows // 8, rows // 8), path / f"part-{i}.parquet")
    return path


def test_materialize_memory_follows_the_chunk_not_the_table(tmp_path):
    chunk = 25_000
    peaks = {}
    for rows in (400_000, 1_600_000):
        source = big_events(tmp_path / f"events-{rows}", rows)
        out = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(source), str(tmp_path / f"{rows}.db"), str(chunk)],
            capture_output=True, text=True, timeout=600, cwd=PROJECT,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        written, buckets, peak_kb = (int(v) for v in out.stdout.split())
        assert buckets == rows // chunk
        assert written > rows // 8
        peaks[rows] = peak_kb
    # Four times the rows (and sixteen times the chunk) must not take four times the memory.
    assert peaks[1_600_000] < peaks[400_000] * 1.35, peaks


def test_feature_commands_end_to_end(flights, tmp_path):
    from tierflow.examples.flights import write_labels, write_weather

    write_labels(flights, months=(1,))
    write_weather(flights, months=(1,))
    env = dict(os.environ, TIERFLOW_DATA_DIR=str(flights), TIERFLOW_LOGS_DIR=str(tmp_path / "logs"))

    def tierflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TIERFLOW, *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300
        )

    listing = tierflow("features", "list")
    assert listing.returncode == 0 and "carrier_delays__late_rate_24h" in listing.stdout
    values = tierflow(
        "features", "values", "carrier_delays", "--as-of", "2013-01-10T08:15:00Z", "--limit", "3"
    )
    assert values.returncode == 0, values.stderr
    assert "15 entities as of 2013-01-10T08:15:00+00:00" in values.stdout
    built = tierflow("training-set", "build", "flight_delays")
    assert built.returncode == 0, built.stderr
    assert "gold/training/flight_delays version 0" in built.stdout
    rebuilt = tierflow(
        "training-set", "rebuild", "gold/training/flight_delays", "--out", "gold/training/rebuilt"
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    unknown = tierflow("materialize", "no_such_view")
    assert unknown.returncode == 2 and "no feature view 'no_such_view'" in unknown.stderr
