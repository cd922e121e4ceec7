"""Bad input on every tier: exact quarantine counts and reasons; over the threshold the
sink is left untouched; the counts always add up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ENGINES, engine_options, project_for, read_table
from tierflow.jobs.runner import BadRowThresholdError

pytestmark = [pytest.mark.spark, pytest.mark.dask, pytest.mark.slow]

ORDERS_CSV = """id,amount,status,note
1,10.0,a,
2,,a,
3,abc,a,
4,-5,a,
5,10,zzz,
6,10,a,hello
7,oops
8,20,b,
9,1,b,
9,2,b,
"""
EVENTS_JSONL = """{"id": 101, "amount": 1.5, "status": "a"}
{"id": 102, "amount": null, "status": "a"}
{"id": 103, "amount": "x", "status": "a"}
{bad json
{"id": 105, "amount": 2, "status": "a", "extra": 1}
{"id": 106, "amount": 1000, "status": "b"}
"""
JOB = """
name: bad_input
sources:
  orders:
    format: csv
    path: raw/orders.csv
    columns:
      id: {{type: int64, nullable: false, unique: true}}
      amount: {{type: float64, nullable: false, min: 0, max: 100}}
      status: {{type: string, allowed: [a, b]}}
  events:
    format: jsonl
    path: raw/events.jsonl
    columns:
      id: {{type: int64, nullable: false}}
      amount: {{type: float64, nullable: false, min: 0, max: 100}}
      status: {{type: string, allowed: [a, b]}}
sql: |
  SELECT id, amount, status FROM orders
  UNION ALL
  SELECT id, amount, status FROM events
sink: {{format: delta, path: out/bad_input, mode: append}}
quarantine: {{max_bad_fraction: {fraction}}}
"""

EXPECTED = {
    ("orders", 2): "not_null: amount is null",
    ("orders", 3): "type: amount='abc' is not float64",
    ("orders", 4): "range: amount outside [0, 100]",
    ("orders", 5): "allowed: status not in [a, b]",
    ("orders", 6): "extra column: note='hello'",
    ("orders", 7): "parse: expected 4 fields, got 2: 7,oops",
    ("orders", 9): "unique: (id) appears more than once",
    ("orders", 10): "unique: (id) appears more than once",
    ("events", 2): "not_null: amount is null",
    ("events", 3): "type: amount='x' is not float64",
    (
        "events",
        4,
    ): "parse: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
    ("events", 5): "extra column: extra='1'",
    ("events", 6): "range: amount outside [0, 100]",
}


def setup_data(root: Path) -> tuple[Path, Path]:
    data = root / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "orders.csv").write_text(ORDERS_CSV)
    (data / "raw" / "events.jsonl").write_text(EVENTS_JSONL)
    lenient = root / "lenient.yaml"
    lenient.write_text(JOB.format(fraction=1.0))
    strict = root / "strict.yaml"
    strict.write_text(JOB.format(fraction=0.1))
    return data, lenient


@pytest.mark.parametrize("engine", ENGINES)
def test_exact_quarantine_and_untouched_sink_over_threshold(
    engine, tmp_path, spark, dask_scheduler
):
    data, lenient = setup_data(tmp_path)
    project = project_for(data)
    options = engine_options(engine, spark=spark, dask_scheduler=dask_scheduler)

    record = project.run(project.load_job(str(lenient)), engine=engine, options=options, echo=False)
    assert record.status == "succeeded"
    assert (record.rows_in, record.rows_quarantined, record.rows_out) == (16, 13, 3)
    assert record.rows_valid + record.rows_quarantined == record.rows_in
    assert record.quarantine_by_rule == {
        "orders.parse": 1, "orders.type": 1, "orders.extra column": 1, "orders.not_null": 1,
        "orders.range": 1, "orders.allowed": 1, "orders.unique": 2, "events.parse": 1,
        "events.type": 1, "events.extra column": 1, "events.not_null": 1, "events.range": 1,
    }  # fmt: skip

    found = {}
    for source in ("orders", "events"):
        table = read_table(data / "_quarantine" / "bad_input" / source)
        for row in table.to_pylist():
            found[(row["_tf_source"], row["_tf_record"])] = row["_tf_reason"]
            assert row["_tf_file"].endswith(
                f"raw/{'orders.csv' if source == 'orders' else 'events.jsonl'}"
            )
            assert row["_tf_run_id"] == record.run_id
    assert found == EXPECTED
    sink = read_table(data / "out" / "bad_input")
    assert sorted(sink["id"].to_pylist()) == [1, 8, 101]
    assert record.output["version"] == 0

    strict = tmp_path / "strict.yaml"
    with pytest.raises(
        BadRowThresholdError, match=r"13 of 16 rows \(81\.25%\).*max_bad_fraction 0\.1"
    ):
        project.run(project.load_job(str(strict)), engine=engine, options=options, echo=False)
    from deltalake import DeltaTable

    assert DeltaTable(str(data / "out" / "bad_input")).version() == 0, "the sink must be untouched"
    assert read_table(data / "out" / "bad_input").num_rows == 3
    # The failed run is on record, and its bad rows went to quarantine for inspection.
    from tierflow.jobs.records import list_runs

    failed = list_runs(project.logs_dir / "runs", "bad_input")[0]
    assert failed.status == "failed" and failed.rows_quarantined == 13 and failed.rows_out == 0
    assert "BadRowThresholdError" in failed.error
    assert read_table(data / "_quarantine" / "bad_input" / "orders").num_rows == 16


def test_the_command_line_exits_1_when_the_data_fails(tmp_path):
    data, _lenient = setup_data(tmp_path)
    env = os.environ | {"TIERFLOW_LOGS_DIR": str(tmp_path / "logs")}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tierflow"), "run", str(tmp_path / "strict.yaml"),
         "--engine", "single", "--data-dir", str(data)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "max_bad_fraction 0.1" in done.stderr and "Traceback" not in done.stderr
