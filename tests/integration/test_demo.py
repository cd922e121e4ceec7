"""``make demo`` end to end, through its real entry point; its batch stages again; and its
tiers at scale 2.

The demo runs as ``python -m tierflow.demo`` on a private data folder, with the secure
profile and the Redis online store: it starts its own Kafka (SASL/SCRAM over TLS) and
Redis (ACL user) in a private state folder and stops them at the end. Their passwords
are canaries, and so is a secret set in the environment: none may appear in any log, run
record or report. A second run's batch stages (in process, the same code as the entry
point's) reuse the first run's outputs and must be far faster; its live stages are the
first run's again, on fresh topics, and are left out here for the suite's time. At scale
2 (the batch stages, in process) the planner moves the ingest and the training set to
Dask, and the original flights' features must be those of the scale-1 run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.support import project_for, read_table
from tierflow.demo.pipeline import Demo, DemoOptions, load_demo_config
from tierflow.examples.flights import CLEAN_JOBS, ID_STRIDE, INGEST_JOBS, LABEL_JOBS, write_raw

PROJECT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]
BATCH = ("raw", "ingest", "clean", "profile", "labels", "training_set", "training")


CANARY = "canary-7f3a9c"
# Ports of their own: the session's plaintext services run beside the demo's.
SECURE_SERVICES = """\
host: 127.0.0.1
secure: true
kafka: {port: 29292, controller_port: 29293}
redis: {port: 26579}
"""


def secure_env(base: Path) -> dict[str, str]:
    """The secure profile's services in ``base``, with canary passwords seeded."""
    conf = base / "services.yaml"
    conf.write_text(SECURE_SERVICES)
    credentials = base / "state" / "credentials"
    credentials.mkdir(parents=True, mode=0o700)
    for name in ("kafka-admin", "kafka-tierflow", "redis-tierflow", "spark"):
        (credentials / f"{name}.password").write_text(f"{CANARY}-{name}")
        (credentials / f"{name}.password").chmod(0o600)
    return {
        "TIERFLOW_SERVICES_CONF": str(conf),
        "TIERFLOW_STATE_DIR": str(base / "state"),
        # A secret in the environment that nothing at scale 1 needs: still never printed.
        "TIERFLOW_SPARK_AUTH_SECRET": f"{CANARY}-environment",
    }


def run_demo(
    data: Path, logs: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = dict(os.environ, TIERFLOW_LOGS_DIR=str(logs)) | (env or {})
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.demo", "--data-dir", str(data), *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = json.loads((logs / "demo" / "latest" / "report.json").read_text())
    return done, report


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("demo")
    data, logs = base / "data", base / "logs"
    env = secure_env(base)
    first, report = run_demo(data, logs, "--online-store", "redis", env=env)
    html = (logs / "demo" / "latest" / "report.html").read_text()
    return {
        "base": base,
        "data": data,
        "logs": logs,
        "runs": [first],
        "reports": [report],
        "html": html,
    }


def stages(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in report["stages"]}


def test_the_demo_succeeds_end_to_end(runs):
    first, report = runs["runs"][0], runs["reports"][0]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Demo succeeded" in first.stdout
    assert report["status"] == "succeeded"
    assert list(stages(report)) == [*BATCH, "streaming", "parity", "serving", "monitoring"]
    jobs = {j["job"]: j for j in report["results"]["jobs"]}
    # The real data's anomalies, quarantined with their reasons; the counts add up.
    assert jobs["flights_silver"]["quarantine_by_rule"] == {
        "flights.check arrival_has_a_delay": 717,
        "flights.check plausible_speed": 4,
    }
    assert jobs["flights_silver"]["rows_in"] == 336_776 + 3_322  # flights + planes
    assert jobs["flights_silver"]["rows_out"] == 336_776 - 721
    assert jobs["weather_silver"]["quarantine_by_rule"] == {"weather.range": 1, "weather.unique": 6}
    assert {j["engine"] for j in jobs.values()} == {"single"}


def test_the_demo_ran_on_the_secure_services_and_no_secret_leaked(runs):
    first = runs["runs"][0]
    assert "kafka, redis on 127.0.0.1 (secure profile)" in first.stdout
    base: Path = runs["base"]
    credentials = base / "state" / "credentials"
    # Every file the runs wrote (logs, run records, reports, data, the services' logs),
    # except the credentials and the services' own config files, which hold them by design.
    allowed = {
        credentials,
        base / "state" / "kafka" / "config",
        base / "state" / "redis" / "config",
    }
    written = [p for p in base.rglob("*") if p.is_file() and p.parent not in allowed]
    assert len(written) > 100
    leaks = [str(p) for p in written if CANARY.encode() in p.read_bytes()]
    leaks += [f"stdout/stderr of run {i}" for i, run in enumerate(runs["runs"])
              if CANARY in run.stdout + run.stderr]  # fmt: skip
    assert not leaks, leaks


def test_the_model_beats_the_baseline(runs):
    training = runs["reports"][0]["results"]["training"]
    assert training["metrics"]["strategy"] == "ddp" and training["metrics"]["workers"] == 2
    comparison = training["comparison"]
    assert comparison["rows"]["test"] > 20_000  # December
    assert comparison["model"]["auc"] > comparison["baseline"]["auc"] + 0.05
    assert comparison["model"]["logloss"] < comparison["baseline"]["logloss"]
    assert comparison["model_beats_baseline"] is True
    # Tracked in MLflow, registered, and served from the registry.
    tracked = training["mlflow"]
    assert tracked["model"] == "flight_delays_mlp" and tracked["model_version"] == 1
    assert f"registered flight_delays_mlp version 1 (MLflow run {tracked['run_id']}" in (
        runs["runs"][0].stdout
    )
    (serve,) = (runs["logs"] / "demo").glob("2*/serve.log")
    assert "model flight_delays_mlp: version 1 from the registry" in serve.read_text()


def test_streaming_applies_every_event_once_and_parity_holds(runs):
    data, results = runs["data"], runs["reports"][0]["results"]
    streaming = results["streaming"]
    config = load_demo_config(project_for(data))
    start = int(config.replay_from.timestamp() * 1e6)
    end = int(config.replay_until.timestamp() * 1e6)
    flights = read_table(data / "silver" / "flights")

    def between(column: str) -> int:
        t = pc.cast(flights[column], pa.int64())
        return pc.sum(pc.and_(pc.greater_equal(t, start), pc.less(t, end))).as_py()

    assert streaming["events"]["flights.departures"] == between("dep_at")
    assert streaming["events"]["flights.arrivals"] == between("arr_at")
    total = sum(streaming["events"].values())
    consumed = sum(s["consumed"] for s in streaming["summaries"])
    assert consumed == total  # the restarted daemon read only the rest
    assert sum(s["poison"] for s in streaming["summaries"]) == 0
    assert streaming["exit_codes"] == [0, 0]
    assert streaming["throughput"] > 0 and streaming["freshness"]["p50_ms"] is not None
    parity = results["parity"]
    assert {p["view"] for p in parity} == {
        "carrier_delays",
        "origin_delays",
        "route_history",
        "origin_weather",
    }
    for view in parity:
        assert view["ok"] and view["entities"] > 0 and view["mismatches"] == 0, view


def test_serving_answers_for_upcoming_flights(runs):
    serving = runs["reports"][0]["results"]["serving"]
    assert len(serving["predictions"]) == 6
    for answer in serving["predictions"]:
        assert 0.0 < answer["score"] < 1.0
        assert answer["scheduled"] >= "2013-12-31 18:00"
        assert answer["carrier_delay_1h"] is not None  # served from the online store


def test_the_report_is_written_and_readable(runs):
    html, run_dir = (
        runs["html"],
        Path(runs["runs"][0].stdout.split("Report: ")[1].split()[0]).parent,
    )
    for title in (
        "Stages: where each ran and why",
        "Quarantine reasons",
        "Model against the baseline",
        "Streaming: December replayed through Kafka",
        "Parity: online store against batch recomputation",
        "Serving: predictions for upcoming flights",
        "Profile of silver flights",
    ):
        assert title in html
    assert "data:image/png;base64," in html
    assert (run_dir / "flights_profile.html").stat().st_size > 10_000
    assert (run_dir / "report.md").read_text().count("\n| ") > 30
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_run_reuses_the_batch_stages_and_is_faster(runs):
    """The batch stages of a second run, as `Demo.run` calls them: each is skipped (its
    inputs, configuration and code unchanged), the model is not trained again."""
    data, (report1,) = runs["data"], runs["reports"]
    project = project_for(data)
    demo = Demo(project, load_demo_config(project), DemoOptions(online_store="redis"))
    write_raw(demo.project.data_dir, 1)
    demo.jobs_stage("ingest", "ingest", INGEST_JOBS)
    demo.jobs_stage("clean", "clean", CLEAN_JOBS)
    demo.profile_stage()
    demo.jobs_stage("labels", "labels", LABEL_JOBS)
    demo.training_stage(demo.training_set_stage())
    again = {s.key: s for s in demo.stages}
    for key in ("ingest", "clean", "profile", "labels", "training_set", "training"):
        assert again[key].cached, key
    batch1 = sum(stages(report1)[k]["seconds"] for k in BATCH if k != "raw")
    batch2 = sum(s.seconds for s in demo.stages)
    assert batch2 < batch1 / 5, (batch1, batch2)
    assert demo.results["training"]["mlflow"]["model_version"] == 1


def test_batch_scores_equal_the_training_features_and_the_served_scores(runs, tmp_path):
    """`tierflow predict` on December's label rows: the features point-in-time from the
    views' tables (the training set's definitions, read from the model's snapshot recipe)
    and the scores equal what the registered model gives for the training snapshot's rows
    of the same flights; and on the feature rows `POST /v1/predict` answered with, the
    scores it served."""
    import deltalake

    from tierflow.train.predict import Predictor

    data, logs = runs["data"], tmp_path / "logs"
    env = dict(os.environ, TIERFLOW_DATA_DIR=str(data), TIERFLOW_LOGS_DIR=str(logs))
    labels = read_table(data / "silver" / "labels")
    december = labels.filter(pc.equal(labels["split"], "test")).slice(0, 2000)
    deltalake.write_deltalake(str(tmp_path / "to_score"), december)
    tierflow = str(Path(sys.executable).parent / "tierflow")
    done = subprocess.run(
        [tierflow, "predict", "flight_delays_mlp", "--input", str(tmp_path / "to_score"),
         "--output", str(tmp_path / "scored")],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scored 2,000 rows with flight_delays_mlp version 1 on single" in done.stdout
    scored = read_table(tmp_path / "scored").sort_by("flight_id")
    snapshot = read_table(data / "gold" / "training" / "flight_delays")
    mine = snapshot.filter(pc.is_in(snapshot["flight_id"], december["flight_id"]))
    predictor = Predictor.load(data / "models" / "flight_delays_mlp", None)
    expected = dict(zip(mine["flight_id"].to_pylist(), predictor.predict_table(mine),
                        strict=True))  # fmt: skip
    assert scored.num_rows == 2000 and len(expected) == 2000
    got = dict(zip(scored["flight_id"].to_pylist(), scored["score"].to_pylist(), strict=True))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    (record,) = [json.loads(p.read_text()) for p in (logs / "runs").glob("predict-*.json")]
    assert record["status"] == "succeeded" and record["output"]["model_version"] == 1

    # The served rows, with the features the server read from the online store.
    served = runs["reports"][0]["results"]["serving"]["predictions"]
    # Numbered: the output's row order is the engine's, not the input's.
    feature_rows = [p["request"] | p["features"] | {"row": i} for i, p in enumerate(served)]
    deltalake.write_deltalake(str(tmp_path / "served"), pa.Table.from_pylist(feature_rows))
    # In process this time (the command was run above): the same function behind it.
    from tierflow.engines import create_engine
    from tierflow.train.batch import predict

    engine = create_engine("single")
    result = predict(
        project_for(data), "flight_delays_mlp@1", input_path=str(tmp_path / "served"),
        output_path=str(tmp_path / "served_scored"), engine=engine, downloads=tmp_path / "dl",
    )  # fmt: skip
    engine.close()
    assert result.version == 1 and result.rows == len(served)
    batch = read_table(tmp_path / "served_scored").sort_by("row")["score"].to_pylist()
    # The same model on the same features; float32 sums in another batch shape differ in
    # the last bits (measured: 2e-7 relative at most).
    assert batch == pytest.approx([p["score"] for p in served], rel=1e-6, abs=1e-9)


def test_served_features_equal_batch_and_a_skewed_feature_is_flagged(runs, tmp_path):
    """The served log holds every row serving scored, with its features and window ends;
    the demo's monitoring stage found none differing from batch at those window ends. A
    copy of the log with one feature nudged on every row: `tierflow monitor consistency`
    flags that feature alone, on exactly the rows where it had a value, and exits 1."""
    import deltalake

    data = runs["data"]
    log = read_table(data / "served" / "flight_delays_mlp")
    serving = [stages(r)["serving"]["details"] for r in runs["reports"]]
    assert log.num_rows == sum(len(s["predictions"]) + s["traffic_rows"] for s in serving)
    assert set(log["version"].to_pylist()) == {"1"}
    for report in runs["reports"]:
        checked = stages(report)["monitoring"]["details"]["consistency"]
        assert checked["mismatches"] == 0 and checked["flagged"] == [], checked
        assert checked["compared"] > log.num_rows, checked  # several features a row

    name = "carrier_delays__dep_delay_mean_24h"
    nudged = pc.add(log[name], 0.5)
    deltalake.write_deltalake(
        str(tmp_path / "skewed"), log.set_column(log.column_names.index(name), name, nudged)
    )
    logs = tmp_path / "logs"
    env = dict(os.environ, TIERFLOW_DATA_DIR=str(data), TIERFLOW_LOGS_DIR=str(logs))
    tierflow = str(Path(sys.executable).parent / "tierflow")
    done = subprocess.run(
        [tierflow, "monitor", "consistency", "flight_delays_mlp", "--log", str(tmp_path / "skewed"),
         "--json"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    (found,) = (logs / "monitor").glob("consistency-*/consistency.json")
    numbers = json.loads(found.read_text())
    printed = json.loads(done.stdout)  # --json: the same numbers, and where the reports are
    assert printed["json"] == str(found) and printed["flagged"] == numbers["flagged"]
    assert numbers["flagged"] == [name]
    served = pc.is_valid(log["carrier_delays__window_end_us"])
    with_value = pc.sum(pc.and_(served, pc.is_valid(log[name]))).as_py()
    assert numbers["features"][name]["mismatches"] == with_value > 0
    assert numbers["features"][name]["abs_difference"]["max"] == pytest.approx(0.5)
    assert all(f["mismatches"] == 0 for n, f in numbers["features"].items() if n != name)
    assert (found.parent / "consistency.html").read_text().count("<svg") == 1


def test_scale_two_moves_stages_to_dask_with_the_same_features(runs, tmp_path):
    reference = read_table(runs["data"] / "gold" / "training" / "flight_delays")
    data = tmp_path / "data"
    project = project_for(data)
    demo = Demo(project, load_demo_config(project), DemoOptions(scale=2))
    write_raw(demo.project.data_dir, 2)
    demo.jobs_stage("ingest", "ingest", INGEST_JOBS)
    demo.jobs_stage("clean", "clean", CLEAN_JOBS)
    demo.jobs_stage("labels", "labels", LABEL_JOBS)
    demo.training_set_stage()
    tiers = {s.key: s.tier for s in demo.stages}
    engines = {j["job"]: j["engine"] for j in demo.results["jobs"]}
    assert engines["flights_bronze"] == "dask"  # 2 years of CSV: over the single-node limit
    assert tiers["training_set"] == "dask"
    scaled = read_table(data / "gold" / "training" / "flight_delays")
    assert scaled.num_rows == 2 * reference.num_rows
    original = scaled.filter(pc.less(scaled["flight_id"], ID_STRIDE)).sort_by("flight_id")
    expected = reference.sort_by("flight_id").select(original.column_names)
    assert original.num_rows == expected.num_rows
    for name in expected.column_names:
        left, right = original[name].combine_chunks(), expected[name].combine_chunks()
        assert left.is_null().equals(right.is_null()), name
        if pa.types.is_floating(right.type):
            a = left.fill_null(0.0).to_numpy(zero_copy_only=False)
            b = right.fill_null(0.0).to_numpy(zero_copy_only=False)
            assert np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True), name
        else:
            assert left.cast(right.type).equals(right), name
